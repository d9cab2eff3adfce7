"""Mask mode: what a structured pass removes is written as zeros instead, every shape kept.

Rules:
1. Channels (filter and channel passes): for each node that sums over a removed channel,
   that channel's columns of its weight are zeroed (Conv input channels with all their kernel
   taps, the K rows of a MatMul/Gemm weight), so the channel contributes exactly what removal
   leaves: nothing, whatever sits between producer and consumer (a BatchNormalization's bias
   would otherwise leak). Where the weight is not a float constant read by that node alone
   (an integer op, a tied or computed weight), the masked reference's ``Mul`` by a 0/1 mask
   (:mod:`graphprune.masking`) is inserted instead. The producers' removed filters ("out"
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

from .consumers import consumers_of, features_of, from_matrix, weight_matrix
from .dependency import DependencyGraph
from .errors import InputError
from .plan import Plan
from .surgery import removed_entries
from .weights import has_lazy

MODES = ("remove", "mask")
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


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


def mask_plan(model: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> onnx.ModelProto:
    """``model`` (analysed as ``deps``) with ``plan``'s removed channels zeroed (rule 1)."""
    from .masking import masked_bytes

    out = _copy(model, "channels")
    removed = removed_entries(deps, plan)
    protos = _constants(out)
    consumers = consumers_of(deps)
    mv = deps.view
    runtime_masks: dict = {}
    for node_index, dim in deps.contractions:
        idx = removed.get(dim)
        if idx is None or not len(idx):
            continue
        c = consumers.get(node_index)
        t = protos.get(c.weight) if c is not None and c.weight is not None else None
        if t is None or t.data_type not in _FLOAT:
            mask = np.ones(mv.shapes[dim[0]][dim[1]])
            mask[idx] = 0
            runtime_masks[dim] = mask
            continue
        w = numpy_helper.to_array(t)
        m = weight_matrix(c, w)
        m[:, features_of(c, idx)] = 0.0
        _write(t, from_matrix(c, m, w))
    roles = {(m.tensor, m.axis): m.role for g in deps.groups for m in g.members}
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
            w = numpy_helper.to_array(protos[name]).copy()
            index = [slice(None)] * w.ndim
            index[axis] = idx
            w[tuple(index)] = 0
            _write(protos[name], w)
    if runtime_masks:
        data, _ = masked_bytes(out, deps, runtime_masks)
        out = onnx.load_from_string(data)
    return out


def mask_blocks(model: onnx.ModelProto, blocks: Iterable) -> onnx.ModelProto:
    """``model`` with each block's ``f`` silenced by zeroing its weights (rule 2)."""
    out = _copy(model, "blocks")
    protos = _constants(out)
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
