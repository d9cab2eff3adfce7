"""The front door: the CLI's conventions and the defaults a new user meets (issue 13).

Each test states one behaviour a user relies on: flags accepted where they are typed, one
error line with one prefix, nothing overwritten or accepted silently, and defaults that do
not make a model slower or an agreement look better than it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphprune import InputError, api
from graphprune.objectives.cost import random_feeds
from models import builders

DIGITS = Path(__file__).resolve().parents[1] / "models" / "examples" / "digits"


# ------------------------------------------------------------------------- the Python API


def test_api_prune_with_the_layer_pass_removes_blocks_validated_like_prune_layers():
    model = builders.residual_net(blocks=5)
    result = api.prune(model, pass_="layer", criterion="weight-norm", remove_blocks=2, latency=False)
    reference = api.prune_layers(model, remove_blocks=2, criterion="weight-norm", latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.exact.max_rel_diff <= 1e-4
    removed = [b["add"] for b in result.report.prune["blocks_removed"]]
    assert removed == [b["add"] for b in reference.report.prune["blocks_removed"]] and len(removed) == 2
    assert result.report.flops_after == reference.report.flops_after < result.report.flops_before
    assert result.plan.total_removed == 0  # no channel group lost entries: whole blocks went


def test_api_prune_with_the_layer_pass_refuses_a_filter_option():
    with pytest.raises(InputError, match="layer pass does not take target-flops"):
        api.prune(builders.residual_net(blocks=5), pass_="layer", target_flops=0.5)


def test_api_round_to_none_keeps_conv_channels_on_the_channel_step():
    from graphprune.objectives.hardware import channel_step

    step = channel_step().step
    model = builders.residual_net(width=2 * step, blocks=2, seed=0)
    result = api.prune(model, ratio=0.3, round_to=None, latency=False)
    assert result.report.passed and result.plan.total_removed > 0
    for g in result.deps.prunable_groups():
        kept = g.size - len(result.plan.removed(g))
        assert kept % step == 0 or kept == g.size, (g.label, g.size, kept)
    assert result.report.prune["round_to"] == step
    assert result.report.prune["channel_step"]["step"] == step
    exact = api.prune(model, ratio=0.3, round_to=1, latency=False)  # opting out: the ratio as asked
    assert any((g.size - len(exact.plan.removed(g))) % step for g in exact.deps.prunable_groups())


# ------------------------------------------------------------------------- CLI conventions


def one_line_error(code: int, err: str, *names: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphprune: error:"), err
    assert lines[0].count("graphprune") == 1 or any("graphprune" in n for n in names), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def test_version_prints_the_version_and_exits_0(run_cli):
    from graphprune import __version__

    code, out, err = run_cli("--version")
    assert code == 0 and out.strip() == f"graphprune {__version__}", (out, err)


def test_debug_is_accepted_after_the_subcommand(run_cli, tiny_model_path):
    code, out, err = run_cli("inspect", tiny_model_path, "--debug")
    assert code == 0, err
    assert "groups" in out


def test_a_usage_error_says_graphprune_once(run_cli, tmp_path):
    code, _, err = run_cli("prune", tmp_path / "m.onnx")  # no -o
    line = one_line_error(code, err, "prune:", "-o")
    assert not line.startswith("graphprune: error: graphprune")


def test_validate_quiet_prints_nothing_and_the_exit_code_says_the_verdict(run_cli, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--no-latency", "-q")
    assert code == 0, err
    code, stdout, err = run_cli("validate", tiny_model_path, out, "--no-latency", "-q")
    assert (code, stdout, err) == (0, "", "")


def test_inspect_html_into_a_directory_writes_model_html_and_says_so(run_cli, tiny_model_path, tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    code, _, err = run_cli("inspect", tiny_model_path, "--html", folder)
    page = folder / "model.html"
    assert code == 0, err
    assert page.is_file() and page.read_text().lstrip().lower().startswith("<!doctype html")
    assert f"wrote {page}" in err
    code, out, err = run_cli("inspect", tiny_model_path, "--html", folder, "--force", "-q")
    assert code == 0 and err == "" and out.strip()  # -q: the table only


def test_inspect_html_refuses_to_overwrite_without_force(run_cli, tiny_model_path, tmp_path):
    page = tmp_path / "deps.html"
    page.write_text("mine")
    code, out, err = run_cli("inspect", tiny_model_path, "--html", page)
    one_line_error(code, err, "deps.html", "--force")
    assert page.read_text() == "mine" and out == ""
    code, _, err = run_cli("inspect", tiny_model_path, "--html", page, "--force")
    assert code == 0, err
    assert page.read_text() != "mine"


def test_output_that_is_a_directory_says_so(run_cli, tiny_model_path, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    code, _, err = run_cli("prune", tiny_model_path, "-o", folder, "-q")
    one_line_error(code, err, "is a directory")


def test_an_ignore_pattern_that_matches_nothing_is_a_usage_error(run_cli, tiny_model_path, tmp_path):
    out = tmp_path / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--ignore", "/layer9/*", "-q", "--no-latency")
    one_line_error(code, err, "--ignore /layer9/*", "matches no node or tensor")
    assert not out.exists()


def test_unit_heads_on_a_model_without_heads_is_a_usage_error(run_cli, tiny_model_path, tmp_path):
    out = tmp_path / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--unit", "heads", "-q", "--no-latency")
    one_line_error(code, err, "--unit heads", "no prunable group", "channels")
    assert not out.exists()


def test_plan_with_ratio_is_a_usage_error(run_cli, tiny_model_path, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"groups": []}))
    code, _, err = run_cli("prune", tiny_model_path, "-o", tmp_path / "o.onnx", "--plan", plan, "--ratio", "0.3")
    one_line_error(code, err, "--plan", "--ratio")


def test_calib_that_is_a_model_file_is_one_line_naming_it(run_cli, tiny_model_path, tmp_path):
    code, _, err = run_cli("prune", tiny_model_path, "-o", tmp_path / "o.onnx", "--calib", tiny_model_path, "-q")
    line = one_line_error(code, err, str(tiny_model_path), "not an .npz")
    assert "pickle" not in line


def test_a_missing_calibration_file_is_reported_before_loading_the_model(run_cli, tiny_model_path, tmp_path):
    missing = tmp_path / "calib.npz"
    code, _, err = run_cli("prune", tiny_model_path, "-o", tmp_path / "o.onnx", "--calib", missing)
    one_line_error(code, err, "calib.npz", "no such data")  # and not "loading ..." before it


def _renamed_data(model: onnx.ModelProto, path: Path, key: str = "pixels", n: int = 8) -> Path:
    name = model.graph.input[0].name
    np.savez(path, **{key: np.concatenate([random_feeds(model, seed=s)[name] for s in range(n)])})
    return path


def test_input_map_feeds_an_input_from_a_key_of_another_name(run_cli, tiny_model_path, tmp_path):
    model = onnx.load(tiny_model_path)
    name = model.graph.input[0].name
    data = _renamed_data(model, tmp_path / "d.npz")
    out = tmp_path / "o.onnx"
    args = ("prune", tiny_model_path, "-o", out, "--calib", data, "--compensate", "bias", "--no-latency", "-q")
    code, _, err = run_cli(*args)
    one_line_error(code, err, "d.npz", f"no array {name!r}", "--input-map KEY=INPUT")
    code, _, err = run_cli(*args, "--input-map", f"pixels={name}", "--report", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["calibration"]["samples"] == 8 and report["passed"]
    code, out_text, err = run_cli("validate", tiny_model_path, out, "--data", data, "--input-map", f"pixels={name}")
    assert code == 0, err  # compensated: exactness is skipped, fidelity runs on the data
    assert f"on {data} (8 samples)" in out_text


def test_input_map_naming_no_input_of_the_model_is_one_line(run_cli, tiny_model_path, tmp_path):
    data = _renamed_data(onnx.load(tiny_model_path), tmp_path / "d.npz")
    code, _, err = run_cli(
        "validate", tiny_model_path, tiny_model_path, "--data", data, "--input-map", "pixels=image", "--no-latency"
    )
    one_line_error(code, err, "--input-map pixels=image", "no input 'image'")


# ------------------------------------------------------------------------- defaults


def test_default_prune_keeps_conv_channels_on_the_channel_step(run_cli, tmp_path):
    from graphprune.objectives.hardware import channel_step

    step = channel_step().step
    src = tmp_path / "m.onnx"
    onnx.save(builders.residual_net(width=2 * step, blocks=2, seed=0), src)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = run_cli("prune", src, "-o", out, "--ratio", "0.3", "--report", report, "--no-latency", "-q")
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["round_to"] == step and r["channel_step"]["step"] == step and r["channels_removed"] > 0
    code, table, err = run_cli("prune", src, "-o", out, "--ratio", "0.3", "--no-latency", "--force")
    assert code == 0, err
    assert f"channel step: {step} (" in table and "--round-to 1 for the ratio as asked" in table
    for t in onnx.load(out).graph.initializer:
        if len(t.dims) == 4:  # conv weights: output channels on the step
            assert t.dims[0] % step == 0, (t.name, list(t.dims))
    code, _, err = run_cli("prune", src, "-o", out, "--ratio", "0.3", "--round-to", "1", "--force", "--report", report)
    assert code == 0, err
    assert json.loads(report.read_text())["round_to"] == 1


def test_latency_runs_fixes_the_count_and_the_table_names_the_batch(run_cli, tiny_model_path, tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code, stdout, err = run_cli("prune", tiny_model_path, "-o", out, "--latency-runs", "3", "--report", report)
    assert code == 0, err
    assert "latency (ORT, median, batch 1)" in stdout
    r = json.loads(report.read_text())
    assert r["latency_batch"] == 1 and r["latency_ms_before"] > 0
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--latency-runs", "0", "--force")
    one_line_error(code, err, "--latency-runs")


def test_latency_without_a_count_times_at_least_three_runs_within_the_budget(monkeypatch):
    from graphprune.objectives import cost

    model = builders.residual_net(width=8, blocks=1, seed=0)
    calls = []
    real = cost.time.perf_counter
    monkeypatch.setattr(cost.time, "perf_counter", lambda: calls.append(1) or real())
    assert cost.latency_ms(model, repeats=None, warmup=0, budget_s=0.0) > 0
    assert len(calls) >= 2 * 3  # three timed runs, two clock reads each


def test_a_slower_pruned_model_is_said_with_the_likely_cause():
    from graphprune.objectives.hardware import channel_step
    from graphprune.present.report import Report

    r = Report(100, 80, 100, 80, latency_ms_before=1.0, latency_ms_after=1.2, latency_batch=32, prune={"round_to": 1})
    table = r.table()
    assert "latency (ORT, median, batch 32)" in table
    assert "the pruned model is slower (1.20x" in table and f"--round-to {channel_step().step}" in table
    assert "slower" not in Report(100, 80, 100, 80, latency_ms_before=1.2, latency_ms_after=1.0).table()


def test_fidelity_on_random_inputs_says_so_and_has_no_top1_agreement():
    model = builders.residual_net(width=16, blocks=2, seed=0)
    report = api.prune(model, ratio=0.5, latency=False).report
    f = report.fidelity
    assert f.inputs == "random inputs" and f.top1_agreement is None and f.cosine is not None
    assert "fidelity vs original on random inputs: cosine" in report.table()
    assert "top-1 agreement" not in report.table()


def test_fidelity_on_data_keeps_top1_agreement():
    calib = DIGITS / "digits_calib.npz"
    report = api.prune(DIGITS / "digits_cnn.onnx", ratio=0.5, calib=calib, compensate="bias", latency=False).report
    assert report.fidelity.data == str(calib) and report.fidelity.top1_agreement is not None


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


def test_sensitivity_prints_the_samples_it_used(run_cli, tmp_path):
    model = _dynamic_batch(builders.residual_net(width=8, blocks=1, seed=0))
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    name = model.graph.input[0].name
    data = _renamed_data(model, tmp_path / "c.npz", key=name, n=40)
    code, out, err = run_cli("sensitivity", src, "--calib", data, "-o", tmp_path / "s.json", "--samples", "16")
    assert code == 0, err
    assert "(16 samples)" in out
    assert json.loads((tmp_path / "s.json").read_text())["samples"] == 16


def test_a_sample_limit_below_the_batch_size_is_honoured_with_a_dynamic_batch(tmp_path):
    from graphprune.calibration.datasets import input_specs, open_dataset

    model = _dynamic_batch(builders.residual_net(width=8, blocks=1, seed=0))
    data = _renamed_data(model, tmp_path / "c.npz", key=model.graph.input[0].name, n=40)
    batches = list(open_dataset(data).batches(input_specs(model), batch_size=32, limit=16))
    assert [len(b[model.graph.input[0].name]) for b in batches] == [16]


def test_a_model_narrower_than_the_channel_step_says_how_to_prune_it_anyway(run_cli, tmp_path):
    from graphprune.objectives.hardware import channel_step

    step = channel_step().step
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(builders.residual_net(width=step // 2, blocks=1, seed=0), src)  # groups of step/2 and step
    code, _, err = run_cli("prune", src, "-o", out, "--ratio", "0.3", "-q", "--no-latency")
    assert code == 0 and not out.exists()
    assert "nothing to prune" in err and f"whole channel steps of {step}" in err and "--round-to 1" in err
    code, _, err = run_cli("prune", src, "-o", out, "--ratio", "0.3", "--round-to", "1", "-q", "--no-latency")
    assert code == 0 and out.exists(), err


def test_fidelity_over_a_dataset_equals_fidelity_of_all_its_outputs_at_once():
    from graphprune.calibration.datasets import input_specs, open_dataset
    from graphprune.validation.contract import fidelity, run
    from graphprune.validation.evaluate import evaluate

    original = api.load_model(DIGITS / "digits_cnn.onnx")
    pruned = api.prune(original, ratio=0.5, validate=False).model
    data = open_dataset(DIGITS / "digits_calib.npz")
    ev = evaluate(original, pruned, data, limit=12)  # 12 batches of the model's fixed batch of 1
    batches = list(data.batches(input_specs(original), limit=12))
    outs_o = np.concatenate([run(original, b)[0] for b in batches])
    outs_p = np.concatenate([run(pruned, b)[0] for b in batches])
    at_once = fidelity([outs_p], [outs_o])
    assert ev.fidelity.samples == 12 and at_once.cosine < 0.9999
    assert ev.fidelity.cosine == pytest.approx(at_once.cosine, rel=1e-6)  # two sessions: float32 rounding
    assert ev.fidelity.rel_l2 == pytest.approx(at_once.rel_l2, rel=1e-6)


def test_sensitivity_of_a_unit_the_model_does_not_have_is_a_usage_error(run_cli, tmp_path):
    args = (
        "sensitivity",
        DIGITS / "digits_cnn.onnx",
        "--calib",
        DIGITS / "digits_calib.npz",
        "-o",
        tmp_path / "s.json",
    )
    code, _, err = run_cli(*args, "--unit", "heads", "--samples", "4")
    one_line_error(code, err, "--unit heads", "no prunable group")
    assert not (tmp_path / "s.json").exists()
