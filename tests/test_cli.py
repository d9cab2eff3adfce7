"""The command line: ``graphprune inspect | prune | validate``, run for real on a small model.

Contract under test: exit codes 0 ok, 1 validation failed, 2 bad input or usage; an error
is one line on stderr that starts with ``graphprune: error:`` and names the file and the
problem, never a traceback; nothing is written when the command fails, and files are
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune.api

CRITERIA = ["l1", "l2", "bn-scale", "fpgm", "random"]
REPORT_KEYS = {
    "params_before",
    "params_after",
    "flops_before",
    "flops_after",
    "exact",
    "fidelity",
    "groups_pruned",
    "groups_blocked",
}
SUMMARY = r"(\d+) groups: (\d+) prunable \((\d+) channels\), (\d+) blocked"
IGNORED_CONV = "/layer1/0/conv1/Conv"
IGNORED_WEIGHT = "layer1.0.conv1.weight"


# ----------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {name: arr.shape for name, arr in initializers(path).items()}


def leftover_temp_files(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp") or ".tmp." in n)


def one_error_line(code: int, err: str, *must_name: str) -> str:
    """Assert the bad-input contract on one command's result; return the error line."""
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("graphprune: error:"), line
    for name in must_name:
        assert name in line, f"{name!r} not named in: {line}"
    return line


def prune_ok(run_cli, model: Path, out: Path, *extra: str) -> dict:
    """Prune with a report, without timing; assert exit 0 and return the report."""
    report = out.with_suffix(".report.json")
    code, _, err = run_cli("prune", model, "-o", out, "--report", report, "--no-latency", *extra)
    assert code == 0, err
    assert out.is_file()
    return json.loads(report.read_text())


# ------------------------------------------------------------------- bad model files


def _missing(tmp: Path, model: bytes) -> Path:
    return tmp / "missing.onnx"


def _directory(tmp: Path, model: bytes) -> Path:
    p = tmp / "folder.onnx"
    p.mkdir()
    return p


def _empty(tmp: Path, model: bytes) -> Path:
    p = tmp / "empty.onnx"
    p.write_bytes(b"")
    return p


