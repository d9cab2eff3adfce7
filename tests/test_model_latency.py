"""In-model latency tables: cached per model, machine, onnxruntime and threads; the latency
model they give is the original's latency less each group's fitted saving; allocation with it
prunes where latency drops. No assertion here depends on how fast anything ran: the
allocation tests use synthetic tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphprune
import graphprune.planning.model_latency as ml
from graphprune.analysis.dependency import analyze
from graphprune.planning.allocate import allocate_to_target
from graphprune.planning.cost_model import CostModel
from models import builders


def table_of(model, path, **kw):
    deps = analyze(model)
    cm = CostModel(deps)
    return ml.model_table(deps, cm, path=path, rounds=1, plans=6, **kw), deps, cm


def test_table_round_trips_through_its_cache_and_is_remeasured_when_its_key_changes(tmp_path):
    path = tmp_path / "model-table.json"
    messages = []
    first, deps, cm = table_of(builders.residual_net(width=16, blocks=2), path, progress=messages.append)
    assert first.measured == 6 == len(first.plans) == len(first.saved_ms) and path.exists() and messages
    for plan in first.plans:  # every group whole or at one of its points
        for gid, r in plan.items():
            assert deps.groups[gid].size - r in ml.points(deps.groups[gid])
    assert first.plans[0] != first.plans[-1]
    data = json.loads(path.read_text())
    assert data["format"] == ml.FORMAT and data["key"]["threads"] == 1 and data["key"]["onnxruntime"]

    again, _, _ = table_of(builders.residual_net(width=16, blocks=2), path)
    assert again.measured == 0 and again.plans == first.plans and again.saved_ms == first.saved_ms
    assert again.model_ms == first.model_ms

    changed, _, _ = table_of(builders.residual_net(width=24, blocks=2), path)
    assert changed.measured > 0 and json.loads(path.read_text())["key"]["graph"] != data["key"]["graph"]
    other_threads, _, _ = table_of(builders.residual_net(width=24, blocks=2), path, threads=2)
    assert other_threads.measured > 0


def test_points_are_multiples_of_eight_below_the_full_count():
    deps = analyze(builders.residual_net(width=64, blocks=1))
    for g in deps.prunable_groups():
        assert ml.points(g) == [8, 16, 32, 48]


def synthetic(deps, cm, ms_per_mac: dict[int, float], model_ms: float = 10.0, n: int = 60) -> ml.ModelLatency:
    """A table of random plans whose savings are exactly rule 2 with the given rates."""
    plans = ml.random_plans(deps, cm.group_ids, n)
    exact = ml.ModelLatency(ml.ModelTable({}, model_ms, plans, [0.0] * n), cm)
    exact.ms_per_mac = np.array([ms_per_mac[cm.group_ids[c]] for c in exact.columns])
    saved = exact.savings(exact.removed(plans)).sum(axis=1)
    return ml.ModelLatency(ml.ModelTable({}, model_ms, plans, saved.tolist()), cm)


def test_the_additive_prediction_is_the_original_less_the_sum_of_its_parts():
    deps = analyze(builders.residual_net(width=32, blocks=3))
    cm = CostModel(deps)
    same = synthetic(deps, cm, dict.fromkeys(cm.group_ids, 5e-8))
    assert same.ms_per_mac == pytest.approx(5e-8)  # one rate fits exactly: the prior agrees
    rng = np.random.default_rng(0)
    rates = {gid: float(rng.uniform(1e-9, 1e-7)) for gid in cm.group_ids}
    lm = synthetic(deps, cm, rates)
    fitted = dict(zip([cm.group_ids[c] for c in lm.columns], lm.ms_per_mac, strict=True))
    assert np.corrcoef([rates[g] for g in fitted], list(fitted.values()))[0, 1] > 0.9  # shrunk, same order
    assert lm.estimate(np.zeros((1, len(cm.group_ids))))[0] == pytest.approx(10.0)
    sizes = np.array([deps.groups[g].size for g in cm.group_ids])
    plans = np.floor(sizes[None, :] * rng.uniform(0, 0.7, (5, len(sizes))))
    parts = lm.savings(plans)
    assert lm.estimate(plans) == pytest.approx(10.0 - parts.sum(axis=1))
    for j, c in enumerate(lm.columns):  # a group alone: its rate times the MACs it saves alone
        alone = np.zeros((1, len(sizes)))
        alone[0, c] = plans[0, c]
        saved_macs = cm.flops_before - cm.flops(alone)[0]
        assert 10.0 - lm.estimate(alone)[0] == pytest.approx(saved_macs * lm.ms_per_mac[j])
    uncoupled = ml.ModelLatency(lm.table, cm, coupled=False)
    uncoupled.ms_per_mac = lm.ms_per_mac
    alone_parts = uncoupled.savings(plans)
    assert uncoupled.estimate(plans) == pytest.approx(10.0 - alone_parts.sum(axis=1))
    # a conv between two thinned groups saves less than the two alone
    assert np.all(parts.sum(axis=1) <= alone_parts.sum(axis=1) + 1e-12)
    assert np.any(parts.sum(axis=1) < alone_parts.sum(axis=1) - 1e-9)
    # allocation keeps no group below the fewest units it was timed keeping
    for gid, allowed in lm.grids(deps).items():
        g = deps.groups[gid]
        assert allowed.min() == ml.points(g)[0] and allowed.max() == g.size and np.all(allowed % ml.step(g) == 0)


def test_allocation_leaves_a_group_whose_latency_is_flat_alone():
    deps = analyze(builders.conv_chain())
    cm = CostModel(deps)
    flat = cm.group_ids[0]
    lm = synthetic(deps, cm, {gid: 0.0 if gid == flat else 1e-7 for gid in cm.group_ids})
    scores = {gid: np.ones(deps.groups[gid].size) for gid in cm.group_ids}  # every unit equally important
    flops = lambda r: cm.flops(r) / cm.flops_before  # noqa: E731
    by_latency = allocate_to_target(deps, scores, 0.6, flops, cm.group_ids, objective=lm.fraction)
    by_flops = allocate_to_target(deps, scores, 0.6, flops, cm.group_ids)
    assert by_latency.reached == pytest.approx(0.6, abs=0.03)
    assert flat not in by_latency.plan.removals  # removing it saves no time: left whole
    assert flat in by_flops.plan.removals  # though MACs alone would thin it


def test_prune_with_the_model_latency_reports_its_table(tmp_path):
    result = graphprune.prune(
        builders.residual_net(width=32, blocks=2),
        target_flops=0.6,
        objective="latency",
        latency_model="model",
        latency_table=tmp_path / "t.json",
        latency=False,
    )
    p = result.report.prune
    assert result.report.passed and result.report.exact.passed
    assert p["latency_table"]["model"] == "model" and p["latency_table"]["plans"] > 0
    assert abs(result.report.flops_after / result.report.flops_before - 0.6) <= 0.05
    with pytest.raises(graphprune.InputError):
        graphprune.prune(builders.residual_net(width=32, blocks=2), target_flops=0.6, latency_model="fast")
