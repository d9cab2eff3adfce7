"""Couplings of matrix products.

Rules:
1. Gemm ``Y = A' B' + C`` with ``A' = A^T if transA`` and ``B' = B^T if transB``: the rows
   of A' are the rows of Y; the columns of A' are the rows of B' (a weight B reads them:
   "in"); the columns of B' are the columns of Y (a weight B makes them: "out"). C couples
   by broadcasting.
2. MatMul with a constant 2-D weight ``W [K, N]`` (or one computed from a constant by
   Cast/DequantizeLinear: half-precision and quantized models): the last axis of the input is read by
   ``W`` axis 0, ``W`` axis 1 makes the last axis of the output; leading axes pass through.
   The Add of a bias after it is an ordinary broadcast Add.
3. MatMul between two activations (attention) has no rule yet: its dims are blocked.
"""

from __future__ import annotations

import onnx

from . import RuleContext, rule
from .elementwise import broadcast


@rule("Gemm")
def gemm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, b, y = node.input[0], node.input[1], node.output[0]
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a_rows, a_cols = (1, 0) if ta else (0, 1)
    b_rows, b_cols = (1, 0) if tb else (0, 1)
    ctx.identity(ctx.dim(a, a_rows), ctx.dim(y, 0))
    ctx.identity(ctx.dim(a, a_cols), ctx.dim(b, b_rows))
    ctx.identity(ctx.dim(b, b_cols), ctx.dim(y, 1))
    if ctx.view.is_weight(b):
        ctx.role(ctx.dim(b, b_rows), "in")
        ctx.role(ctx.dim(b, b_cols), "out")
    if ctx.view.is_weight(a):
        ctx.role(ctx.dim(a, a_cols), "in")
        ctx.contract(ctx.dim(b, b_rows))
    else:
        ctx.contract(ctx.dim(a, a_cols))
    if len(node.input) > 2 and node.input[2]:
        broadcast(ctx, [node.input[2]], y)


@rule("MatMul")
def matmul(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, w, y = node.input[0], node.input[1], node.output[0]
    ws, as_, ys = ctx.shape(w), ctx.shape(a), ctx.shape(y)
    if not ctx.view.is_weight(w) or ws is None or len(ws) != 2 or as_ is None or ys is None:
        return  # activation x activation, or unknown shapes: no declaration, dims blocked
    if len(as_) < 2 or len(as_) != len(ys):
        return
    ctx.identity(ctx.dim(a, -1), ctx.dim(w, 0))
    ctx.role(ctx.dim(w, 0), "in")
    ctx.contract(ctx.dim(a, -1))
    ctx.identity(ctx.dim(w, 1), ctx.dim(y, -1))
    ctx.role(ctx.dim(w, 1), "out")
    for ax in range(len(as_) - 1):
        ctx.identity(ctx.dim(a, ax), ctx.dim(y, ax))
