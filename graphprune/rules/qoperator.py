"""Couplings of integer (QOperator) ops: what ``quantize_static(quant_format=QOperator)`` and
``quantize_dynamic`` write.

Rules:
1. QLinearConv ``(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B?)`` and ConvInteger
   ``(x, w, x_zp?, w_zp?)`` couple x, w, B and y as Conv does (grouped ones included). A
   per-output-channel ``w_scale`` / ``w_zp`` (1-D of size M) is sliced with the output
   channels ("param"); per-tensor scales and zero points are untouched.
2. QLinearMatMul ``(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)``, MatMulInteger
   ``(A, B, a_zp?, b_zp?)`` and QGemm ``(A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?,
   y_zp?)`` (com.microsoft; ``transA``/``transB``) couple as MatMul / Gemm; a per-column
   ``b_scale`` / ``b_zp`` is sliced with B's columns.
3. QLinearAdd / QLinearMul ``(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)`` broadcast
   a and b to y like Add; their scales must be per tensor (others block the output's axes).
4. QLinearGlobalAveragePool and QLinearAveragePool pass batch and channels through (channel axis 1, or the last
   one with ``channels_last``); QLinearLeakyRelu / QLinearSigmoid pass every axis through.
5. DynamicQuantizeLinear passes every axis of x to y, and reduces over all of x: its scale is
   taken from x's min and max, which removed entries change. So it contracts every axis of x,
   and the masked reference zeroes removed entries on its float input: 0 is always in its
   range (the range of the kept entries, as in the pruned model) and quantizes to the zero
   point, which the integer product after it reads as nothing.
6. QLinearConcat ``(y_scale, y_zp, x0, s0, zp0, x1, s1, zp1, ...)``: the x's are segments of
   y as in Concat.
The masked reference of validation cannot zero a removed channel with a ``Mul`` on an
integer activation (``(0 - x_zp)`` is not 0): for these ops it sets the weight entries that
read the channel to the weight's zero point instead (:data:`graphprune.edit.masking.ZERO_POINT_WEIGHTS`).
"""

from __future__ import annotations

import onnx
from onnx import helper

from . import RuleContext, couple_all_axes, rewriter, rule
from .conv import conv, shrink_group
from .elementwise import broadcast
from .linear import gemm, matmul
from .shape import concat

MS = "com.microsoft"


def _as(node: onnx.NodeProto, op_type: str, inputs: list[str]) -> onnx.NodeProto:
    """``node`` read as the float op it quantizes (same name, output and attributes)."""
    twin = helper.make_node(op_type, inputs, [node.output[0]], name=node.name or node.output[0])
    twin.attribute.extend(node.attribute)
    return twin


def _input(node: onnx.NodeProto, k: int) -> str:
    return node.input[k] if len(node.input) > k else ""


def _per_channel(ctx: RuleContext, params: list[str], channels) -> None:
    """Couple each 1-D parameter of more than one entry to ``channels`` (per-channel
    quantization); scalars and ``[1]`` are per tensor and left alone."""
    for p in params:
        shape = ctx.shape(p) if p else None
        if shape is None or len(shape) != 1 or shape[0] == 1:
            continue
        ctx.identity(ctx.dim(p, 0), channels)
        ctx.role(ctx.dim(p, 0), "param")


@rule("QLinearConv")
def qlinear_conv(node: onnx.NodeProto, ctx: RuleContext) -> None:
    conv(_as(node, "Conv", [node.input[0], node.input[3], _input(node, 8)]), ctx)
    _per_channel(ctx, [node.input[4], node.input[5]], ctx.dim(node.output[0], 1))


@rule("ConvInteger")
def conv_integer(node: onnx.NodeProto, ctx: RuleContext) -> None:
    conv(_as(node, "Conv", node.input[:2]), ctx)
    _per_channel(ctx, [_input(node, 3)], ctx.dim(node.output[0], 1))


rewriter("QLinearConv", "ConvInteger")(shrink_group)


@rule("QLinearMatMul")
def qlinear_matmul(node: onnx.NodeProto, ctx: RuleContext) -> None:
    matmul(_as(node, "MatMul", [node.input[0], node.input[3]]), ctx)
    _per_channel(ctx, [node.input[4], node.input[5]], ctx.dim(node.input[3], -1))


@rule("MatMulInteger")
def matmul_integer(node: onnx.NodeProto, ctx: RuleContext) -> None:
    matmul(_as(node, "MatMul", node.input[:2]), ctx)
    _per_channel(ctx, [_input(node, 3)], ctx.dim(node.input[1], -1))


@rule("QGemm", domain=MS)
def qgemm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    gemm(_as(node, "Gemm", [node.input[0], node.input[3], _input(node, 6)]), ctx)
    _per_channel(ctx, [node.input[4], node.input[5]], ctx.dim(node.output[0], 1))


@rule("QLinearAdd", "QLinearMul", domain=MS)
def qlinear_binary(node: onnx.NodeProto, ctx: RuleContext) -> None:
    scales = [node.input[k] for k in (1, 2, 4, 5, 6, 7) if _input(node, k)]
    if any((ctx.shape(s) or ()) not in ((), (1,)) for s in scales):
        for ax in range(len(ctx.shape(node.output[0]) or ())):
            ctx.forbid(ctx.dim(node.output[0], ax), f"{node.op_type} with per-channel scales")
        return
    broadcast(ctx, [node.input[0], node.input[3]], node.output[0])


@rule("QLinearGlobalAveragePool", "QLinearAveragePool", domain=MS)
def qlinear_pool(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    channel = -1 if ctx.attr("channels_last", 0) else 1
    ctx.identity(ctx.dim(x, 0), ctx.dim(y, 0))
    ctx.identity(ctx.dim(x, channel), ctx.dim(y, channel))


@rule("QLinearLeakyRelu", "QLinearSigmoid", domain=MS)
def qlinear_unary(node: onnx.NodeProto, ctx: RuleContext) -> None:
    couple_all_axes(ctx, node.input[0], node.output[0])


@rule("DynamicQuantizeLinear")
def dynamic_quantize(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    couple_all_axes(ctx, x, node.output[0])
    for ax in range(len(ctx.shape(x) or ())):
        ctx.contract(ctx.dim(x, ax))


@rule("QLinearConcat", domain=MS)
def qlinear_concat(node: onnx.NodeProto, ctx: RuleContext) -> None:
    concat(_as(node, "Concat", list(node.input[2::3])), ctx)
