"""Couplings of onnxruntime's contrib ops (``com.microsoft``), as its transformer optimizer and
its 4-bit quantizer write them.

Rules:
1. Elementwise: ``Gelu``, ``QuickGelu`` (unary), ``FastGelu`` and ``BiasGelu`` (a bias over
   the last axis), ``BiasAdd`` (``X + bias + skip``): every axis of X is the output's, the
   bias is sliced with the last one.
2. ``BiasSplitGelu(X [.., 2D], bias [2D]) -> Y [.., D]`` is ``(X+b)[.., :D] * gelu((X+b)[.., D:])``:
   output channel ``i`` owns input (and bias) channels ``i`` and ``D + i``.
3. ``FusedMatMul`` (and its older name ``TransposeMatMul``) is MatMul with ``transA``/``transB``
   (last two axes swapped) and ``alpha``; ``transBatchA``/``transBatchB`` block. ``FusedGemm``
   is Gemm and ``FusedConv`` is Conv (plus an activation, and ``Z`` added to the output axis
   for axis) with their rules.
4. ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization``: ``input``, ``skip``, the
   ``bias`` and the ``input_skip_bias_sum`` output are one elementwise sum (every axis
   coupled, exactly); the normalisation over the last axis then behaves as
   LayerNormalization does: the hidden axis blocks, or with an inexact analysis it is let
   through with gamma and beta and the group is marked inexact. The leading axes of every
   output (mean and inv_std_var included) pass through, so the widths inside a block (an
   MLP feeding it) are untouched by it. ``SimplifiedLayerNormalization`` (RMSNorm, in the
   default domain and in com.microsoft) is the same without skip.
5. ``EmbedLayerNormalization`` makes the hidden axis from a fused embedding lookup and a
   normalisation: its outputs' hidden axis blocks.
6. ``Attention`` (packed ``weights [in, q+k+v]``, ``bias [q+k+v]``, ``num_heads``, optional
   ``qkv_hidden_sizes``): a virtual dim of the heads owns, for each of q, k and v, a block
   of head_size columns of its segment of the packed axis (weights and bias) and a block of
   the output's last axis (the heads' contexts, concatenated): a head is removed from q, k,
   v and the output together, and the next MatMul's K follows. The input's last axis is the
   contracted K of the projection. A ``past``/``present`` cache or an attention bias with a
   heads axis follows the heads (a cache that is a graph input then blocks them). The
   rewriter sets ``num_heads`` (and ``qkv_hidden_sizes``).
7. ``MultiHeadAttention`` with separate 3-D ``query``, ``key``, ``value`` ``[B, S, heads*D]``
   (or 4-D ``[B, heads, L, D]`` key/value): heads as in 6, the projections that make q, k, v
   are ordinary MatMuls; packed forms (key absent) block. ``num_heads`` is rewritten.
8. ``RotaryEmbedding`` rotates pairs inside each head: whole heads pass through (3-D input
   with ``num_heads`` or a head size from the cos cache, or 4-D ``[B, heads, S, D]``); the
   head dim blocks. ``num_heads`` is rewritten.
9. ``GroupQueryAttention`` (separate 3-D ``query [B, S, num_heads*D]``, ``key``/``value``
   ``[B, S, kv_num_heads*D]``, caches ``[B, kv_num_heads, L, D]``): a virtual dim of the KV
   heads owns ``D`` columns of key and value, axis 1 of the past and present caches and the
   ``num_heads // kv_num_heads`` query heads that read it (query head ``h`` reads KV head
   ``h // (num_heads // kv_num_heads)``): a block of that many heads of query, of the output
   and of an attention bias or head sink with a heads axis. Removing a KV head removes its
   query heads. The head dim blocks; packed QKV (key absent), or a node without its required
   ``seqlens_k`` and ``total_sequence_length``, blocks. A cache that is a graph
   input/output blocks the heads unless ``--allow-io-change`` pairs it (graphprune.analysis.iochange).
   The rewriter sets ``num_heads`` and ``kv_num_heads``.
10. ``MatMulNBits`` (``A [.., K]``, ``B [N, n_blocks, blob]``, 2-D ``scales``/``zero_points``
    ``[N, ..]``, optional ``bias [N]``): the output axis N prunes freely (rows of B, scales,
    zero points, bias; attribute ``N`` rewritten). The input axis K prunes only in whole
    quantization blocks: one unit is ``8 // bits`` blocks when zero points are packed
    (their nibbles share a byte), else one block; it needs ``K % block_size == 0`` and 2-D
    scales. Otherwise (1-D scales, ``g_idx``) K blocks with the reason. Attribute ``K`` is
    rewritten. The scales, not the packed codes of B, carry the "out"/"in" roles criteria read.
"""

