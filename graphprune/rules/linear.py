"""Couplings of matrix products.

Rules:
1. Gemm ``Y = A' B' + C`` with ``A' = A^T if transA`` and ``B' = B^T if transB``: the rows
   of A' are the rows of Y; the columns of A' are the rows of B' (a weight B reads them:
   "in"); the columns of B' are the columns of Y (a weight B makes them: "out"). C couples
   by broadcasting.
2. MatMul ``Y = A B``: rows of A are rows of Y, A's last axis is contracted with B's
   second-last, B's columns are Y's columns; leading (batch) axes broadcast as in an
   elementwise op. A constant weight ``W [K, N]`` (or one computed from a constant by
   Cast/DequantizeLinear) reads the channel on axis 0 ("in") and makes it on axis 1
   ("out"). Between two activations (attention's Q.K^T and scores.V) the heads axis is a
   batch axis and passes through; head_dim is contracted.
   The Add of a bias after a MatMul is an ordinary broadcast Add.
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
    a, b, y = node.input[0], node.input[1], node.output[0]
    as_, bs, ys = ctx.shape(a), ctx.shape(b), ctx.shape(y)
    if as_ is None or bs is None or ys is None or len(as_) < 2 or len(bs) < 2:
        return  # unknown shapes or vector products: no declaration, dims blocked
    a_weight, b_weight = ctx.view.is_weight(a), ctx.view.is_weight(b)
    # rows of A and of Y; the contracted K (A's last axis, B's second last); columns of B and Y
    ctx.identity(ctx.dim(a, -2), ctx.dim(y, -2))
    ctx.identity(ctx.dim(a, -1), ctx.dim(b, -2))
    ctx.identity(ctx.dim(b, -1), ctx.dim(y, -1))
    if b_weight:
        ctx.role(ctx.dim(b, -2), "in")
        ctx.role(ctx.dim(b, -1), "out")
    if a_weight and not b_weight:
        ctx.role(ctx.dim(a, -1), "in")
        ctx.contract(ctx.dim(b, -2))
    elif b_weight:
        ctx.contract(ctx.dim(a, -1))
    else:
        # Q.K^T contracts head_dim, scores.V the sequence: neither is a pruning unit (head_dim
        # carries rotary pairs and the head layout; heads are pruned whole instead).
        reason = "MatMul between activations contracts this axis (head_dim or sequence)"
        ctx.forbid(ctx.dim(a, -1), reason)
        ctx.forbid(ctx.dim(b, -2), reason)
    # leading (batch) axes broadcast like an elementwise op: Q.K^T keeps its heads axis
    for t, shape in ((a, as_), (b, bs)):
        shift = len(ys) - len(shape)
        for ax in range(len(shape) - 2):
            if shape[ax] == ys[ax + shift] or (shape[ax] is None and ys[ax + shift] is None):
                ctx.identity(ctx.dim(t, ax), ctx.dim(y, ax + shift))
