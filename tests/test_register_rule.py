"""The public rule API: an op graphprune has no rule for becomes prunable through
``graphprune.register_rule`` alone, with the built-in rules' contract (exactness included)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune import rules
from graphprune.analysis.dependency import analyze


def _bias_gelu_mlp(ms_version: int = 1) -> onnx.ModelProto:
    """x[2,8,16] -> MatMul W1[16,32] -> com.microsoft.BiasGelu(+b[32]) -> MatMul W2[32,4] -> y.

    BiasGelu is an onnxruntime contrib op: it runs, but ONNX shape inference does not know it,
    so its output's shape is declared (as exporters that fuse it do)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("BiasGelu", ["h", "b"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "W2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 4])],
        inits,
        value_info=[helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, 8, 32])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", ms_version)]
    return helper.make_model(graph, opset_imports=opsets)


def bias_gelu_rule(node, ctx) -> None:
    """BiasGelu(x, bias): elementwise on x; the bias is indexed by x's last axis."""
    x, bias, y = node.input[0], node.input[1], node.output[0]
    for ax in range(len(ctx.shape(x) or ())):
        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
    ctx.identity(ctx.dim(x, -1), ctx.dim(bias, 0))
    ctx.role(ctx.dim(bias, 0), "param")


@pytest.fixture(autouse=True)
def without_builtin_bias_gelu(monkeypatch):
    """graphprune has a built-in BiasGelu rule (rules/contrib.py): these tests take it away to
    stand for an op graphprune does not know."""
    monkeypatch.delitem(rules.DOMAIN_RULES, ("com.microsoft", "BiasGelu"))


def _hidden_group(deps):
    return deps.group_of("W1", 1)


@pytest.fixture
def registered():
    unregister = graphprune.register_rule("com.microsoft", "BiasGelu", bias_gelu_rule)
    yield
    unregister()


def test_an_op_without_a_rule_blocks_its_channels_and_names_itself():
    group = _hidden_group(analyze(_bias_gelu_mlp()))
    assert group is not None and not group.prunable
    assert any("no rule for com.microsoft.BiasGelu" in r for r in group.reasons)


def test_a_registered_rule_makes_the_op_prunable_and_the_prune_exact(registered):
    model = _bias_gelu_mlp()
    group = _hidden_group(analyze(model))
    assert group.prunable and group.size == 32
    assert {m.tensor for m in group.members} >= {"W1", "b", "W2", "h", "g"}
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.exact.max_rel_diff < 1e-5
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert weights["W1"].shape == (16, 16) and weights["b"].shape == (16,) and weights["W2"].shape == (16, 4)


def test_unregistering_restores_the_block():
    unregister = graphprune.register_rule("com.microsoft", "BiasGelu", bias_gelu_rule)
    assert _hidden_group(analyze(_bias_gelu_mlp())).prunable
    unregister()
    assert not _hidden_group(analyze(_bias_gelu_mlp())).prunable


def test_a_rule_applies_only_to_the_opset_versions_it_was_registered_for():
    unregister = graphprune.register_rule("com.microsoft", "BiasGelu", bias_gelu_rule, since_version=2)
    try:
        assert not _hidden_group(analyze(_bias_gelu_mlp(ms_version=1))).prunable
        assert _hidden_group(analyze(_bias_gelu_mlp(ms_version=2))).prunable
    finally:
        unregister()


def _scaled_mlp() -> onnx.ModelProto:
    """x -> MatMul W1[16,32] -> example.Scale(channels=32) -> MatMul W2[32,4]: a custom op with an
    attribute that names the width (no runtime has it: surgery only)."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("Scale", ["h"], ["s"], name="scale", domain="example", channels=32),
        helper.make_node("MatMul", ["s", "W2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        inits,
        value_info=[helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 32])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_a_registered_rewriter_updates_the_op_after_removal():
    def rule(node, ctx):
        for ax in range(2):
            ctx.identity(ctx.dim(node.input[0], ax), ctx.dim(node.output[0], ax))

    def rewrite(node, ctx):
        ctx.set_attr(node, "channels", ctx.new_shape(node.output[0])[1])

    unregister = graphprune.register_rule("example", "Scale", rule, rewriter=rewrite)
    try:
        result = graphprune.prune(_scaled_mlp(), ratio=0.25, validate=False, latency=False)
    finally:
        unregister()
    (scale,) = [n for n in result.model.graph.node if n.op_type == "Scale"]
    assert helper.get_attribute_value(scale.attribute[0]) == 24
    assert [t for t in result.model.graph.initializer if t.name == "W2"][0].dims == [24, 4]


def test_bad_registrations_are_refused():
    with pytest.raises(TypeError):
        graphprune.register_rule("example", "Scale", "not a function")
    with pytest.raises(ValueError):
        graphprune.register_rule("example", "Scale", bias_gelu_rule, since_version=3, until_version=2)
