"""Couplings of quantization ops (QDQ models).

Rules:
1. QuantizeLinear / DequantizeLinear act per element: every axis of the input is the same
   axis of the output.
2. A per-tensor scale and zero point (scalars) pass through untouched.
3. A per-axis scale and zero point (1-D, along ``axis``, default 1) are sliced with that
   axis: a quantized Conv weight ``W_q [C_out, ...]`` with scales ``[C_out]`` loses its
   rows and their scales together.
4. Blocked quantization (``block_size`` > 0, opset 21) is not handled: the axis blocks.
"""

from __future__ import annotations

import onnx

from . import RuleContext, couple_all_axes, rule


@rule("QuantizeLinear", "DequantizeLinear")
def quantize(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    couple_all_axes(ctx, x, y)
    rank = len(ctx.shape(x) or ())
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    for param in node.input[1:3]:
        shape = ctx.shape(param) if param else None
        if not param or shape is None or len(shape) == 0 or shape == (1,):
            continue  # per-tensor: nothing to slice
        if ctx.attr("block_size", 0):
            ctx.forbid(ctx.dim(y, axis), f"{node.op_type} with blocked quantization")
            continue
        ctx.identity(ctx.dim(param, 0), ctx.dim(x, axis))
        ctx.role(ctx.dim(param, 0), "param")
