"""Mask mode: what a structured pass removes is written as zeros instead, every shape kept.

Rules:
1. Channels (filter and channel passes): for each node that sums over a removed channel,
   that channel's entries of its weight's input axis (the one a rule marks "in": Conv input
   channels with all their kernel taps, the K rows of a MatMul/Gemm weight, ConvTranspose's
   axis 0) are zeroed, so the channel contributes exactly what removal leaves: nothing,
   whatever sits between producer and consumer (a BatchNormalization's bias would otherwise
   leak). Where the weight is not a float constant read by that node alone (an integer op, a
   tied or computed weight, a grouped convolution), the masked reference's ``Mul`` by a 0/1
   mask (:mod:`graphprune.edit.masking`) is inserted instead. The producers' removed filters ("out"
   weights) and the per-channel constants their nodes read with them (biases) are zeroed
   too, as soft filter pruning exports them.
2. Blocks (layer pass): every float constant of more than one element read only by the
   nodes of ``f`` is zeroed, so ``f(x)`` is 0 and ``y = x``.
3. Exactness keeps its meaning: the masked model must equal the masked (or zeroed) reference
   of the same plan; a zeroed weight that made ``f`` or a channel non-finite (a division by a
   zeroed constant) fails it, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis.dependency import DependencyGraph
from ..analysis.plan import Plan, removed_entries
from ..errors import InputError
from ..ir.weights import constant_tensors, has_lazy
from ..options import option

MODES = ("remove", "mask")
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def mode_option():
    """The ``mode`` option of every structured pass (filter, channel, layer), declared once."""
    return option(
        "remove",
        "remove: cut the pruned entries out; mask: write zeros instead and keep every shape (for runtimes or"
        " pipelines that need the original shapes; its outputs equal the pruned model's)",
        choices=MODES,
    )


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _write(t: onnx.TensorProto, arr: np.ndarray) -> None:
    new = numpy_helper.from_array(np.ascontiguousarray(arr), t.name)
    new.doc_string = t.doc_string
    t.CopyFrom(new)


def _copy(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    if has_lazy(model):
        raise InputError(f"--mode mask ({what}) on a model with external data is not supported: use --mode remove")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _zero(t: onnx.TensorProto, axis: int, idx: np.ndarray) -> None:
    w = numpy_helper.to_array(t).copy()
    index = [slice(None)] * w.ndim
    index[axis] = idx
    w[tuple(index)] = 0
    _write(t, w)


def _input_column(mv, node_index: int, dim, roles: dict, removed: dict, protos: dict) -> tuple[str, int] | None:
    """The (float constant, axis) whose entries on the removed channels of ``dim`` node
    ``node_index`` multiplies: its weight's one input ("in") axis, when that weight is read by
    this node alone and loses the same channels; None otherwise (rule 1's Mul then)."""
    node = mv.nodes[node_index]
    found = []
    for w in node.input:
        source = mv.weight_source(w) if w and w != dim[0] else None
        if source is None or source not in protos or protos[source].data_type not in _FLOAT:
            continue
        if {i for i, _ in mv.weight_readers(source)} != {node_index}:
            continue  # tied: zeroing it would change another node
        rank = len(mv.shapes.get(source) or ())
        found += [(source, a) for a in range(rank) if roles.get((source, a)) == "in" and (source, a) in removed]
    if len(found) != 1 or len(removed[found[0]]) != len(removed[dim]):
        return None
    return found[0]


def mask_plan(model: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> onnx.ModelProto:
    """``model`` (analysed as ``deps``) with ``plan``'s removed channels zeroed (rule 1)."""
    from .masking import masked_bytes

    out = _copy(model, "channels")
    removed = removed_entries(deps, plan)
    protos = constant_tensors(out)
    mv = deps.view
    roles = {**{(m.tensor, m.axis): m.role for g in deps.groups for m in g.members}, **deps.roles}
    runtime_masks: dict = {}
    zeroed: set[tuple[str, int]] = set()
    for node_index, dim in deps.contractions:
        idx = removed.get(dim)
        if idx is None or not len(idx):
            continue
        column = _input_column(mv, node_index, dim, roles, removed, protos)
        if column is None:
            mask = np.ones(mv.shapes[dim[0]][dim[1]])
            mask[idx] = 0
            runtime_masks[dim] = mask
        elif column not in zeroed:
            zeroed.add(column)
            _zero(protos[column[0]], column[1], removed[column])
    producers = {name for (name, _axis), role in roles.items() if role == "out"}
    with_bias = {}  # per-channel constants read by a producing node alongside its filters
    for i, node in enumerate(mv.nodes):
        if any(name in producers for name in node.input):
            for name in node.input:
                if name not in producers and name in protos:
                    with_bias[name] = i
    for (name, axis), idx in removed.items():
        if not len(idx) or name not in protos or protos[name].data_type not in _FLOAT:
            continue
        if roles.get((name, axis)) == "out" or (roles.get((name, axis)) == "param" and name in with_bias):
            _zero(protos[name], axis, idx)
    if runtime_masks:
        data, _ = masked_bytes(out, deps, runtime_masks)
        out = onnx.load_from_string(data)
    return out


def mask_blocks(model: onnx.ModelProto, blocks: Iterable) -> onnx.ModelProto:
    """``model`` with each block's ``f`` silenced by zeroing its weights (rule 2)."""
    out = _copy(model, "blocks")
    protos = constant_tensors(out)
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(out.graph.node):
        for name in node.input:
            readers.setdefault(name, set()).add(i)
    for b in blocks:
        inside = set(b.nodes)
        for name, t in protos.items():
            if t.data_type in _FLOAT and np.prod(t.dims) > 1 and readers.get(name) and readers[name] <= inside:
                _write(t, np.zeros_like(numpy_helper.to_array(t)))
    return out
