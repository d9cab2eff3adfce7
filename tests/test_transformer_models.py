"""Tests for ``models/transformers.py``: every builder is a valid, runnable model, and its
structure is what it claims (numpy re-implementations from the model's own initializers)."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import transformers as tf
from models.transformers import BUILDERS

RTOL, ATOL = 1e-4, 1e-5

EXPECTED_OUTPUT = {
    "convnext_block": [1, 16, 8, 8],
    "convnext_stage": [1, 16, 8, 8],
    "tiny_vit": [1, 10],
}


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: build() for name, build in BUILDERS.items()}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.astype(np.float32)})[0]


def input_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def random_x(model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(input_shape(model)).astype(np.float32)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- numpy references

_erf = np.vectorize(math.erf)


def ref_linear(x, w, name):
    y = x @ w[f"{name}.weight"]
    return y + w[f"{name}.bias"] if f"{name}.bias" in w else y


def ref_layer_norm(x, w, name, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def ref_rms_norm(x, w, name, eps=1e-6):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w[f"{name}.weight"]


def ref_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def ref_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_attention_core(q, k, v, mask=None):
    """q [H, S, D], k/v [H, S, D] -> [S, H*D]."""
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    y = ref_softmax(scores) @ v
    return y.transpose(1, 0, 2).reshape(q.shape[1], -1)


def ref_encoder_attention(x, w, name, heads, packed):
    s, e = x.shape
    d = e // heads
    if packed:  # qkv output columns are (3, H, D)
        qkv = ref_linear(x, w, f"{name}.qkv").reshape(s, 3, heads, d)
        q, k, v = (qkv[:, i].transpose(1, 0, 2) for i in range(3))
    else:
        q, k, v = (ref_linear(x, w, f"{name}.{p}_proj").reshape(s, heads, d).transpose(1, 0, 2) for p in "qkv")
    return ref_linear(ref_attention_core(q, k, v), w, f"{name}.out_proj")


def ref_mlp(x, w, name):
    return ref_linear(ref_gelu(ref_linear(x, w, f"{name}.fc1")), w, f"{name}.fc2")


def ref_encoder_layer(x, w, name, heads, norm, packed):
    """x [S, E] (batch dropped)."""
    if norm == "pre":
        x = x + ref_encoder_attention(ref_layer_norm(x, w, f"{name}.norm1"), w, f"{name}.attn", heads, packed)
        return x + ref_mlp(ref_layer_norm(x, w, f"{name}.norm2"), w, f"{name}.mlp")
    x = ref_layer_norm(x + ref_encoder_attention(x, w, f"{name}.attn", heads, packed), w, f"{name}.norm1")
    return ref_layer_norm(x + ref_mlp(x, w, f"{name}.mlp"), w, f"{name}.norm2")


def ref_rope(x, seq, d):
    """Llama rotary embedding on [H, S, D], tables computed here (not read from the model)."""
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, d, 2) / d)
    angles = np.outer(np.arange(seq), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def ref_decoder_layer(x, w, heads, kv_heads, rope):
    s, e = x.shape
    d = e // heads
    a = "layers.0.self_attn"
    h = ref_rms_norm(x, w, "layers.0.input_layernorm")
    q = ref_linear(h, w, f"{a}.q_proj").reshape(s, heads, d).transpose(1, 0, 2)
    k = ref_linear(h, w, f"{a}.k_proj").reshape(s, kv_heads, d).transpose(1, 0, 2)
    v = ref_linear(h, w, f"{a}.v_proj").reshape(s, kv_heads, d).transpose(1, 0, 2)
    if rope:
        q, k = ref_rope(q, s, d), ref_rope(k, s, d)
    # query head j reads key/value head j // (heads / kv_heads)
    k, v = np.repeat(k, heads // kv_heads, axis=0), np.repeat(v, heads // kv_heads, axis=0)
    causal = np.tril(np.ones((s, s), dtype=bool))
    x = x + ref_linear(ref_attention_core(q, k, v, causal), w, f"{a}.o_proj")
    h = ref_rms_norm(x, w, "layers.0.post_attention_layernorm")
    gate, up = ref_linear(h, w, "layers.0.mlp.gate_proj"), ref_linear(h, w, "layers.0.mlp.up_proj")
    silu = gate / (1.0 + np.exp(-gate))
    return x + ref_linear(silu * up, w, "layers.0.mlp.down_proj")


def ref_convnext_block(x, w, name):
    """x [C, H, W] (batch dropped)."""
    c, hh, ww = x.shape
    kernel = w[f"{name}.conv_dw.weight"]  # [C, 1, 7, 7]
    padded = np.pad(x, ((0, 0), (3, 3), (3, 3)))
    y = np.zeros_like(x) + w[f"{name}.conv_dw.bias"][:, None, None]
    for i in range(7):
        for j in range(7):
            y += kernel[:, 0, i, j][:, None, None] * padded[:, i : i + hh, j : j + ww]
    y = y.transpose(1, 2, 0)  # HWC
    y = ref_layer_norm(y, w, f"{name}.norm", eps=1e-6)
    y = ref_linear(ref_gelu(ref_linear(y, w, f"{name}.mlp.fc1")), w, f"{name}.mlp.fc2")
    y = y * w[f"{name}.gamma"]
    return x + y.transpose(2, 0, 1)


def ref_tiny_vit(x, w, layers, heads, patch):
    """x [3, H, W] (batch dropped) -> logits [num_classes]."""
    c, hh, ww = x.shape
    gh, gw = hh // patch, ww // patch
    patches = x.reshape(c, gh, patch, gw, patch)
    y = np.einsum("ecuv,ciujv->eij", w["patch_embed.proj.weight"], patches) + w["patch_embed.proj.bias"][:, None, None]
    tokens = y.reshape(y.shape[0], -1).T  # [N, E], row-major over the patch grid
    tokens = np.concatenate([w["cls_token"][0], tokens], axis=0) + w["pos_embed"][0]
    for i in range(layers):
        tokens = ref_encoder_layer(tokens, w, f"layers.{i}", heads, "pre", packed=True)
    cls = ref_layer_norm(tokens, w, "norm")[0]
    return w["head.weight"] @ cls + w["head.bias"]


# ---------------------------------------------------------------------------- every builder


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_valid_and_runs(built, name):
    model = built[name]
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert opset(model) == (20 if name == "encoder_gelu_op" else 17)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    for t in model.graph.initializer:
        assert t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), t.name
    out = run(model, random_x(model))
    expected = EXPECTED_OUTPUT.get(name, [1, 8, 32])
    assert list(out.shape) == expected
    declared = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert declared == expected
    assert np.isfinite(out).all()
    assert 0.1 < out.std() < 10, "activations should stay O(1)"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_names_are_pytorch_like(built, name):
    model = built[name]
    node_names = [n.name for n in model.graph.node]
    assert len(set(node_names)) == len(node_names)
    for n in model.graph.node:
        assert re.fullmatch(r"(/[A-Za-z_][\w.]*)*/" + n.op_type + r"(_\d+)?", n.name), n.name
        assert all(o == "output" or o.startswith(n.name + "_output_") for o in n.output)
    for t in model.graph.initializer:
        assert re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", t.name), t.name


def test_builders_are_seeded():
    a, b, c = tf.encoder_block(seed=3), tf.encoder_block(seed=3), tf.encoder_block(seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def test_linear_layers_are_matmul_add(built):
    model = built["encoder_pre_separate"]
    w = weights(model)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert w[f"layers.0.attn.{proj}.weight"].shape == (32, 32)
        assert w[f"layers.0.attn.{proj}.bias"].shape == (32,)
    assert w["layers.0.mlp.fc1.weight"].shape == (32, 64)
    assert w["layers.0.mlp.fc2.weight"].shape == (64, 32)
    by_name = {n.name: n for n in model.graph.node}
    matmul, add = by_name["/layers.0/attn/q_proj/MatMul"], by_name["/layers.0/attn/q_proj/Add"]
    assert list(matmul.input)[1] == "layers.0.attn.q_proj.weight"
    assert list(add.input) == [matmul.output[0], "layers.0.attn.q_proj.bias"]
    ln_w = w["layers.0.norm1.weight"]
    assert abs(ln_w.mean() - 1) < 0.1 and 0 < ln_w.std() < 0.3


# ---------------------------------------------------------------------------- encoder


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "pre", "qkv": "separate"},
        {"norm": "post", "qkv": "separate"},
        {"norm": "pre", "qkv": "packed_split"},
        {"norm": "pre", "qkv": "packed_gather"},
        {"norm": "post", "qkv": "packed_gather"},
        {"norm": "pre", "qkv": "packed_split", "layernorm": "decomposed"},
        {"norm": "post", "qkv": "separate", "layernorm": "decomposed", "gelu": "op"},
        {"norm": "pre", "qkv": "separate", "embed": 24, "heads": 3, "mlp": 40, "seq": 5, "seed": 7},
    ],
    ids=lambda k: "-".join(f"{v}" for v in k.values()),
)
def test_encoder_matches_numpy(kwargs):
    model = tf.encoder_block(**kwargs)
    x = random_x(model)
    expected = ref_encoder_layer(
        x[0].astype(np.float64),
        weights(model),
        "layers.0",
        kwargs.get("heads", 4),
        kwargs["norm"],
        packed=kwargs["qkv"] != "separate",
    )
    close(run(model, x)[0], expected)


def test_encoder_structure():
    sep = ops(tf.encoder_block())
    assert sep["MatMul"] == 6 + 2  # q, k, v, out, fc1, fc2 + two attention MatMuls
    assert sep["LayerNormalization"] == 2 and sep["Softmax"] == 1 and sep["Erf"] == 1
    assert sep["Transpose"] == 5  # q, k, v to heads-first, k transposed, back to [1, S, H, D]
    split = ops(tf.encoder_block(qkv="packed_split"))
    assert split["Split"] == 1 and split["Squeeze"] == 3 and split["Gather"] == 0
    gather = ops(tf.encoder_block(qkv="packed_gather"))
    assert gather["Gather"] == 3 and gather["Split"] == 0
    decomposed = ops(tf.encoder_block(layernorm="decomposed"))
    assert decomposed["LayerNormalization"] == 0
    assert decomposed["ReduceMean"] == 4 and decomposed["Pow"] == 2 and decomposed["Sqrt"] == 2
    gelu_op = tf.encoder_block(gelu="op", layernorm="decomposed")  # ReduceMean takes axes as input at 20
    assert ops(gelu_op)["Gelu"] == 1 and ops(gelu_op)["Erf"] == 0 and opset(gelu_op) == 20
    onnx.checker.check_model(gelu_op, full_check=True)


def test_encoder_forms_compute_the_same_function():
    """Same seed, same weights: the packed, LayerNorm and GELU forms are only spellings."""
    x = random_x(tf.encoder_block())
    base = run(tf.encoder_block(qkv="packed_gather"), x)
    close(run(tf.encoder_block(qkv="packed_split"), x), base)
    close(run(tf.encoder_block(qkv="packed_gather", layernorm="decomposed", gelu="op"), x), base)
    plain = run(tf.encoder_block(), x)
    close(run(tf.encoder_block(layernorm="decomposed"), x), plain)
    close(run(tf.encoder_block(gelu="op"), x), plain)


def test_encoder_attention_mixes_tokens():
    """No mask in the encoder: changing the last token changes the first output token."""
    model = tf.encoder_block()
    x = random_x(model)
    x2 = x.copy()
    x2[0, -1] += random_x(model, seed=2)[0, 0]  # not a constant shift: LayerNorm would remove that
    assert np.abs(run(model, x)[0, 0] - run(model, x2)[0, 0]).max() > 1e-3


def test_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        tf.encoder_block(embed=30, heads=4)
    with pytest.raises(ValueError):
        tf.encoder_block(qkv="packed")
    with pytest.raises(ValueError):
        tf.encoder_block(norm="sandwich")


# ---------------------------------------------------------------------------- decoder


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"rope": True},
        {"kv_heads": 8},
        {"kv_heads": 1, "rope": True},
        {"bias": False},
        {"embed": 48, "heads": 6, "kv_heads": 3, "mlp": 40, "seq": 6, "rope": True, "seed": 5},
    ],
    ids=lambda k: "-".join(f"{key}={v}" for key, v in k.items()) or "default",
)
def test_decoder_matches_numpy(kwargs):
    model = tf.decoder_block(**kwargs)
    x = random_x(model)
    expected = ref_decoder_layer(
        x[0].astype(np.float64),
        weights(model),
        kwargs.get("heads", 8),
        kwargs.get("kv_heads", 2),
        kwargs.get("rope", False),
    )
    close(run(model, x)[0], expected)


@pytest.mark.parametrize("rope", [False, True])
def test_decoder_is_causal(rope):
    model = tf.decoder_block(rope=rope)
    x = random_x(model)
    base = run(model, x)
    delta = random_x(model, seed=2)[0, 0]
    later = x.copy()
    later[0, -1] += delta
    out = run(model, later)
    np.testing.assert_array_equal(out[0, :-1], base[0, :-1])  # earlier tokens cannot see it
    assert np.abs(out[0, -1] - base[0, -1]).max() > 1e-3
    earlier = x.copy()
    earlier[0, 0] += delta
    assert np.abs(run(model, earlier)[0, -1] - base[0, -1]).max() > 1e-3  # later tokens do


def test_decoder_repeat_kv_is_interleaved_not_tiled():
    """Query head j must read kv head j // 4 (repeat_interleave), not j % 2 (tile): the
    reference with the tiled grouping disagrees with the model."""
    model = tf.decoder_block()
    x = random_x(model)
    w = weights(model)
    s, e, heads, kv, d = 8, 32, 8, 2, 4
    h = ref_rms_norm(x[0].astype(np.float64), w, "layers.0.input_layernorm")
    a = "layers.0.self_attn"
    q = ref_linear(h, w, f"{a}.q_proj").reshape(s, heads, d).transpose(1, 0, 2)
    k = ref_linear(h, w, f"{a}.k_proj").reshape(s, kv, d).transpose(1, 0, 2)
    v = ref_linear(h, w, f"{a}.v_proj").reshape(s, kv, d).transpose(1, 0, 2)
    causal = np.tril(np.ones((s, s), dtype=bool))
    tiled = ref_attention_core(q, np.tile(k, (4, 1, 1)), np.tile(v, (4, 1, 1)), causal)
    right = ref_attention_core(q, np.repeat(k, 4, axis=0), np.repeat(v, 4, axis=0), causal)
    assert np.abs(tiled - right).max() > 1e-2
    weights_shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    assert weights_shapes[f"{a}.q_proj.weight"] == [e, heads * d]
    assert weights_shapes[f"{a}.k_proj.weight"] == [e, kv * d]
    assert weights_shapes[f"{a}.v_proj.weight"] == [e, kv * d]


def test_decoder_structure(built):
    gqa = ops(built["decoder_gqa"])
    assert gqa["Unsqueeze"] == 2 and gqa["Expand"] == 2
    assert gqa["Reciprocal"] == 2 and gqa["Sigmoid"] == 1 and gqa["Softmax"] == 1
    assert gqa["Neg"] == 0 and gqa["LayerNormalization"] == 0
    mask = weights(built["decoder_gqa"])["layers.0.self_attn.causal_mask"]
    assert mask.shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(mask[0, 0] < -1e8, np.triu(np.ones((8, 8), dtype=bool), 1))
    mha = ops(built["decoder_mha"])
    assert mha["Expand"] == 0 and mha["Unsqueeze"] == 0
    rope = ops(built["decoder_gqa_rope"])
    assert rope["Neg"] == 2 and rope["Slice"] == 4 and rope["Concat"] == 2
    cos = weights(built["decoder_gqa_rope"])["rotary_emb.cos"]
    assert cos.shape == (8, 4)
    nobias = built["decoder_gqa_nobias"]
    assert not any(t.name.endswith(".bias") for t in nobias.graph.initializer)
    assert ops(nobias)["MatMul"] == 7 + 2


def test_decoder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        tf.decoder_block(heads=8, kv_heads=3)
    with pytest.raises(ValueError):
        tf.decoder_block(embed=24, heads=8, rope=True)  # head dim 3 is odd


# ---------------------------------------------------------------------------- convnext and vit


@pytest.mark.parametrize("blocks", [1, 2])
def test_convnext_matches_numpy(built, blocks):
    model = built["convnext_block"] if blocks == 1 else built["convnext_stage"]
    x = random_x(model)
    w = weights(model)
    y = x[0].astype(np.float64)
    for i in range(blocks):
        y = ref_convnext_block(y, w, f"blocks.{i}")
    close(run(model, x)[0], y)


def test_convnext_structure(built):
    model = built["convnext_block"]
    assert [n.op_type for n in model.graph.node] == [
        "Conv",
        "Transpose",
        "LayerNormalization",
        "MatMul",
        "Add",
        "Div",
        "Erf",
        "Add",
        "Mul",
        "Mul",
        "MatMul",
        "Add",
        "Mul",
        "Transpose",
        "Add",
    ]
    conv = model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["group"] == 16 and attrs["kernel_shape"] == [7, 7] and attrs["pads"] == [3] * 4
    w = weights(model)
    assert w["blocks.0.mlp.fc1.weight"].shape == (16, 64) and w["blocks.0.gamma"].shape == (16,)
    assert ops(tf.convnext_stage(blocks=3))["Conv"] == 3


def test_tiny_vit_matches_numpy(built):
    model = built["tiny_vit"]
    x = random_x(model)
    expected = ref_tiny_vit(x[0].astype(np.float64), weights(model), layers=2, heads=4, patch=4)
    close(run(model, x)[0], expected)


def test_tiny_vit_structure(built):
    model = built["tiny_vit"]
    counts = ops(model)
    assert counts["Conv"] == 1 and counts["Gemm"] == 1 and counts["Concat"] == 1
    assert counts["Gather"] == 2 * 3 + 1  # q, k, v per layer + the class token
    assert counts["LayerNormalization"] == 2 * 2 + 1
    w = weights(model)
    assert w["cls_token"].shape == (1, 1, 32) and w["pos_embed"].shape == (1, 17, 32)
    assert w["layers.1.attn.qkv.weight"].shape == (32, 96)
    last = model.graph.node[-1]
    assert last.op_type == "Gemm" and last.output[0] == "output"