from __future__ import annotations

import onnx

from . import RuleContext, SurgeryContext, couple_all_axes, rewriter, rule
from .conv import conv, shrink_group
from .linear import gemm, matmul

MS = "com.microsoft"


def _opt(node: onnx.NodeProto, i: int) -> str | None:
    """Input ``i`` of ``node`` if it is given."""
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _opt_out(node: onnx.NodeProto, i: int) -> str | None:
    return node.output[i] if len(node.output) > i and node.output[i] else None


def _last_param(ctx: RuleContext, param: str | None, y: str) -> None:
    """A 1-D parameter indexed by ``y``'s last axis (a bias)."""
    if param:
        ctx.identity(ctx.dim(param, 0), ctx.dim(y, -1))
        if ctx.view.is_weight(param):
            ctx.role(ctx.dim(param, 0), "param")


# --------------------------------------------------------------------------- elementwise


@rule("Gelu", "QuickGelu", domain=MS)
def unary(node: onnx.NodeProto, ctx: RuleContext) -> None:
    couple_all_axes(ctx, node.input[0], node.output[0])


@rule("FastGelu", "BiasGelu", domain=MS)
def bias_gelu(node: onnx.NodeProto, ctx: RuleContext) -> None:
    couple_all_axes(ctx, node.input[0], node.output[0])
    _last_param(ctx, _opt(node, 1), node.output[0])


