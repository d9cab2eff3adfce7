"""QOperator models (``quantize_static(quant_format=QOperator)``, ``quantize_dynamic``) prune.

Integer ops sum exact integers: the masked reference (weights of removed input channels set
to their zero point) and the pruned model compute the same sums, so a right plan gives the
same outputs (held to the float tolerance, no quantization step allowed) and a wrong one,
even one weight cut at the wrong channels (1 step off), fails.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_quantized import quantize

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.analysis.plan import Plan, removed_entries
from graphprune.edit.surgery import apply_plan
from graphprune.validation.contract import EXACT_RTOL, check_pruned, run
from models import builders, variants

ort_quant = pytest.importorskip("onnxruntime.quantization")


@pytest.fixture
def qop_net(tmp_path) -> onnx.ModelProto:
    return quantize(variants.fold_batchnorm(builders.residual_net(width=16, blocks=3)), tmp_path, fmt="QOperator")


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_a_qoperator_resnet_has_prunable_groups(qop_net):
    assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm"} <= ops(qop_net)
    deps = analyze(qop_net)
    assert len(deps.prunable_groups()) >= 3
    assert not any("no rule" in note for note in deps.notes), deps.notes


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_a_qoperator_resnet_prunes_exactly_with_no_step_allowed(qop_net, ratio):
    result = graphprune.prune(qop_net, ratio=ratio)
    exact = result.report.exact
    assert exact.checked and exact.passed, exact
    # every sum over a removed channel is of integers: held to the float tolerance, not in steps
    assert exact.max_rel_diff == 0.0 and exact.tolerance == EXACT_RTOL and exact.tolerance_steps is None
    assert result.report.params_after < result.report.params_before
    # per-channel weight scales and zero points lost the rows of their weights
    pruned = {t.name: t for t in result.model.graph.initializer}
    for n in result.model.graph.node:
        if n.op_type == "QLinearConv":
            w_rows = pruned[n.input[3]].dims[0]
            assert pruned[n.input[4]].dims == [w_rows] and pruned[n.input[5]].dims == [w_rows]
    feeds = builders.random_input(qop_net)
    assert run(result.model, feeds)[0].shape == run(qop_net, feeds)[0].shape


def test_a_plan_cut_at_the_wrong_indices_fails_on_the_qoperator_model(qop_net):
    deps = analyze(qop_net)
    plan = graphprune.prune(qop_net, ratio=0.5, validate=False).plan
    shifted = Plan({gid: np.unique((idx + 1) % deps.groups[gid].size) for gid, idx in plan.removals.items()})
    assert not shifted.same_removals(plan)
    v = check_pruned(qop_net, apply_plan(qop_net, deps, shifted), deps, plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed, v.exact


def test_one_qlinearconv_weight_sliced_at_the_wrong_channels_fails(qop_net):
    # Every member cut right except one QLinearConv's int8 weight, whose kept input channels
    # are the wrong ones (its first kept channel replaced by a removed one).
    result = graphprune.prune(qop_net, ratio=0.5, validate=False)
    deps, plan = result.deps, result.plan
    removed = removed_entries(deps, plan)
    before = {t.name: numpy_helper.to_array(t) for t in qop_net.graph.initializer}
    conv_weights = {n.input[3] for n in qop_net.graph.node if n.op_type == "QLinearConv"}
    tensor, axis = next(
        (t, ax) for (t, ax), idx in sorted(removed.items()) if ax == 1 and t in conv_weights and len(idx)
    )
    idx = removed[(tensor, axis)]
    keep = np.setdiff1d(np.arange(before[tensor].shape[axis]), idx)
    keep[0] = idx[0]
    w = np.delete(before[tensor], removed.get((tensor, 0), np.zeros(0, np.int64)), axis=0)
    wrong = onnx.ModelProto()
    wrong.CopyFrom(result.model)
    init = next(t for t in wrong.graph.initializer if t.name == tensor)
    init.CopyFrom(numpy_helper.from_array(np.take(w, np.sort(keep), axis=axis), tensor))
    v = check_pruned(qop_net, wrong, deps, plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed, v.exact


@pytest.mark.parametrize(
    "build, quantized_ops",
    [
        (lambda: builders.dense_block(channels=24, growth=8, layers=4), {"QLinearConcat", "QLinearAveragePool"}),
        (lambda: builders.inception_block(), {"QLinearConcat", "QLinearGlobalAveragePool"}),
        (lambda: builders.flatten_gemm(head="matmul"), {"QLinearMatMul", "QLinearAdd"}),
        (lambda: builders.depthwise_separable(), {"QLinearConv", "QLinearAdd"}),
        (
            lambda: builders.conv_chain(activations=["leaky_relu", "sigmoid", "relu", "leaky_relu"]),
            {"QLinearLeakyRelu", "QLinearSigmoid"},
        ),
    ],
    ids=["dense", "inception", "matmul_head", "depthwise", "activations"],
)
def test_qoperator_builders_prune_every_group_exactly(tmp_path, build, quantized_ops):
    model = quantize(variants.fold_batchnorm(build()), tmp_path, fmt="QOperator")
    assert quantized_ops <= ops(model)
    deps = analyze(model)
    # contrib ops are shaped (ortshapes) and have rules: nothing blocks for want of either
    assert not any("no rule" in n or "shape unknown" in n for n in deps.notes), deps.notes
    result = graphprune.prune(model, ratio=0.3)
    assert result.report.exact.checked and result.report.exact.passed, result.report.exact
    assert result.report.exact.max_rel_diff == 0.0  # integer sums: nothing to round differently
    assert result.report.params_after < result.report.params_before


@pytest.fixture
def dynamic_net(tmp_path) -> onnx.ModelProto:
    """``quantize_dynamic`` of a conv net with a MatMul head: ConvInteger, MatMulInteger and
    DynamicQuantizeLinear before each."""
    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(variants.fold_batchnorm(builders.flatten_gemm(head="matmul")), src)
    ort_quant.quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=ort_quant.QuantType.QInt8)
    return onnx.load(dst)


def test_a_quantize_dynamic_model_prunes_exactly(dynamic_net):
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= ops(dynamic_net)
    result = graphprune.prune(dynamic_net, ratio=0.3)
    exact = result.report.exact
    # DynamicQuantizeLinear's range is taken on the masked float input: the same as the pruned one's
    assert exact.checked and exact.passed and exact.max_rel_diff == 0.0, exact
    assert result.report.params_after < result.report.params_before


def test_a_plan_cut_at_the_wrong_indices_fails_on_the_dynamic_model(dynamic_net):
    deps = analyze(dynamic_net)
    plan = graphprune.prune(dynamic_net, ratio=0.5, validate=False).plan
    shifted = Plan({gid: np.unique((idx + 1) % deps.groups[gid].size) for gid, idx in plan.removals.items()})
    v = check_pruned(dynamic_net, apply_plan(dynamic_net, deps, shifted), deps, plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed, v.exact


@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool_passes_its_channel_axis_through(channels_last):
    # QLinearConv (6 filters) -> [Transpose to NHWC] -> QLinearGlobalAveragePool: the filters
    # are the pool output's axis 1, or its last axis with channels_last.
    h = onnx.helper
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(np.ones((6, 3, 3, 3), np.int8), "w"),
        numpy_helper.from_array(np.full(6, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(6, np.int8), "w_zp"),
    ]
    nodes = [h.make_node("QLinearConv", ["x", "s", "zp", "w", "w_s", "w_zp", "s", "zp"], ["c"], pads=[1, 1, 1, 1])]
    pooled = "c"
    if channels_last:
        nodes.append(h.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]))
        pooled = "t"
    nodes.append(
        h.make_node(
            "QLinearGlobalAveragePool",
            [pooled, "s", "zp", "s", "zp"],
            ["y"],
            domain="com.microsoft",
            channels_last=channels_last,
        )
    )
    out = [1, 1, 1, 6] if channels_last else [1, 6, 1, 1]
    graph = h.make_graph(
        nodes,
        "gap",
        [h.make_tensor_value_info("x", onnx.TensorProto.UINT8, [1, 3, 4, 4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.UINT8, out)],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    deps = analyze(model)
    filters = deps.group_of("w", 0)
    assert filters is not None
    assert filters is deps.group_of("w_s", 0) is deps.group_of("w_zp", 0)
    assert filters is deps.group_of("y", 3 if channels_last else 1)
    assert filters is not deps.group_of("y", 1 if channels_last else 3)


def test_a_qgemm_head_counts_its_macs_as_the_gemm_it_quantizes(qop_net):
    from graphprune.objectives.cost import node_macs

    gemm = next(n for n in qop_net.graph.node if n.op_type == "QGemm")
    shapes = analyze(qop_net).view.shapes
    a, b = shapes[gemm.input[0]], shapes[gemm.input[3]]
    n_out = b[0] if next((x.i for x in gemm.attribute if x.name == "transB"), 0) else b[1]
    assert node_macs(gemm, shapes) == a[0] * a[1] * n_out > 0
