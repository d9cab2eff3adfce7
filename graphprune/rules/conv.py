"""Couplings of convolutions.

Rules:
1. Conv, ``group == 1``: output channel ``o`` is weight row ``o`` ("out") and bias ``o``;
   input channel ``c`` is read by weight column ``c`` ("in").
2. Grouped Conv (``group > 1``, depthwise included): a channel can only go with its whole
   convolution group, so the pruning unit is one group: its input channels, its output
   channels and its weight rows go together, and ``group`` shrinks on removal. Depthwise
   is the case of one input channel per group (the Conv passes its input channels through).
3. ConvTranspose: the weight is ``[C_in, C_out/group, k...]``; input channel ``c`` is weight
   row ``c`` ("in"), output channel ``o`` is weight column ``o`` ("out") when ``group == 1``;
   grouped ConvTranspose prunes whole groups as in 2.
Spatial axes are never coupled: a convolution mixes them.
"""

from __future__ import annotations

import onnx

from . import RuleContext, SurgeryContext, rewriter, rule


@rule("Conv")
def conv(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    group = ctx.attr("group", 1)
    ctx.identity(ctx.dim(x, 0), ctx.dim(y, 0))
    ctx.identity(ctx.dim(w, 0), ctx.dim(y, 1))
    ctx.role(ctx.dim(w, 0), "out")
    if bias:
        ctx.identity(ctx.dim(bias, 0), ctx.dim(y, 1))
        ctx.role(ctx.dim(bias, 0), "param")
    if group == 1:
        ctx.identity(ctx.dim(w, 1), ctx.dim(x, 1))
        ctx.role(ctx.dim(w, 1), "in")
        ctx.contract(ctx.dim(x, 1))
    else:
        _group_units(node, ctx, x, y, group)


@rule("ConvTranspose")
def conv_transpose(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    group = ctx.attr("group", 1)
    ctx.identity(ctx.dim(x, 0), ctx.dim(y, 0))
    ctx.identity(ctx.dim(w, 0), ctx.dim(x, 1))
    ctx.role(ctx.dim(w, 0), "in" if group == 1 else "out")
    if bias:
        ctx.identity(ctx.dim(bias, 0), ctx.dim(y, 1))
        ctx.role(ctx.dim(bias, 0), "param")
    if group == 1:
        ctx.identity(ctx.dim(w, 1), ctx.dim(y, 1))
        ctx.role(ctx.dim(w, 1), "out")
        ctx.contract(ctx.dim(x, 1))
    else:
        _group_units(node, ctx, x, y, group)
        # Axis 1 of a grouped ConvTranspose weight is "channels per group": never cut.


def _group_units(node, ctx: RuleContext, x: str, y: str, group: int) -> None:
    xs, ys = ctx.shape(x), ctx.shape(y)
    if not xs or not ys or xs[1] is None or ys[1] is None:
        ctx.forbid(ctx.dim(x, 1), f"{node.op_type} with group={group} and unknown channel counts")
        ctx.forbid(ctx.dim(y, 1), f"{node.op_type} with group={group} and unknown channel counts")
        return
    units = ctx.virtual(f"{node.name or node.output[0]}:groups", group)
    ctx.block(units, ctx.dim(x, 1), xs[1] // group)
    ctx.block(units, ctx.dim(y, 1), ys[1] // group)


@rewriter("Conv", "ConvTranspose")
def shrink_group(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    """A grouped conv that lost whole groups keeps the same channels per group."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group == 1:
        return
    old, new = ctx.old_shape(node.output[0]), ctx.new_shape(node.output[0])
    if old and new and old[1] and new[1] != old[1]:
        ctx.set_attr(node, "group", group * new[1] // old[1])