def _truncated(tmp: Path, model: bytes) -> Path:
    p = tmp / "truncated.onnx"
    p.write_bytes(model[: len(model) // 2])
    return p


def _text(name: str) -> Callable[[Path, bytes], Path]:
    def make(tmp: Path, model: bytes) -> Path:
        p = tmp / name
        p.write_text("This is a README, not a model.\nSecond line: 1, 2, 3.\n")
        return p

    return make


def _tensor_proto(name: str) -> Callable[[Path, bytes], Path]:
    def make(tmp: Path, model: bytes) -> Path:
        p = tmp / "tensor.onnx"
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        p.write_bytes(numpy_helper.from_array(arr, name).SerializeToString())
        return p

    return make


def _fails_checker(tmp: Path, model: bytes) -> Path:
    proto = onnx.load_from_string(model)
    proto.graph.node[3].input[0] = "undefined_tensor"  # read, but produced by nobody
    p = tmp / "broken_graph.onnx"
    p.write_bytes(proto.SerializeToString())
    return p


BAD_FILES = {
    "missing": _missing,
    "directory": _directory,
    "zero-bytes": _empty,
    "truncated-protobuf": _truncated,
    "text-file": _text("notes.txt"),
    "text-file-json-suffix": _text("notes.json"),
    "text-file-textproto-suffix": _text("notes.txtpb"),
    "tensorproto-named": _tensor_proto("w"),
    "tensorproto-unnamed": _tensor_proto(""),
    "fails-checker": _fails_checker,
}


@pytest.fixture(params=list(BAD_FILES), ids=list(BAD_FILES))
def bad_model(request, tmp_path, tiny_model_bytes) -> Path:
    return BAD_FILES[request.param](tmp_path, tiny_model_bytes)


# -------------------------------------------------------------------------- inspect


def test_inspect_prints_a_table_with_prunable_rows_and_a_summary_line(run_cli, tiny_model_path):
    code, out, err = run_cli("inspect", tiny_model_path)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["group", "size", "unit", "members", "made", "by", "status"]
    assert any(line.rstrip().endswith("prunable") for line in lines[2:-1])
    assert any("blocked: input (graph input)" in line for line in lines)
    assert "blocked groups by rule: graph input (1), graph output (1)" in lines
    summary = re.fullmatch(SUMMARY, lines[-1])
    assert summary, lines[-1]
    total, prunable, _, blocked = map(int, summary.groups())
    group_rows = lines[2 : lines.index("")]  # header and rule above; blocked-by-rule and residual blocks below
    assert total == prunable + blocked == len(group_rows)
    assert prunable >= 1


def test_inspect_json_lists_every_group_with_its_members(run_cli, tiny_model_path):
    code, out, err = run_cli("inspect", tiny_model_path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {"groups_total", "groups_prunable", "groups_blocked", "groups"} <= set(data)
    groups = data["groups"]
    assert len(groups) == data["groups_total"]
    assert data["groups_prunable"] + data["groups_blocked"] == data["groups_total"]
    assert sum(g["prunable"] for g in groups) == data["groups_prunable"] >= 1
    inits = initializers(tiny_model_path)
    for g in groups:
        assert {"id", "size", "prunable", "reasons", "members"} <= set(g)
        assert isinstance(g["size"], int) and g["size"] > 0
        assert g["members"]
        assert bool(g["reasons"]) == (not g["prunable"])
        for m in g["members"]:
            if m["tensor"] in inits:  # a weight member: its axis has one entry per index
                assert inits[m["tensor"]].shape[m["axis"]] == g["size"] * m["entries_per_index"]


# ---------------------------------------------------------------------------- prune


def test_prune_writes_model_report_and_plan_and_leaves_the_input_untouched(run_cli, tiny_model_path):
    tmp = tiny_model_path.parent
    out, report_path, plan_path = tmp / "pruned.onnx", tmp / "r.json", tmp / "p.json"
    before = sha256(tiny_model_path)
    code, stdout, err = run_cli(
        "prune",
        tiny_model_path,
        "-o",
        out,
        "--ratio",
        "0.5",
        "--criterion",
        "l2",
        "--round-to",
        "8",
        "--report",
        report_path,
        "--save-plan",
        plan_path,
    )
    assert code == 0, err
    assert sha256(tiny_model_path) == before
    assert "parameters" in stdout and f"wrote {out}" in stdout

    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    for node in pruned.graph.node:  # --round-to 8: every conv keeps a multiple of 8 filters
        if node.op_type == "Conv":
            assert initializers(out)[node.input[1]].shape[0] % 8 == 0, node.name

    report = json.loads(report_path.read_text())
    assert REPORT_KEYS <= set(report)
    assert {"checked", "passed", "max_rel_diff", "skipped_groups"} <= set(report["exact"])
    assert {"cosine", "rel_l2"} <= set(report["fidelity"])
    assert report["exact"]["checked"] is True
    assert report["exact"]["passed"] is True
    assert report["exact"]["max_rel_diff"] <= 1e-4
    assert report["params_after"] < report["params_before"]
    assert report["flops_after"] < report["flops_before"]
    assert report["groups_pruned"] >= 1
    assert -1.0 <= report["fidelity"]["cosine"] <= 1.0 and report["fidelity"]["rel_l2"] >= 0
    assert report["latency_ms_before"] > 0 and report["latency_ms_after"] > 0

    plan = json.loads(plan_path.read_text())
    assert len(plan["groups"]) == report["groups_pruned"]
    assert all({"anchor", "axis", "remove"} <= set(entry) for entry in plan["groups"])


def test_applying_the_saved_plan_reproduces_the_same_initializers(run_cli, tiny_model_path):
    tmp = tiny_model_path.parent
    first, second, plan = tmp / "first.onnx", tmp / "second.onnx", tmp / "p.json"
    prune_ok(
        run_cli, tiny_model_path, first, "--ratio", "0.5", "--criterion", "l2", "--round-to", "8", "--save-plan", plan
    )
    # The plan replaces --criterion: it must not change what is removed (--ratio with --plan is a
    # usage error: tests/test_front.py).
    report = prune_ok(run_cli, tiny_model_path, second, "--plan", plan, "--criterion", "random")
    assert report["exact"]["passed"] is True
    assert report["criterion"] is None  # the plan, not a criterion, chose the channels
    a, b = initializers(first), initializers(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize(
    "flags",
    [["--criterion", c] for c in CRITERIA] + [["--criterion", "l2", "--global"]],
    ids=CRITERIA + ["global"],
)
def test_each_criterion_and_the_global_threshold_prune_exactly(run_cli, tiny_model_path, flags):
    out = tiny_model_path.parent / "pruned.onnx"
    report = prune_ok(run_cli, tiny_model_path, out, "--ratio", "0.5", *flags)
    assert report["exact"]["checked"] is True
    assert report["exact"]["passed"] is True
    assert report["params_after"] < report["params_before"]
    assert report["global"] is ("--global" in flags)
    assert report["criterion"] == flags[1]


def test_ignore_leaves_the_named_conv_weight_unchanged(run_cli, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    report = prune_ok(run_cli, tiny_model_path, out, "--ignore", IGNORED_CONV)
    before, after = shapes(tiny_model_path), shapes(out)
    assert after[IGNORED_WEIGHT] == before[IGNORED_WEIGHT]
    # Both groups the conv touches (its input and its output channels) are protected, the
    # others are still pruned.
    assert after["layer2.0.conv1.weight"] != before["layer2.0.conv1.weight"]
    assert report["groups_ignored"] >= 1
    assert report["exact"]["passed"] is True


def test_a_model_after_a_list_flag_is_the_model_not_a_value_of_the_flag(run_cli, tiny_model_path):
    """argparse alone reads ``prune --ignore NAME MODEL`` as two names and no model."""
    out = tiny_model_path.parent / "pruned.onnx"
    report_path = out.with_suffix(".json")
    code, _, err = run_cli(
        "prune", "--ignore", IGNORED_CONV, tiny_model_path, "-o", out, "--no-latency", "--report", report_path
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert shapes(out)[IGNORED_WEIGHT] == shapes(tiny_model_path)[IGNORED_WEIGHT]
    assert report["groups_ignored"] >= 1
    missing = tiny_model_path.parent / "missing.onnx"
    code, _, err = run_cli("prune", "--ignore", IGNORED_CONV, missing, "-o", out, "--force", "-q")
    assert one_error_line(code, err, "missing.onnx", "no such file")


# ------------------------------------------------------------------------- validate


def test_validate_json_passes_with_the_plan_stored_in_the_pruned_model(run_cli, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    prune_ok(run_cli, tiny_model_path, out, "--criterion", "fpgm")
    code, stdout, err = run_cli("validate", tiny_model_path, out, "--json", "--no-latency")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["exact"]["checked"] is True
    assert report["exact"]["passed"] is True
    assert report["passed"] is True
    assert report["params_after"] < report["params_before"]


def test_validate_with_a_plan_that_does_not_match_the_pruned_model_exits_1(run_cli, tiny_model_path):
    tmp = tiny_model_path.parent
    out, plan_path, wrong_path = tmp / "pruned.onnx", tmp / "p.json", tmp / "wrong.json"
    prune_ok(run_cli, tiny_model_path, out, "--save-plan", plan_path)
    plan = json.loads(plan_path.read_text())
    for entry in plan["groups"]:  # same number of channels removed, but other ones
        k, size = len(entry["remove"]), entry["size"]
        first = list(range(k))
        entry["remove"] = first if first != entry["remove"] else list(range(size - k, size))
    wrong_path.write_text(json.dumps(plan))
    code, stdout, err = run_cli("validate", tiny_model_path, out, "--plan", wrong_path, "--no-latency")
    assert code == 1, err
    assert "Traceback" not in err
    assert err.splitlines() == [err.strip()]
    assert err.startswith("graphprune: validation failed: exactness")
    assert "FAILED" in stdout


def test_validate_against_a_model_it_was_not_pruned_from_is_an_input_error(run_cli, tiny_model_path):
    """Not "validation failed" (the pruning was fine) nor a plan's 'no initializer named': the
    files are mixed up, for a single prune (its plan does not fit) and a history (its
    fingerprints), compensated or not; the real original, or an intermediate step, passes."""
    from models.builders import conv_chain

    tmp = tiny_model_path.parent
    other = tmp / "other.onnx"
    onnx.save(conv_chain(), other)
    once, twice = tmp / "once.onnx", tmp / "twice.onnx"
    prune_ok(run_cli, tiny_model_path, once, "--round-to", "1")
    prune_ok(run_cli, once, twice, "--round-to", "1")
    for pruned in (once, twice):
        code, _, err = run_cli("validate", other, pruned, "--no-latency", "-q")
        one_error_line(code, err, f"{pruned} was not pruned from {other}")
    for original in (tiny_model_path, once):
        code, _, err = run_cli("validate", original, twice, "--no-latency", "-q")
        assert code == 0, err


# ------------------------------------------------------------------------ atomicity


def test_no_temporary_files_are_left_after_success(run_cli, tiny_model_path):
    tmp = tiny_model_path.parent
    prune_ok(run_cli, tiny_model_path, tmp / "pruned.onnx", "--save-plan", tmp / "p.json")
    assert leftover_temp_files(tmp) == []
    assert sorted(os.listdir(tmp)) == ["model.onnx", "p.json", "pruned.onnx", "pruned.report.json"]


def test_no_temporary_files_are_left_after_bad_input(run_cli, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--ratio", "1.5", "-q")
    one_error_line(code, err)
    assert not out.exists()
    assert leftover_temp_files(out.parent) == []


def test_an_interrupt_while_writing_leaves_no_output_and_no_temporary_file(run_cli, tiny_model_path, monkeypatch):
    out = tiny_model_path.parent / "pruned.onnx"

    def interrupted(src, dst):
        assert Path(src).stat().st_size > 0  # the temporary file was written...
        raise KeyboardInterrupt  # ...and the user pressed Ctrl-C before the rename

    monkeypatch.setattr(os, "replace", interrupted)
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--no-latency", "-q")
    monkeypatch.undo()
    assert code == 130
    assert "nothing was written" in err
    assert not out.exists()
    assert leftover_temp_files(out.parent) == []


def test_an_interrupt_after_the_work_says_what_was_written_and_exits_130(tmp_path, monkeypatch, capsys):
    import graphprune.cli as cli
    from graphprune.ir import files as io

    done = tmp_path / "out.onnx"

    def finished_then_interrupted(argv, debug):  # Ctrl-C lands after the command's own handler
        io._COMMITTED.append(done)
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_COMMITTED", [])
    monkeypatch.setattr(cli, "_main", finished_then_interrupted)
    assert cli.main(["prune", "x.onnx", "-o", str(done)]) == 130
    assert capsys.readouterr().err.strip() == f"graphprune: interrupted; already written completely: {done}"
    monkeypatch.setattr(io, "_COMMITTED", [])
    monkeypatch.setattr(cli, "_main", lambda argv, debug: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["prune", "x.onnx", "-o", str(done)]) == 130
    assert capsys.readouterr().err.strip() == "graphprune: interrupted; nothing was written"


def test_a_model_that_fails_validation_exits_1_and_is_written_only_with_keep_failed(
    run_cli, tiny_model_path, monkeypatch
):
    real_check = graphprune.api.check_steps

    def exactness_fails(*args, **kwargs):  # the real checks, then a verdict of failure
        result = real_check(*args, **kwargs)
        assert result.exact.checked
        result.exact.passed, result.exact.max_rel_diff = False, 0.5
        return result

    monkeypatch.setattr(graphprune.api, "check_steps", exactness_fails)
    out = tiny_model_path.parent / "pruned.onnx"
    code, stdout, err = run_cli("prune", tiny_model_path, "-o", out, "--no-latency", "-q")
    assert code == 1
    assert err.splitlines() == [err.strip()]
    assert err.startswith("graphprune: validation failed:") and "output not written" in err
    assert stdout == ""
    assert not out.exists()
    assert leftover_temp_files(out.parent) == []

    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--no-latency", "-q", "--keep-failed")
    assert code == 1, err
    assert out.is_file()
    onnx.checker.check_model(onnx.load(str(out)))
    assert leftover_temp_files(out.parent) == []


def test_written_files_get_the_permissions_of_any_new_file(run_cli, tiny_model_path):
    tmp = tiny_model_path.parent
    reference = tmp / "reference.txt"
    reference.write_text("made with open()\n")
    expected = reference.stat().st_mode & 0o777
    out, plan = tmp / "pruned.onnx", tmp / "p.json"
    prune_ok(run_cli, tiny_model_path, out, "--save-plan", plan)
    written = (out, plan, out.with_suffix(".report.json"))
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in written}
    assert modes == dict.fromkeys(modes, oct(expected))


# ------------------------------------------------------------------------ bad input


def test_a_bad_model_file_is_rejected_by_prune_with_one_line(run_cli, bad_model, tmp_path):
    out = tmp_path / "pruned.onnx"
    code, stdout, err = run_cli("prune", bad_model, "-o", out, "--no-latency", "-q")
    one_error_line(code, err, bad_model.name)
    assert stdout == ""
    assert not out.exists()
    assert leftover_temp_files(tmp_path) == []


def test_a_bad_model_file_is_rejected_by_inspect_with_one_line(run_cli, bad_model):
    code, stdout, err = run_cli("inspect", bad_model, "--json")
    one_error_line(code, err, bad_model.name)
    assert stdout == ""


def test_a_bad_original_is_rejected_by_validate_with_one_line(run_cli, bad_model, tiny_model_path):
    code, stdout, err = run_cli("validate", bad_model, tiny_model_path, "--no-latency")
    one_error_line(code, err, bad_model.name)
    assert stdout == ""


def test_without_quiet_the_error_is_still_the_one_last_line_after_progress(run_cli, tmp_path):
    missing, out = tmp_path / "missing.onnx", tmp_path / "pruned.onnx"
    code, stdout, err = run_cli("prune", missing, "-o", out)
    assert code == 2
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("graphprune:")] == lines[-1:]
    assert lines[-1].startswith("graphprune: error:") and missing.name in lines[-1]
    assert "Traceback" not in err and stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.1"])
def test_a_ratio_outside_zero_one_is_bad_input(run_cli, tiny_model_path, ratio):
    out = tiny_model_path.parent / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--ratio", ratio, "-q")
    line = one_error_line(code, err, "ratio")
    assert str(float(ratio)) in line
    assert not out.exists()


def test_an_unknown_criterion_is_bad_input(run_cli, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--criterion", "l3", "-q")
    line = one_error_line(code, err, "criterion", "'l3'")
    assert all(c in line for c in CRITERIA)  # it says what the choices are
    assert not out.exists()


def _plan_case(tmp: Path, text: str) -> Path:
    p = tmp / "my_plan.json"
    p.write_text(text)
    return p


PLANS = {
    "not-json": ("{groups: [oops", "not valid JSON"),
    "unknown-initializer": (
        json.dumps({"groups": [{"anchor": "no.such.weight", "axis": 0, "remove": [0]}]}),
        "no.such.weight",
    ),
    "index-out-of-range": (
        json.dumps({"groups": [{"anchor": "conv1.weight", "axis": 0, "remove": [1, 99]}]}),
        "99",
    ),
}


@pytest.mark.parametrize("case", list(PLANS), ids=list(PLANS))
def test_a_bad_plan_file_is_bad_input_naming_the_plan_file(run_cli, tiny_model_path, case):
    text, problem = PLANS[case]
    plan = _plan_case(tiny_model_path.parent, text)
    out = tiny_model_path.parent / "pruned.onnx"
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--plan", plan, "-q")
    one_error_line(code, err, problem, plan.name)
    assert not out.exists()


def test_an_existing_output_needs_force(run_cli, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    out.write_bytes(b"an older result")
    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--no-latency", "-q")
    one_error_line(code, err, out.name, "--force")
    assert out.read_bytes() == b"an older result"

    code, _, err = run_cli("prune", tiny_model_path, "-o", out, "--no-latency", "-q", "--force")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert leftover_temp_files(out.parent) == []


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_output_equal_to_input_is_refused(run_cli, tiny_model_path, monkeypatch, force):
    before = sha256(tiny_model_path)
    monkeypatch.chdir(tiny_model_path.parent)  # the same file spelled another way
    code, _, err = run_cli("prune", tiny_model_path, "-o", "./model.onnx", "-q", *force)
    one_error_line(code, err, "model.onnx")
    assert sha256(tiny_model_path) == before
    assert sorted(os.listdir(tiny_model_path.parent)) == ["model.onnx"]


# ------------------------------------------------------------------- real processes


def test_a_real_quiet_prune_prints_nothing_and_exits_0(run_cli_subprocess, tiny_model_path):
    out = tiny_model_path.parent / "pruned.onnx"
    code, stdout, err = run_cli_subprocess("prune", tiny_model_path, "-o", out, "-q", "--no-latency")
    assert (code, stdout, err) == (0, "", "")
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_a_real_process_reports_a_missing_file_in_one_line(run_cli_subprocess, tmp_path):
    code, stdout, err = run_cli_subprocess("inspect", "missing.onnx", cwd=tmp_path)
    assert code == 2 and stdout == ""
    assert err.splitlines() == ["graphprune: error: missing.onnx: no such file"]


@pytest.mark.parametrize(
    "argv",
    [[], ["prune", "model.onnx"], ["inspect", "m.onnx", "--bogus"]],
    ids=["no-command", "no-output", "unknown-option"],
)
def test_a_real_process_reports_a_usage_error_in_one_line(run_cli_subprocess, tmp_path, argv):
    code, stdout, err = run_cli_subprocess(*argv, cwd=tmp_path)
    assert code == 2 and stdout == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("graphprune: error:") and "usage:" not in err


def test_a_bare_graphprune_names_its_commands(run_cli):
    code, out, err = run_cli()
    assert (code, out) == (2, "") and len(err.splitlines()) == 1, err
    assert all(name in err for name in ("inspect", "prune", "validate", "sensitivity", "search", "--help")), err
