"""Consumers: the nodes that sum over a channel axis, seen as ``y = M x + b``.

A *consumer* is a contracting node of the dependency analysis (Conv input channels, the K
of Gemm/MatMul) whose weight graphprune may read and rewrite. Calibration samples its input
*rows* ``x`` (im2col patches of a Conv, K-vectors of a matrix product), criteria and the
channel pass read its weight as a matrix ``M [O, C * taps]``, compensation writes it back.

Rules:
1. Feature ``c * taps + t`` is tap ``t`` of input channel ``c`` (a Conv weight
   ``[O, C, kh, kw]`` reshaped to ``[O, C*kh*kw]``; ``taps == 1`` for Gemm/MatMul).
2. A consumer is *refittable* when its weight is a float constant (float32/float16/float64;
   an initializer or a ``Constant`` node, as paddle2onnx and tf2onnx write weights),
   directly or through one ``Cast`` (weights stored in half precision) or ``Identity``, read
   by this node alone: weights computed otherwise (DequantizeLinear of a QDQ model) or tied
   between nodes are left alone, with a note naming what computes them.
3. Its bias slot: Conv input 2 and Gemm C (which compensation may add, zero-initialised),
   or the constant of the one Add that follows a MatMul (either stored like the weight);
   otherwise there is none.
4. Conv rows are supported for 1-D and 2-D convolutions with ``group == 1``; other ops that
   contract (ConvTranspose, Gemm with alpha/beta != 1) are not consumers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .dependency import DependencyGraph

_FLOAT_WEIGHTS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class Consumer:
    """One contracting node: how its input becomes rows and its weight a matrix."""

    node: int
    name: str
    op: str
    data: str  # the input tensor it contracts
    axis: int  # the contracted axis of ``data``
    channels: int
    taps: int = 1
    weight: str | None = None  # the constant (initializer or Constant node) holding the weight, if refittable
    layout: str = ""  # "conv", "kn" (weight [K, N]) or "nk" (weight [N, K])
    bias: str | None = None  # the bias constant (Conv input 2, Gemm C, MatMul's Add)
    bias_slot: str = ""  # "input" (Conv/Gemm: input 2 may be added), "add" (MatMul + Add), "" none
    conv: dict = field(default_factory=dict)  # kernel, strides, pads, dilations (2-D form)
    note: str = ""  # why it is not refittable

    @property
    def features(self) -> int:
        return self.channels * self.taps

    @property
    def refittable(self) -> bool:
        return self.weight is not None


def consumers_of(deps: DependencyGraph) -> dict[int, Consumer]:
    """Every contracting node of ``deps``, by node index (first contraction of a node)."""
    out: dict[int, Consumer] = {}
    for node_index, (tensor, axis) in deps.contractions:
        if node_index not in out:
            out[node_index] = _consumer(deps, node_index, tensor, axis)
    return out


def _consumer(deps: DependencyGraph, i: int, tensor: str, axis: int) -> Consumer:
    mv = deps.view
    node = mv.nodes[i]
    shape = mv.shapes.get(tensor) or ()
    base = dict(node=i, name=mv.node_names[i], op=node.op_type, data=tensor, axis=axis, channels=shape[axis])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        wshape = mv.shapes.get(node.input[1]) or ()
        if len(wshape) not in (3, 4):
            return Consumer(**base, note=f"{len(wshape) - 2}-D convolution: rows not supported")
        conv = _conv_geometry(attrs, wshape, shape)
        if conv is None:
            return Consumer(**base, note="Conv padding could not be resolved")
        taps = int(np.prod(wshape[2:]))
        weight, note = _own_weight(deps, i, node.input[1])
        bias, slot = _input_bias(deps, i, node, 2)
        return Consumer(
            **base, taps=taps, weight=weight, layout="conv", bias=bias, bias_slot=slot, conv=conv, note=note
        )
    if node.op_type == "Gemm":
        if node.input[0] != tensor:
            return Consumer(**base, note="Gemm whose weight is its first input")
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return Consumer(**base, note="Gemm with alpha or beta other than 1")
        weight, note = _own_weight(deps, i, node.input[1])
        bias, slot = _input_bias(deps, i, node, 2)
        return Consumer(**base, weight=weight, layout="nk" if attrs.get("transB", 0) else "kn", bias=bias,
                        bias_slot=slot, note=note)  # fmt: skip
    if node.op_type == "MatMul":
        if node.input[0] != tensor or len(mv.shapes.get(node.input[1]) or ()) != 2:
            return Consumer(**base, note="MatMul without a 2-D weight as its second input")
        weight, note = _own_weight(deps, i, node.input[1])
        bias, slot = _add_bias(deps, node.output[0])
        return Consumer(**base, weight=weight, layout="kn", bias=bias, bias_slot=slot, note=note)
    return Consumer(**base, note=f"{node.op_type} is not a supported consumer")


def _conv_geometry(attrs: dict, wshape: tuple, xshape: tuple) -> dict | None:
    """Kernel, strides, dilations and explicit pads in 2-D form (a 1-D conv has height 1)."""
    kernel = list(wshape[2:])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    dilations = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * 2 * nd))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        spatial = xshape[2:]
        if any(s is None for s in spatial):
            return None
        pads = [0] * 2 * nd
        for d in range(nd):
            out = -(-spatial[d] // strides[d])
            total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - spatial[d])
            small, big = total // 2, total - total // 2
            pads[d], pads[d + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 2 * nd
    if nd == 1:
        return {"kernel": [1, kernel[0]], "strides": [1, strides[0]], "dilations": [1, dilations[0]],
                "pads": [0, pads[0], 0, pads[1]]}  # fmt: skip
    return {"kernel": kernel, "strides": strides, "dilations": dilations, "pads": pads}


def stored(deps: DependencyGraph, name: str) -> str | None:
    """The float constant (initializer or Constant node output) that ``name`` is, or that one
    ``Cast`` or ``Identity`` turns into ``name``, if nothing else reads it on the way; else None."""
    mv = deps.view
    if mv.is_constant(name):
        source = name
    elif name in mv.producer and mv.nodes[mv.producer[name]].op_type in ("Cast", "Identity"):
        source = mv.nodes[mv.producer[name]].input[0]
        if not mv.is_constant(source) or len(mv.consumers.get(source, [])) != 1:
            return None
    else:
        return None
    if mv.constant_tensor(source).data_type not in _FLOAT_WEIGHTS or len(mv.consumers.get(name, [])) != 1:
        return None
    return source


def _own_weight(deps: DependencyGraph, i: int, name: str) -> tuple[str | None, str]:
    mv = deps.view
    source = stored(deps, name)
    if source is not None:
        return source, ""
    if len(mv.consumers.get(name, [])) != 1:
        return None, "weight shared with other nodes: left as it is"
    op = None if mv.is_constant(name) or name not in mv.producer else mv.nodes[mv.producer[name]].op_type
    source = name if op is None else mv.nodes[mv.producer[name]].input[0]
    if op in (None, "Cast", "Identity") and mv.is_constant(source):
        if len(mv.consumers.get(source, [])) != 1:
            return None, "weight shared with other nodes: left as it is"
        kind = onnx.TensorProto.DataType.Name(mv.constant_tensor(source).data_type)
        return None, f"weight of type {kind}: left as it is"
    return None, f"weight is computed at run time ({op or 'a graph input'}): left as it is"


def _input_bias(deps: DependencyGraph, i: int, node: onnx.NodeProto, position: int) -> tuple[str | None, str]:
    mv = deps.view
    if len(node.input) <= position or not node.input[position]:
        return None, "input"
    name = node.input[position]
    shape = mv.shapes.get(name) or ()
    out = (mv.shapes.get(node.output[0]) or (None, None))[1]
    source = stored(deps, name)
    ok = source is not None and bool(shape) and shape[-1] == out and int(np.prod(shape)) == out
    return (source, "input") if ok else (None, "")


def _add_bias(deps: DependencyGraph, output: str) -> tuple[str | None, str]:
    """The constant of the one Add that takes this MatMul's output, if it is a bias vector."""
    mv = deps.view
    uses = mv.consumers.get(output, [])
    if len(uses) != 1 or output in mv.graph_outputs:
        return None, ""
    add = mv.nodes[uses[0][0]]
    if add.op_type != "Add" or len(add.input) != 2:
        return None, ""
    other = add.input[1 - uses[0][1]]
    shape = mv.shapes.get(other) or ()
    out_shape = mv.shapes.get(output) or ()
    source = stored(deps, other)
    ok = source is not None and shape and out_shape and shape[-1] == out_shape[-1] and all(d == 1 for d in shape[:-1])
    return (source, "add") if ok else (None, "")


