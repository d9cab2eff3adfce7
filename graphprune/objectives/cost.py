"""Cost of an ONNX model: parameter count, multiply-accumulates and measured latency.

MACs and latency look at the *main graph* only: subgraphs (bodies of ``If``, ``Loop``,
``Scan``) and model-local functions are opaque, their nodes count 0. Parameters count the
constants of the bodies too (one If branch runs, but both are stored). Nodes of the default
ONNX domain (``""`` / ``"ai.onnx"``) and onnxruntime's fused ``com.microsoft`` ops listed
below are counted; other custom-domain nodes count 0.

Parameters (:func:`count_params`)
---------------------------------
The number of *elements* of every floating-point constant tensor of the main graph and of
every If/Loop/Scan body in it:

* each initializer of type FLOAT, FLOAT16, BFLOAT16 or DOUBLE, counted once by name, however
  many nodes use it (also when it is unused, and also when it doubles as a graph input);
* the ``value`` tensor of every ``Constant`` node with one of those types, plus its
  ``value_float`` (1 element) or ``value_floats`` (their number) attribute;
* for sparse initializers of a float type, the number of stored values.

Integer, boolean and string tensors (shapes, axes, indices, quantized weights) are not
counted. Only ``dims`` are read, never tensor data, so models loaded without their external
data (``onnx.load(path, load_external_data=False)``) are counted exactly.

Multiply-accumulates (:func:`count_flops`)
------------------------------------------
The field ``flops`` holds **MACs** (one multiply plus one add = 1); multiply by 2 for
hardware-style FLOPs. Counts are computed from tensor shapes: those passed as ``shapes``
(name -> tuple of dims, ``None`` for an unknown dim), else those of
:func:`graphprune.ir.graph.infer_shapes`. Biases and the ``C`` input of ``Gemm`` are not counted.
In the table, ``X``/``A`` is the first input, ``W``/``B`` the weight or second input and ``Y``
the first output; ``elems(T)`` is the number of elements of ``T``.

==========================================  ===================================================
op type                                     MACs
==========================================  ===================================================
Conv, ConvInteger, QLinearConv              ``elems(Y) * prod(W.shape[1:])``
                                            = N·C_out·prod(out spatial)·(C_in/group)·prod(kernel)
ConvTranspose                               ``elems(X) * prod(W.shape[1:])``
                                            = N·C_in·prod(in spatial)·(C_out/group)·prod(kernel)
Gemm, QGemm                                 M·N·K (``transA``/``transB`` respected)
MatMul, MatMulInteger, QLinearMatMul        ``elems(Y) * K`` = prod(batch dims of Y)·M·N·K, for
                                            constant weights and activation × activation alike
Einsum                                      product of the sizes of all distinct subscripts
                                            (and of the broadcast ``...`` dims): the size of
                                            the iteration space
RNN, GRU, LSTM                              ``seq_len * batch * (elems(W) + elems(R))``: the
                                            input and recurrent matrix products of all gates
                                            and directions (gate nonlinearities not counted)
MaxPool, AveragePool, LpPool                ``elems(Y) * prod(kernel_shape)``
GlobalAveragePool, GlobalMaxPool,           ``elems(X)``
GlobalLpPool
Reduce* (ReduceSum, ReduceMean, ...),       ``elems(X)``: every input element is read once,
ArgMax, ArgMin                              so ``ReduceMean`` over H, W costs the same as
                                            ``GlobalAveragePool``
elementwise arithmetic, math, comparison,   ``elems(Y)`` (1 per output element)
logic and activation ops (Add, Mul, Relu,
Clip, Sigmoid, Gelu, Where, Erf, ...),
BatchNormalization, InstanceNormalization,
LayerNormalization, GroupNormalization,
LpNormalization, LRN,
MeanVarianceNormalization, RMSNormalization,
Softmax, LogSoftmax, Hardmax
everything else (Reshape, Transpose,        0
Concat, Slice, Gather, Shape, Cast,
Identity, Dropout, Resize, Pad, ...)
==========================================  ===================================================

onnxruntime's ``com.microsoft`` ops (what its transformer optimizer and 4-bit quantizer write):

==========================================  ===================================================
op type                                     MACs
==========================================  ===================================================
FusedConv, FusedGemm                        as Conv, Gemm (the fused activation not counted)
FusedMatMul, TransposeMatMul               ``elems(Y) * K``, K = A's last axis (second last
                                            with ``transA``)
MatMulNBits                                 ``elems(Y) * K`` (attribute ``K``): K per row and
                                            output column, as the float MatMul it replaces
Attention                                   projection ``B·S·in·(q+k+v)`` + scores ``B·S·T·q``
                                            + context ``B·S·T·v``, with ``q, k, v`` the packed
                                            widths (``qkv_hidden_sizes`` or thirds of the
                                            weight's columns) and ``T = S`` + past length
MultiHeadAttention                          scores + context ``B·S·L·(k + v)`` (L keys; the
                                            q/k/v projections are MatMuls of their own)
GroupQueryAttention                         scores + context ``2·B·S·T·q`` (q = num_heads·D,
                                            T = S + the past cache's length; each query
                                            head reads its KV head's T keys and values)
Gelu, FastGelu, BiasGelu, QuickGelu,        ``elems(Y)``
BiasAdd, BiasSplitGelu, RotaryEmbedding,
SkipLayerNormalization,
SkipSimplifiedLayerNormalization,
SimplifiedLayerNormalization,
EmbedLayerNormalization
==========================================  ===================================================

The exact op sets are ``_ELEMENTWISE_OPS``, ``_CONTRIB_OPS``, ``_REDUCE_OPS`` and the rest of the module's
tables. When a shape a counted node needs is unknown (missing, or with a symbolic dim such as
a dynamic batch), that node counts 0 and is counted in :attr:`Cost.unknown_nodes` instead;
pass ``shapes`` with concrete dims (or fix the model's input dims) to count it.

Latency (:func:`latency_ms`)
----------------------------
Median wall time of ``session.run`` with onnxruntime's CPUExecutionProvider, graph
optimization level ORT_ENABLE_ALL, ``intra_op_num_threads=threads`` and
``inter_op_num_threads=1``, over ``repeats`` timed runs after ``warmup`` untimed ones, fed by
:func:`random_feeds` unless ``feeds`` are given.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune.ir.graph import infer_shapes
from graphprune.ir.weights import FLOAT_TYPES
from graphprune.rules.reduce import REDUCE

__all__ = [
    "Cost",
    "cost_of",
    "count_flops",
    "count_params",
    "latency_ms",
    "random_feeds",
    "TimedSession",
]


@dataclass(frozen=True)
class Cost:
    """Static cost of a model; see the module docstring for what each number counts."""

    params: int
    """Elements of the float initializers and float Constant values of the main graph."""
    flops: int
    """Multiply-accumulates (MACs) of the main graph."""
    flops_by_op: dict[str, int] = field(default_factory=dict)
    """MACs per op type, for the op types that contribute a nonzero count."""
    unknown_nodes: int = 0
    """Nodes of a counted op type that counted 0 because a shape they need is unknown."""


# --------------------------------------------------------------------------- parameters


def count_params(model: onnx.ModelProto) -> int:
    """Number of elements of the float constant tensors of ``model``'s main graph and of the
    bodies of its If/Loop/Scan nodes (weights exporters put in branches are parameters too),
    and of the integer weights of quantized models: those a ``DequantizeLinear`` reads (QDQ),
    the weight inputs of ``QLinearConv``/``QGemm``/``MatMulInteger``... (QOperator), and the
    ``K x N`` weights a ``MatMulNBits`` packs into 4-bit codes.

    Reads ``dims`` only, so it works on models loaded without their (external) data.
    """
    return graph_params(model.graph) + sum(n for _, n in body_params(model.graph))


def body_params(g: onnx.GraphProto) -> list[tuple[int, int]]:
    """``(node index, parameters)`` of every node of ``g`` whose bodies (If branches, Loop or
    Scan body, nested bodies included) hold parameters."""
    out = []
    for i, node in enumerate(g.node):
        n = 0
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                bodies = [attr.g]
            elif attr.type in (onnx.AttributeProto.GRAPHS, onnx.AttributeProto.UNDEFINED):
                bodies = list(attr.graphs)
            else:
                continue
            n += sum(graph_params(b) + sum(k for _, k in body_params(b)) for b in bodies)
        if n:
            out.append((i, n))
    return out


# Where quantized operators read their integer weights (input positions).
_QUANT_WEIGHT_INPUTS = {
    "QLinearConv": (3,),
    "QLinearMatMul": (3,),
    "QGemm": (3,),
    "ConvInteger": (1,),
    "MatMulInteger": (1,),
    "DynamicQuantizeMatMul": (1,),
}


def graph_params(g: onnx.GraphProto) -> int:
    """The parameters of one graph (see :func:`count_params`), not of its nodes' bodies."""
    total = 0
    seen: set[str] = set()
    # Quantized weights (QDQ models) are integer tensors read by DequantizeLinear: they are
    # parameters too, one per element.
    dequantized = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input}
    # ... and the integer weight inputs of onnxruntime's quantized operators (QOperator format)
    dequantized |= {
        n.input[pos] for n in g.node for pos in _QUANT_WEIGHT_INPUTS.get(n.op_type, ()) if pos < len(n.input)
    }
    packed = {n.input[1]: n for n in g.node if n.op_type == "MatMulNBits" and len(n.input) > 1}
    for t in g.initializer:
        if t.name in packed and t.name not in seen:  # 4-bit codes, packed: K x N weights
            seen.add(t.name)
            attrs = {a.name: a.i for a in packed[t.name].attribute}
            total += attrs.get("K", 0) * attrs.get("N", 0)
            continue
        if t.name in seen:
            continue
        seen.add(t.name)
        if t.data_type in FLOAT_TYPES or (t.name in dequantized and t.dims):
            total += _numel(t.dims)
    for st in g.sparse_initializer:
        name = st.values.name
        if name in seen:
            continue
        seen.add(name)
        if st.values.data_type in FLOAT_TYPES:
            total += _numel(st.values.dims)
    for node in g.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                if attr.t.data_type in FLOAT_TYPES:
                    total += _numel(attr.t.dims)
            elif attr.name == "value_float":
                total += 1
            elif attr.name == "value_floats":
                total += len(attr.floats)
            elif attr.name == "sparse_value" and attr.sparse_tensor.values.data_type in FLOAT_TYPES:
                total += _numel(attr.sparse_tensor.values.dims)
    return total


