"""Bad files and interrupted runs: one clear line, exit 2 (130 on Ctrl-C), nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.cli import main
from models import builders


def _cycle(tmp: Path) -> Path:
    m = builders.conv_chain()
    m.graph.node[0].input[0] = m.graph.node[-1].output[0]
    return _write(tmp / "cycle.onnx", m)


def _duplicate_names(tmp: Path) -> Path:
    m = builders.conv_chain()
    m.graph.node[2].output[0] = m.graph.node[1].output[0]
    return _write(tmp / "dup.onnx", m)


def _opset_too_new(tmp: Path) -> Path:
    m = builders.conv_chain()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    return _write(tmp / "future.onnx", m)


def _missing_external(tmp: Path) -> Path:
    onnx.save_model(builders.conv_chain(), tmp / "ext.onnx", save_as_external_data=True, location="w.bin")
    (tmp / "w.bin").unlink()
    return tmp / "ext.onnx"


def _escaping_external(tmp: Path) -> Path:
    onnx.save_model(builders.conv_chain(), tmp / "esc.onnx", save_as_external_data=True, location="w.bin")
    m = onnx.load(tmp / "esc.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    (tmp.parent / "outside.bin").write_bytes((tmp / "w.bin").read_bytes())
    return _write(tmp / "esc.onnx", m)


def _write(path: Path, m: onnx.ModelProto) -> Path:
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (_cycle, "the graph has a cycle"),
        (_duplicate_names, "single static assignment"),
        (_opset_too_new, "newer than the installed onnx"),
        (_missing_external, "missing external data file 'w.bin'"),
        (_escaping_external, "escapes the model's folder"),
    ],
    ids=["cycle", "duplicate-names", "opset-too-new", "missing-external-data", "escaping-external-data"],
)
@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_bad_model_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, make, message, command):
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder)
    out = tmp_path / "out.onnx"
    argv = ["prune", str(path), "-o", str(out), "-q"] if command == "prune" else ["inspect", str(path)]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("graphprune: error: ") and path.name in err[0]
    assert message in err[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (["in"], ["in", "outside.bin"])


def test_output_of_a_model_with_external_data_keeps_external_data_named_after_it(tmp_path):
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(builders.residual_net(width=32), src, save_as_external_data=True, location="weights.bin")
    out = tmp_path / "dst" / "small.onnx"
    assert main(["prune", str(src), "-o", str(out), "-q", "--no-latency"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.onnx", "small.onnx.data"]
    locations = {
        e.value
        for t in onnx.load(out, load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    assert locations == {"small.onnx.data"}
    assert sorted(p.name for p in src.parent.iterdir()) == ["model.onnx", "weights.bin"]  # input untouched


def _big_model(path: Path) -> None:
    """~200 MB of Gemm weights: saving it takes long enough to be interrupted."""
    rng = np.random.default_rng(0)
    n = 2560
    inits, nodes, x = [], [], "input"
    for i in range(8):
        inits.append(numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), f"fc{i}.weight"))
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight"], [f"h{i}"], transB=1, name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n])],
        inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_interrupt_at_any_moment_leaves_the_whole_output_or_nothing(tmp_path):
    src = tmp_path / "big.onnx"
    _big_model(src)
    outs = tmp_path / "outs"
    outs.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    seen_codes = set()
    for k, delay in enumerate([0.0, 0.2, 0.5, 0.8, 1.2, 1.6, 2.2, 3.0]):
        out = outs / f"small{k}.onnx"
        proc = subprocess.Popen(
            [sys.executable, "-m", "graphprune.cli", "prune", str(src), "-o", str(out), "--no-validate"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The clock starts once graphprune is running (its first progress line), so that a
        # loaded machine does not turn every case into an interrupt of Python's start-up.
        first = proc.stderr.readline()
        assert first.startswith("loading "), first
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        seen_codes.add(proc.returncode)
        assert proc.returncode in (0, 130), err
        assert [p.name for p in outs.iterdir() if p.name.startswith(f".small{k}")] == []
        last = err.strip().splitlines()[-1]
        if proc.returncode == 0 or "already written completely" in last:
            assert len(onnx.load(out).graph.initializer) == 8  # the whole output
        else:
            assert not out.exists()
            assert last == "graphprune: interrupted; nothing was written"
    assert 130 in seen_codes
