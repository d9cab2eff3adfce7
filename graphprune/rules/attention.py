"""Couplings of ONNX's own ``Attention`` (opset 23), as torch's dynamo exporter writes
``F.scaled_dot_product_attention`` at opset 23 and later.

Rules:
1. 4-D ``Q [B, H, S, D]``, ``K [B, H, T, D]``, ``V [B, H, T, Dv]`` -> ``Y [B, H, S, Dv]`` with
   as many kv heads as query heads: the heads axis (1) of Q, K, V, Y is one dim (a head is
   removed from all four), the batch axis is Y's, Q's sequence is Y's. Heads are pruned
   whole; nothing else prunes: D is contracted and the default scale reads it, the key
   sequence is softmaxed over, and Dv blocks with them (a head's width is the exporter's
   Reshape's business). No attribute depends on the head count in this form.
2. An ``attn_mask`` with a heads axis (4-D, ``H > 1`` there), the ``past_key`` /
   ``past_value`` inputs and ``present_key`` / ``present_value`` / ``qk_matmul_output``
   outputs ``[B, H, ..]`` follow the heads (a cache that is a graph input then blocks them).
3. Grouped kv heads (K's heads fewer than Q's) and the 3-D form (``q_num_heads`` /
   ``kv_num_heads`` attributes) block every axis of Q, K, V and Y with the reason.
"""

from __future__ import annotations

import onnx

from . import RuleContext, rule


def _opt(tensors, i: int) -> str | None:
    return tensors[i] if len(tensors) > i and tensors[i] else None


@rule("Attention")
def attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    q, k, v, y = node.input[0], node.input[1], node.input[2], node.output[0]
    main = [q, k, v, y]
    shapes = [ctx.shape(t) for t in main]
    if any(s is None or len(s) != 4 for s in shapes):
        _block(ctx, main, "Attention with 3-D inputs (q_num_heads) or unknown shapes is not handled")
        return
    qs, ks, vs, ys = shapes
    if not (qs[1] == ks[1] == vs[1] == ys[1]) or qs[1] is None:
        _block(ctx, main, "Attention with grouped kv heads is not handled")
        return
    heads = ctx.dim(q, 1)
    for t in (k, v, y):
        ctx.identity(heads, ctx.dim(t, 1))
        ctx.identity(ctx.dim(q, 0), ctx.dim(t, 0))
    ctx.identity(ctx.dim(q, 2), ctx.dim(y, 2))
    ctx.identity(ctx.dim(k, 2), ctx.dim(v, 2))
    reason = "Attention contracts head_dim and softmaxes over the key sequence"
    for t in main:
        ctx.forbid(ctx.dim(t, 3), reason)
    ctx.forbid(ctx.dim(k, 2), reason)
    mask = _opt(node.input, 3)
    ms = ctx.shape(mask) if mask else None
    if ms is not None and len(ms) == 4 and ms[1] == qs[1] and qs[1] > 1:
        ctx.identity(heads, ctx.dim(mask, 1))
        if ctx.view.is_weight(mask):
            ctx.role(ctx.dim(mask, 1), "param")
    cached = [_opt(node.input, 4), _opt(node.input, 5)] + [_opt(node.output, i) for i in (1, 2, 3)]
    for t in cached:
        ts = ctx.shape(t) if t else None
        if ts is not None and len(ts) == 4:
            ctx.identity(heads, ctx.dim(t, 1))


def _block(ctx: RuleContext, tensors, reason: str) -> None:
    for t in tensors:
        for ax in range(len(ctx.shape(t) or ())):
            ctx.forbid(ctx.dim(t, ax), reason)