@rule("BiasAdd", domain=MS)
def bias_add(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    couple_all_axes(ctx, x, y)
    _last_param(ctx, _opt(node, 1), y)
    if _opt(node, 2):
        couple_all_axes(ctx, node.input[2], y)


@rule("BiasSplitGelu", domain=MS)
def bias_split_gelu(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    if xs is None:
        return
    for ax in range(len(xs) - 1):
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    # output channel i = (x+b)[i] * gelu((x+b)[D+i]): it owns channels i and D+i
    ctx.strided(ctx.dim(y, -1), ctx.dim(x, -1), 2, 1)
    bias = _opt(node, 1)
    if bias:
        ctx.identity(ctx.dim(bias, 0), ctx.dim(x, -1))
        ctx.role(ctx.dim(bias, 0), "param")


# --------------------------------------------------------------------------- matrix products


@rule("FusedMatMul", "TransposeMatMul", domain=MS)
def fused_matmul(node: onnx.NodeProto, ctx: RuleContext) -> None:
    if ctx.attr("transBatchA", 0) or ctx.attr("transBatchB", 0):
        reason = "FusedMatMul with transBatchA/transBatchB moves the batch axes"
        for t in (node.input[0], node.input[1], node.output[0]):
            for ax in range(len(ctx.shape(t) or ())):
                ctx.forbid(ctx.dim(t, ax), reason)
        return
    if not ctx.attr("transA", 0) and not ctx.attr("transB", 0):
        matmul(node, ctx)  # alpha scales every output: the couplings are MatMul's
        return
    a, b, y = node.input[0], node.input[1], node.output[0]
    as_, bs, ys = ctx.shape(a), ctx.shape(b), ctx.shape(y)
    if as_ is None or bs is None or ys is None or len(as_) < 2 or len(bs) < 2:
        return
    a_rows, a_k = (-1, -2) if ctx.attr("transA", 0) else (-2, -1)
    b_k, b_cols = (-1, -2) if ctx.attr("transB", 0) else (-2, -1)
    ctx.identity(ctx.dim(a, a_rows), ctx.dim(y, -2))
    ctx.identity(ctx.dim(a, a_k), ctx.dim(b, b_k))
    ctx.identity(ctx.dim(b, b_cols), ctx.dim(y, -1))
    a_weight, b_weight = ctx.view.is_weight(a), ctx.view.is_weight(b)
    if b_weight:
        ctx.role(ctx.dim(b, b_k), "in")
        ctx.role(ctx.dim(b, b_cols), "out")
        ctx.contract(ctx.dim(a, a_k))
    elif a_weight:
        ctx.role(ctx.dim(a, a_k), "in")
        ctx.contract(ctx.dim(b, b_k))
    else:
        reason = "FusedMatMul between activations contracts this axis"
        ctx.forbid(ctx.dim(a, a_k), reason)
        ctx.forbid(ctx.dim(b, b_k), reason)
    for t, shape in ((a, as_), (b, bs)):
        shift = len(ys) - len(shape)
        for ax in range(len(shape) - 2):
            if shape[ax] == ys[ax + shift] or (shape[ax] is None and ys[ax + shift] is None):
                ctx.identity(ctx.dim(t, ax), ctx.dim(y, ax + shift))


@rule("FusedGemm", domain=MS)
def fused_gemm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    gemm(node, ctx)  # the activation after it is elementwise


@rule("FusedConv", domain=MS)
def fused_conv(node: onnx.NodeProto, ctx: RuleContext) -> None:
    conv(node, ctx)
    if _opt(node, 3):  # Z, added to the convolution's output before the activation
        couple_all_axes(ctx, node.input[3], node.output[0])


rewriter("FusedConv", domain=MS)(shrink_group)


# --------------------------------------------------------------------------- normalisations


def _normalise_last(node: onnx.NodeProto, ctx: RuleContext, x: str, params: list[str], what: str) -> None:
    """Outputs of a normalisation over ``x``'s last axis: leading axes pass through; the last
    axis blocks, or (inexact analysis) passes with ``params`` and marks the group inexact."""
    rank = len(ctx.shape(x) or ())
    outs = [o for o in node.output if o]
    for o in outs:
        for ax in range(min(rank, len(ctx.shape(o) or ())) - 1):
            ctx.identity(ctx.dim(x, ax), ctx.dim(o, ax))
    y = node.output[0]
    if rank and ctx.inexact_ok(ctx.dim(x, rank - 1), f"{what} over axis {rank - 1}"):
        ctx.identity(ctx.dim(x, -1), ctx.dim(y, -1))
        for p in params:
            _last_param(ctx, p, y)
        return
    if rank:
        reason = f"{what} over axis {rank - 1}"
        ctx.forbid(ctx.dim(x, -1), reason)
        ctx.forbid(ctx.dim(y, -1), reason)


@rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def skip_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, skip = node.input[0], node.input[1]
    simplified = node.op_type == "SkipSimplifiedLayerNormalization"
    gamma = [_opt(node, 2)] + ([] if simplified else [_opt(node, 3)])
    bias = _opt(node, 3 if simplified else 4)
    # input + skip + bias is elementwise and exact; it is also output 3 when asked for
    total = _opt_out(node, 3)
    skip_shape = ctx.shape(skip)
    if skip_shape is not None and len(skip_shape) == len(ctx.shape(x) or ()):
        couple_all_axes(ctx, x, skip)
    elif skip_shape is not None:  # a skip broadcast over the batch: [S, H] or [H]
        shift = len(ctx.shape(x) or ()) - len(skip_shape)
        for ax in range(len(skip_shape)):
            ctx.identity(ctx.dim(skip, ax), ctx.dim(x, ax + shift))
    if total:
        couple_all_axes(ctx, x, total)
    if bias:
        ctx.identity(ctx.dim(bias, 0), ctx.dim(x, -1))
        ctx.role(ctx.dim(bias, 0), "param")
    _normalise_last(node, ctx, x, [p for p in gamma if p], node.op_type)


@rule("SimplifiedLayerNormalization", domain=MS)
@rule("SimplifiedLayerNormalization")
def simplified_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = len(ctx.shape(x) or ())
    axis = ctx.attr("axis", -1)
    if rank and axis not in (-1, rank - 1):
        for ax in range(rank):
            ctx.forbid(ctx.dim(x, ax), f"SimplifiedLayerNormalization over axes {axis}..")
        return
    _normalise_last(node, ctx, x, [p for p in node.input[1:] if p], "SimplifiedLayerNormalization")


@rule("EmbedLayerNormalization", domain=MS)
def embed_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    reason = "EmbedLayerNormalization makes the hidden axis (fused embedding lookup and normalisation)"
    ids = node.input[0]
    for o in (_opt_out(node, 0), _opt_out(node, 2)):
        if o is None:
            continue
        rank = len(ctx.shape(o) or ())
        for ax in range(min(rank - 1, len(ctx.shape(ids) or ()))):
            ctx.identity(ctx.dim(ids, ax), ctx.dim(o, ax))
        ctx.forbid(ctx.dim(o, -1), reason)


# --------------------------------------------------------------------------- attention


def _heads(node: onnx.NodeProto, ctx: RuleContext, n: int) -> tuple:
    label = f"{node.name or node.output[0]}:heads"
    return ctx.virtual(label, n)


def _packed_segments(ctx: RuleContext, heads, packed: str, axis: int, sizes: list[int], n: int) -> None:
    """``packed``'s ``axis`` is q | k | v of ``sizes``, each ``n`` heads of ``size // n``."""
    offset = 0
    for part, size in zip("qkv", sizes):
        seg = ctx.virtual(f"{heads[0]}:{part}:{packed}", size)
        ctx.segment(seg, ctx.dim(packed, axis), offset)
        ctx.block(heads, seg, size // n)
        offset += size


def _forbid_all(node: onnx.NodeProto, ctx: RuleContext, tensors, reason: str) -> None:
    for t in tensors:
        if t:
            for ax in range(len(ctx.shape(t) or ())):
                ctx.forbid(ctx.dim(t, ax), reason)


@rule("Attention", domain=MS)
def attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, w, y = node.input[0], node.input[1], node.output[0]
    bias = _opt(node, 2)
    n = ctx.attr("num_heads")
    xs, ws, ys = ctx.shape(x), ctx.shape(w), ctx.shape(y)
    if not n or xs is None or ws is None or ys is None or len(ws) != 2 or ws[1] is None:
        _forbid_all(node, ctx, [x, y], "Attention with unknown weight shape or num_heads")
        return
    sizes = list(ctx.attr("qkv_hidden_sizes", None) or [ws[1] // 3] * 3)
    if sum(sizes) != ws[1] or any(s % n for s in sizes) or ys[-1] != sizes[2]:
        _forbid_all(node, ctx, [x, y], f"Attention with q/k/v sizes {sizes} that do not split in {n} heads")
        return
    for ax in range(len(xs) - 1):
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    # the projection: the input's hidden axis is its K
    ctx.identity(ctx.dim(x, -1), ctx.dim(w, 0))
    ctx.role(ctx.dim(w, 0), "in")
    ctx.contract(ctx.dim(x, -1))
    heads = _heads(node, ctx, n)
    _packed_segments(ctx, heads, w, 1, sizes, n)
    ctx.role(ctx.dim(w, 1), "out")
    if bias:
        _packed_segments(ctx, heads, bias, 0, sizes, n)
        ctx.role(ctx.dim(bias, 0), "param")
    ctx.block(heads, ctx.dim(y, -1), sizes[2] // n)  # the heads' contexts, concatenated
    ctx.tag(heads, "heads", sizes[2] // n)
    # past [2, B, heads, P, D] -> present [2, B, heads, P+S, D]
    for cache in (_opt(node, 4), _opt_out(node, 1)):
        cs = ctx.shape(cache) if cache else None
        if cs is not None and len(cs) == 5:
            ctx.identity(heads, ctx.dim(cache, 2))
            ctx.forbid(ctx.dim(cache, 4), "Attention cache head_dim")
    attn_bias = _opt(node, 5)  # [B or 1, heads or 1, S, T]
    abs_ = ctx.shape(attn_bias) if attn_bias else None
    if abs_ is not None and len(abs_) == 4 and abs_[1] == n and n > 1:
        ctx.identity(heads, ctx.dim(attn_bias, 1))
        if ctx.view.is_weight(attn_bias):
            ctx.role(ctx.dim(attn_bias, 1), "param")


@rewriter("Attention", domain=MS)
def rewrite_attention(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    _rescale_heads(node, ctx, node.output[0], qkv=True)


def _rescale_heads(node: onnx.NodeProto, ctx: SurgeryContext, out: str, qkv: bool = False) -> None:
    """Set ``num_heads`` (and ``qkv_hidden_sizes``) from how much of ``out``'s last axis is left."""
    old, new = ctx.old_shape(out), ctx.new_shape(out)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    n = attrs.get("num_heads", 0)
    if not old or not new or old[-1] == new[-1] or not n:
        return
    kept = n * new[-1] // old[-1]
    ctx.set_attr(node, "num_heads", kept)
    if qkv and attrs.get("qkv_hidden_sizes"):
        ctx.set_attr(node, "qkv_hidden_sizes", [s * kept // n for s in attrs["qkv_hidden_sizes"]])


@rule("MultiHeadAttention", domain=MS)
def multi_head_attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    q, y = node.input[0], node.output[0]
    k, v, bias = _opt(node, 1), _opt(node, 2), _opt(node, 3)
    n = ctx.attr("num_heads")
    qs, ys = ctx.shape(q), ctx.shape(y)
    ks, vs = (ctx.shape(k) if k else None), (ctx.shape(v) if v else None)
    if not n or qs is None or ys is None or len(qs) != 3 or ks is None or vs is None:
        _forbid_all(node, ctx, [q, k, v, y], "MultiHeadAttention with packed q/k/v or unknown shapes")
        return
    if qs[-1] is None or ys[-1] is None or qs[-1] % n or ys[-1] % n:
        _forbid_all(node, ctx, [q, k, v, y], "MultiHeadAttention with widths that do not split in num_heads")
        return
    for ax in range(2):
        ctx.identity(ctx.dim(q, ax), ctx.dim(y, ax))
    heads = _heads(node, ctx, n)
    ctx.block(heads, ctx.dim(q, -1), qs[-1] // n)
    ctx.block(heads, ctx.dim(y, -1), ys[-1] // n)
    ctx.tag(heads, "heads", ys[-1] // n)
    for t, ts in ((k, ks), (v, vs)):
        if len(ts) == 3:
            ctx.block(heads, ctx.dim(t, -1), ts[-1] // n)
        elif len(ts) == 4:  # [B, heads, L, D]: already split
            ctx.identity(heads, ctx.dim(t, 1))
            ctx.forbid(ctx.dim(t, 3), "MultiHeadAttention head_dim")
    if bias:  # [q + k + v]
        sizes = [qs[-1], ks[-1] if len(ks) == 3 else 0, vs[-1] if len(vs) == 3 else 0]
        if ctx.shape(bias) == (sum(sizes),) and all(sizes):
            _packed_segments(ctx, heads, bias, 0, sizes, n)
            ctx.role(ctx.dim(bias, 0), "param")
        else:
            ctx.forbid(ctx.dim(bias, 0), "MultiHeadAttention bias of a layout not handled")
    for i in (5, 6, 7):  # attention_bias [.., heads, S, T], past_key / past_value [B, heads, P, D]
        t = _opt(node, i)
        ts = ctx.shape(t) if t else None
        if ts is not None and len(ts) == 4 and ts[1] == n and n > 1:
            ctx.identity(heads, ctx.dim(t, 1))
    for i in (1, 2):
        t = _opt_out(node, i)
        ts = ctx.shape(t) if t else None
        if ts is not None and len(ts) == 4:
            ctx.identity(heads, ctx.dim(t, 1))


@rewriter("MultiHeadAttention", domain=MS)
def rewrite_mha(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    _rescale_heads(node, ctx, node.output[0])


@rule("RotaryEmbedding", domain=MS)
def rotary_embedding(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    if xs is None:
        return
    reason = "RotaryEmbedding rotates pairs inside head_dim"
    if len(xs) == 4:  # [B, heads, S, D]
        for ax in range(3):
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
        ctx.forbid(ctx.dim(x, 3), reason)
        ctx.forbid(ctx.dim(y, 3), reason)
        return
    for ax in range(len(xs) - 1):
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    n = ctx.attr("num_heads", 0)
    cos = ctx.shape(node.input[2]) if len(node.input) > 2 else None
    head = xs[-1] // n if n and xs[-1] else (2 * cos[-1] if cos and cos[-1] else None)
    if head is None or not xs[-1] or xs[-1] % head or ctx.attr("rotary_embedding_dim", 0) not in (0, head):
        ctx.forbid(ctx.dim(x, -1), reason)
        ctx.forbid(ctx.dim(y, -1), reason)
        return
    heads = _heads(node, ctx, xs[-1] // head)
    ctx.block(heads, ctx.dim(x, -1), head)
    ctx.block(heads, ctx.dim(y, -1), head)


@rewriter("RotaryEmbedding", domain=MS)
def rewrite_rotary(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    _rescale_heads(node, ctx, node.output[0])


@rule("GroupQueryAttention", domain=MS)
def group_query_attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    q, k, v, y = node.input[0], _opt(node, 1), _opt(node, 2), node.output[0]
    caches = [_opt(node, 3), _opt(node, 4), _opt_out(node, 1), _opt_out(node, 2)]
    n, kv = ctx.attr("num_heads", 0), ctx.attr("kv_num_heads", 0)
    qs, ks, vs, ys = (ctx.shape(t) if t else None for t in (q, k, v, y))
    d = qs[-1] // n if n and qs and len(qs) == 3 and qs[-1] else None
    valid = (
        d is not None
        and kv
        and n % kv == 0
        and qs[-1] == n * d
        and ys is not None
        and len(ys) == 3
        and ys[-1] == n * d
        and all(s is not None and len(s) == 3 and s[-1] == kv * d for s in (ks, vs))
        and all(ctx.shape(c) is None or len(ctx.shape(c)) == 4 for c in caches if c)
    )
    if not valid or not (_opt(node, 5) and _opt(node, 6)):
        reason = (
            "GroupQueryAttention with packed q/k/v, unknown shapes, widths that do not split in heads"
            " or without seqlens_k and total_sequence_length"
        )
        _forbid_all(node, ctx, [q, k, v, y, *caches], reason)
        return
    per = n // kv  # query heads that read one kv head: query head h reads kv head h // per
    for t in (k, v, y):
        for ax in range(2):
            ctx.identity(ctx.dim(q, ax), ctx.dim(t, ax))
    heads = _heads(node, ctx, kv)
    ctx.block(heads, ctx.dim(q, -1), per * d)
    ctx.block(heads, ctx.dim(y, -1), per * d)
    ctx.block(heads, ctx.dim(k, -1), d)
    ctx.block(heads, ctx.dim(v, -1), d)
    ctx.tag(heads, "heads", d)
    if per > 1:
        ctx.tag(heads, "query_heads_per_unit", per)
    for c in caches:  # past_key/value [B, kv, P, D] -> present_key/value [B, kv, T, D]
        if c and ctx.shape(c) is not None:
            ctx.identity(heads, ctx.dim(c, 1))
            ctx.dim(c, 0)  # batch and sequence: declared, nothing to remove
            ctx.dim(c, 2)
            ctx.forbid(ctx.dim(c, 3), "GroupQueryAttention head_dim")
    for i in (5, 6, 7, 8, 9):  # seqlens_k, total_sequence_length, cos/sin caches, position_ids
        t = _opt(node, i)
        for ax in range(len(ctx.shape(t) or ()) if t else 0):
            ctx.dim(t, ax)
    bias, sink = _opt(node, 10), _opt(node, 11)  # attention_bias [.., heads, S, T], head_sink [heads]
    bs = ctx.shape(bias) if bias else None
    if bs is not None and len(bs) == 4 and bs[1] == n and n > 1:
        ctx.block(heads, ctx.dim(bias, 1), per)
    if sink and ctx.shape(sink) == (n,):
        ctx.block(heads, ctx.dim(sink, 0), per)
        if ctx.view.is_weight(sink):
            ctx.role(ctx.dim(sink, 0), "param")


@rewriter("GroupQueryAttention", domain=MS)
def rewrite_group_query_attention(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    """``num_heads`` and ``kv_num_heads`` from how much of the output's last axis is left."""
    old, new = ctx.old_shape(node.output[0]), ctx.new_shape(node.output[0])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    n, kv = attrs.get("num_heads", 0), attrs.get("kv_num_heads", 0)
    if not old or not new or old[-1] == new[-1] or not n or not kv:
        return
    kept_kv = kv * new[-1] // old[-1]
    ctx.set_attr(node, "kv_num_heads", kept_kv)
    ctx.set_attr(node, "num_heads", kept_kv * (n // kv))


# --------------------------------------------------------------------------- 4-bit weights


@rule("MatMulNBits", domain=MS)
def matmul_nbits(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, b, y = node.input[0], node.input[1], node.output[0]
    scales, zp, g_idx, bias = _opt(node, 2), _opt(node, 3), _opt(node, 4), _opt(node, 5)
    as_, bs, ys = ctx.shape(a), ctx.shape(b), ctx.shape(y)
    if as_ is None or bs is None or ys is None or len(bs) != 3:
        _forbid_all(node, ctx, [a, y], "MatMulNBits with an unknown weight layout")
        return
    for ax in range(len(as_) - 1):
        ctx.identity(ctx.dim(a, ax), ctx.dim(y, ax))
    n_blocks = bs[1]
    # output axis N: rows of B, scales, zero points, bias. The scales carry the roles that
    # criteria read (a block's scale is its largest magnitude / 2^(bits-1)): B holds packed
    # codes, whose bytes say little about the weights' size.
    ctx.identity(ctx.dim(b, 0), ctx.dim(y, -1))
    ctx.role(ctx.dim(b, 0), "param")
    for p in (scales, zp):
        ps = ctx.shape(p) if p else None
        if ps is None:
            continue
        if len(ps) == 2:
            ctx.identity(ctx.dim(p, 0), ctx.dim(y, -1))
        else:  # [N * per_row], flattened
            ctx.block(ctx.dim(y, -1), ctx.dim(p, 0), ps[0] // ys[-1] if ys[-1] else 0)
        ctx.role(ctx.dim(p, 0), "out" if p == scales else "param")
    _last_param(ctx, bias, y)
    # input axis K: whole quantization blocks only
    k, bits, block = ctx.attr("K"), ctx.attr("bits", 4), ctx.attr("block_size")
    zs = ctx.shape(zp) if zp else None
    packed = zp is not None and ctx.view.dtypes.get(zp) == onnx.TensorProto.UINT8 and bits < 8
    per = 8 // bits if packed else 1
    ss = ctx.shape(scales) if scales else None
    why = None
    if g_idx:
        why = "with g_idx (act-order: K is permuted)"
    elif ss is None or len(ss) != 2 or (zs is not None and len(zs) != 2):
        why = "with flattened scales or zero points"
    elif not k or not block or k % block or k != as_[-1] or n_blocks % per:
        why = f"with K={k} not a whole number of {per} block(s) of {block}"
    if why is not None:
        ctx.forbid(ctx.dim(a, -1), f"MatMulNBits {why}: its input axis K prunes only in whole quantization blocks")
        return
    units = ctx.virtual(f"{node.name or y}:kblocks", n_blocks // per)
    ctx.block(units, ctx.dim(a, -1), per * block)
    ctx.block(units, ctx.dim(b, 1), per)
    ctx.role(ctx.dim(b, 1), "param")
    ctx.block(units, ctx.dim(scales, 1), per)
    ctx.role(ctx.dim(scales, 1), "in")
    if zs is not None:
        ctx.block(units, ctx.dim(zp, 1), 1 if packed else per)
        ctx.role(ctx.dim(zp, 1), "param")
    ctx.contract(ctx.dim(a, -1))


@rewriter("MatMulNBits", domain=MS)
def rewrite_matmul_nbits(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    b, a = node.input[1], node.input[0]
    old_b, new_b = ctx.old_shape(b), ctx.new_shape(b)
    if old_b and new_b and old_b[0] != new_b[0]:
        ctx.set_attr(node, "N", int(new_b[0]))
    old_a, new_a = ctx.old_shape(a), ctx.new_shape(a)
    if old_a and new_a and old_a[-1] != new_a[-1] and new_a[-1] is not None:
        ctx.set_attr(node, "K", int(new_a[-1]))
