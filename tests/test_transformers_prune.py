"""Attention heads and MLP width prune exactly in every transformer block builder."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import graphprune
from models import transformers as T

RATIOS = [0.25, 0.5, 0.75]


def _weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name", sorted(T.BUILDERS))
def test_transformer_block_prunes_exactly(name, ratio):
    result = graphprune.prune(T.BUILDERS[name](), ratio=ratio, latency=False)
    r = result.report
    assert r.checker["passed"], r.checker["error"]
    assert r.runtime["passed"], r.runtime["error"]
    assert r.exact.checked and r.exact.passed, r.exact.max_rel_diff
    assert r.groups_pruned > 0 and r.params_after < r.params_before


@pytest.mark.parametrize(
    "name, heads",
    [("encoder_pre_separate", 4), ("encoder_post_separate", 4), ("encoder_pre_packed_split", 4),
     ("encoder_pre_packed_gather", 4), ("decoder_mha", 8), ("tiny_vit", 4)],
)  # fmt: skip
def test_heads_are_found_as_heads(name, heads):
    deps = graphprune.analyze(T.BUILDERS[name]())
    head_groups = [g for g in deps.prunable_groups() if g.unit == "heads"]
    assert head_groups and all(g.size == heads for g in head_groups)
    assert all(g.describe_size.endswith(f"heads x {g.facts['heads']}") for g in head_groups)


def test_pruning_heads_removes_whole_heads_from_q_k_v_and_the_output_projection():
    model = T.encoder_block(embed=32, heads=4, qkv="separate")
    plan_result = graphprune.prune(model, ratio=0.5, units=["heads"], latency=False)
    assert plan_result.report.exact.passed
    w = _weights(plan_result.model)
    d = 32 // 4
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert next(v for k, v in w.items() if proj in k and k.endswith("weight")).shape == (32, 2 * d)
    assert next(v for k, v in w.items() if "out_proj" in k and k.endswith("weight")).shape == (2 * d, 32)
    mlp = next(v for k, v in w.items() if "fc1" in k and k.endswith("weight"))
    assert mlp.shape[1] == 64  # --unit heads leaves the MLP alone


def test_packed_qkv_loses_the_same_head_in_q_k_and_v():
    model = T.encoder_block(embed=32, heads=4, qkv="packed_gather")
    deps = graphprune.analyze(model)
    heads = next(g for g in deps.prunable_groups() if g.unit == "heads")
    packed = next(m for m in heads.members if m.role == "out" and m.tensor.endswith("weight"))
    d = 8
    # head 1 owns columns d..2d of q, of k (offset 32) and of v (offset 64)
    assert sorted(packed.indices[1].tolist()) == [
        *range(d, 2 * d),
        *range(32 + d, 32 + 2 * d),
        *range(64 + d, 64 + 2 * d),
    ]
    entry = {"anchor": packed.tensor, "axis": packed.axis, "remove": packed.indices[1].tolist()}
    result = graphprune.prune(model, plan={"groups": [entry]}, latency=False)
    assert result.report.exact.passed


def test_gqa_unit_is_a_key_value_head_with_the_query_heads_that_read_it():
    model = T.decoder_block(embed=32, heads=8, kv_heads=2)
    deps = graphprune.analyze(model)
    group = next(g for g in deps.prunable_groups() if g.unit == "heads")
    assert group.size == 2 and group.facts["query_heads_per_unit"] == 4
    q = next(m for m in group.members if m.tensor.endswith("q_proj.weight") and m.axis == 1)
    k = next(m for m in group.members if m.tensor.endswith("k_proj.weight") and m.axis == 1)
    assert q.indices.shape == (2, 16) and k.indices.shape == (2, 4)  # 4 query heads x head_dim 4
    assert sorted(q.indices[1].tolist()) == list(range(16, 32))  # query heads 4..7 read kv head 1
    result = graphprune.prune(model, ratio=0.5, units=["heads"], latency=False)
    assert result.report.exact.passed
    w = _weights(result.model)
    assert w["layers.0.self_attn.q_proj.weight"].shape == (32, 16)
    assert w["layers.0.self_attn.k_proj.weight"].shape == (32, 4)


def test_swiglu_gate_and_up_lose_the_same_neurons():
    model = T.decoder_block()
    result = graphprune.prune(model, ratio=0.5, units=["mlp"], latency=False)
    assert result.report.exact.passed
    w = _weights(result.model)
    gate, up, down = (w[f"layers.0.mlp.{p}_proj.weight"] for p in ("gate", "up", "down"))
    assert gate.shape[1] == up.shape[1] == down.shape[0] == 24


def test_rotary_head_dim_is_never_cut():
    deps = graphprune.analyze(T.decoder_block(rope=True))
    assert not any(g.prunable and g.unit != "heads" and g.size == 4 for g in deps.groups)
    assert any("head_dim" in r for g in deps.blocked_groups() for r in g.reasons)


def test_convnext_prunes_its_mlp_width_exactly():
    model = T.convnext_stage(blocks=2, channels=16)
    result = graphprune.prune(model, ratio=0.5, units=["mlp"], latency=False)
    assert result.report.exact.passed
    assert result.report.groups_pruned == 2
    w = _weights(result.model)
    assert [w[f"blocks.{i}.mlp.fc1.weight"].shape for i in (0, 1)] == [(16, 32), (16, 32)]
    assert [w[f"blocks.{i}.mlp.fc2.weight"].shape for i in (0, 1)] == [(32, 16), (32, 16)]
    assert [w[f"blocks.{i}.gamma"].shape for i in (0, 1)] == [(16,), (16,)]  # the stream keeps its width


def test_hidden_width_stays_untouched_by_default():
    deps = graphprune.analyze(T.encoder_block())
    stream = deps.group_of("input", 2)
    assert stream is not None and not stream.prunable


def test_units_filter_prunes_only_the_chosen_kind():
    model = T.tiny_vit()
    only_mlp = graphprune.prune(model, ratio=0.5, units=["mlp"], latency=False)
    pruned = {g.unit for g in only_mlp.deps.groups if len(only_mlp.plan.removed(g))}
    assert pruned == {"mlp"} and only_mlp.report.exact.passed
    with pytest.raises(graphprune.InputError, match="unknown unit"):
        graphprune.prune(model, units=["layers"], validate=False)


def test_pruned_attention_still_matches_numpy_softmax_attention_shapes():
    result = graphprune.prune(T.encoder_block(embed=32, heads=4), ratio=0.5, units=["heads"], latency=False)
    shapes = graphprune.analyze(result.model).view.shapes
    assert any(s is not None and len(s) == 4 and s[1] == 2 for s in shapes.values())  # [1, 2 heads, S, D]
    assert np.isfinite(result.report.fidelity.cosine)


def test_fused_onnxruntime_ops_block_what_they_touch_with_their_name(monkeypatch):
    from onnx import TensorProto, helper

    from graphprune import rules

    rng = np.random.default_rng(0)

    def w(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)

    # onnx cannot infer shapes past an onnxruntime-only op, so it goes last here
    nodes = [
        helper.make_node("MatMul", ["input", "fc1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "fc2"], ["m"], name="fc2"),
        helper.make_node("FastGelu", ["m", "b2"], ["g"], name="fast_gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "fc3"], ["output"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8])],
        [w("fc1", (8, 16)), w("fc2", (16, 12)), w("b2", (12,)), w("fc3", (12, 8))],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    assert graphprune.analyze(model).group_of("fc2", 1).prunable  # FastGelu has a rule (rules/contrib.py)
    # without it, FastGelu stands for a fused op graphprune does not know
    monkeypatch.delitem(rules.DOMAIN_RULES, ("com.microsoft", "FastGelu"))
    deps = graphprune.analyze(model)
    assert "fast_gelu (no rule for com.microsoft.FastGelu)" in deps.group_of("fc2", 1).reasons
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed and result.report.groups_pruned == 1  # fc1 -> fc2 only
    w = _weights(result.model)
    assert w["fc1"].shape == (8, 8) and w["fc2"].shape == (8, 12) and w["b2"].shape == (12,)


def test_hidden_width_prunes_only_when_asked_and_is_reported_inexact():
    model = T.tiny_vit()
    default = graphprune.prune(model, ratio=0.5, latency=False)
    assert not any(g.unit == "hidden" and len(default.plan.removed(g)) for g in default.deps.groups)
    hidden = graphprune.prune(model, ratio=0.5, units=["hidden"], latency=False)
    r = hidden.report
    assert r.checker["passed"] and r.runtime["passed"] and r.passed
    assert not r.exact.checked and r.exact.skipped_groups == ["patch_embed.proj.weight[0]"]
    assert r.params_after < r.params_before and r.fidelity.cosine is not None
    w = _weights(hidden.model)
    assert w["patch_embed.proj.weight"].shape[0] == 16 and w["norm.weight"].shape == (16,)
    # validating later reads the plan from the model and says the same
    later = graphprune.validate(model, hidden.model, latency=False)
    assert later.exact.skipped_groups == ["patch_embed.proj.weight[0]"]


def test_decomposed_layernorm_lets_hidden_width_through_only_when_inexact_is_allowed():
    from graphprune.analysis.dependency import analyze

    model = T.encoder_block(layernorm="decomposed", norm="post")
    assert not any(g.unit == "hidden" for g in analyze(model).groups)
    inexact = analyze(model, inexact=True)
    assert any(g.unit == "hidden" for g in inexact.groups)


def test_round_to_counts_channels_so_heads_still_prune():
    # 4 heads of 8: keeping 2 heads keeps 16 channels, a multiple of 8.
    result = graphprune.prune(T.encoder_block(embed=32, heads=4), ratio=0.5, units=["heads"], round_to=8)
    heads = next(g for g in result.deps.groups if g.unit == "heads")
    assert len(result.plan.removed(heads)) == 2 and result.report.exact.passed


def test_a_patch_grid_is_not_mistaken_for_heads():
    deps = graphprune.analyze(T.tiny_vit())
    assert all(g.unit != "heads" or g.weights("out") for g in deps.groups)
    assert sum(g.unit == "heads" for g in deps.groups) == 2  # one per layer