# --------------------------------------------------------------------------- MACs

# op type -> (index of the data input, index of the weight input)
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
# op type -> (index of A, index of B)
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_RNN_OPS = frozenset({"RNN", "GRU", "LSTM"})
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_GLOBAL_POOL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCE_OPS = frozenset(REDUCE) | {"ArgMax", "ArgMin"}
_ELEMENTWISE_OPS = frozenset(
    {
        # arithmetic
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt",
        "Exp", "Log", "Floor", "Ceil", "Round", "Sign", "Erf", "Sum", "Mean", "Max", "Min",
        "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Tanh", "Asinh",
        "Acosh", "Atanh", "IsNaN", "IsInf", "BitShift",
        # comparison, logic, selection
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
        "Not", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Where",
        # activations
        "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu",
        "Celu", "Gelu", "Mish", "Softplus", "Softsign", "ThresholdedRelu", "Shrink", "Clip",
        # normalizations and softmax
        "BatchNormalization", "InstanceNormalization", "LayerNormalization",
        "GroupNormalization", "LpNormalization", "LRN", "MeanVarianceNormalization",
        "RMSNormalization", "SimplifiedLayerNormalization", "Softmax", "LogSoftmax", "Hardmax",
    }
)  # fmt: skip

Shapes = dict[str, tuple]  # name -> tuple[int | None, ...]

