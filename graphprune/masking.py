"""Channel masks at the contracting consumers of a model, without copying its weights.

A removed channel contributes nothing once it is multiplied by zero on the data input of
every node that sums over it (Conv input channels, the K axis of MatMul/Gemm): the masked
model computes what the pruned one should. Masks are either constants (the exactness
reference of one plan) or graph inputs (one onnxruntime session that evaluates many plans,
for sensitivity analysis).

Rules:
1. One ``Mul`` per masked (tensor, axis), inserted before its first contracting consumer;
   only the contracting consumers read the masked tensor (a residual ``Add`` still reads it
   unmasked, as the pruned stream's other members are masked at their own consumers).
2. The masks are put into the caller's model, the model is serialized, and the masks are
   taken out again in ``finally``: the caller's model ends as it began.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .dependency import DependencyGraph, Dim
from .graph import fresh_name


def mask_shape(deps: DependencyGraph, dim: Dim) -> list[int]:
    tensor, axis = dim
    shape = deps.view.shapes[tensor]
    out = [1] * len(shape)
    out[axis] = shape[axis]
    return out


def mask_dtype(deps: DependencyGraph, dim: Dim) -> int:
    return deps.view.dtypes.get(dim[0], onnx.TensorProto.FLOAT)


@dataclass
class MaskPoint:
    """A ``Mul`` on ``tensor`` read by the given (node index, input position) pairs only.

    ``value`` (broadcast against the tensor, 1 keeps, 0 removes) makes a constant mask;
    ``None`` makes it a graph input of ``shape``, fed at run time.
    """

    tensor: str
    readers: list[tuple[int, int]]
    shape: list[int]
    dtype: int
    value: np.ndarray | None = None


def channel_points(deps: DependencyGraph, masks: dict[Dim, np.ndarray | None]) -> dict[Dim, MaskPoint]:
    """A mask point on each contracted dim of ``masks``, read by all of its contracting consumers."""
    readers: dict[Dim, list[tuple[int, int]]] = defaultdict(list)
    for node_index, dim in deps.contractions:
        if dim in masks:
            node = deps.view.model.graph.node[node_index]
            readers[dim] += [(node_index, pos) for pos, name in enumerate(node.input) if name == dim[0]]
    return {
        dim: MaskPoint(dim[0], sorted(set(rs)), mask_shape(deps, dim), mask_dtype(deps, dim), masks[dim])
        for dim, rs in readers.items()
    }


def masked_bytes(
    model: onnx.ModelProto, deps: DependencyGraph, masks: dict[Dim, np.ndarray | None]
) -> tuple[bytes, dict[Dim, str]]:
    """``model`` serialized with a ``Mul`` mask on each contracted dim in ``masks`` (an array:
    a constant; ``None``: a graph input). Returns the bytes and each mask's name."""
    points = channel_points(deps, masks)
    data, names = insert_masks(model, list(points.values()))
    return data, dict(zip(points, names))


def insert_masks(
    model: onnx.ModelProto, points: list[MaskPoint], prefix: str = "graphprune_mask"
) -> tuple[bytes, list[str]]:
    """``model`` serialized with the mask ``points`` in place, and the masks' names."""
    g = model.graph
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    names: list[str] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    renamed: list[tuple[onnx.NodeProto, int, str]] = []
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for k, p in enumerate(points):
        mask_name = fresh_name(taken, f"{prefix}_{k}")
        out_name = fresh_name(taken, f"{prefix}ed_{k}")
        names.append(mask_name)
        if p.value is None:
            inputs.append(helper.make_tensor_value_info(mask_name, p.dtype, p.shape))
        else:
            dtype = helper.tensor_dtype_to_np_dtype(p.dtype)
            inits.append(numpy_helper.from_array(np.asarray(p.value, dtype=dtype).reshape(p.shape), mask_name))
        for node_index, position in p.readers:
            renamed.append((g.node[node_index], position, out_name))
        inserts.append((min(i for i, _ in p.readers), helper.make_node("Mul", [p.tensor, mask_name], [out_name])))
    n_init, n_inputs, n_nodes = len(g.initializer), len(g.input), len(g.node)
    originals = [(node, position, node.input[position]) for node, position, _ in renamed]
    try:
        for node, position, masked in renamed:
            node.input[position] = masked
        g.initializer.extend(inits)
        g.input.extend(inputs)
        # Descending positions: each insertion leaves the positions still to come valid.
        for node_index, mul in sorted(inserts, key=lambda t: -t[0]):
            g.node.insert(node_index, mul)
        return model.SerializeToString(), names
    finally:
        del g.initializer[n_init:]
        del g.input[n_inputs:]
        added = {mul.output[0] for _, mul in inserts}
        for i in range(len(g.node) - 1, -1, -1):
            if len(g.node) == n_nodes:
                break
            if g.node[i].op_type == "Mul" and g.node[i].output[0] in added:
                del g.node[i]
        assert len(g.node) == n_nodes
        for node, position, tensor in originals:
            node.input[position] = tensor
