"""``graphprune prune A B -o OUTDIR [--tie]``: several files written into one folder, or none.

Contract: exit 0 and every file written as OUTDIR/<its name>, with a report whose files each
carry the single-model keys and a ``tied`` list; bad input is one stderr line, exit 2, and
nothing written (no output file, no staging or temporary file left).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.multifile import encoder_decoder

SINGLE_KEYS = {"params_before", "params_after", "flops_before", "flops_after", "exact", "fidelity", "passed"}


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    enc, dec = encoder_decoder(renamed=True)
    a, b = tmp_path / "encoder.onnx", tmp_path / "decoder.onnx"
    onnx.save(enc, a)
    onnx.save(dec, b)
    return a, b


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _one_error(code: int, err: str, *names: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphprune: error:"), err
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


def test_prune_tie_writes_every_file_and_reports_the_tied_groups(run_cli, pair, tmp_path):
    out, report = tmp_path / "out" / "nested", tmp_path / "report.json"
    before = [p.read_bytes() for p in pair]
    code, stdout, err = run_cli("prune", *pair, "-o", out, "--tie", "--report", report, "--no-latency")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["decoder.onnx", "encoder.onnx"]  # nothing staged is left
    assert [p.read_bytes() for p in pair] == before  # inputs untouched
    body = json.loads(report.read_text())
    assert body["tie"] is True and [f["model"] for f in body["files"]] == [str(p) for p in pair]
    for f in body["files"]:
        assert SINGLE_KEYS <= set(f) and f["passed"] and f["exact"]["passed"]
        pruned = [t for t in f["tied"] if t["prunable"]]
        assert [t["anchors"] for t in pruned] == [
            {"encoder.onnx": ["shared.ffn.up.weight[1]"], "decoder.onnx": ["decoder.shared_copy.ffn.up.weight[1]"]}
        ]
        assert pruned[0]["removed"] == 16
    e, d = _weights(out / "encoder.onnx"), _weights(out / "decoder.onnx")
    assert np.array_equal(e["shared.ffn.up.weight"], d["decoder.shared_copy.ffn.up.weight"])
    assert e["shared.ffn.up.weight"].shape == (16, 16)
    assert "tied (hash)" in stdout and "16 of 32 removed" in stdout


def test_an_existing_output_needs_force(run_cli, pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "decoder.onnx").write_bytes(b"old")
    code, _, err = run_cli("prune", *pair, "-o", out, "--tie", "--no-latency", "-q")
    _one_error(code, err, "decoder.onnx", "--force")
    assert sorted(os.listdir(out)) == ["decoder.onnx"] and (out / "decoder.onnx").read_bytes() == b"old"
    code, _, err = run_cli("prune", *pair, "-o", out, "--tie", "--no-latency", "-q", "--force")
    assert code == 0, err
    assert onnx.load(str(out / "decoder.onnx")).graph.node


def test_an_output_folder_that_is_a_file_is_refused(run_cli, pair, tmp_path):
    out = tmp_path / "taken"
    out.write_text("a file")
    code, _, err = run_cli("prune", *pair, "-o", out, "--tie", "-q")
    _one_error(code, err, str(out), "not a directory")
    assert out.read_text() == "a file"


def test_output_is_required(run_cli, pair):
    code, _, err = run_cli("prune", *pair, "--tie", "-q")
    _one_error(code, err, "-o")


def test_one_file_that_does_not_load_stops_all_before_anything_is_written(run_cli, pair, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    out = tmp_path / "out"
    code, _, err = run_cli("prune", pair[0], bad, "-o", out, "--tie", "--no-latency", "-q")
    _one_error(code, err, "bad.onnx")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--target-flops", "0.5"], "--target-flops"), (["--plan", "p.json"], "--plan"), (["--global"], "--global")],
)
def test_flags_of_one_model_are_refused_for_several(run_cli, pair, tmp_path, extra, named):
    out = tmp_path / "out"
    code, _, err = run_cli("prune", *pair, "-o", out, "--tie", "-q", *extra)
    _one_error(code, err, named)
    assert not out.exists()


def test_tie_needs_two_models(run_cli, pair, tmp_path):
    code, _, err = run_cli("prune", pair[0], "-o", tmp_path / "out", "--tie", "-q")
    _one_error(code, err, "--tie")


def test_two_inputs_of_one_name_are_refused(run_cli, pair, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / "encoder.onnx"
    twin.write_bytes(pair[0].read_bytes())
    code, _, err = run_cli("prune", pair[0], twin, "-o", tmp_path / "out", "--tie", "-q")
    _one_error(code, err, "encoder.onnx")


def test_without_tie_files_are_pruned_each_on_its_own(run_cli, pair, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.json"
    code, _, err = run_cli("prune", *pair, "-o", out, "--report", report, "--no-latency", "-q")
    assert code == 0, err
    body = json.loads(report.read_text())
    assert body["tie"] is False and all("tied" not in f for f in body["files"])
    assert any("pruned independently" in n for n in body["notes"])
    # the decoder alone prunes its residual width, which the encoder cannot: the copies differ
    e, d = _weights(out / "encoder.onnx"), _weights(out / "decoder.onnx")
    assert e["shared.ffn.up.weight"].shape[0] == 16 and d["decoder.shared_copy.ffn.up.weight"].shape[0] == 8


def test_one_file_failing_validation_writes_none(run_cli, pair, tmp_path, monkeypatch):
    """The second file's exactness is made to fail after a real prune: exit 1, nothing written."""
    from graphprune import tie

    real = tie.prune_many

    def failing(*args, **kwargs):
        result = real(*args, **kwargs)
        result.results[1].report.exact.passed = False
        result.results[1].report.exact.max_rel_diff = 1.0
        return result

    monkeypatch.setattr(tie, "prune_many", failing)
    out = tmp_path / "out"
    code, _, err = run_cli("prune", *pair, "-o", out, "--tie", "--no-latency", "-q")
    assert code == 1 and err.count("\n") == 1 and "decoder.onnx" in err and "nothing written" in err, err
    assert not out.exists()