_MS = "com.microsoft"
# onnxruntime contrib ops counted as the ONNX op they fuse (its activation is not counted)
_CONTRIB_AS = {"FusedConv": "Conv", "FusedGemm": "Gemm", "QGemm": "Gemm"}
# contrib ops with a count of their own (see _contrib_macs)
_CONTRIB_OWN = frozenset(
    {"Attention", "MultiHeadAttention", "GroupQueryAttention", "MatMulNBits", "FusedMatMul", "TransposeMatMul"}
)
# contrib ops counted one MAC per output element
_CONTRIB_ELEMENTWISE = frozenset(
    {
        "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "BiasAdd", "BiasSplitGelu", "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "EmbedLayerNormalization",
        "RotaryEmbedding",
    }
)  # fmt: skip
_CONTRIB_OPS = frozenset(_CONTRIB_AS) | _CONTRIB_OWN | _CONTRIB_ELEMENTWISE


def count_flops(model: onnx.ModelProto, shapes: dict | None = None) -> tuple[int, dict[str, int]]:
    """MACs of ``model``'s main graph and their split by op type (nonzero entries only).

    ``shapes`` maps tensor names to dims; without it, :func:`graphprune.ir.graph.infer_shapes`
    is run. Nodes whose shapes are unknown count 0 (see :func:`cost_of` for how many).
    """
    total, by_op, _ = _count(model, shapes)
    return total, by_op


