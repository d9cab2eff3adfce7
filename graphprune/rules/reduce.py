"""Couplings of reductions and softmax.

Rules:
1. Reduce* ops: axes that are not reduced pass through (renumbered when ``keepdims=0``);
   a reduced axis mixes its entries and blocks (e.g. ReduceMean over channels).
   Squeeze-excite's ReduceMean over the spatial axes keeps the channel axis.
2. Softmax / LogSoftmax / Hardmax: axes other than the softmax axis pass through; the
   softmax axis blocks, since removing an entry changes every other one. Before opset 13
   these ops flatten every axis from ``axis`` on, so all of those block.
"""

from __future__ import annotations

import onnx

from . import RuleContext, rule

REDUCE = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)


@rule(*REDUCE)
def reduce(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    rank = len(ctx.shape(x) or ())
    if not rank:
        return
    axes = ctx.attr("axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = ctx.value(node.input[1])
        if value is None:
            return  # axes computed at run time: nothing is known, everything blocks
        axes = [int(a) for a in value.ravel()]
    if axes is None:
        if ctx.attr("noop_with_empty_axes", 0):
            axes = []
        else:
            axes = list(range(rank))
    reduced = {a + rank if a < 0 else a for a in axes}
    keep = ctx.attr("keepdims", 1)
    out_ax = 0
    for ax in range(rank):
        if ax in reduced:
            # Statistics of a decomposed LayerNorm/RMSNorm over the last axis: inexact on request.
            if not (ax == rank - 1 and len(reduced) == 1 and keep and node.op_type == "ReduceMean"):
                ctx.forbid(ctx.dim(x, ax), f"{node.op_type} over axis {ax}")
            else:
                ctx.inexact_ok(ctx.dim(x, ax), f"{node.op_type} over axis {ax}")
            out_ax += 1 if keep else 0
            continue
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, out_ax))
        out_ax += 1


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    rank = len(ctx.shape(x) or ())
    opset = ctx.view.opset
    axis = ctx.attr("axis", -1 if opset >= 13 else 1)
    axis = axis + rank if axis < 0 else axis
    mixed = {axis} if opset >= 13 else set(range(axis, rank))
    for ax in range(rank):
        if ax in mixed:
            reason = f"{node.op_type} over axis {ax}, the pruned axis"
            ctx.forbid(ctx.dim(x, ax), reason)
            ctx.forbid(ctx.dim(y, ax), reason)
        else:
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
