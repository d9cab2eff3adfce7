"""Couplings of normalisation ops.

Rules:
1. BatchNormalization / InstanceNormalization normalise each channel on its own: input
   axis 1, output axis 1 and every per-channel parameter (scale, bias, mean, var) lose the
   same entries; the other axes pass through.
2. BatchNormalization in training mode (extra outputs) is not handled: its channels block.
3. LayerNormalization normalises over the axes from ``axis`` on: removing entries there
   changes every output, so those axes block; the leading axes pass through. With an
   inexact analysis (pruning a transformer's hidden width on request) a normalisation over
   the last axis alone lets it through, with its scale and bias, and marks it inexact.
"""

from __future__ import annotations

import onnx

from . import RuleContext, rule


@rule("BatchNormalization", "InstanceNormalization")
def per_channel_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    rank = len(ctx.shape(x) or ())
    if node.op_type == "BatchNormalization" and (ctx.attr("training_mode", 0) or len(node.output) > 1):
        ctx.forbid(ctx.dim(y, 1), "BatchNormalization in training mode")
    for ax in range(rank):
        if ax >= 2 and node.op_type == "InstanceNormalization":
            break  # statistics over spatial axes: those are reduced
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    for param in node.input[1:]:
        if param:
            ctx.identity(ctx.dim(param, 0), ctx.dim(y, 1))
            ctx.role(ctx.dim(param, 0), "param")


@rule("LayerNormalization")
def layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    rank = len(ctx.shape(x) or ())
    axis = ctx.attr("axis", -1)
    axis = axis + rank if axis < 0 else axis
    for ax in range(axis):
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    reason = f"LayerNormalization over axis {axis}"
    if axis == rank - 1 and ctx.inexact_ok(ctx.dim(x, axis), reason):
        ctx.identity(ctx.dim(x, axis), ctx.dim(y, axis))
        for param in node.input[1:]:
            if param:
                ctx.identity(ctx.dim(param, 0), ctx.dim(y, axis))
                ctx.role(ctx.dim(param, 0), "param")
        return
    for ax in range(axis, rank):
        reason = f"LayerNormalization over axis {ax}"
        ctx.forbid(ctx.dim(x, ax), reason)
        ctx.forbid(ctx.dim(y, ax), reason)
