"""Latency tables: measured once per model, machine, onnxruntime and threads, read back from
their cache, measured again when the model changes; the latency objective keeps channel
counts on the measured grid. No assertion here depends on how fast anything ran."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import graphprune
import graphprune.planning.layer_latency as lt
from graphprune.analysis.dependency import analyze
from graphprune.objectives.hardware import channel_step
from graphprune.planning.cost_model import CostModel
from graphprune.validation.contract import run
from models import builders


def table_of(model, path, **kw):
    deps = analyze(model)
    cm = CostModel(deps)
    return lt.latency_table(deps, cm, path=path, repeats=1, max_points=4, **kw), cm


def test_grid_is_multiples_of_eight_up_to_the_width():
    assert lt.grid(64, max_points=12) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert lt.grid(2048, max_points=12) == [*range(176, 2048, 176), 2048]
    assert all(c % 8 == 0 for c in lt.grid(2048))
    assert lt.grid(6, max_points=12) == [1, 2, 3, 4, 5, 6]


def test_grid_lands_on_multiples_of_the_channel_step():
    assert lt.grid(256, max_points=12, step=16) == [*range(32, 256, 32), 256]
    assert lt.grid(24, max_points=12, step=16) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    assert all(c % 16 == 0 for c in lt.grid(2048, step=16))


def test_table_round_trips_through_its_cache_and_is_remeasured_for_a_changed_model(tmp_path):
    path = tmp_path / "table.json"
    messages = []
    first, _ = table_of(builders.residual_net(width=16, blocks=2), path, progress=messages.append)
    assert first.measured > 0 and path.exists() and messages
    configs = {ly.config for ly in first.layers}
    assert len(configs) < len(first.layers)  # repeated blocks are measured once
    data = json.loads(path.read_text())
    assert data["key"]["threads"] == 1 and data["key"]["onnxruntime"] and data["key"]["graph"]

    again, _ = table_of(builders.residual_net(width=16, blocks=2), path)
    assert again.measured == 0
    assert again.model_ms == first.model_ms
    assert [ly.curves for ly in again.layers] == [ly.curves for ly in first.layers]

    changed, _ = table_of(builders.residual_net(width=24, blocks=2), path)
    assert changed.measured > 0
    assert json.loads(path.read_text())["key"]["graph"] != data["key"]["graph"]

    other_threads, _ = table_of(builders.residual_net(width=24, blocks=2), path, threads=2)
    assert other_threads.measured > 0


def test_curves_cover_the_grid_of_each_prunable_axis(tmp_path):
    table, cm = table_of(builders.depthwise_separable(), tmp_path / "t.json")
    step = table.key["step"]
    assert step == channel_step().step
    assert any("both" in ly.curves for ly in table.layers)  # depthwise: in and out together
    for ly in table.layers:
        for axis, curve in ly.curves.items():
            if axis == "diag":  # both counts at once: pairs of grid counts, increasing
                assert curve["counts"] == sorted(curve["counts"]) and set(curve["counts"]) <= set(
                    lt.grid(ly.full_in, 4, step)
                )
                continue
            full = ly.full_out if axis == "out" else ly.full_in
            assert curve["counts"] == lt.grid(full, 4, step) and len(curve["ms"]) == len(curve["counts"])
    model = lt.LatencyModel(table, cm)
    assert model.fraction(np.zeros((1, len(cm.group_ids))))[0] == 1.0


def test_a_grouped_conv_has_one_curve_over_whole_conv_groups_and_its_layer_models_run(tmp_path):
    model = builders.grouped_conv(groups=8, width=64)  # 8 input channels per conv group
    table, cm = table_of(model, tmp_path / "t.json")
    (ly,) = [ly for ly in table.layers if ly.grouped and ly.per_group > 1]
    assert ly.per_group == 8 and set(ly.curves) == {"both"}
    counts = ly.curves["both"]["counts"]
    assert counts[-1] == 64 and all(c % 8 == 0 for c in counts) and len(counts) > 1
    for c in counts:  # each count is a valid model: c / 8 conv groups of 8 channels in and out
        small = lt.layer_model(ly.config, c, c)
        (node,) = small.graph.node
        assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "group")) == c // 8
        x = np.zeros([1, c, *json.loads(ly.config)[2][2:]], np.float32)
        (y,) = run(small, {"X": x})
        assert y.shape[1] == c
    latency = lt.LatencyModel(table, cm)
    g = analyze(model).group_of("layer1.0.conv2.weight", 0)  # the grouped conv's output channels
    row = np.zeros((1, len(cm.group_ids)))
    assert latency.fraction(row)[0] == 1.0
    row[0, cm.column[g.id]] = g.size // 2  # half its conv groups: its curve is read at 32 channels
    assert cm.sizes(row)[0, cm.dim_row(*ly.dim_in)] == 32


def test_latency_objective_keeps_channel_counts_on_the_step_and_keeps_the_fastest_allocation(tmp_path):
    model = builders.residual_net(width=64, blocks=4)
    result = graphprune.prune(
        model, target_flops=0.5, objective="latency", latency_table=tmp_path / "t.json", latency=False
    )
    assert result.report.passed and result.report.exact.passed
    p = result.report.prune
    step = channel_step().step
    assert p["channel_step"] == channel_step().to_json()
    assert p["latency_table"]["layers"] > 0
    for gid, idx in result.plan.removals.items():
        assert (result.deps.groups[gid].size - len(idx)) % step == 0
    # two allocations at the same target (one when they agree), each cut and timed
    candidates = p["latency_measured"]["candidates"]
    names = [c["allocation"] for c in candidates]
    assert names in (["latency", "uniform"], ["latency"])
    assert all(c["measured"] > 0 and abs(c["reached"] - 0.5) <= 0.1 for c in candidates)
    chosen = next(c for c in candidates if c["allocation"] == p["allocation"])
    per_kept = [c["measured"] / c["reached"] for c in candidates]
    assert chosen["measured"] / chosen["reached"] <= min(per_kept) * 1.01 + 1e-6
    assert p["reached"] == chosen["reached"]
    assert result.report.flops_after / result.report.flops_before == pytest.approx(chosen["reached"], abs=1e-3)


def test_latency_target_reports_what_was_measured(tmp_path):
    result = graphprune.prune(
        builders.residual_net(width=32, blocks=4),
        target_latency=0.6,
        latency_table=tmp_path / "t.json",
        validate=False,
    )
    p = result.report.prune
    assert p["target"] == {"metric": "latency", "fraction": 0.6}
    m = p["latency_measured"]
    assert m["before_ms"] > 0 and m["after_ms"] > 0
    assert p["reached"] == pytest.approx(m["after_ms"] / m["before_ms"], rel=1e-2)
    assert 1 <= len(m["tries"]) <= 4


def test_a_missed_latency_target_moves_the_goal_by_the_secant_of_the_tries():
    from graphprune.passes.filter import _next_goal

    # one try: scale the goal by the miss
    assert _next_goal([{"goal": 0.5, "measured": 0.625}], 0.5) == pytest.approx(0.4)
    # two tries: the line through them crosses the target at goal 0.45
    tries = [{"goal": 0.5, "measured": 0.6}, {"goal": 0.4, "measured": 0.4}]
    assert _next_goal(tries, 0.5) == pytest.approx(0.45)