def cost_of(model: onnx.ModelProto, shapes: dict | None = None) -> Cost:
    """Parameters and MACs of ``model``."""
    total, by_op, unknown = _count(model, shapes)
    return Cost(
        params=count_params(model),
        flops=total,
        flops_by_op=by_op,
        unknown_nodes=unknown,
    )


def _count(model: onnx.ModelProto, shapes: dict | None) -> tuple[int, dict[str, int], int]:
    if shapes is None:
        shapes = infer_shapes(model)
    total = 0
    by_op: dict[str, int] = {}
    unknown = 0
    for node in model.graph.node:
        if not _counted_node(node):
            continue
        macs = node_macs(node, shapes)
        if macs is None:
            unknown += 1
            continue
        if macs:
            total += macs
            by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return total, by_op, unknown


def _counted_node(node: onnx.NodeProto) -> bool:
    if node.domain == _MS:
        return node.op_type in _CONTRIB_OPS
    return node.domain in ("", "ai.onnx") and _is_counted(node.op_type)


def _is_counted(op: str) -> bool:
    return (
        op in _CONV_OPS
        or op in _MATMUL_OPS
        or op in _RNN_OPS
        or op in _POOL_OPS
        or op in _GLOBAL_POOL_OPS
        or op in _REDUCE_OPS
        or op in _ELEMENTWISE_OPS
        or op in ("ConvTranspose", "Gemm", "Einsum")
    )


def node_macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """MACs of one counted node, or None when a shape it needs is unknown."""
    op = node.op_type

    def shape(i: int, outputs: bool = False) -> tuple | None:
        names = node.output if outputs else node.input
        if i >= len(names) or not names[i]:
            return None
        s = shapes.get(names[i])
        if s is None or any(d is None for d in s):
            return None
        return tuple(int(d) for d in s)

    if node.domain == _MS:
        op = _CONTRIB_AS.get(op, op)
        if op in _CONTRIB_OWN:
            return _contrib_macs(node, shape)
    if op in _CONV_OPS:
        _, w_idx = _CONV_OPS[op]
        y, w = shape(0, outputs=True), shape(w_idx)
        if y is None or w is None or len(w) < 2:
            return None
        return _numel(y) * _numel(w[1:])
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None or len(w) < 2:
            return None
        return _numel(x) * _numel(w[1:])
    if op == "Gemm":
        y, a, b = shape(0, outputs=True), shape(0), shape(3 if node.op_type == "QGemm" else 1)
        k = None
        if a is not None and len(a) == 2:
            k = a[0] if _attr(node, "transA", 0) else a[1]
        elif b is not None and len(b) == 2:
            k = b[1] if _attr(node, "transB", 0) else b[0]
        if y is None or k is None:
            return None
        return _numel(y) * k
    if op in _MATMUL_OPS:
        a_idx, b_idx = _MATMUL_OPS[op]
        y, a, b = shape(0, outputs=True), shape(a_idx), shape(b_idx)
        k = None
        if a is not None and len(a) >= 1:
            k = a[-1]
        elif b is not None and len(b) >= 1:
            k = b[0] if len(b) == 1 else b[-2]
        if y is None or k is None:
            return None
        return _numel(y) * k
    if op == "Einsum":
        ins = [shape(i) for i in range(len(node.input))]
        if any(s is None for s in ins):
            return None
        return _einsum_macs(_attr(node, "equation", b"").decode(), ins)
    if op in _RNN_OPS:
        x, w, r = shape(0), shape(1), shape(2)
        if x is None or w is None or r is None or len(x) != 3:
            return None
        return x[0] * x[1] * (_numel(w) + _numel(r))
    if op in _POOL_OPS:
        y = shape(0, outputs=True)
        kernel = _attr(node, "kernel_shape", None)
        if y is None or kernel is None:
            return None
        return _numel(y) * _numel(kernel)
    if op in _GLOBAL_POOL_OPS or op in _REDUCE_OPS:
        x = shape(0)
        return None if x is None else _numel(x)
    # elementwise / normalization / softmax
    y = shape(0, outputs=True)
    return None if y is None else _numel(y)


