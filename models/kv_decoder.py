"""A Llama-style LLM decoder with a KV cache, unfused, as optimum / onnxruntime-genai export it.

Graph inputs: ``input_ids`` [batch, seq] int64, ``attention_mask`` [batch, total_seq] int64
(1 = attend, 0 = padding), ``position_ids`` [batch, seq] int64 and per layer ``i``
``past_key_values.{i}.key`` / ``.value`` [batch, kv_heads, past_seq, head_dim] float32.
Graph outputs: ``logits`` [batch, seq, vocab] and ``present.{i}.key`` / ``.value``
[batch, kv_heads, total_seq, head_dim], the Concat of the past and the new keys / values on axis 2.

Rules the graph keeps (the idioms of dynamic-axes exports):

1. every dim is symbolic; reshapes to heads read their target shape from the graph,
   ``Concat(Shape(x)[0:2], [heads, head_dim])``, and back, ``Concat(Shape(x)[0:2], [hidden])``;
2. rotary embedding: ``x * cos + rotate_half(x) * sin`` with ``cos`` / ``sin`` Gathered from
   constant tables by ``position_ids``; keys are rotated before they enter the cache;
3. grouped-query attention repeats each kv head ``heads // kv_heads`` times (HF ``repeat_kv``:
   Unsqueeze(2), Expand, Reshape; or Expand to a shape built at run time, or Tile: ``repeat``)
   after the cache Concat;
4. the additive mask is causal (query ``i`` sees keys ``<= past_seq + i``) plus padding
   (``(1 - attention_mask) * -1e9``), added to the scaled scores before Softmax;
5. RMSNorm is decomposed (Pow, ReduceMean, Add eps, Sqrt, Div, Mul weight); the MLP is SwiGLU,
   ``down(Sigmoid(gate(x)) * gate(x) * up(x))``; both sub-blocks are residual.

``fused=True`` builds the same decoder as onnxruntime-genai exports it for CPU: the attention of
each layer is one com.microsoft ``GroupQueryAttention`` (``num_heads``, ``kv_num_heads``,
``do_rotary=1`` with ``cos_cache`` / ``sin_cache`` ``[max_positions, head_dim / 2]``) reading
the q/k/v projections, the past cache, ``seqlens_k = ReduceSum(attention_mask) - 1`` and
``total_sequence_length`` (int32), and writing ``present.*`` itself. Positions then come from
``seqlens_k`` (``position_ids`` stays in the interface, unused) and the mask is causal with
right padding only; onnxruntime runs it with a past only for one new token per row or a batch
of one. With the same arguments both forms hold the same weights and compute the same logits
on unpadded inputs.

Names follow the PyTorch exporter (``/model/layers.0/self_attn/q_proj/MatMul``) and parameters
Hugging Face (``model.layers.0.mlp.gate_proj.weight``, stored ``[in, out]`` as exported).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.ir.graph import fresh_name

__all__ = ["kv_decoder"]

OPSET = 17
IR_VERSION = 8
MASK_VALUE = -1e9
ROPE_THETA = 10000.0
EPS = 1e-6
INT64_MAX = np.iinfo(np.int64).max


class _Graph:
    """Nodes and initializers, with exporter-style unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, value, dtype=np.int64) -> str:
        name = fresh_name(self._names, name)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], std: float) -> str:
        return self.const(name, self.rng.standard_normal(shape) * std, np.float32)

    def norm_weight(self, name: str, n: int) -> str:
        return self.const(name, 1.0 + 0.1 * self.rng.standard_normal(n), np.float32)

    def op(self, op: str, inputs: list[str], scope: str, *, output: str | None = None, **attrs) -> str:
        name = fresh_name(self._names, f"{scope}/{op}")
        out = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    # ---------------------------------------------------------------- idioms
    def shape(self, x: str, scope: str, start: int, end: int | None = None) -> str:
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        return self.op("Shape", [x], scope, **attrs)

    def scalar_dim(self, x: str, axis: int, scope: str) -> str:
        """``x.shape[axis]`` as an int64 scalar (Shape with start/end, then Squeeze)."""
        return self.op("Squeeze", [self.shape(x, scope, axis, axis + 1)], scope)

    def rms_norm(self, x: str, hidden: int, scope: str, param: str) -> str:
        sq = self.op("Pow", [x, self.const(f"{param}.pow", 2.0, np.float32)], scope)
        ms = self.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [ms, self.const(f"{param}.eps", EPS, np.float32)], scope)], scope)
        return self.op("Mul", [self.op("Div", [x, std], scope), self.norm_weight(f"{param}.weight", hidden)], scope)

    def linear(self, x: str, nin: int, nout: int, scope: str, param: str) -> str:
        return self.op("MatMul", [x, self.weight(f"{param}.weight", (nin, nout), nin**-0.5)], scope)

    def to_heads(self, x: str, n: int, d: int, scope: str, param: str) -> str:
        """[B, S, n*d] -> Reshape Concat(Shape(x)[0:2], [n, d]) -> Transpose [B, n, S, d]."""
        target = self.op("Concat", [self.shape(x, scope, 0, 2), self.const(f"{param}.heads", [n, d])], scope, axis=0)
        return self.op("Transpose", [self.op("Reshape", [x, target], scope)], scope, perm=[0, 2, 1, 3])

    def rope(self, x: str, cos: str, sin: str, d: int, scope: str, param: str) -> str:
        x1 = self.op(
            "Slice",
            [x, self.const(f"{param}.s0", [0]), self.const(f"{param}.e0", [d // 2]), self.const(f"{param}.ax", [-1])],
            scope,
        )
        x2 = self.op(
            "Slice",
            [
                x,
                self.const(f"{param}.s1", [d // 2]),
                self.const(f"{param}.e1", [INT64_MAX]),
                self.const(f"{param}.ax", [-1]),
            ],
            scope,
        )
        rotated = self.op("Concat", [self.op("Neg", [x2], scope), x1], scope, axis=-1)
        return self.op("Add", [self.op("Mul", [x, cos], scope), self.op("Mul", [rotated, sin], scope)], scope)

    def repeat_kv(self, x: str, n_rep: int, heads: int, d: int, scope: str, param: str, how: str = "expand") -> str:
        """[B, KV, T, d] -> Unsqueeze(2) -> [B, KV, n_rep, T, d] -> Reshape [B, heads, T, d]; the
        middle step is ``how``: ``expand`` (Expand by a constant ``[1, 1, n_rep, 1, 1]``),
        ``expand_shape`` (Expand to ``Concat(B, [KV], [n_rep], T, [d])`` built at run time, as the
        classic exporter writes Hugging Face's ``repeat_kv``) or ``tile`` (Tile ``[1, 1, n_rep, 1, 1]``)."""
        if n_rep == 1:
            return x
        y = self.op("Unsqueeze", [x, self.const(f"{param}.unsq", [2])], scope)
        if how == "expand":
            y = self.op("Expand", [y, self.const(f"{param}.rep", [1, 1, n_rep, 1, 1])], scope)
        elif how == "expand_shape":
            kv = heads // n_rep
            parts = [self.shape(x, scope, 0, 1), self.const(f"{param}.kv", [kv]), self.const(f"{param}.nrep", [n_rep])]
            parts += [self.shape(x, scope, 2, 3), self.const(f"{param}.head_dim", [d])]
            y = self.op("Expand", [y, self.op("Concat", parts, scope, axis=0)], scope)
        elif how == "tile":
            y = self.op("Tile", [y, self.const(f"{param}.rep", [1, 1, n_rep, 1, 1])], scope)
        else:
            raise ValueError(f"repeat_kv: unknown idiom {how!r} (expand, expand_shape, tile)")
        target = self.op(
            "Concat",
            [self.shape(x, scope, 0, 1), self.const(f"{param}.kvheads", [heads]), self.shape(x, scope, 2)],
            scope,
            axis=0,
        )
        return self.op("Reshape", [y, target], scope)


def _tables(positions: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / ROPE_THETA ** (np.arange(0, d, 2, dtype=np.float64) / d)
    freqs = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def _mask(g: _Graph, past_key: str | None) -> str:
    """The additive mask [B, 1, S, T]: causal on absolute positions plus padding (no
    ``past_key``: no past, queries start at 0)."""
    scope = "/model/mask"
    total = g.scalar_dim("attention_mask", 1, scope)
    past = g.scalar_dim(past_key, 2, scope) if past_key else g.const("model.mask.no_past", 0)
    one = g.const("model.mask.one", 1)
    keys = g.op("Range", [g.const("model.mask.zero", 0), total, one], scope)  # [T]
    queries = g.op("Range", [past, total, one], scope)  # [S]
    queries = g.op("Unsqueeze", [queries, g.const("model.mask.axis1", [1])], scope)  # [S, 1]
    future = g.op("Greater", [keys, queries], scope)  # [S, T]
    causal = g.op(
        "Where",
        [future, g.const("model.mask.min", MASK_VALUE, np.float32), g.const("model.mask.zero_f", 0.0, np.float32)],
        scope,
    )
    am = g.op("Cast", ["attention_mask"], scope, to=TensorProto.FLOAT)
    pad = g.op("Sub", [g.const("model.mask.one_f", 1.0, np.float32), am], scope)
    pad = g.op("Mul", [pad, g.const("model.mask.min_1", MASK_VALUE, np.float32)], scope)
    pad = g.op("Unsqueeze", [pad, g.const("model.mask.axes12", [1, 2])], scope)  # [B, 1, 1, T]
    return g.op("Add", [causal, pad], scope)  # [B, 1, S, T]


def _rotary(g: _Graph, positions: int, d: int) -> tuple[str, str]:
    """``cos`` / ``sin`` [B, 1, S, d]: rows of the constant tables Gathered by ``position_ids``."""
    cos_t, sin_t = _tables(positions, d)
    rot = "/model/rotary_emb"
    axis1 = g.const("model.rotary_emb.axis1", [1])
    out = []
    for name, table in (("cos", cos_t), ("sin", sin_t)):
        rows = g.op("Gather", [g.const(f"model.rotary_emb.{name}", table, np.float32), "position_ids"], rot)
        out.append(g.op("Unsqueeze", [rows, axis1], rot))
    return out[0], out[1]


def _mlp(g: _Graph, x: str, hidden: int, ffn: int, s: str, p: str) -> str:
    """The residual SwiGLU sub-block after the attention: ``x + down(silu(gate(h)) * up(h))``."""
    m, mp = f"{s}/mlp", f"{p}.mlp"
    h = g.rms_norm(x, hidden, f"{s}/post_attention_layernorm", f"{p}.post_attention_layernorm")
    gate = g.linear(h, hidden, ffn, f"{m}/gate_proj", f"{mp}.gate_proj")
    up = g.linear(h, hidden, ffn, f"{m}/up_proj", f"{mp}.up_proj")
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{m}/act_fn")], f"{m}/act_fn")
    y = g.op(
        "MatMul",
        [g.op("Mul", [act, up], m), g.weight(f"{mp}.down_proj.weight", (ffn, hidden), ffn**-0.5)],
        f"{m}/down_proj",
    )
    return g.op("Add", [x, y], s)


def _gqa_inputs(g: _Graph, positions: int, d: int) -> tuple[str, str, str, str]:
    """GroupQueryAttention's shared inputs: ``seqlens_k`` [B] and ``total_sequence_length``
    (int32, from the attention mask) and the rotary caches [positions, d / 2]."""
    scope = "/model/attn_mask_reformat"
    lengths = g.op("ReduceSum", ["attention_mask", g.const("model.gqa.axes", [1])], scope, keepdims=0)
    lengths = g.op("Sub", [lengths, g.const("model.gqa.one", 1)], scope)
    seqlens = g.op("Cast", [lengths], scope, to=TensorProto.INT32)
    total = g.op("Cast", [g.scalar_dim("attention_mask", 1, scope)], scope, to=TensorProto.INT32)
    cos, sin = _tables(positions, d)
    half = d // 2  # the tables repeat their first half: the caches hold it once
    cos_cache = g.const("cos_cache", cos[:, :half], np.float32)
    sin_cache = g.const("sin_cache", sin[:, :half], np.float32)
    return seqlens, total, cos_cache, sin_cache


def _gqa(g: _Graph, qkv: list[str], i: int, shared: list[str], heads: int, kv_heads: int, scope: str) -> str:
    """One layer's com.microsoft GroupQueryAttention, writing ``present.{i}.key/value``."""
    seqlens, total, cos_cache, sin_cache = shared
    name = fresh_name(g._names, f"{scope}/GroupQueryAttention")
    out = f"{name}_output_0"
    inputs = [*qkv, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total, cos_cache, sin_cache]
    g.nodes.append(
        helper.make_node(
            "GroupQueryAttention",
            inputs,
            [out, f"present.{i}.key", f"present.{i}.value"],
            name=name,
            domain="com.microsoft",
            num_heads=heads,
            kv_num_heads=kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
        )
    )
    return out


def kv_decoder(
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 64,
    seed: int = 0,
    *,
    vocab: int = 64,
    max_positions: int = 64,
    with_past: bool = True,
    fused: bool = False,
    repeat: str = "expand",
) -> onnx.ModelProto:
    """The decoder described in the module docstring (``layers`` layers, ``hidden`` wide, SwiGLU
    ``ffn`` wide, ``heads`` query heads over ``kv_heads`` cached heads; ``fused``: attention as
    com.microsoft ``GroupQueryAttention``; ``repeat``: the unfused repeat_kv idiom, see
    ``_Graph.repeat_kv``). ``with_past=False`` is the first-step decoder optimum exports beside it
    (``decoder_model.onnx``): no ``past_key_values.*`` inputs, ``present.*`` are the new keys and
    values, the same weights (unfused only)."""
    if fused and not with_past:
        raise ValueError("the fused decoder is built with its past only")
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden}, heads {heads}, kv_heads {kv_heads} do not divide")
    d = hidden // heads
    g = _Graph(seed)

    x = g.op(
        "Gather", [g.weight("model.embed_tokens.weight", (vocab, hidden), 1.0), "input_ids"], "/model/embed_tokens"
    )
    if fused:
        seqlens, total, cos_cache, sin_cache = _gqa_inputs(g, max_positions, d)
    else:
        cos, sin = _rotary(g, max_positions, d)
        mask = _mask(g, "past_key_values.0.key" if with_past else None)
        scale = g.const("model.attn.scale", 1.0 / np.sqrt(d), np.float32)

    for i in range(layers):
        s, p = f"/model/layers.{i}", f"model.layers.{i}"
        a, ap = f"{s}/self_attn", f"{p}.self_attn"
        h = g.rms_norm(x, hidden, f"{s}/input_layernorm", f"{p}.input_layernorm")
        if fused:
            q = g.linear(h, hidden, heads * d, f"{a}/q_proj", f"{ap}.q_proj")
            k = g.linear(h, hidden, kv_heads * d, f"{a}/k_proj", f"{ap}.k_proj")
            v = g.linear(h, hidden, kv_heads * d, f"{a}/v_proj", f"{ap}.v_proj")
            y = _gqa(g, [q, k, v], i, [seqlens, total, cos_cache, sin_cache], heads, kv_heads, a)
            y = g.linear(y, hidden, hidden, f"{a}/o_proj", f"{ap}.o_proj")
            x = _mlp(g, g.op("Add", [x, y], s), hidden, ffn, s, p)
            continue
        q = g.to_heads(g.linear(h, hidden, heads * d, f"{a}/q_proj", f"{ap}.q_proj"), heads, d, a, ap)
        k = g.to_heads(g.linear(h, hidden, kv_heads * d, f"{a}/k_proj", f"{ap}.k_proj"), kv_heads, d, a, ap)
        v = g.to_heads(g.linear(h, hidden, kv_heads * d, f"{a}/v_proj", f"{ap}.v_proj"), kv_heads, d, a, ap)
        q, k = g.rope(q, cos, sin, d, a, ap), g.rope(k, cos, sin, d, a, ap)
        if with_past:
            k = g.op("Concat", [f"past_key_values.{i}.key", k], a, axis=2, output=f"present.{i}.key")
            v = g.op("Concat", [f"past_key_values.{i}.value", v], a, axis=2, output=f"present.{i}.value")
        else:
            k = g.op("Identity", [k], a, output=f"present.{i}.key")
            v = g.op("Identity", [v], a, output=f"present.{i}.value")
        k = g.repeat_kv(k, heads // kv_heads, heads, d, a, ap, repeat)
        v = g.repeat_kv(v, heads // kv_heads, heads, d, a, ap, repeat)
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], a, perm=[0, 1, 3, 2])], a), scale], a)
        probs = g.op("Softmax", [g.op("Add", [scores, mask], a)], a, axis=-1)
        y = g.op("Transpose", [g.op("MatMul", [probs, v], a)], a, perm=[0, 2, 1, 3])
        target = g.op("Concat", [g.shape(y, a, 0, 2), g.const(f"{ap}.hidden", [hidden])], a, axis=0)
        y = g.linear(g.op("Reshape", [y, target], a), hidden, hidden, f"{a}/o_proj", f"{ap}.o_proj")
        x = _mlp(g, g.op("Add", [x, y], s), hidden, ffn, s, p)

    x = g.rms_norm(x, hidden, "/model/norm", "model.norm")
    g.op("MatMul", [x, g.weight("lm_head.weight", (hidden, vocab), hidden**-0.5)], "/lm_head", output="logits")

    cache = ["batch", kv_heads, "past_seq", d]
    present = ["batch", kv_heads, "total_seq" if with_past else "seq", d]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            if with_past:
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, cache))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present))
    graph = helper.make_graph(g.nodes, "kv_decoder", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
    model.producer_name = "graphprune.models.kv_decoder"
    return model
