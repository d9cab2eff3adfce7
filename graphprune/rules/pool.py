"""Couplings of pooling ops.

Rules:
1. MaxPool, AveragePool, LpPool and the global pools act per channel: batch and channel
   axes pass through; spatial axes are mixed and never coupled.
2. MaxPool's optional ``Indices`` output encodes channel positions: its channels block.
"""

from __future__ import annotations

import onnx

from . import RuleContext, rule


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    for ax in (0, 1):
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    if len(node.output) > 1 and node.output[1]:
        ctx.forbid(ctx.dim(y, 1), "MaxPool with an Indices output")