def _contrib_macs(node: onnx.NodeProto, shape) -> int | None:
    """MACs of the com.microsoft ops with a count of their own (see the module docstring)."""
    op = node.op_type
    y = shape(0, outputs=True)
    if y is None:
        return None
    if op == "MatMulNBits":  # K (attribute) per output element
        k = _attr(node, "K", None)
        return None if k is None else _numel(y) * int(k)
    if op in ("FusedMatMul", "TransposeMatMul"):
        a = shape(0)
        if a is None or len(a) < 2:
            return None
        return _numel(y) * (a[-2] if _attr(node, "transA", 0) else a[-1])
    if op == "Attention":  # projection + scores + context
        x, w = shape(0), shape(1)
        if x is None or w is None or len(w) != 2:
            return None
        sizes = list(_attr(node, "qkv_hidden_sizes", None) or [w[1] // 3] * 3)
        past = shape(4)
        tokens = _numel(x[:-1])  # B * S
        total = x[-2] + (past[3] if past is not None and len(past) == 5 else 0)
        return tokens * w[0] * w[1] + tokens * total * (sizes[0] + sizes[2])
    if op == "MultiHeadAttention":  # scores + context; the projections are MatMuls of their own
        q, k, v = shape(0), shape(1), shape(2)
        if q is None or k is None or v is None or len(q) != 3:
            return None
        keys = k[-2]  # [B, L, Dk] or [B, heads, L, D]
        dk = k[-1] if len(k) == 3 else k[1] * k[3]
        dv = v[-1] if len(v) == 3 else v[1] * v[3]
        return q[0] * q[1] * keys * (dk + dv)
    if op == "GroupQueryAttention":  # scores + context of every query head over its KV head's keys
        q, past = shape(0), shape(3)
        if q is None or len(q) != 3:
            return None
        total = q[1] + (past[2] if past is not None and len(past) == 4 else 0)
        return 2 * q[0] * q[1] * total * q[2]
    return None


def _einsum_macs(equation: str, in_shapes: Sequence[tuple]) -> int | None:
    """Size of an Einsum's iteration space: product of the sizes of all its subscripts."""
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if len(terms) != len(in_shapes):
        return None
    sizes: dict[str, int] = {}
    ellipsis: list[int] = []  # broadcast shape of the "..." dims, right-aligned
    for term, s in zip(terms, in_shapes, strict=True):
        if "..." in term:
            pre, post = term.split("...", 1)
            n_ell = len(s) - len(pre) - len(post)
            if n_ell < 0:
                return None
            labels = list(pre) + [""] * n_ell + list(post)
            ell = list(s[len(pre) : len(pre) + n_ell])
            width = max(len(ellipsis), len(ell))
            ellipsis = [1] * (width - len(ellipsis)) + ellipsis
            ell = [1] * (width - len(ell)) + ell
            ellipsis = [max(p, q) for p, q in zip(ellipsis, ell, strict=True)]
        else:
            labels = list(term)
            if len(labels) != len(s):
                return None
        for label, d in zip(labels, s, strict=True):
            if label:
                sizes[label] = max(sizes.get(label, 1), d)
    return _numel(sizes.values()) * _numel(ellipsis)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _numel(dims) -> int:
    return math.prod(int(d) for d in dims)


# --------------------------------------------------------------------------- latency


DYNAMIC_DIM = 16  # size given to a dynamic non-batch dim of a random input (graphprune.ir.input_sizes.DEFAULT_DIM)
SEQUENCE_LENGTH = 2  # tensors in a random sequence input


LATENCY_BUDGET_S = 2.0  # seconds of timed runs per model when no count is given
MIN_LATENCY_RUNS = 3
MAX_LATENCY_RUNS = 20  # within the budget: a fast model is timed as many times as before


def random_feeds(model: onnx.ModelProto, seed: int = 0, shapes: dict | None = None) -> dict:
    """Seeded random inputs for every graph input that is not an initializer.

    Shapes are ``shapes[name]`` when given, else the declared ones with symbolic dims sized by
    :func:`graphprune.ir.input_sizes.resolve`'s defaults (batch 1, image height and width 64, other
    dims 16); an input without any declared shape gets shape ``(1,)``. Floats are standard
    normal, integers are drawn from 0..3 (valid as small indices or sizes), booleans are
    random, strings are short words. Every element type onnxruntime takes is fed: bfloat16,
    float8, float4, int4/uint4 and int2/uint2 as :mod:`ml_dtypes` arrays (:mod:`graphprune.ir.runtime`
    hands them over as raw bits); a sequence input gets a list of two tensors, an optional
    input its element, a map input a dict of three entries.
    """
    from ..ir.input_sizes import resolve

    rng = np.random.default_rng(seed)
    if shapes is None:
        shapes = resolve(model).dims
    init_names = {t.name for t in model.graph.initializer}
    return {
        vi.name: _random_value(vi.type, shapes.get(vi.name), rng, vi.name)
        for vi in model.graph.input
        if vi.name not in init_names
    }


def _random_value(tp: onnx.TypeProto, dims: tuple | None, rng: np.random.Generator, name: str):
    """A random value of ONNX type ``tp`` (a tensor of ``dims`` if given)."""
    kind = tp.WhichOneof("value")
    if kind == "sequence_type":
        return [_random_value(tp.sequence_type.elem_type, None, rng, name) for _ in range(SEQUENCE_LENGTH)]
    if kind == "optional_type":
        return _random_value(tp.optional_type.elem_type, dims, rng, name)
    if kind == "map_type":  # onnxruntime takes a dict (DictVectorizer's input): three entries
        keys = ["a", "bc", "def"] if tp.map_type.key_type == onnx.TensorProto.STRING else list(range(3))
        values = _random_value(tp.map_type.value_type, (len(keys),), rng, name)
        return {k: v.item() for k, v in zip(keys, values)}
    if kind != "tensor_type":
        raise ValueError(f"input {name!r} is a {kind or 'value of no type'}; pass feeds explicitly")
    tt = tp.tensor_type
    if dims is None:
        dims = (
            tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (1 if ax == 0 else DYNAMIC_DIM)
                for ax, d in enumerate(tt.shape.dim)
            )
            if tt.HasField("shape")
            else (1,)
        )
    if tt.elem_type == onnx.TensorProto.STRING:
        return rng.choice(np.array(["a", "bc", "def", "graph"], dtype=object), size=dims)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except Exception as exc:
        raise ValueError(f"input {name!r} has unsupported element type {tt.elem_type}; pass feeds") from exc
    # np.asarray: a 0-d draw is a numpy scalar, which onnxruntime does not take as a tensor
    if dtype == np.bool_:
        return np.asarray(rng.integers(0, 2, size=dims).astype(np.bool_))
    if np.issubdtype(dtype, np.integer) or dtype.name in ("int4", "uint4", "int2", "uint2"):
        return np.asarray(rng.integers(0, 2 if dtype.name.endswith("int2") else 4, size=dims).astype(dtype))
    if np.issubdtype(dtype, np.complexfloating):
        return np.asarray((rng.standard_normal(size=dims) + 1j * rng.standard_normal(size=dims)).astype(dtype))
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V" or dtype.name.startswith(("bfloat", "float")):
        # ml_dtypes (bfloat16, float8, float4...): values a few units wide, which every one of
        # them holds; float8_e8m0fnu has no sign
        values = rng.standard_normal(size=dims).clip(-4, 4)
        return np.asarray((np.abs(values) if "e8m0" in dtype.name else values).astype(dtype))
    raise ValueError(f"input {name!r} has unsupported element type {dtype}; pass feeds")


@dataclass
class TimedSession:
    """A model's latency session (full optimisations) and the seconds of each run it made on
    ``feeds``: validation runs a float original through it, and :func:`latency_ms` counts that
    run as its first warm-up (or timed) run instead of running the model again, which costs
    seconds on a large one (fcn_resnet50: 1.3-7 s a run). No session is kept between uses, so
    validation and timing never hold two models' weights in sessions at once."""

    source: object  # a ModelProto, its bytes or a path
    feeds: dict
    durations: list[float] = field(default_factory=list)

    def session(self):
        """A session of ``source`` with every optimisation, not kept: whoever runs it holds it."""
        from ..ir.runtime import session

        return session(self.source, optimization="all")

    def run(self) -> list:
        """The outputs on ``feeds`` (copies, as :func:`graphprune.ir.runtime.run` gives), timed."""
        from ..ir.runtime import run

        return run(self.session(), self.feeds, self.durations)


def latency_ms(
    model: onnx.ModelProto | str | os.PathLike | TimedSession,
    *,
    repeats: int | None = 20,
    warmup: int = 3,
    threads: int = 1,
    feeds: dict | None = None,
    budget_s: float = LATENCY_BUDGET_S,
    label: str | None = None,
) -> float:
    """Median latency in milliseconds of one inference on onnxruntime's CPU provider.

    ``model`` is a ModelProto (serialized in memory, so its weights must be loaded and it must
    be under 2 GB), a path (which also works for models with external data), or a
    :class:`TimedSession` (its session and feeds; the runs it already made count first, as
    warm-ups). ``warmup`` untimed runs (fewer once a quarter of ``budget_s`` is spent; none when
    one run takes a third of it, the first run being timed then) precede ``repeats`` runs timed
    with :func:`time.perf_counter`; ``repeats=None`` times :data:`MAX_LATENCY_RUNS` runs, fewer
    once ``budget_s`` seconds are spent on the model, warm-ups included (at least
    :data:`MIN_LATENCY_RUNS`), so a large model is not timed for minutes (fcn_resnet50's 143
    GMACs took 9 minutes of 23 runs of each model). ``label`` draws a progress line on a
    terminal (:mod:`graphprune.progress`).
    """
    from ..ir.runtime import feedable, session
    from ..progress import progress

    if repeats is not None and repeats < 1:
        raise ValueError("repeats must be at least 1")
    earlier: list[float] = []
    if isinstance(model, TimedSession):
        sess, feeds, earlier = model.session(), model.feeds, list(model.durations)
    else:
        if isinstance(model, onnx.ModelProto):
            source: str | bytes = model.SerializeToString()
            proto = model
        else:
            source = os.fspath(model)
            proto = onnx.load(source, load_external_data=False) if feeds is None else None
        sess = session(source, threads=threads, optimization="all")
        if feeds is None:
            assert proto is not None
            feeds = random_feeds(proto)
    feeds = feedable(sess, feeds)

    def warm_ups():
        """Seconds of each warm-up run: the runs already made first."""
        yield from earlier
        for _ in range(max(warmup - len(earlier), 0)):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            yield time.perf_counter() - t0

    times: list[float] = []
    start = time.perf_counter() - sum(earlier)
    for took in warm_ups():
        if repeats is None and took >= budget_s / MIN_LATENCY_RUNS:
            # A run so slow that the fewest timed runs overrun the budget: its first run is
            # timed too (what a first run adds, allocating, is small next to seconds of
            # compute; the median of three leaves a slower one out). fcn_resnet50 at 143
            # GMACs is then timed in 3 runs of each model, not 4.
            times.append(took)
            break
        if repeats is None and time.perf_counter() - start > budget_s / 4:
            break  # a slow model: one warm-up run is enough

    def runs():
        while True:
            done = len(times)
            if repeats is not None and done >= repeats:
                return
            if repeats is None and (
                done >= MAX_LATENCY_RUNS or (done >= MIN_LATENCY_RUNS and time.perf_counter() - start >= budget_s)
            ):
                return
            yield done

    timed = runs() if label is None else progress(runs(), label, total=repeats or MAX_LATENCY_RUNS)
    for _ in timed:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0
