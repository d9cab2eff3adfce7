"""onnxruntime's fused com.microsoft ops (what its transformer optimizer and 4-bit quantizer
write) are prunable: shapes flow through them, their rules couple heads and MLP widths, the
pruned models run and equal their masked references, and their MACs are counted."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.ir.graph import infer_shapes
from graphprune.objectives.cost import cost_of
from models import fused

pytest.importorskip("onnxruntime.transformers.optimizer")

MS = "com.microsoft"


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node if n.domain == MS}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attr(model: onnx.ModelProto, op: str, name: str):
    (node,) = [n for n in model.graph.node if n.op_type == op]
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _kept_blocks(original: np.ndarray, pruned: np.ndarray, width: int) -> list[int]:
    """Which ``width``-column blocks of ``original`` survive, in order, in ``pruned``."""
    blocks = [original[:, i : i + width] for i in range(0, original.shape[1], width)]
    kept = []
    for j in range(0, pruned.shape[1], width):
        kept.append(next(i for i, b in enumerate(blocks) if np.array_equal(b, pruned[:, j : j + width])))
    return kept


@pytest.fixture(scope="module")
def bert() -> onnx.ModelProto:
    return fused.optimizer_fused_bert(embed=32, heads=4, mlp=64, norm="post")


def test_the_optimizer_fuses_the_bert_block_into_contrib_ops(bert):
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= _ops(bert)
    assert not any(n.op_type == "Softmax" for n in bert.graph.node)


def test_shapes_flow_through_contrib_ops(bert):
    shapes = infer_shapes(bert)
    outputs = [o for n in bert.graph.node for o in n.output if o]
    assert all(shapes.get(o) is not None and None not in shapes[o] for o in outputs)
    (attn,) = [n for n in bert.graph.node if n.op_type == "Attention"]
    assert shapes[attn.output[0]] == (1, 8, 32)


def test_heads_and_mlp_width_of_a_fused_bert_are_prunable(bert):
    deps = analyze(bert)
    by_unit = {g.unit: g for g in deps.prunable_groups()}
    assert set(by_unit) == {"heads", "mlp"}
    assert by_unit["heads"].size == 4 and by_unit["heads"].facts["heads"] == 8
    assert by_unit["mlp"].size == 64
    # the hidden width goes through SkipLayerNormalization: blocked, with the op named
    hidden = deps.group_of("layers.0.mlp.fc2.weight", 1)
    assert not hidden.prunable and any("SkipLayerNormalization over axis 2" in r for r in hidden.reasons)


def test_a_fused_bert_prunes_heads_and_mlp_exactly(bert):
    result = graphprune.prune(bert, ratio=0.5, units=("heads", "mlp"), latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.exact.max_rel_diff < 1e-4
    pruned = result.model
    w = _weights(pruned)
    assert w["Attention_0_qkv_weight"].shape == (32, 48) and w["Attention_0_qkv_bias"].shape == (48,)
    assert _attr(pruned, "Attention", "num_heads") == 2  # = 48 / 3 / head size 8
    assert w["layers.0.attn.out_proj.weight"].shape == (16, 32)
    assert w["layers.0.mlp.fc1.weight"].shape == (32, 32) and w["layers.0.mlp.fc2.weight"].shape == (32, 32)


def test_a_pruned_fused_bert_equals_the_original_with_those_heads_and_neurons_zeroed(bert):
    """An independent reference: the original model with the out_proj rows of the removed
    heads and the fc2 rows of the removed neurons set to zero."""
    pruned = graphprune.prune(bert, ratio=0.5, units=("heads", "mlp"), validate=False, latency=False).model
    orig, new = _weights(bert), _weights(pruned)
    heads = _kept_blocks(orig["Attention_0_qkv_weight"][:, :32], new["Attention_0_qkv_weight"][:, :16], 8)
    neurons = _kept_blocks(orig["layers.0.mlp.fc1.weight"], new["layers.0.mlp.fc1.weight"], 1)
    assert len(heads) == 2 and len(neurons) == 32
    reference = onnx.ModelProto()
    reference.CopyFrom(bert)
    for t in reference.graph.initializer:
        if t.name == "layers.0.attn.out_proj.weight":
            a = numpy_helper.to_array(t).copy()
            a[[r for r in range(32) if r // 8 not in heads]] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
        if t.name == "layers.0.mlp.fc2.weight":
            a = numpy_helper.to_array(t).copy()
            a[[r for r in range(64) if r not in neurons]] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    x = np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(reference, x), rtol=1e-4, atol=1e-5)


def test_pre_norm_skip_layer_norm_with_its_sum_output_keeps_the_mlp_prunable():
    model = fused.optimizer_fused_bert(norm="pre")
    (sln,) = [n for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    assert len(sln.output) == 4 and sln.output[3]  # input_skip_bias_sum feeds the residual
    result = graphprune.prune(model, ratio=0.5, units=("heads", "mlp"), latency=False)
    assert result.report.passed and result.report.exact.checked
    assert _attr(result.model, "Attention", "num_heads") == 2


def test_inexact_analysis_lets_the_hidden_width_through_skip_layer_norm(bert):
    deps = analyze(bert, inexact=True)
    hidden = deps.group_of("layers.0.mlp.fc2.weight", 1)
    assert "inexact" in hidden.facts and hidden.unit == "hidden"
    assert {"layers.0.norm2.weight", "layers.0.mlp.fc2.bias"} <= {m.tensor for m in hidden.members}


def test_macs_of_contrib_ops_are_counted_and_drop_after_pruning(bert):
    before = cost_of(bert)
    # Attention: projection 8*32*96 + scores 8*8*32 + context 8*8*32
    assert before.flops_by_op["Attention"] == 8 * 32 * 96 + 2 * 8 * 8 * 32
    assert before.flops_by_op["BiasGelu"] == 8 * 64 and before.unknown_nodes == 0
    pruned = graphprune.prune(bert, ratio=0.5, units=("heads", "mlp"), validate=False, latency=False).model
    after = cost_of(pruned)
    assert after.flops_by_op["Attention"] == before.flops_by_op["Attention"] // 2
    assert 0 < after.flops < before.flops


@pytest.mark.parametrize("rope", [False, True])
def test_multi_head_attention_prunes_whole_heads_exactly(rope):
    model = fused.mha_block(embed=32, heads=4, rope=rope)
    heads = analyze(model).group_of("q_proj.weight", 1)
    assert heads.prunable and heads.unit == "heads" and heads.size == 4
    assert {"k_proj.weight", "v_proj.weight", "out_proj.weight"} <= {m.tensor for m in heads.members}
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    assert _attr(result.model, "MultiHeadAttention", "num_heads") == 2
    if rope:
        assert {
            helper.get_attribute_value(n.attribute[0])
            for n in result.model.graph.node
            if n.op_type == "RotaryEmbedding"
        } == {2}


def test_fused_matmul_with_transposed_weight_prunes_exactly():
    model = fused.fused_matmul_mlp(hidden=16, ffn=32)
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    assert _weights(result.model)["up.weight"].shape == (16, 16)  # rows of the transposed weight


def test_bias_split_gelu_removes_both_halves_of_a_channel():
    """BiasSplitGelu has no CPU kernel: the pruned model is checked with numpy."""
    model = fused.bias_split_gelu_mlp(hidden=16, ffn=32)
    group = analyze(model).group_of("down.weight", 0)
    assert group.prunable and group.size == 32
    up = next(m for m in group.members if m.tensor == "up.weight")
    assert up.indices[3].tolist() == [3, 35]  # channel 3 owns columns 3 and 32 + 3
    pruned = graphprune.prune(model, ratio=0.5, validate=False, latency=False).model
    w0, w1 = _weights(model), _weights(pruned)
    assert w1["up.weight"].shape == (16, 32) and w1["up.bias"].shape == (32,) and w1["down.weight"].shape == (16, 16)

    def run(w, x, keep_rows=None):
        h = x @ w["up.weight"] + w["up.bias"]
        d = h.shape[-1] // 2
        g = h[..., d:]
        a = h[..., :d] * 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        down = w["down.weight"] if keep_rows is None else np.where(keep_rows[:, None], w["down.weight"], 0)
        return a @ down

    kept = _kept_blocks(w0["up.weight"][:, :32], w1["up.weight"][:, :16], 1)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.testing.assert_allclose(run(w1, x), run(w0, x, np.isin(np.arange(32), kept)), rtol=1e-4, atol=1e-5)


def test_matmul_nbits_output_axis_prunes_exactly():
    model = fused.nbits_mlp(hidden=64, ffn=256, quantize=("up",))
    assert _ops(model) == {"MatMulNBits"}
    group = analyze(model).group_of("up_Q4", 0)
    assert group.prunable and group.unit == "mlp" and group.size == 256
    assert group.anchor.tensor == "up_scales"  # scored by the scales, not by B's packed codes
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    w = _weights(result.model)
    assert w["up_Q4"].shape == (128, 2, 16) and w["up_scales"].shape == (128, 2) and w["down"].shape == (128, 64)
    assert _attr(result.model, "MatMulNBits", "N") == 128
    assert cost_of(result.model).flops_by_op["MatMulNBits"] == 4 * 128 * 64


@pytest.mark.parametrize("symmetric,unit", [(True, 32), (False, 64)])
def test_matmul_nbits_input_axis_prunes_in_whole_quantization_blocks(symmetric, unit):
    """K goes in blocks of block_size; with packed 4-bit zero points two blocks share a byte."""
    model = fused.nbits_mlp(hidden=64, ffn=256, block_size=32, symmetric=symmetric)
    group = analyze(model).group_of("up_Q4", 0)
    assert group.prunable and group.size == 256 // unit
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    nodes = {n.name: n for n in result.model.graph.node}
    down = {a.name: helper.get_attribute_value(a) for a in nodes["down_Q4"].attribute}
    assert down["K"] == 128 and _weights(result.model)["down_Q4"].shape == (64, 4, 16)


def _single(op: str, inputs, outputs, attrs, value_info, inits=()) -> onnx.ModelProto:
    node = helper.make_node(op, [i for i, _ in inputs], [o for o, _ in outputs], name=op.lower(), domain=MS, **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs if n not in {i.name for i in inits}],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs[:1]],
        list(inits),
        value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in value_info],
    )
    return helper.make_model(graph, opset_imports=fused.OPSETS)


def test_embed_layer_normalization_blocks_the_hidden_axis_with_a_reason():
    model = fused.optimizer_fused_bert()
    # in front of the block: EmbedLayerNormalization makes its input
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((50, 32)).astype(np.float32), "word"),
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "pos"),
        numpy_helper.from_array(np.ones(32, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(32, np.float32), "beta"),
    ]
    emb = helper.make_node(
        "EmbedLayerNormalization", ["ids", "", "word", "pos", "", "gamma", "beta"], ["input", "mask_index"],
        name="embed", domain=MS, epsilon=1e-5,
    )  # fmt: skip
    g = model.graph
    g.node.insert(0, emb)
    g.initializer.extend(inits)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 8]))
    deps = analyze(model)
    hidden = deps.group_of("word", 1) or deps.group_of("layers.0.attn.out_proj.weight", 1)
    assert hidden is not None and not hidden.prunable
    assert any("EmbedLayerNormalization makes the hidden axis" in r for r in hidden.reasons)
    assert {g.unit for g in deps.prunable_groups()} == {"heads", "mlp"}


def test_group_query_attention_without_its_sequence_lengths_blocks_with_a_reason():
    model = fused.mha_block(embed=32, heads=4)
    (mha,) = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    mha.op_type = "GroupQueryAttention"
    del mha.attribute[:]
    mha.attribute.extend([helper.make_attribute("num_heads", 4), helper.make_attribute("kv_num_heads", 4)])
    model.graph.value_info.append(helper.make_tensor_value_info("ctx", TensorProto.FLOAT, [1, 8, 32]))
    heads = analyze(model).group_of("q_proj.weight", 1)
    assert not heads.prunable
    assert any("GroupQueryAttention" in r and "seqlens_k and total_sequence_length" in r for r in heads.reasons)


@pytest.mark.parametrize("op", ["Gelu", "QuickGelu", "FastGelu", "BiasGelu"])
def test_an_mlp_through_a_fused_activation_prunes_exactly(op):
    model = fused.activation_mlp(op, hidden=16, ffn=32)
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    w = _weights(result.model)
    assert w["up.weight"].shape == (16, 16) and w["down.weight"].shape == (16, 16)
    if op in ("FastGelu", "BiasGelu"):
        assert w["up.bias"].shape == (16,)


def test_fused_conv_and_fused_gemm_prune_like_conv_and_gemm():
    """FusedConv's Z input (a residual added before the activation) joins its output channels;
    shapes through FusedConv/FusedGemm come from their standard ops."""
    model = fused.fused_conv_gemm(channels=8, size=6, features=16)
    deps = analyze(model)
    channels = deps.group_of("conv1.weight", 0)
    assert channels.prunable and channels.size == 8
    assert {"conv2.weight", "c1", "c2", "fc1.weight"} <= {m.tensor for m in channels.members}
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    w = _weights(result.model)
    assert w["conv2.weight"].shape == (4, 4, 3, 3) and w["fc1.weight"].shape == (8, 144)


def test_a_gpt2_optimized_decoder_prunes_heads_and_mlp_exactly():
    """The gpt2 optimizer fuses RMSNorm + residual into SkipSimplifiedLayerNormalization and
    writes SimplifiedLayerNormalization in the default domain (onnxruntime registers it there;
    onnx's checker rejects it, in the original model too, so only the run and exactness are
    asserted here)."""
    from models.transformers import decoder_block

    model = fused.optimize(decoder_block(embed=32, heads=8, kv_heads=8, mlp=48), "gpt2", 8, 32)
    assert "SkipSimplifiedLayerNormalization" in _ops(model)
    units = sorted(g.unit for g in analyze(model).prunable_groups())
    assert units == ["heads", "mlp"]
    result = graphprune.prune(model, ratio=0.5, units=("heads", "mlp"), latency=False)
    assert result.report.runtime["passed"] and result.report.exact.checked and result.report.exact.passed
    assert result.report.flops_after < result.report.flops_before


def test_a_vit_optimized_vit_prunes_heads_and_mlp_exactly():
    from models.transformers import tiny_vit

    model = fused.optimize(tiny_vit(layers=2), "vit", 4, 32)
    assert {"SkipLayerNormalization", "BiasGelu"} <= _ops(model)
    units = sorted(g.unit for g in analyze(model).prunable_groups())
    assert units == ["heads", "heads", "mlp", "mlp"]
    result = graphprune.prune(model, ratio=0.5, units=("heads", "mlp"), latency=False)
    assert result.report.passed and result.report.exact.checked


def _attention_block(qkv_sizes=(32, 32, 16), heads: int = 4) -> onnx.ModelProto:
    """input [1, 8, 32] -> Attention(packed [32, q+k+v], qkv_hidden_sizes, mask) -> out_proj [v, 32]."""
    rng = np.random.default_rng(3)
    total, v = sum(qkv_sizes), qkv_sizes[2]
    inits = [
        numpy_helper.from_array((rng.standard_normal((32, total)) / 6).astype(np.float32), "qkv.weight"),
        numpy_helper.from_array((rng.standard_normal(total) / 10).astype(np.float32), "qkv.bias"),
        numpy_helper.from_array((rng.standard_normal((v, 32)) / 4).astype(np.float32), "out_proj.weight"),
    ]
    nodes = [
        helper.make_node(
            "Attention", ["input", "qkv.weight", "qkv.bias", "mask"], ["ctx"], name="attn", domain=MS,
            num_heads=heads, qkv_hidden_sizes=list(qkv_sizes),
        ),
        helper.make_node("MatMul", ["ctx", "out_proj.weight"], ["output"], name="out_proj"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 32]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, [1, 8]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 32])],
        inits,
    )
    return helper.make_model(graph, opset_imports=fused.OPSETS)


def test_attention_with_qkv_hidden_sizes_prunes_heads_of_every_segment():
    model = _attention_block(qkv_sizes=(32, 32, 16), heads=4)
    heads = analyze(model).group_of("out_proj.weight", 0)
    assert heads.prunable and heads.unit == "heads" and heads.size == 4
    packed = next(m for m in heads.members if m.tensor == "qkv.weight" and m.axis == 1)
    # head 1: q columns 8..15, k columns 32+8..32+15, v columns 64+4..64+7
    assert packed.indices[1].tolist() == [*range(8, 16), *range(40, 48), *range(68, 72)]
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)}
    feeds["mask"] = np.ones((1, 8), np.int32)
    result = graphprune.prune(model, ratio=0.5, latency=False, feeds=feeds)
    assert result.report.passed and result.report.exact.checked
    assert _attr(result.model, "Attention", "num_heads") == 2
    assert _attr(result.model, "Attention", "qkv_hidden_sizes") == [16, 16, 8]
    assert _weights(result.model)["qkv.weight"].shape == (32, 40)
