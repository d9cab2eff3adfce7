"""Allocation to a target: --target-flops / --target-params land on the target, exactly
pruned, within round_to, min_keep and ignore; the CLI flags and their usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.planning.allocate import keep_choices, uniform_to_target
from models import builders

TINY = Path(__file__).resolve().parents[1] / "models" / "examples" / "tiny_resnet.onnx"


def resnet():
    return builders.residual_net(width=32, blocks=4)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_target_flops_is_reached_within_two_percent_and_exact(fraction):
    result = graphprune.prune(resnet(), target_flops=fraction, latency=False)
    r = result.report
    assert r.passed and r.exact.passed
    kept = r.flops_after / r.flops_before
    assert abs(kept - fraction) <= 0.02
    assert r.prune["target"] == {"metric": "flops", "fraction": fraction}
    assert r.prune["reached"] == pytest.approx(kept, abs=1e-4)  # the cost model's figure is the real one


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_target_params_is_reached_within_two_percent_and_exact(fraction):
    r = graphprune.prune(resnet(), target_params=fraction, latency=False).report
    assert r.passed and r.exact.passed
    assert abs(r.params_after / r.params_before - fraction) <= 0.02
    assert r.prune["objective"] == "params"


def test_objective_changes_where_channels_go_at_the_same_target():
    by_flops = graphprune.prune(resnet(), target_flops=0.5, validate=False)
    by_params = graphprune.prune(resnet(), target_flops=0.5, objective="params", validate=False)
    # pricing channels by parameters prunes the wide late layers more: fewer parameters at equal MACs
    assert by_params.report.params_after < by_flops.report.params_after
    assert abs(by_params.report.flops_after / by_params.report.flops_before - 0.5) <= 0.02


def test_target_honours_round_to_min_keep_and_ignore():
    model = builders.residual_net(width=32, blocks=4)
    result = graphprune.prune(
        model, target_flops=0.4, round_to=8, min_keep=16, ignore=["layer1.0.conv1*"], latency=False
    )
    assert result.report.passed
    deps = result.deps
    ignored = deps.group_of("layer1.0.conv1.weight", 0)
    assert ignored is not None and ignored.id not in result.plan.removals
    assert result.plan.removals
    for gid, idx in result.plan.removals.items():
        kept = deps.groups[gid].size - len(idx)
        assert kept % 8 == 0 and kept >= 16


def test_keep_choices_snap_to_a_grid_when_given_one():
    deps = analyze(builders.residual_net(width=32, blocks=2))
    g = next(g for g in deps.prunable_groups() if g.size == 64)
    assert list(keep_choices(g, 1, 1)[:3]) == [64, 63, 62]
    assert list(keep_choices(g, 16, 1)) == [64, 48, 32, 16]
    assert list(keep_choices(g, 1, 1, grid=np.array([8, 16, 24, 64]))) == [64, 24, 16, 8]


@pytest.mark.parametrize("round_to", [1, 16])
def test_uniform_to_target_cuts_every_group_alike_nearest_the_target(round_to):
    from graphprune.planning.cost_model import CostModel

    deps = analyze(builders.residual_net(width=64, blocks=4))
    cm = CostModel(deps)
    scores = {g.id: np.arange(g.size, dtype=float) for g in deps.prunable_groups()}

    def macs(removals):
        return float(cm.flops(cm.removed_of(removals)[None, :])[0]) / cm.flops_before

    plan, reached = uniform_to_target(deps, scores, 0.5, macs, round_to=round_to)
    assert reached == pytest.approx(macs(plan.removals))
    assert abs(reached - 0.5) <= (0.02 if round_to == 1 else 0.1)
    # every group keeps the same share of its width (to within one rounding step of the narrowest)
    sizes = {gid: deps.groups[gid].size for gid in scores}
    kept = {gid: sizes[gid] - len(plan.removals.get(gid, [])) for gid in scores}
    shares = [kept[gid] / sizes[gid] for gid in scores]
    assert max(shares) - min(shares) <= round_to / min(sizes.values())
    assert all(k % round_to == 0 for k in kept.values()) and max(shares) < 1
    for idx in plan.removals.values():  # the lowest scores go
        assert list(idx) == list(range(len(idx)))


def test_cli_target_flops_on_the_example_model(run_cli, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, stdout, err = run_cli("prune", TINY, "-o", out, "--target-flops", "0.5", "--report", report, "--no-latency")
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["passed"] and data["target"] == {"metric": "flops", "fraction": 0.5}
    assert abs(data["flops_after"] / data["flops_before"] - 0.5) <= 0.02
    assert data["reached"] == pytest.approx(data["flops_after"] / data["flops_before"], abs=1e-4)
    assert "target: keep 0.500 of flops" in stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target-flops", "1.5"], "target-flops must be between 0 and 1"),
        (["--target-params", "0"], "target-params must be between 0 and 1"),
        (["--target-flops", "abc"], "invalid float value"),
        (["--ratio", "0.3", "--target-flops", "0.5"], "--ratio and --target-flops cannot be combined"),
        (["--target-flops", "0.5", "--target-params", "0.5"], "choose one target"),
        (["--objective", "latency"], "--objective needs"),
        (["--target-flops", "0.5", "--objective", "speed"], "invalid choice"),
        (["--target-latency", "0.5", "--threads", "0"], "threads must be a positive integer"),
        (["--pass", "layer", "--target-flops", "0.5"], "needs a filter pass"),
    ],
)
def test_cli_bad_target_flags_exit_2_with_one_line(run_cli, tmp_path, flags, message):
    out = tmp_path / "out.onnx"
    code, _, err = run_cli("prune", TINY, "-o", out, *flags)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("graphprune: error:") and message in err
    assert not out.exists()


def test_a_flops_target_after_the_layer_pass_is_a_fraction_of_the_original():
    from graphprune.passes.filter import FilterPruning
    from graphprune.passes.layer import LayerPruning

    model = builders.residual_net(width=16, blocks=5)
    steps = [LayerPruning(remove_blocks=1, criterion="weight-norm"), FilterPruning(target_flops=0.5)]
    result = graphprune.run_passes(model, steps, latency=False)
    r = result.report
    assert r.passed and r.exact.passed
    assert abs(r.flops_after / r.flops_before - 0.5) < 0.02  # of the original, not of the layer pass's output
    filter_step = result.steps[1]
    assert filter_step["target_of_original"] == {"metric": "flops", "fraction": 0.5}
    assert filter_step["target"]["fraction"] > 0.5
    # a target the layer pass alone already meets leaves the filter step nothing to do
    done = graphprune.run_passes(
        model, [LayerPruning(remove_blocks=3, criterion="weight-norm"), FilterPruning(target_flops=0.95)], latency=False
    )
    assert "skipped" in done.steps[1] and done.report.passed


def test_a_flops_target_on_a_model_with_dynamic_dims_is_counted_per_sample_at_the_default_size():
    # The "cannot count this model's MACs" error is now kept for models no size makes countable
    # (tests/test_inputs.py); dynamic batch and image size are resolved (graphprune.ir.input_sizes).
    from models import variants

    model = variants.with_dynamic_dims(builders.residual_net(width=16, blocks=3))
    r = graphprune.prune(model, target_flops=0.5, latency=False).report
    assert r.passed and abs(r.flops_after / r.flops_before - 0.5) <= 0.02
    assert r.assumed_shapes == {"input": [1, 3, 64, 64]}
    assert graphprune.prune(model, target_params=0.5, latency=False).report.passed  # params need no shapes


def test_a_default_flops_target_keeps_conv_channels_on_the_channel_step_when_it_can():
    """round_to=None (the CLI's default): counts on the runtime's step when whole steps reach the
    target within STEPPED_TARGET_SLACK; else free, and the report says why."""
    from graphprune.objectives.hardware import channel_step
    from graphprune.passes.filter import STEPPED_TARGET_SLACK

    step = channel_step().step
    wide = builders.conv_chain(channels=(8, 8 * step, 8 * step, 8))
    result = graphprune.prune(wide, target_flops=0.5, round_to=None, latency=False)
    assert result.report.passed
    assert abs(result.report.flops_after / result.report.flops_before - 0.5) <= STEPPED_TARGET_SLACK + 1e-9
    assert result.report.prune["channel_step"]["step"] == step
    cut = [g for g in result.deps.prunable_groups() if g.unit == "channels" and len(result.plan.removed(g))]
    assert cut and all((g.size - len(result.plan.removed(g))) % step == 0 for g in cut)

    narrow = builders.conv_chain(channels=(4, step // 2 + 2, step // 2 + 2, 4))  # one step is most of a layer
    result = graphprune.prune(narrow, target_flops=0.5, round_to=None, latency=False)
    assert result.report.passed
    assert "channel_step_skipped" in result.report.prune
    assert f"channel step: not kept: whole steps of {step} channels reach" in result.report.table()
    free = graphprune.prune(narrow, target_flops=0.5, round_to=1, validate=False)  # the same as counts left free
    assert result.report.flops_after == free.report.flops_after


@pytest.mark.parametrize("fraction", [0.3, 0.4, 0.55])
def test_target_at_most_keeps_at_most_the_target_on_a_coarse_channel_step(fraction):
    nearest = graphprune.prune(resnet(), target_flops=fraction, round_to=16, latency=False).report
    within = graphprune.prune(resnet(), target_flops=fraction, round_to=16, target_at_most=True, latency=False).report
    assert within.passed and within.exact.passed
    kept = within.flops_after / within.flops_before
    assert kept <= fraction + 1e-9
    assert kept <= nearest.flops_after / nearest.flops_before + 1e-9  # never more than the nearest plan
    assert within.prune["target"] == {"metric": "flops", "fraction": fraction, "at_most": True}


@pytest.mark.parametrize(
    "options", [{}, {"target_latency": 0.5}, {"target_flops": 0.5, "objective": "latency"}], ids=str
)
def test_target_at_most_without_a_cost_model_target_is_refused(options):
    with pytest.raises(graphprune.InputError, match="target-at-most needs target-flops or target-params"):
        graphprune.prune(resnet(), target_at_most=True, latency=False, **options)
