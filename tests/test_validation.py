"""Validation catches wrong surgery: the masked reference is not fooled by a consistent mistake."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

import graphprune
from graphprune.objectives.cost import random_feeds
from graphprune.validation.contract import check_pruned, masked_reference, run
from models import builders


def _swap_columns(model, name, a, b):
    t = next(t for t in model.graph.initializer if t.name == name)
    arr = numpy_helper.to_array(t).copy()
    arr[:, [a, b]] = arr[:, [b, a]]
    t.CopyFrom(numpy_helper.from_array(arr, name))


def test_exactness_fails_when_the_consumer_keeps_the_wrong_columns():
    model = builders.residual_net()
    result = graphprune.prune(model, ratio=0.5, validate=False)
    broken = result.model
    _swap_columns(broken, "layer1.0.conv1.weight", 0, 1)
    v = check_pruned(model, broken, result.deps, result.plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed
    assert v.exact.max_rel_diff > 1e-3


def test_validate_reads_the_plan_from_metadata_and_catches_the_same_mistake():
    model = builders.dense_block()
    result = graphprune.prune(model, ratio=0.5, validate=False)
    assert graphprune.validate(model, result.model, latency=False).exact.passed
    _swap_columns(result.model, "features.denseblock1.denselayer2.conv1.weight", 2, 5)
    report = graphprune.validate(model, result.model, latency=False)
    assert report.exact.checked and not report.exact.passed and not report.passed


def test_masked_reference_differs_from_the_original_and_equals_the_pruned_model():
    model = builders.flatten_gemm()
    result = graphprune.prune(model, ratio=0.5, validate=False)
    feeds = random_feeds(model)
    ref = run(masked_reference(model, result.deps, result.plan), feeds)[0]
    orig = run(model, feeds)[0]
    pruned = run(result.model, feeds)[0]
    assert not np.allclose(ref, orig)  # the reference really removed something
    np.testing.assert_allclose(pruned, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_report_has_the_contract_keys():
    report = graphprune.prune(builders.conv_chain(), ratio=0.5).report.to_dict()
    for key in ("params_before", "params_after", "flops_before", "flops_after", "groups_pruned", "groups_blocked"):
        assert isinstance(report[key], int)
    assert set(report["exact"]) >= {"checked", "passed", "max_rel_diff", "skipped_groups"}
    assert set(report["fidelity"]) >= {"cosine", "rel_l2"}
    assert report["latency_ms_before"] > 0 and report["latency_ms_after"] > 0


def test_building_the_reference_leaves_the_original_as_it_was():
    from graphprune.validation.contract import masked_reference_bytes

    model = builders.dense_block()
    before = model.SerializeToString()
    result = graphprune.prune(model, ratio=0.5, validate=False)
    reference = masked_reference_bytes(model, result.deps, result.plan)
    assert model.SerializeToString() == before
    assert len(reference) > len(before)  # it did carry the masks


def test_rounding_of_a_cancelled_output_is_measured_at_the_original_scale():
    from graphprune.validation.contract import rel_diff

    reference, original = [np.array([1e-4])], [np.array([0.1])]
    rounding = [np.array([1e-4 + 3e-8])]  # float32 rounding of terms of size ~0.1
    assert rel_diff(rounding, reference) > 1e-4  # against the tiny output alone: a false alarm
    assert rel_diff(rounding, reference, scale_of=original) < 1e-6
    wrong = [np.array([2e-4])]  # a real mismatch is still one
    assert rel_diff(wrong, reference, scale_of=original) > 1e-4


def test_random_graph_whose_pruning_cancels_the_output_still_validates():
    from models.random_graphs import random_model

    # soak seed 50419: pruning leaves an output 250x smaller than the original's
    result = graphprune.prune(random_model(50419), ratio=0.395, criterion="fpgm", round_to=4, latency=False)
    assert result.report.exact.passed


def test_a_wrong_layer_that_fades_by_the_output_is_caught_at_the_layer(swap_first_conv_inputs):
    """In mobilenet_v2's skeleton an input-channel swap in an early pruned Conv moves the
    model's output by ~3e-7 relative, under the tolerance; the layer's own output, compared at
    its kept entries, differs by orders of magnitude more."""

    from graphprune.validation.contract import rel_diff
    from models import zoo

    model = zoo.load("mobilenet_v2")
    result = graphprune.prune(model, ratio=0.3, criterion="l2", validate=False)
    good = check_pruned(model, result.model, result.deps, result.plan)
    assert good.exact.passed and good.exact.layers_compared >= 20
    wrong = swap_first_conv_inputs(result.model)
    feeds = random_feeds(model)
    at_output = rel_diff(run(wrong, feeds), run(masked_reference(model, result.deps, result.plan), feeds))
    assert at_output < 1e-4  # what the outputs alone would have passed
    bad = check_pruned(model, wrong, result.deps, result.plan)
    assert not bad.exact.passed and bad.exact.max_rel_diff > 1e-2
    assert "layer output" in bad.exact.note


def test_layer_outputs_compared_stay_within_their_element_budget(monkeypatch):
    from graphprune.validation import contract

    model = builders.residual_net(seed=1)
    result = graphprune.prune(model, ratio=0.5, criterion="l2", validate=False)
    ref = contract.plan_reference(model, result.deps, result.plan)
    names = contract.layer_probes(result.model, model, ref, [])
    assert len(names) >= 3
    assert check_pruned(model, result.model, result.deps, result.plan).exact.layers_compared == len(names)
    shapes = result.deps.sample_shapes or result.deps.view.shapes
    sizes = sorted(int(np.prod(shapes[n])) for n in names)
    monkeypatch.setattr(contract, "LAYER_PROBE_ELEMENTS", sizes[0] + sizes[1])  # the two smallest fit
    assert len(contract.layer_probes(result.model, model, ref, [])) == 2
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    batch_of_two = {inp.name: np.zeros([2, *shape[1:]], np.float32)}  # per-sample shapes, twice the elements
    assert len(contract.layer_probes(result.model, model, ref, [], batch_of_two)) == 1
    assert check_pruned(model, result.model, result.deps, result.plan).exact.layers_compared == 2
    monkeypatch.setattr(contract, "LAYER_PROBE_ELEMENTS", 0)
    assert check_pruned(model, result.model, result.deps, result.plan).exact.layers_compared == 0
