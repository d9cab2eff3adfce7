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


def masked_bytes(
    model: onnx.ModelProto, deps: DependencyGraph, masks: dict[Dim, np.ndarray | None]
) -> tuple[bytes, dict[Dim, str]]:
    """``model`` serialized with a ``Mul`` mask on each contracted dim in ``masks``.

    A mask given as an array (length of the axis, 1 keeps, 0 removes) becomes a constant;
    ``None`` makes it a graph input of the mask's shape, fed at run time. Returns the bytes
    and the name of each mask (the input names to feed).
    """
    g = model.graph
    readers: dict[Dim, list[int]] = defaultdict(list)
    for node_index, dim in deps.contractions:
        if dim in masks:
            readers[dim].append(node_index)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    names: dict[Dim, str] = {}
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    renamed: list[tuple[onnx.NodeProto, int, str]] = []
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for k, (dim, nodes) in enumerate(readers.items()):
        tensor, _ = dim
        shape = mask_shape(deps, dim)
        mask_name = fresh_name(taken, f"graphprune_mask_{k}")
        out_name = fresh_name(taken, f"graphprune_masked_{k}")
        names[dim] = mask_name
        value = masks[dim]
        if value is None:
            inputs.append(helper.make_tensor_value_info(mask_name, mask_dtype(deps, dim), shape))
        else:
            dtype = helper.tensor_dtype_to_np_dtype(mask_dtype(deps, dim))
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype).reshape(shape), mask_name))
        for node_index in nodes:
            node = g.node[node_index]
            for position, name in enumerate(node.input):
                if name == tensor:
                    renamed.append((node, position, tensor))
        inserts.append((min(nodes), helper.make_node("Mul", [tensor, mask_name], [out_name])))
    n_init, n_inputs, n_nodes = len(g.initializer), len(g.input), len(g.node)
    outputs = {id(mul): mul.output[0] for _, mul in inserts}
    by_dim = dict(zip(readers, inserts))
    try:
        for dim, (_, mul) in by_dim.items():
            for node_index in readers[dim]:
                node = g.node[node_index]
                for position, name in enumerate(node.input):
                    if name == dim[0]:
                        node.input[position] = outputs[id(mul)]
        g.initializer.extend(inits)
        g.input.extend(inputs)
        # Descending positions: each insertion leaves the positions still to come valid.
        for node_index, mul in sorted(inserts, key=lambda t: -t[0]):
            g.node.insert(node_index, mul)
        return model.SerializeToString(), names
    finally:
        del g.initializer[n_init:]
        del g.input[n_inputs:]
        added = set(outputs.values())
        for i in range(len(g.node) - 1, -1, -1):
            if len(g.node) == n_nodes:
                break
            if g.node[i].op_type == "Mul" and g.node[i].output[0] in added:
                del g.node[i]
        assert len(g.node) == n_nodes
        for node, position, tensor in renamed:
            node.input[position] = tensor
