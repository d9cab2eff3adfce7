"""Sensitivity analysis: each group pruned alone, measured on data, one session for all."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.analysis.dependency import analyze
from graphprune.analysis.plan import Plan, removed_entries
from graphprune.calibration.datasets import input_specs, open_dataset
from graphprune.cli import main
from graphprune.edit.surgery import apply_plan
from graphprune.errors import InputError
from graphprune.planning.sensitivity import MaskedRunner, measure, read_sensitivity
from graphprune.validation.contract import run
from models import builders


@pytest.fixture
def model():
    return builders.residual_net(width=16, blocks=3)


@pytest.fixture
def data(tmp_path, model):
    spec = input_specs(model)[0]
    x = np.random.default_rng(1).normal(size=[24, *spec.shape[1:]]).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, **{spec.name: x}, labels=np.arange(24) % 10)
    return path


def test_masked_runner_computes_what_the_pruned_model_computes(model, data):
    deps = analyze(model)
    g = deps.prunable_groups()[-1]
    plan = Plan({g.id: np.array([1, 4, 5])})
    pruned = apply_plan(model, deps, plan)
    contracted = {d for _, d in deps.contractions}
    removed = {d: i for d, i in removed_entries(deps, plan).items() if d in contracted}
    runner = MaskedRunner(model, deps, sorted(removed))
    feeds = next(open_dataset(data).batches(input_specs(model), batch_size=8))
    feeds = {k: v for k, v in feeds.items() if k != "labels"}
    masked = runner.run(feeds, removed)
    np.testing.assert_allclose(masked, run(pruned, feeds)[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(masked, runner.run(feeds, {}), atol=1e-3)  # the mask did something
    np.testing.assert_allclose(runner.run(feeds, {}), run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_group_whose_weakest_filters_are_dead_costs_nothing_to_prune_by_that_much(model, data):
    deps = analyze(model)
    g = next(g for g in deps.prunable_groups() if g.label.startswith("layer2.0.conv1"))
    w = next(t for t in model.graph.initializer if t.name == "layer2.0.conv1.weight")
    arr = numpy_helper.to_array(w).copy()
    arr[: g.size // 2] = 0  # half the filters produce nothing: removing them changes nothing
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    bn = [t for t in model.graph.initializer if t.name.startswith("layer2.0.bn1")]
    for t in bn:  # the BatchNorm after them must output 0 too, so its shift goes
        if t.name.endswith("bias") or t.name.endswith("mean"):
            a = numpy_helper.to_array(t).copy()
            a[: g.size // 2] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    deps = analyze(model)
    sens = measure(model, deps, open_dataset(data), ratios=(0.25, 0.5, 0.75), samples=24)
    row = next(r for r in sens.groups if r.group.startswith("layer2.0.conv1"))
    assert row.drop[0] == pytest.approx(0, abs=1e-6) and row.drop[1] == pytest.approx(0, abs=1e-6)
    assert row.drop[2] > 1e-3  # past the dead half, real filters go
    assert sens.metric == "cosine" and sens.samples == 24


def test_cli_writes_json_plot_and_accuracy_with_labels(tmp_path, model, data, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["sensitivity", str(path), "--calib", str(data), "-o", str(out), "--plot", str(png), "--labels"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    assert result["format"] == "graphprune-sensitivity-v1" and result["metric"] == "accuracy"
    x = np.load(data)["input"]
    logits = np.concatenate([run(model, {"input": x[i : i + 1]})[0] for i in range(len(x))])  # batch fixed to 1
    assert result["baseline"] == pytest.approx(np.mean(logits.argmax(1) == np.arange(24) % 10))
    sens = read_sensitivity(out)
    assert len(sens.groups) == len(analyze(model).prunable_groups())
    assert all(len(g.accuracy) == 3 for g in sens.groups)
    assert "accuracy drop" in capsys.readouterr().out
    # outputs are not overwritten without --force; missing labels is a one-line error
    assert main(["sensitivity", str(path), "--calib", str(data), "-o", str(out)]) == 2
    np.savez(tmp_path / "nolabels.npz", input=np.load(data)["input"])
    args = ["sensitivity", str(path), "--calib", str(tmp_path / "nolabels.npz"), "-o", str(tmp_path / "x.json")]
    assert main([*args, "--labels"]) == 2
    assert "no labels array 'labels'" in capsys.readouterr().err


def test_block_sensitivity_is_the_cost_of_removing_that_block(model, data):
    from graphprune.analysis.blocks import find_blocks, remove_blocks
    from graphprune.validation.contract import fidelity

    deps = analyze(model)
    sens = measure(model, deps, open_dataset(data), ratios=(0.5,), samples=8)
    found = find_blocks(model)
    assert [b.block for b in sens.blocks] == [b.add for b in found] and len(found) >= 2
    x = np.load(data)["input"][:8]
    original = [run(model, {"input": x[i : i + 1]})[0] for i in range(8)]
    for b, row in zip(found, sens.blocks):
        pruned = remove_blocks(model, [b])
        outs = [run(pruned, {"input": x[i : i + 1]})[0] for i in range(8)]
        cos = np.mean([fidelity([o], [r]).cosine for o, r in zip(outs, original)])
        assert row.drop == pytest.approx(1 - cos, abs=1e-5)
        assert row.macs == b.macs > 0


def _sens_for(model, drops: dict[str, list[float]], ratios=(0.25, 0.5, 0.75)):
    from graphprune.planning.sensitivity import GroupSensitivity, Sensitivity

    deps = analyze(model)
    rows = []
    for g in deps.prunable_groups():
        d = drops.get(g.label, [0.01, 0.02, 0.03])
        removed = [min(int(np.floor(g.size * r)), g.size - 1) for r in ratios]
        rows.append(GroupSensitivity(g.label, g.anchor.tensor, g.anchor.axis, g.size, g.unit, removed, d, [0.0] * 3))
    return Sensitivity("m", "cosine", 1.0, 8, "l2", list(ratios), rows)


def test_allocation_to_a_target_follows_measured_drops(model):
    import graphprune

    labels = [g.label for g in analyze(model).prunable_groups()]
    fragile, free = labels[-1], labels[-2]
    sens = _sens_for(model, {fragile: [0.5, 0.9, 1.0], free: [0.0, 0.0, 0.0]})
    result = graphprune.prune(model, target_flops=0.8, sensitivity=sens, latency=False)
    assert result.report.passed and result.report.exact.passed
    removed = {result.deps.groups[gid].label: len(idx) for gid, idx in result.plan.removals.items()}
    free_size = next(g.size for g in result.deps.groups if g.label == free)
    # the free group alone pays for the target (it reaches 0.8 before its measured range ends)
    assert set(removed) == {free} and 0 < removed[free] <= int(np.floor(free_size * 0.75))
    tighter = graphprune.prune(model, target_flops=0.6, sensitivity=sens, validate=False)
    removed = {tighter.deps.groups[gid].label: len(idx) for gid, idx in tighter.plan.removals.items()}
    assert removed.get(fragile, 0) == 0 and removed[free] <= int(np.floor(free_size * 0.75))  # never past the grid
    assert result.report.prune["sensitivity"]["groups"] == len(labels)
    assert abs(result.report.flops_after / result.report.flops_before - 0.8) < 0.05


def test_sensitivity_needs_a_target_and_the_same_model(tmp_path, model, data):
    import graphprune
    from graphprune.errors import InputError

    sens = _sens_for(model, {})
    with pytest.raises(InputError, match="needs a target"):
        graphprune.prune(model, ratio=0.5, sensitivity=sens, validate=False)
    other = builders.conv_chain()
    with pytest.raises(InputError, match="no prunable group of this model"):
        graphprune.prune(other, target_flops=0.5, sensitivity=sens, validate=False)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    sens.save(tmp_path / "s.json")
    args = ["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--sensitivity", str(tmp_path / "s.json")]
    assert main(args) == 2
    assert main([*args, "--target-flops", "0.7", "--no-latency"]) == 0


def test_labels_are_read_as_validate_reads_them_indices_or_one_hot(tmp_path, model, data):
    deps = analyze(model)
    arrays = dict(np.load(data))
    one_hot = tmp_path / "onehot.npz"
    np.savez(one_hot, **{**arrays, "labels": np.eye(10, dtype=np.float32)[arrays["labels"]]})
    kw = {"ratios": (0.5,), "samples": 24, "labels": "labels", "blocks": False}
    by_index = measure(model, deps, open_dataset(data), **kw)
    by_one_hot = measure(model, deps, open_dataset(one_hot), **kw)
    assert by_index.metric == "accuracy" and by_index.baseline == by_one_hot.baseline
    assert [g.drop for g in by_index.groups] == [g.drop for g in by_one_hot.groups]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{**arrays, "labels": arrays["labels"] + 5})  # classes 5..14 of 10
    with pytest.raises(InputError, match=r"wrong.npz: labels 'labels' range over \d+\.\.1\d, the model has 10 classes"):
        measure(model, deps, open_dataset(wrong), **kw)