def test_a_failure_while_writing_leaves_no_output_and_no_staging(pair, tmp_path, monkeypatch):
    from graphprune.ir import files as io

    out = tmp_path / "out"
    out.mkdir()
    (out / "encoder.onnx").write_bytes(b"old")
    models = [onnx.load(str(p)) for p in pair]
    real, calls = io.save, []

    def save(model, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(model, path, **kwargs)

    monkeypatch.setattr(io, "save", save)
    with pytest.raises(OSError):
        io.save_all([(m, out / p.name, None) for m, p in zip(models, pair, strict=True)])
    assert os.listdir(out) == ["encoder.onnx"] and (out / "encoder.onnx").read_bytes() == b"old"


def test_models_with_external_data_are_written_with_theirs(run_cli, tmp_path):
    enc, dec = encoder_decoder()
    src = tmp_path / "src"
    src.mkdir()
    for m, name in ((enc, "encoder"), (dec, "decoder")):
        onnx.save(m, src / f"{name}.onnx", save_as_external_data=True, location=f"{name}.onnx.data", size_threshold=0)
    out = tmp_path / "out"
    code, _, err = run_cli(
        "prune", src / "encoder.onnx", src / "decoder.onnx", "-o", out, "--tie", "--no-latency", "-q"
    )
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["decoder.onnx", "decoder.onnx.data", "encoder.onnx", "encoder.onnx.data"]
    e, d = _weights(out / "encoder.onnx"), _weights(out / "decoder.onnx")
    assert e["shared.ffn.up.weight"].shape == (16, 16)
    assert np.array_equal(e["shared.ffn.up.weight"], d["shared.ffn.up.weight"])
