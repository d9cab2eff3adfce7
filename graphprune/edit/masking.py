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
3. Integer ops (:data:`ZERO_POINT_WEIGHTS`: QLinearConv, QLinearMatMul, QGemm, ConvInteger,
   MatMulInteger) sum ``(x - x_zp)(w - w_zp)``: a ``Mul`` by 0 on the integer ``x`` leaves
   ``-x_zp``, not nothing. There the reference reads a copy of the constant weight whose
   entries on the removed channels are the weight's zero point (``w - w_zp = 0``), a new
   initializer for that node alone (the one copy of weights the reference makes). Only
   constant masks can do this: the masks of sensitivity analysis (graph inputs) raise an
   InputError on these ops.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..analysis.blocks import Block
from ..analysis.dependency import DependencyGraph, Dim
from ..analysis.plan import Plan, removed_entries
from ..errors import InputError
from ..ir.graph import fresh_name

# Per integer op: (its data input position, the node) -> (weight input position, the weight's
# contracted axis, its output axis (where a per-channel zero point lies), zero point position),
# or None when the data input is not the one of a constant weight's product.
WeightAxes = tuple[int, int, int, int]


def _qgemm(position: int, node: onnx.NodeProto) -> WeightAxes | None:
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return (3, 1, 0, 5) if trans_b else (3, 0, 1, 5)


ZERO_POINT_WEIGHTS: dict[tuple[str, str], Callable[[int, onnx.NodeProto], WeightAxes | None]] = {
    ("", "QLinearConv"): lambda pos, node: (3, 1, 0, 5) if pos == 0 else None,
    ("", "ConvInteger"): lambda pos, node: (1, 1, 0, 3) if pos == 0 else None,
    ("", "QLinearMatMul"): lambda pos, node: (3, -2, -1, 5) if pos == 0 else None,
    ("", "MatMulInteger"): lambda pos, node: (1, -2, -1, 3) if pos == 0 else None,
    ("com.microsoft", "QGemm"): lambda pos, node: _qgemm(pos, node) if pos == 0 else None,
}


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


@dataclass
class WeightPoint:
    """Node ``node_index`` reads ``value`` (a masked copy of its weight) at input ``position``."""

    node_index: int
    position: int
    value: np.ndarray = field(repr=False)


def weight_points(deps: DependencyGraph, masks: dict[Dim, np.ndarray | None]) -> list[WeightPoint]:
    """The masked weights of the integer contracting consumers of ``masks`` (rule 3)."""
    merged: dict[tuple[int, int], WeightPoint] = {}
    for node_index, dim in deps.contractions:
        axes = _weight_axes(deps, node_index, dim)
        if axes is None or dim not in masks:
            continue
        node = deps.view.model.graph.node[node_index]
        w_pos, k_axis, o_axis, zp_pos = axes
        key = (node_index, w_pos)
        w = merged[key].value if key in merged else deps.view.value(node.input[w_pos])
        zp = deps.view.value(node.input[zp_pos]) if len(node.input) > zp_pos and node.input[zp_pos] else None
        zp = np.zeros((), w.dtype) if zp is None else np.asarray(zp, w.dtype)
        rank = w.ndim
        zp_shape = [1] * rank
        if zp.size > 1:
            zp_shape[o_axis % rank] = zp.size
        keep_shape = [1] * rank
        keep_shape[k_axis % rank] = w.shape[k_axis]
        keep = np.asarray(masks[dim]).reshape(keep_shape) != 0
        merged[key] = WeightPoint(node_index, w_pos, np.where(keep, w, zp.reshape(zp_shape)).astype(w.dtype))
    return list(merged.values())


