"""Small, seeded transformer-style ONNX models: test material for attention-head and MLP pruning.

Every builder returns an ``onnx.ModelProto`` (float32, IR version 8, opset 17 unless noted)
with one graph input ``"input"`` and one graph output ``"output"``. Models pass
``onnx.checker.check_model(m, full_check=True)`` and run in onnxruntime in milliseconds.

Conventions (those of :mod:`models.builders`, adapted to what PyTorch exports for
transformers):

* a linear layer is ``MatMul`` with a constant ``[in, out]`` weight followed by ``Add`` of
  the bias, as exporters emit for 3-D (and 4-D) inputs; weights ``{module}.weight``
  (std ``1/sqrt(in)``, so activations stay O(1)), biases ``{module}.bias`` (std 0.1);
* parameters are named like PyTorch parameters (``layers.0.attn.q_proj.weight``), nodes
  like PyTorch's exporter names them (``/layers.0/attn/q_proj/MatMul``, a repeated op in
  the same module gets ``_1``, ``_2``...), node outputs ``{node}_output_0``; small
  constants (shapes, scales, eps, perms) are initializers named ``{module}.{what}``;
* LayerNorm / RMSNorm weights are ``1 + 0.1 * N(0, 1)``, LayerNorm biases ``0.1 * N(0, 1)``;
* attention scores are ``MatMul(q [1,H,S,D], Transpose(k) [1,H,D,S])`` then ``Mul`` by the
  constant ``1/sqrt(D)``, then ``Softmax(axis=-1)``.

Builders: :func:`encoder_block` (ViT/BERT block, pre/post norm, separate or packed QKV,
fused or decomposed LayerNorm, Erf or ``Gelu`` GELU), :func:`decoder_block` (Llama-style:
RMSNorm, grouped-query attention with ``repeat_kv``, causal mask, optional RoPE, SwiGLU),
:func:`convnext_block` / :func:`convnext_stage` (NCHW ConvNeXt blocks) and :func:`tiny_vit`
(patch embedding, class token, encoder blocks, classifier). :data:`BUILDERS` maps a name to
a no-argument callable for each variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import onnx

from models.builders import _Builder

__all__ = [
    "BUILDERS",
    "convnext_block",
    "convnext_stage",
    "decoder_block",
    "encoder_block",
    "tiny_vit",
]

DEFAULT_OPSET = 17
GELU_OP_OPSET = 20  # the Gelu operator exists from opset 20
INT64_MAX = np.iinfo(np.int64).max  # what exporters write as the end of ``x[..., k:]``
MASK_VALUE = -1e9  # additive causal mask above the diagonal
ROPE_THETA = 10000.0

NORMS = ("pre", "post")
QKV_FORMS = ("separate", "packed_split", "packed_gather")
LAYERNORM_FORMS = ("fused", "decomposed")
GELU_FORMS = ("erf", "op")

Shape = tuple[int, ...]


def _node_path(name: str) -> str:
    """``"layers.0.attn.q_proj"`` -> ``"/layers.0/attn/q_proj"`` (PyTorch exporter scopes:
    a ModuleList index stays attached to its list with a dot)."""
    parts: list[str] = []
    for part in name.split(".") if name else []:
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "".join("/" + p for p in parts)


class _TransformerBuilder(_Builder):
    """:class:`models.builders._Builder` with the ops transformer blocks need.

    Op methods take input tensor name(s) and ``name``, the dotted module path the op belongs
    to, and return the output tensor name; shapes are tracked statically.
    """

    def __init__(self, seed: int, input_shape: Sequence[int], opset: int = DEFAULT_OPSET) -> None:
        super().__init__(seed, opset=opset, input_shape=input_shape)

    # ------------------------------------------------------------------ plumbing
    def node_base(self, name: str, op: str) -> str:
        return f"{_node_path(name)}/{op}"  # keeps "layers.0" together, as PyTorch names it

    def const(self, name: str, value, dtype=np.float32) -> str:
        """A constant initializer called ``name`` (``name_1``, ``name_2``... if taken)."""
        unique, i = name, 0
        while unique in self.shapes:
            i += 1
            unique = f"{name}_{i}"
        return self.param(unique, np.asarray(value, dtype=dtype))

    def _scope(self, name: str, what: str) -> str:
        return f"{name}.{what}" if name else what

    def ones_ish(self, n: int) -> np.ndarray:
        return (1.0 + self.rng.standard_normal(n) * 0.1).astype(np.float32)

    # ------------------------------------------------------------------ shape ops
    def reshape(self, x: str, shape: Sequence[int], *, name: str) -> str:
        total = int(np.prod(self.shapes[x]))
        known = int(np.prod([d for d in shape if d != -1]))
        out = tuple(total // known if d == -1 else d for d in shape)
        target = self.const(self._scope(name, "shape"), shape, np.int64)
        return self.node("Reshape", [x, target], name, [out])[0]

    def transpose(self, x: str, perm: Sequence[int], *, name: str) -> str:
        shape = self.shapes[x]
        return self.node("Transpose", [x], name, [tuple(shape[p] for p in perm)], perm=list(perm))[0]

    def gather(self, x: str, index: int, axis: int, *, name: str) -> str:
        """Gather with a constant scalar index: drops ``axis``."""
        shape = list(self.shapes[x])
        del shape[axis]
        idx = self.const(self._scope(name, "index"), index, np.int64)
        return self.node("Gather", [x, idx], name, [tuple(shape)], axis=axis)[0]

    def squeeze(self, x: str, axis: int, *, name: str) -> str:
        shape = list(self.shapes[x])
        del shape[axis]
        axes = self.const(self._scope(name, "axes"), [axis], np.int64)
        return self.node("Squeeze", [x, axes], name, [tuple(shape)])[0]

    def unsqueeze(self, x: str, axis: int, *, name: str) -> str:
        shape = list(self.shapes[x])
        shape.insert(axis, 1)
        axes = self.const(self._scope(name, "axes"), [axis], np.int64)
        return self.node("Unsqueeze", [x, axes], name, [tuple(shape)])[0]

    def expand(self, x: str, shape: Sequence[int], *, name: str) -> str:
        target = self.const(self._scope(name, "expand_shape"), shape, np.int64)
        out = np.broadcast_shapes(self.shapes[x], tuple(shape))
        return self.node("Expand", [x, target], name, [out])[0]

    def slice_last(self, x: str, start: int, end: int, *, name: str) -> str:
        """``x[..., start:end]`` as Slice with starts/ends/axes inputs."""
        shape = list(self.shapes[x])
        shape[-1] = min(end, shape[-1]) - start
        starts = self.const(self._scope(name, "starts"), [start], np.int64)
        ends = self.const(self._scope(name, "ends"), [end], np.int64)
        axes = self.const(self._scope(name, "axes"), [-1], np.int64)
        return self.node("Slice", [x, starts, ends, axes], name, [tuple(shape)])[0]

    def reduce_mean_last(self, x: str, *, name: str) -> str:
        """ReduceMean over the last axis, keepdims=1 (axes attribute below opset 18, input from 18)."""
        shape = self.shapes[x][:-1] + (1,)
        if self.opset < 18:
            return self.node("ReduceMean", [x], name, [shape], axes=[-1], keepdims=1)[0]
        axes = self.const(self._scope(name, "axes"), [-1], np.int64)
        return self.node("ReduceMean", [x, axes], name, [shape], keepdims=1)[0]

    # ------------------------------------------------------------------ arithmetic
    def binary_const(self, op: str, x: str, value: float, what: str, *, name: str) -> str:
        """``op(x, scalar constant)``; the constant is stored as ``{name}.{what}``."""
        c = self.const(self._scope(name, what), value)
        return self.node(op, [x, c], name, [self.shapes[x]])[0]

    def matmul(self, a: str, b: str, *, name: str) -> str:
        sa, sb = self.shapes[a], self.shapes[b]
        if sa[-1] != sb[-2]:
            raise ValueError(f"{name}: MatMul {sa} x {sb}")
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
        return self.node("MatMul", [a, b], name, [(*batch, sa[-2], sb[-1])])[0]

    def softmax(self, x: str, *, name: str) -> str:
        return self.unary("Softmax", x, name, axis=-1)

    # ------------------------------------------------------------------ layers
    def linear(self, x: str, nout: int, *, name: str, bias: bool = True) -> str:
        """``nn.Linear`` on an N-D input: MatMul by ``{name}.weight`` [in, out], Add ``{name}.bias``."""
        nin = self.shapes[x][-1]
        w = self.param(f"{name}.weight", self.small((nin, nout), 1.0 / np.sqrt(nin)))
        y = self.node("MatMul", [x, w], name, [(*self.shapes[x][:-1], nout)])[0]
        if bias:
            y = self.add(y, self.param(f"{name}.bias", self.small((nout,))), name=name)
        return y

    def layer_norm(self, x: str, *, name: str, form: str = "fused", eps: float = 1e-5) -> str:
        """LayerNorm over the last axis: the LayerNormalization op, or its decomposition
        ReduceMean, Sub, Pow, ReduceMean, Add(eps), Sqrt, Div, Mul(weight), Add(bias)."""
        c = self.shapes[x][-1]
        w = self.param(f"{name}.weight", self.ones_ish(c))
        b = self.param(f"{name}.bias", self.small((c,)))
        if form == "fused":
            return self.node("LayerNormalization", [x, w, b], name, [self.shapes[x]], axis=-1, epsilon=eps)[0]
        if form != "decomposed":
            raise ValueError(f"layernorm must be one of {LAYERNORM_FORMS}")
        centered = self.node("Sub", [x, self.reduce_mean_last(x, name=name)], name, [self.shapes[x]])[0]
        var = self.reduce_mean_last(self.binary_const("Pow", centered, 2.0, "pow", name=name), name=name)
        std = self.unary("Sqrt", self.binary_const("Add", var, eps, "eps", name=name), name)
        y = self.node("Div", [centered, std], name, [self.shapes[x]])[0]
        return self.add(self.mul(y, w, name=name), b, name=name)

    def rms_norm(self, x: str, *, name: str, eps: float = 1e-6) -> str:
        """Llama RMSNorm: x * Reciprocal(Sqrt(ReduceMean(Pow(x, 2)) + eps)) * weight."""
        w = self.param(f"{name}.weight", self.ones_ish(self.shapes[x][-1]))
        ms = self.reduce_mean_last(self.binary_const("Pow", x, 2.0, "pow", name=name), name=name)
        rstd = self.unary(
            "Reciprocal", self.unary("Sqrt", self.binary_const("Add", ms, eps, "eps", name=name), name), name
        )
        return self.mul(self.mul(x, rstd, name=name), w, name=name)

    def gelu(self, x: str, *, name: str, form: str = "erf") -> str:
        """Exact GELU: ``x * (Erf(x / sqrt 2) + 1) * 0.5`` as PyTorch exports it, or the Gelu op."""
        if form == "op":
            if self.opset < GELU_OP_OPSET:
                raise ValueError(f"Gelu needs opset {GELU_OP_OPSET}")
            return self.unary("Gelu", x, name)
        if form != "erf":
            raise ValueError(f"gelu must be one of {GELU_FORMS}")
        y = self.unary("Erf", self.binary_const("Div", x, np.sqrt(2.0), "sqrt2", name=name), name)
        y = self.mul(x, self.binary_const("Add", y, 1.0, "one", name=name), name=name)
        return self.binary_const("Mul", y, 0.5, "half", name=name)

    def scores(self, q: str, k: str, *, name: str) -> str:
        """``(q @ Transpose(k)) * 1/sqrt(D)`` for q, k [1, H, S, D]."""
        kt = self.transpose(k, [0, 1, 3, 2], name=name)
        return self.binary_const(
            "Mul", self.matmul(q, kt, name=name), 1.0 / np.sqrt(self.shapes[q][-1]), "scale", name=name
        )

    def heads_first(self, x: str, heads: int | None, head_dim: int, *, name: str) -> str:
        """[1, S, H*D] -> Reshape [1, S, H, D] (``-1`` if ``heads`` is None) -> Transpose [1, H, S, D]."""
        _, s, _ = self.shapes[x]
        y = self.reshape(x, [1, s, -1 if heads is None else heads, head_dim], name=name)
        return self.transpose(y, [0, 2, 1, 3], name=name)

    def merge_heads(self, x: str, *, name: str, infer: bool = False) -> str:
        """[1, H, S, D] -> Transpose [1, S, H, D] -> Reshape [1, S, H*D] (``-1`` if ``infer``)."""
        _, h, s, d = self.shapes[x]
        y = self.transpose(x, [0, 2, 1, 3], name=name)
        return self.reshape(y, [1, s, -1 if infer else h * d], name=name)


# ---------------------------------------------------------------------------- blocks


def _self_attention(b: _TransformerBuilder, x: str, heads: int, qkv: str, name: str) -> str:
    """Multi-head self-attention on [1, S, E] with Q/K/V in one of the ``QKV_FORMS``."""
    _, s, e = b.shapes[x]
    d = e // heads
    if qkv == "separate":
        q, k, v = (b.linear(x, e, name=f"{name}.{p}_proj") for p in "qkv")
        q, k, v = (b.heads_first(t, heads, d, name=name) for t in (q, k, v))
    elif qkv == "packed_split":  # qkv.reshape(B, N, 3, H, D).unbind(2), each .transpose(1, 2)
        t = b.reshape(b.linear(x, 3 * e, name=f"{name}.qkv"), [1, s, 3, heads, d], name=name)
        parts = b.split(t, [1, 1, 1], axis=2, name=name)
        q, k, v = (b.transpose(b.squeeze(p, 2, name=name), [0, 2, 1, 3], name=name) for p in parts)
    elif qkv == "packed_gather":  # timm: .reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4); qkv[0]...
        t = b.reshape(b.linear(x, 3 * e, name=f"{name}.qkv"), [1, s, 3, heads, d], name=name)
        t = b.transpose(t, [2, 0, 3, 1, 4], name=name)
        q, k, v = (b.gather(t, i, 0, name=name) for i in range(3))
    else:
        raise ValueError(f"qkv must be one of {QKV_FORMS}")
    p = b.softmax(b.scores(q, k, name=name), name=name)
    y = b.merge_heads(b.matmul(p, v, name=name), name=name)
    return b.linear(y, e, name=f"{name}.out_proj")


def _mlp(b: _TransformerBuilder, x: str, hidden: int, gelu: str, name: str) -> str:
    """fc1 -> GELU -> fc2."""
    y = b.gelu(b.linear(x, hidden, name=f"{name}.fc1"), name=f"{name}.act", form=gelu)
    return b.linear(y, b.shapes[x][-1], name=f"{name}.fc2")


def _encoder_layer(
    b: _TransformerBuilder, x: str, heads: int, mlp: int, norm: str, qkv: str, layernorm: str, gelu: str, name: str
) -> str:
    def ln(t: str, which: str) -> str:
        return b.layer_norm(t, name=f"{name}.{which}", form=layernorm)

    if norm == "pre":
        x = b.add(x, _self_attention(b, ln(x, "norm1"), heads, qkv, f"{name}.attn"), name=name)
        return b.add(x, _mlp(b, ln(x, "norm2"), mlp, gelu, f"{name}.mlp"), name=name)
    if norm == "post":
        x = ln(b.add(x, _self_attention(b, x, heads, qkv, f"{name}.attn"), name=name), "norm1")
        return ln(b.add(x, _mlp(b, x, mlp, gelu, f"{name}.mlp"), name=name), "norm2")
    raise ValueError(f"norm must be one of {NORMS}")


def _check_encoder_args(embed: int, heads: int, norm: str, qkv: str, layernorm: str, gelu: str) -> None:
    if embed % heads:
        raise ValueError(f"embed {embed} is not divisible by heads {heads}")
    for value, allowed, what in (
        (norm, NORMS, "norm"),
        (qkv, QKV_FORMS, "qkv"),
        (layernorm, LAYERNORM_FORMS, "layernorm"),
        (gelu, GELU_FORMS, "gelu"),
    ):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, not {value!r}")


def rope_tables(seq: int, head_dim: int, theta: float = ROPE_THETA) -> tuple[np.ndarray, np.ndarray]:
    """Llama rotary tables ``cos, sin`` of shape [seq, head_dim] (frequencies repeated twice)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.arange(seq, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _rope(b: _TransformerBuilder, x: str, cos: str, sin: str, name: str) -> str:
    """``x * cos + rotate_half(x) * sin``, rotate_half = Concat(-x[..., D/2:], x[..., :D/2])."""
    half = b.shapes[x][-1] // 2
    x1 = b.slice_last(x, 0, half, name=name)
    x2 = b.slice_last(x, half, INT64_MAX, name=name)
    rotated = b.concat([b.unary("Neg", x2, name), x1], axis=-1, name=name)
    return b.add(b.mul(x, cos, name=name), b.mul(rotated, sin, name=name), name=name)


def _repeat_kv(b: _TransformerBuilder, x: str, n_rep: int, name: str) -> str:
    """HF ``repeat_kv``: [1, KV, S, D] -> Unsqueeze(2) -> Expand [1, KV, n_rep, S, D] -> Reshape
    [1, KV*n_rep, S, D], so query head ``h`` reads key/value head ``h // n_rep``."""
    if n_rep == 1:
        return x
    _, kv, s, d = b.shapes[x]
    y = b.expand(b.unsqueeze(x, 2, name=name), [1, kv, n_rep, s, d], name=name)
    return b.reshape(y, [1, kv * n_rep, s, d], name=name)


def _gqa_attention(
    b: _TransformerBuilder, x: str, heads: int, kv_heads: int, rope: tuple[str, str] | None, bias: bool, name: str
) -> str:
    """Llama attention: q/k/v/o projections, optional RoPE, repeat_kv, causal mask."""
    _, s, e = b.shapes[x]
    d = e // heads
    q = b.linear(x, heads * d, name=f"{name}.q_proj", bias=bias)
    k = b.linear(x, kv_heads * d, name=f"{name}.k_proj", bias=bias)
    v = b.linear(x, kv_heads * d, name=f"{name}.v_proj", bias=bias)
    q, k, v = (b.heads_first(t, None, d, name=name) for t in (q, k, v))  # view(1, S, -1, D)
    if rope is not None:
        q, k = _rope(b, q, *rope, name=name), _rope(b, k, *rope, name=name)
    k, v = _repeat_kv(b, k, heads // kv_heads, name), _repeat_kv(b, v, heads // kv_heads, name)
    mask = b.const(f"{name}.causal_mask", np.triu(np.full((1, 1, s, s), MASK_VALUE), k=1))
    p = b.softmax(b.add(b.scores(q, k, name=name), mask, name=name), name=name)
    y = b.merge_heads(b.matmul(p, v, name=name), name=name, infer=True)
    return b.linear(y, e, name=f"{name}.o_proj", bias=bias)


def _swiglu(b: _TransformerBuilder, x: str, hidden: int, bias: bool, name: str) -> str:
    """down_proj(SiLU(gate_proj(x)) * up_proj(x)); SiLU as Sigmoid + Mul."""
    gate = b.linear(x, hidden, name=f"{name}.gate_proj", bias=bias)
    up = b.linear(x, hidden, name=f"{name}.up_proj", bias=bias)
    y = b.mul(b.act(gate, "silu", name=f"{name}.act_fn"), up, name=name)
    return b.linear(y, b.shapes[x][-1], name=f"{name}.down_proj", bias=bias)


def _convnext(b: _TransformerBuilder, x: str, mlp_ratio: int, name: str) -> str:
    """timm ConvNeXt block (channels-last MLP): dw 7x7 -> NHWC -> LN -> fc1 -> GELU -> fc2 ->
    layer scale ``gamma`` -> NCHW -> + x."""
    c = b.channels(x)
    y = b.conv(x, c, 7, group=c, bias=True, pad=3, name=f"{name}.conv_dw")
    y = b.transpose(y, [0, 2, 3, 1], name=name)
    y = b.layer_norm(y, name=f"{name}.norm", eps=1e-6)
    y = b.linear(y, mlp_ratio * c, name=f"{name}.mlp.fc1")
    y = b.gelu(y, name=f"{name}.mlp.act")
    y = b.linear(y, c, name=f"{name}.mlp.fc2")
    y = b.mul(y, b.param(f"{name}.gamma", b.rng.uniform(0.2, 1.0, c).astype(np.float32)), name=name)
    y = b.transpose(y, [0, 3, 1, 2], name=name)
    return b.add(y, x, name=name)


def _finish(b: _TransformerBuilder, output: str, graph_name: str) -> onnx.ModelProto:
    model = b.build(output, graph_name)
    model.producer_name = "graphprune.models.transformers"
    return model


# ---------------------------------------------------------------------------- builders


def encoder_block(
    embed: int = 32,
    heads: int = 4,
    mlp: int = 64,
    seq: int = 8,
    norm: str = "pre",
    qkv: str = "separate",
    layernorm: str = "fused",
    seed: int = 0,
    gelu: str = "erf",
) -> onnx.ModelProto:
    """One ViT/BERT encoder block ``layers.0`` on ``"input"`` [1, seq, embed] -> ``"output"``.

    Attention ``layers.0.attn``: Q, K, V -> Reshape [1, S, H, D] -> Transpose [1, H, S, D];
    MatMul(q, Transpose(k)) -> Mul(1/sqrt(D)) -> Softmax(-1) -> MatMul(v) -> Transpose
    [1, S, H, D] -> Reshape [1, S, E] -> ``out_proj``. MLP ``layers.0.mlp``: fc1 -> GELU -> fc2.

    * ``norm="pre"``: x + attn(norm1(x)), then + mlp(norm2(x)); ``"post"``: norm1(x + attn(x)),
      norm2(x + mlp(x)).
    * ``qkv="separate"``: ``q_proj``, ``k_proj``, ``v_proj`` [E, E]. ``"packed_split"``: one
      ``qkv`` [E, 3E] -> Reshape [1, S, 3, H, D] -> Split(axis 2, [1, 1, 1]) -> Squeeze(2) ->
      Transpose per part. ``"packed_gather"``: ``qkv`` -> Reshape [1, S, 3, H, D] -> Transpose
      (2, 0, 3, 1, 4) -> Gather(axis 0, scalar index 0 / 1 / 2). Output columns of ``qkv`` are
      ordered (3, H, D) in both packed forms.
    * ``layernorm="fused"``: LayerNormalization; ``"decomposed"``: ReduceMean, Sub, Pow,
      ReduceMean, Add(eps), Sqrt, Div, Mul, Add.
    * ``gelu="erf"``: Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5); ``"op"``: the Gelu
      operator, and the model is opset 20.

    The same ``seed`` gives the same weights for every packed form, LayerNorm form and GELU
    form, so those variants compute the same function.
    """
    _check_encoder_args(embed, heads, norm, qkv, layernorm, gelu)
    b = _TransformerBuilder(seed, (1, seq, embed), GELU_OP_OPSET if gelu == "op" else DEFAULT_OPSET)
    x = _encoder_layer(b, b.input, heads, mlp, norm, qkv, layernorm, gelu, "layers.0")
    return _finish(b, x, f"encoder_{norm}_{qkv}_{layernorm}_{gelu}")


def decoder_block(
    embed: int = 32,
    heads: int = 8,
    kv_heads: int = 2,
    mlp: int = 48,
    seq: int = 8,
    rope: bool = False,
    seed: int = 0,
    bias: bool = True,
) -> onnx.ModelProto:
    """One Llama-style pre-norm decoder layer ``layers.0`` on ``"input"`` [1, seq, embed].

    ``input_layernorm`` (RMSNorm: Pow 2 -> ReduceMean(-1) -> Add eps -> Sqrt -> Reciprocal ->
    Mul x -> Mul weight) -> ``self_attn`` -> residual Add -> ``post_attention_layernorm`` ->
    ``mlp`` (SwiGLU: ``gate_proj``, ``up_proj``, SiLU(gate) * up, ``down_proj``) -> residual Add.

    Grouped-query attention: ``q_proj`` [E, heads*D], ``k_proj`` / ``v_proj`` [E, kv_heads*D]
    (D = embed / heads), each -> Reshape [1, S, -1, D] -> Transpose [1, *, S, D]; with
    ``rope`` q and k get rotary embeddings (constants ``rotary_emb.cos`` / ``rotary_emb.sin``
    [S, D]; rotate_half by two Slices, Neg, Concat on the last axis); k and v are repeated
    HF ``repeat_kv``-style (Unsqueeze(2) -> Expand -> Reshape [1, heads, S, D]; skipped when
    ``kv_heads == heads``, as HF does); scores -> Mul(1/sqrt(D)) -> Add of the constant causal
    mask ``layers.0.self_attn.causal_mask`` [1, 1, S, S] (-1e9 above the diagonal) -> Softmax
    -> MatMul(v) -> Transpose -> Reshape [1, S, -1] -> ``o_proj``.

    ``bias=False`` drops every projection bias (real Llama), leaving bare MatMuls.
    """
    if embed % heads or heads % kv_heads:
        raise ValueError(f"need embed % heads == 0 and heads % kv_heads == 0 ({embed}, {heads}, {kv_heads})")
    d = embed // heads
    if rope and d % 2:
        raise ValueError(f"rope needs an even head dim, not {d}")
    b = _TransformerBuilder(seed, (1, seq, embed))
    tables = None
    if rope:
        cos, sin = rope_tables(seq, d)
        tables = (b.const("rotary_emb.cos", cos), b.const("rotary_emb.sin", sin))
    name = "layers.0"
    x = b.input
    h = b.rms_norm(x, name=f"{name}.input_layernorm")
    x = b.add(x, _gqa_attention(b, h, heads, kv_heads, tables, bias, f"{name}.self_attn"), name=name)
    h = b.rms_norm(x, name=f"{name}.post_attention_layernorm")
    x = b.add(x, _swiglu(b, h, mlp, bias, f"{name}.mlp"), name=name)
    return _finish(b, x, f"decoder_h{heads}_kv{kv_heads}{'_rope' if rope else ''}")


def convnext_stage(blocks: int = 2, channels: int = 16, mlp_ratio: int = 4, size: int = 8, seed: int = 0):
    """``blocks`` ConvNeXt blocks ``blocks.{i}`` chained on NCHW ``"input"`` [1, C, size, size].

    Each block: depthwise ``conv_dw`` (7x7, pad 3, group=C, bias) -> Transpose NHWC ->
    ``norm`` (LayerNormalization, last axis, eps 1e-6) -> ``mlp.fc1`` [C, ratio*C] + bias ->
    GELU (Erf form) -> ``mlp.fc2`` [ratio*C, C] + bias -> Mul by layer scale ``gamma`` [C]
    (uniform 0.2..1) -> Transpose NCHW -> residual Add with the block input.
    """
    b = _TransformerBuilder(seed, (1, channels, size, size))
    x = b.input
    for i in range(blocks):
        x = _convnext(b, x, mlp_ratio, f"blocks.{i}")
    return _finish(b, x, f"convnext_stage{blocks}")


def convnext_block(channels: int = 16, mlp_ratio: int = 4, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """One ConvNeXt block ``blocks.0``: :func:`convnext_stage` with ``blocks=1``."""
    model = convnext_stage(1, channels, mlp_ratio, size, seed)
    model.graph.name = "convnext_block"
    return model


def tiny_vit(
    layers: int = 2,
    embed: int = 32,
    heads: int = 4,
    mlp: int = 64,
    patch: int = 4,
    image: int = 16,
    num_classes: int = 10,
    seed: int = 0,
) -> onnx.ModelProto:
    """A tiny ViT classifier on ``"input"`` [1, 3, image, image] -> ``"output"`` [1, num_classes].

    ``patch_embed.proj`` (Conv k=stride=patch, bias) -> Reshape [1, E, N] (``flatten(2)``) ->
    Transpose [1, N, E] -> Concat(``cls_token`` [1, 1, E], x) on axis 1 -> Add ``pos_embed``
    [1, N+1, E] -> ``layers`` pre-norm encoder blocks ``layers.{i}`` (packed QKV, Gather form,
    fused LayerNorm, Erf GELU; see :func:`encoder_block`) -> ``norm`` -> Gather(index 0,
    axis 1) (the class token) -> ``head`` (Gemm, transB=1).
    """
    _check_encoder_args(embed, heads, "pre", "packed_gather", "fused", "erf")
    if image % patch:
        raise ValueError(f"image {image} is not divisible by patch {patch}")
    b = _TransformerBuilder(seed, (1, 3, image, image))
    n = (image // patch) ** 2
    x = b.conv(b.input, embed, patch, stride=patch, bias=True, pad=0, name="patch_embed.proj")
    x = b.transpose(b.reshape(x, [1, embed, n], name="patch_embed"), [0, 2, 1], name="patch_embed")
    x = b.concat([b.param("cls_token", b.small((1, 1, embed), 0.5)), x], axis=1, name="")
    x = b.add(x, b.param("pos_embed", b.small((1, n + 1, embed), 0.5)), name="")
    for i in range(layers):
        x = _encoder_layer(b, x, heads, mlp, "pre", "packed_gather", "fused", "erf", f"layers.{i}")
    x = b.gather(b.layer_norm(x, name="norm"), 0, 1, name="")
    return _finish(b, b.gemm(x, num_classes, name="head"), "tiny_vit")


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "encoder_pre_separate": partial(encoder_block, norm="pre", qkv="separate"),
    "encoder_post_separate": partial(encoder_block, norm="post", qkv="separate"),
    "encoder_pre_packed_split": partial(encoder_block, norm="pre", qkv="packed_split"),
    "encoder_pre_packed_gather": partial(encoder_block, norm="pre", qkv="packed_gather"),
    "encoder_post_packed_gather": partial(encoder_block, norm="post", qkv="packed_gather"),
    "encoder_decomposed_ln": partial(encoder_block, layernorm="decomposed"),
    "encoder_gelu_op": partial(encoder_block, gelu="op"),
    "decoder_gqa": partial(decoder_block),
    "decoder_gqa_rope": partial(decoder_block, rope=True),
    "decoder_mha": partial(decoder_block, kv_heads=8),
    "decoder_gqa_nobias": partial(decoder_block, bias=False),
    "convnext_block": partial(convnext_block),
    "convnext_stage": partial(convnext_stage),
    "tiny_vit": partial(tiny_vit),
}
