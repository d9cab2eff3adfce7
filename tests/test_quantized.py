"""Exactness on graphs quantized by onnxruntime.quantization (QDQ, per channel; QOperator).

Requantization turns a float rounding difference of a shorter sum into a one-step flip:
outputs are compared in their quantization steps, and again, at float tolerance, with the
activations' fake quantization bypassed, where a wrong plan cannot hide in a step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.analysis.plan import Plan
from graphprune.edit.surgery import apply_plan
from graphprune.validation.contract import EXACT_RTOL, check_pruned, masked_reference_bytes, quantized_exactness, run
from graphprune.validation.quantized import QUANT_STEPS, fake_quant_bypassed, is_quantized, output_steps
from models import builders, variants

ort_quant = pytest.importorskip("onnxruntime.quantization")


def quantize(model: onnx.ModelProto, tmp_path: Path, fmt: str = "QDQ") -> onnx.ModelProto:
    """``model`` quantized by ``quantize_static`` (per channel, uint8 activations, int8
    weights), calibrated on four random batches."""
    src, dst = tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx"
    onnx.save(model, src)
    name = model.graph.input[0].name
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]

    class Reader(ort_quant.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    ort_quant.quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=getattr(ort_quant.QuantFormat, fmt),
        per_channel=True,
        activation_type=ort_quant.QuantType.QUInt8,
        weight_type=ort_quant.QuantType.QInt8,
    )
    return onnx.load(dst)


@pytest.fixture
def qdq_net(tmp_path) -> onnx.ModelProto:
    return quantize(variants.fold_batchnorm(builders.residual_net(width=16, blocks=3)), tmp_path)


def output_scale(model: onnx.ModelProto) -> float:
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[model.graph.output[0].name]
    assert node.op_type == "DequantizeLinear"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(inits[node.input[1]])


def test_a_qdq_model_prunes_exactly_with_the_tolerance_in_quantization_steps(qdq_net):
    result = graphprune.prune(qdq_net, ratio=0.5, latency=False)
    exact = result.report.exact
    assert result.report.groups_pruned > 0
    assert exact.checked and exact.passed, exact
    assert exact.tolerance_steps == QUANT_STEPS
    assert exact.quant_step == pytest.approx(output_scale(qdq_net))
    assert exact.max_step_diff is not None and exact.max_step_diff <= QUANT_STEPS
    assert exact.float_max_rel_diff is not None and exact.float_max_rel_diff <= EXACT_RTOL
    assert set(result.report.to_dict()["exact"]) >= {"tolerance", "tolerance_steps", "quant_step", "max_rel_diff"}


def test_one_step_flips_pass_and_three_steps_fail(qdq_net):
    # What requantization does to a correct surgery (measured: at most one step), and what it
    # does not: the comparison itself, on outputs moved by whole steps.
    deps = analyze(qdq_net)
    plan = graphprune.prune(qdq_net, ratio=0.5, validate=False).plan
    feeds = builders.random_input(qdq_net)
    ref = run(masked_reference_bytes(qdq_net, deps, plan), feeds)
    original = run(qdq_net, feeds)
    pruned = graphprune.prune(qdq_net, ratio=0.5, validate=False).model
    out = run(pruned, feeds)
    step = output_scale(qdq_net)
    for moved, ok in ((1, True), (QUANT_STEPS + 1, False)):
        shifted = [o.copy() for o in out]
        shifted[0].flat[3] += moved * step
        make_ref = lambda: masked_reference_bytes(qdq_net, deps, plan)  # noqa: E731
        exact = quantized_exactness(qdq_net, pruned, make_ref, feeds, shifted, ref, original)
        assert exact.passed is ok, (moved, exact)
        assert exact.max_step_diff == pytest.approx(moved, abs=1e-3)


def test_a_plan_cut_at_the_wrong_indices_fails_on_the_qdq_model(qdq_net):
    # The surgery removes the right number of channels, but not the ones the plan names.
    deps = analyze(qdq_net)
    plan = graphprune.prune(qdq_net, ratio=0.5, validate=False).plan
    shifted = Plan({gid: np.unique((idx + 1) % deps.groups[gid].size) for gid, idx in plan.removals.items()})
    assert not shifted.same_removals(plan)
    wrong = apply_plan(qdq_net, deps, shifted)
    v = check_pruned(qdq_net, wrong, deps, plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed
    assert v.exact.float_max_rel_diff > 100 * EXACT_RTOL


def test_one_consumer_weight_sliced_at_the_wrong_channels_fails(qdq_net):
    # Every member cut right except one consumer's int8 weight, whose kept input channels are
    # the wrong ones (its first kept channel replaced by a removed one): the surgery skipped
    # part of its rewrite. One channel of one layer: the float comparison still sees it.
    result = graphprune.prune(qdq_net, ratio=0.5, validate=False)
    deps, plan = result.deps, result.plan
    from graphprune.analysis.plan import removed_entries

    removed = removed_entries(deps, plan)
    before = {t.name: numpy_helper.to_array(t) for t in qdq_net.graph.initializer}
    target = next(
        (t, ax)
        for (t, ax), idx in sorted(removed.items())
        if ax == 1 and t in before and before[t].ndim == 4 and before[t].dtype == np.int8 and len(idx)
    )
    tensor, axis = target
    idx = removed[target]
    keep = np.setdiff1d(np.arange(before[tensor].shape[axis]), idx)
    keep[0] = idx[0]
    wrong = onnx.ModelProto()
    wrong.CopyFrom(result.model)
    init = next(t for t in wrong.graph.initializer if t.name == tensor)
    w = before[tensor]
    for ax in range(w.ndim):  # the other axes cut as the plan says
        if ax != axis:
            w = np.delete(w, removed.get((tensor, ax), np.zeros(0, np.int64)), axis=ax)
    init.CopyFrom(numpy_helper.from_array(np.take(w, np.sort(keep), axis=axis), tensor))
    v = check_pruned(qdq_net, wrong, deps, plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed, v.exact


def test_output_steps_follow_reshapes_back_to_the_dequantizer(qdq_net):
    deps = analyze(qdq_net)
    assert is_quantized(qdq_net)
    assert output_steps(qdq_net, deps.view.value) == [pytest.approx(output_scale(qdq_net))]
    assert not is_quantized(builders.residual_net(width=8, blocks=1))


def test_the_bypass_leaves_the_model_as_it_was(qdq_net):
    before = qdq_net.SerializeToString()
    with fake_quant_bypassed(qdq_net) as n:
        assert n > 0
        ops = [node.op_type for node in qdq_net.graph.node]
        assert len(ops) == len(onnx.load_from_string(before).graph.node)
        # every activation quantizer is read as float now; weights stay quantized
        assert ops.count("DequantizeLinear") < [x.op_type for x in onnx.load_from_string(before).graph.node].count(
            "DequantizeLinear"
        )
        feeds = builders.random_input(qdq_net)
        run(qdq_net, feeds)
    assert qdq_net.SerializeToString() == before


def test_each_step_of_a_pipeline_on_a_qdq_model_is_held_in_quantization_steps(qdq_net):
    from graphprune.api import run_passes
    from graphprune.passes.filter import FilterPruning

    result = run_passes(qdq_net, [FilterPruning(ratio=0.3), FilterPruning(ratio=0.3)], latency=False)
    exact = result.report.exact
    assert exact.checked and exact.passed, exact
    assert exact.tolerance_steps == QUANT_STEPS and exact.quant_step == pytest.approx(output_scale(qdq_net))
    assert exact.float_max_rel_diff is not None and exact.float_max_rel_diff <= EXACT_RTOL


def test_an_output_without_a_step_is_held_by_the_bypassed_comparison():
    # Q/DQ on the convs' inputs only (variants.to_qdq): the head's output is float, made after
    # the last quantizer, so it has no step of its own; the float comparison still judges it.
    model = variants.to_qdq(builders.residual_net(width=16, blocks=3))
    assert is_quantized(model) and output_steps(model) == [None]
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed and "have no quantization step" in result.report.exact.note
    deps, plan = result.deps, result.plan
    shifted = Plan({gid: np.unique((idx + 1) % deps.groups[gid].size) for gid, idx in plan.removals.items()})
    v = check_pruned(model, apply_plan(model, deps, shifted), deps, plan)
    assert v.exact.checked and not v.exact.passed and v.exact.float_max_rel_diff > 100 * EXACT_RTOL


def test_a_wrong_layer_that_fades_by_the_output_is_caught_bypassed(tmp_path, swap_first_conv_inputs):
    """MobileNetV2's quantized skeleton: an input-channel swap in an early pruned Conv stays
    within the output's steps and, bypassed, under the float tolerance at the outputs (3e-7);
    the layer's own output, compared bypassed at its kept entries, is far off."""
    from models import zoo

    q = quantize(zoo.load("mobilenet_v2"), tmp_path)
    result = graphprune.prune(q, ratio=0.3, criterion="l2", validate=False)
    good = check_pruned(q, result.model, result.deps, result.plan)
    assert good.exact.passed and good.exact.layers_compared >= 20
    wrong = swap_first_conv_inputs(result.model)
    bad = check_pruned(q, wrong, result.deps, result.plan)
    assert not bad.exact.passed and bad.exact.float_max_rel_diff > 1e-2
    assert "at layer output" in bad.exact.note