def _weight_axes(deps: DependencyGraph, node_index: int, dim: Dim) -> WeightAxes | None:
    node = deps.view.model.graph.node[node_index]
    hook = ZERO_POINT_WEIGHTS.get(("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type))
    if hook is None:
        return None
    positions = [pos for pos, name in enumerate(node.input) if name == dim[0]]
    axes = hook(positions[0], node) if positions else None
    if axes is None or deps.view.value(node.input[axes[0]]) is None:
        return None
    return axes


def channel_points(deps: DependencyGraph, masks: dict[Dim, np.ndarray | None]) -> dict[Dim, MaskPoint]:
    """A mask point on each contracted dim of ``masks``, read by all of its contracting consumers."""
    readers: dict[Dim, list[tuple[int, int]]] = defaultdict(list)
    for node_index, dim in deps.contractions:
        if dim in masks and _weight_axes(deps, node_index, dim) is not None:
            if masks[dim] is None:  # rule 3: no constant to write the zero point with
                op = deps.view.model.graph.node[node_index].op_type
                raise InputError(f"masks fed at run time (sensitivity) are not supported on {op} (integer op)")
            continue
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
    data, names = insert_masks(model, list(points.values()), weights=weight_points(deps, masks))
    return data, dict(zip(points, names))


def insert_masks(
    model: onnx.ModelProto,
    points: list[MaskPoint],
    prefix: str = "graphprune_mask",
    weights: Sequence[WeightPoint] = (),
) -> tuple[bytes, list[str]]:
    """``model`` serialized with the mask ``points`` and masked ``weights`` in place, and the
    masks' names."""
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
    for k, wp in enumerate(weights):
        name = fresh_name(taken, f"{prefix}_weight_{k}")
        inits.append(numpy_helper.from_array(wp.value, name))
        renamed.append((g.node[wp.node_index], wp.position, name))
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


# --------------------------------------------------------------------------- the masked reference


def masked_reference(original: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> onnx.ModelProto:
    """The original with every removed channel multiplied by zero where a node sums over it.

    A ``Mul`` by a 0/1 mask is inserted on the data input of each contracting node (Conv
    input channels, the K axis of Gemm/MatMul): for these linear ops that is the same as
    zeroing the weight's columns, whatever produced the weight (an initializer, a Cast, a
    DequantizeLinear). Nothing of the surgery is used: no slicing, no attribute rewriting.
    """
    return onnx.load_from_string(masked_reference_bytes(original, deps, plan))


def masked_reference_bytes(original: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> bytes:
    """The serialized :func:`masked_reference`, made without copying the weights.

    The masks only add nodes and small initializers and rename inputs, so they are put
    into ``original`` itself, serialized, and taken out again (:func:`graphprune.edit.masking.masked_bytes`):
    the caller's model ends as it began, and memory never holds a second set of weights.
    """
    removed = removed_entries(deps, plan)
    contracted = {d for _, d in deps.contractions}
    masks = {}
    for dim, idx in removed.items():
        if dim in contracted and len(idx):
            mask = np.ones(deps.view.shapes[dim[0]][dim[1]])
            mask[idx] = 0
            masks[dim] = mask
    data, _ = masked_bytes(original, deps, masks)
    return data


# --------------------------------------------------------------------------- residual blocks


def zeroed_reference_bytes(original: onnx.ModelProto, blocks: Iterable[Block]) -> bytes:
    """The original, serialized, with each block's ``f(x)`` multiplied by zero at its ``Add``.

    The Muls are put into ``original`` itself, serialized and taken out again (in
    ``finally``), so no second copy of the weights is made and the caller's model ends as it
    began. Independent of :func:`graphprune.analysis.blocks.remove_blocks`: no node is dropped, no input rewired but
    the Add's own.
    """
    data, _ = insert_masks(original, block_points(original, blocks, zero=True), prefix="graphprune_zero")
    return data


def block_points(model: onnx.ModelProto, blocks: Iterable[Block], *, zero: bool) -> list[MaskPoint]:
    """A scalar mask on each block's ``f(x)`` where its Add reads it: a constant 0 (``zero``),
    or a graph input (1 keeps the block, 0 removes it) for sensitivity analysis."""
    points = []
    for b in blocks:
        node = model.graph.node[b.add_index]
        if node.output[0] != b.y or b.fx not in node.input:
            raise InputError(f"block {b.add}: the model does not have this block (plan from another model?)")
        pos = list(node.input).index(b.fx)
        points.append(MaskPoint(b.fx, [(b.add_index, pos)], [], b.dtype, np.zeros(()) if zero else None))
    return points
