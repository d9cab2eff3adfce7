"""In-model latency tables: cached per model, machine, onnxruntime and threads; the latency
model they give is the original's latency less each group's fitted saving; allocation with it
prunes where latency drops. No assertion here depends on how fast anything ran: the
allocation tests use synthetic tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphprune
import graphprune.model_latency as ml
from graphprune.allocate import allocate_to_target
from graphprune.costmodel import CostModel
from graphprune.dependency import analyze
from models import builders


def table_of(model, path, **kw):
    deps = analyze(model)
    cm = CostModel(deps)
    return ml.model_table(deps, cm, path=path, rounds=1, **kw), deps, cm


def test_table_round_trips_through_its_cache_and_is_remeasured_when_its_key_changes(tmp_path):
    path = tmp_path / "model-table.json"
    messages = []
    first, deps, cm = table_of(builders.residual_net(width=16, blocks=2), path, progress=messages.append)
    assert first.measured > 0 and path.exists() and messages
    assert set(first.groups) == {gid for gid in cm.group_ids if ml.points(deps.groups[gid])}
    for gid, entry in first.groups.items():
        assert entry["counts"] == ml.points(deps.groups[gid]) and entry["full"] == deps.groups[gid].size
        assert len(entry["saved_ms"]) == len(entry["counts"])
    data = json.loads(path.read_text())
    assert data["format"] == ml.FORMAT and data["key"]["threads"] == 1 and data["key"]["onnxruntime"]

    again, _, _ = table_of(builders.residual_net(width=16, blocks=2), path)
    assert again.measured == 0 and again.groups == first.groups and again.model_ms == first.model_ms

    changed, _, _ = table_of(builders.residual_net(width=24, blocks=2), path)
    assert changed.measured > 0 and json.loads(path.read_text())["key"]["graph"] != data["key"]["graph"]
    other_threads, _, _ = table_of(builders.residual_net(width=24, blocks=2), path, threads=2)
    assert other_threads.measured > 0


def test_points_are_multiples_of_eight_below_the_full_count():
    deps = analyze(builders.residual_net(width=64, blocks=1))
    for g in deps.prunable_groups():
        assert ml.points(g) == [8, 16, 32, 48]


def synthetic(deps, cm, ms_per_mac: dict[int, float], model_ms: float = 10.0) -> ml.ModelLatency:
    """A table whose every point saves exactly ``ms_per_mac[g]`` per MAC: the fit recovers it."""
    groups = {}
    for gid in cm.group_ids:
        g = deps.groups[gid]
        counts = ml.points(g)
        rows = np.zeros((len(counts), len(cm.group_ids)))
        rows[:, cm.column[gid]] = g.size - np.array(counts)
        saved = (cm.flops_before - cm.flops(rows)) * ms_per_mac[gid]
        groups[gid] = {"counts": counts, "saved_ms": saved.tolist(), "full": g.size}
    return ml.ModelLatency(ml.ModelTable({}, model_ms, groups), cm)


def test_the_additive_prediction_is_the_original_less_the_sum_of_its_parts():
    deps = analyze(builders.residual_net(width=32, blocks=3))
    cm = CostModel(deps)
    rng = np.random.default_rng(0)
    rates = {gid: float(rng.uniform(1e-9, 1e-7)) for gid in cm.group_ids}
    lm = synthetic(deps, cm, rates)
    assert lm.estimate(np.zeros((1, len(cm.group_ids))))[0] == pytest.approx(10.0)
    sizes = np.array([deps.groups[g].size for g in cm.group_ids])
    plans = np.floor(sizes[None, :] * rng.uniform(0, 0.7, (5, len(sizes))))
    # the fit of exact points: each group's own rate, shrunk toward the model's average rate
    prior = sum(sum(e["saved_ms"]) for e in lm.table.groups.values()) / sum(
        lm._alone(cm.column[g], e["full"] - np.array(e["counts"])).sum() for g, e in lm.table.groups.items()
    )
    for j, gid in enumerate(cm.group_ids):
        assert min(rates[gid], prior) - 1e-15 <= lm.ms_per_mac[j] <= max(rates[gid], prior) + 1e-15
    same = synthetic(deps, cm, dict.fromkeys(cm.group_ids, 5e-8))
    assert same.ms_per_mac == pytest.approx(5e-8)
    # each group alone: its fitted saving
    for j in range(len(cm.group_ids)):
        alone = np.zeros((1, len(sizes)))
        alone[0, j] = plans[0, j]
        assert 10.0 - lm.estimate(alone)[0] == pytest.approx(lm._alone(j, plans[0, j : j + 1])[0] * lm.ms_per_mac[j])
    parts = lm.savings(plans)
    assert lm.estimate(plans) == pytest.approx(10.0 - parts.sum(axis=1))
    uncoupled = ml.ModelLatency(lm.table, cm, coupled=False)
    alone_sum = sum(uncoupled._alone(j, plans[:, j]) * lm.ms_per_mac[j] for j in range(len(cm.group_ids)))
    assert uncoupled.estimate(plans) == pytest.approx(10.0 - alone_sum)
    # a conv between two thinned groups saves less than the two alone
    assert np.all(parts.sum(axis=1) <= alone_sum + 1e-12)


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
    assert p["latency_table"]["model"] == "model" and p["latency_table"]["groups"] > 0
    assert abs(result.report.flops_after / result.report.flops_before - 0.6) <= 0.05
    with pytest.raises(graphprune.InputError):
        graphprune.prune(builders.residual_net(width=32, blocks=2), target_flops=0.6, latency_model="fast")