# --- rows ---------------------------------------------------------------------------------


def rows(c: Consumer, x: np.ndarray, per_sample: int, rng: np.random.Generator, *, owners: bool = False):
    """At most ``per_sample`` input rows per sample of batch ``x`` (random positions), as
    float64 ``[R, C * taps]`` in the feature order of :func:`weight_matrix`; with ``owners``
    also the sample (index in the batch) of each row."""
    if c.layout == "conv":
        out = _conv_rows(c, x, per_sample, rng)
        return (out, np.repeat(np.arange(x.shape[0]), len(out) // max(x.shape[0], 1))) if owners else out
    flat = np.moveaxis(x, c.axis, -1).reshape(-1, c.channels)
    owner = np.repeat(np.arange(x.shape[0]), len(flat) // max(x.shape[0], 1))  # axis 0 is the batch
    cap = len(flat) if x.ndim == 2 else per_sample * x.shape[0]  # a 2-D input has one row per sample
    if len(flat) > cap:
        pick = np.sort(rng.choice(len(flat), cap, replace=False))
        flat, owner = flat[pick], owner[pick]
    return (flat.astype(np.float64), owner) if owners else flat.astype(np.float64)


def _padded(c: Consumer, x: np.ndarray):
    """A Conv consumer's input zero-padded as the Conv pads it (1-D convs as 2-D with height
    1), with its kernel, strides, dilations and output size."""
    g = c.conv
    if x.ndim == 3:
        x = x[:, :, None, :]
    (kh, kw), (sh, sw), (dh, dw) = g["kernel"], g["strides"], g["dilations"]
    pt, pl, pb, pr = g["pads"]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    return xp, (kh, kw), (sh, sw), (dh, dw), (ho, wo)


def _conv_rows(c: Consumer, x: np.ndarray, per_sample: int, rng: np.random.Generator) -> np.ndarray:
    xp, (kh, kw), (sh, sw), (dh, dw), (ho, wo) = _padded(c, x)
    positions = ho * wo
    out = []
    for n in range(x.shape[0]):
        take = positions if positions <= per_sample else per_sample
        pos = np.arange(positions) if take == positions else np.sort(rng.choice(positions, take, replace=False))
        oh, ow = np.divmod(pos, wo)
        hh = oh[:, None] * sh + np.arange(kh)[None, :] * dh  # [r, kh]
        ww = ow[:, None] * sw + np.arange(kw)[None, :] * dw  # [r, kw]
        patch = xp[n][:, hh[:, :, None], ww[:, None, :]]  # [C, r, kh, kw]
        out.append(np.moveaxis(patch, 1, 0).reshape(take, -1))
    return np.concatenate(out).astype(np.float64)


def tap_sums(c: Consumer, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum over every output position of a Conv consumer of each feature (channel, tap) of
    its zero-padded input, and the number of positions: the exact mean input of each
    weight entry, borders included."""
    xp, (kh, kw), (sh, sw), (dh, dw), (ho, wo) = _padded(c, x)
    out = np.zeros((x.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            part = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            out[:, i, j] = part.sum(axis=(0, 2, 3), dtype=np.float64)
    return out.reshape(-1), x.shape[0] * ho * wo


# --- weights ------------------------------------------------------------------------------


def weight_value(deps: DependencyGraph, c: Consumer) -> np.ndarray | None:
    """The consumer's weight as stored (its constant, before any Cast), or None."""
    return deps.view.value(c.weight or deps.view.nodes[c.node].input[1])


def weight_matrix(c: Consumer, w: np.ndarray) -> np.ndarray:
    """The weight as float64 ``M [O, C * taps]``: ``y = M x`` for an input row ``x``."""
    w = np.asarray(w, dtype=np.float64)
    if c.layout == "conv":
        return w.reshape(w.shape[0], -1)
    return w.T if c.layout == "kn" else w


def from_matrix(c: Consumer, m: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Inverse of :func:`weight_matrix`, in ``like``'s shape and dtype."""
    w = m.reshape(like.shape) if c.layout == "conv" else (m.T if c.layout == "kn" else m)
    return np.ascontiguousarray(w).astype(like.dtype)


def features_of(c: Consumer, channels: np.ndarray) -> np.ndarray:
    """Feature indices of input channels ``channels`` (all their taps)."""
    channels = np.asarray(channels, dtype=np.int64)
    return (channels[:, None] * c.taps + np.arange(c.taps)[None, :]).ravel()
