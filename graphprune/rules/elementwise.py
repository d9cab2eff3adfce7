"""Couplings of elementwise ops.

Rules:
1. Unary ops (activations, Cast, Identity, Dropout, ...): every axis of the input is the
   same axis of the output. Extra inputs of Clip (min, max) are scalars.
2. Broadcasting ops (Add, Sub, Mul, Div, Pow, Max, Min, Sum, Mean, Where, PRelu): inputs
   align to the output from the right; an input axis of the output's size is the same
   axis of the output (constant operands are then sliced with it), an axis of size 1
   broadcasts and is left alone.
"""

from __future__ import annotations

import onnx

from . import RuleContext, couple_all_axes, rule

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "Mish",
    "Softplus", "Softsign", "Elu", "Selu", "Celu", "ThresholdedRelu", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Cast",
    "Clip", "Shrink", "IsNaN", "IsInf", "Not",
)  # fmt: skip

BROADCAST = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "PRelu",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
)


@rule(*UNARY)
def unary(node: onnx.NodeProto, ctx: RuleContext) -> None:
    couple_all_axes(ctx, node.input[0], node.output[0])


@rule("Dropout")
def dropout(node: onnx.NodeProto, ctx: RuleContext) -> None:
    couple_all_axes(ctx, node.input[0], node.output[0])
    if len(node.output) > 1 and node.output[1]:
        couple_all_axes(ctx, node.input[0], node.output[1])


@rule(*BROADCAST)
def elementwise(node: onnx.NodeProto, ctx: RuleContext) -> None:
    broadcast(ctx, [i for i in node.input if i], node.output[0])


def broadcast(ctx: RuleContext, inputs: list[str], output: str) -> None:
    """Couple each input axis that matches the output's size to that output axis."""
    ys = ctx.shape(output)
    if ys is None:
        return
    if any(ctx.shape(name) is None or len(ctx.shape(name)) > len(ys) for name in inputs):
        # An operand of unknown shape might carry any axis: the output's axes cannot shrink.
        for ax in range(len(ys)):
            ctx.forbid(ctx.dim(output, ax), "with an operand of unknown shape")
        return
    for name in inputs:
        xs = ctx.shape(name)
        shift = len(ys) - len(xs)
        for ax, size in enumerate(xs):
            out_size = ys[ax + shift]
            if size == 1 and out_size != 1:
                continue  # broadcast along this axis
            if size is not None and out_size is not None and size != out_size:
                continue
            ctx.identity(ctx.dim(name, ax), ctx.dim(output, ax + shift))
            if ctx.view.is_weight(name):
                ctx.role(ctx.dim(name, ax), "param")
