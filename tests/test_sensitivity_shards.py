"""Sensitivity shared out over workers (issue 14): shards merged equal the single-process run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphprune.analysis.dependency import analyze
from graphprune.calibration.datasets import open_dataset
from graphprune.cli import main
from graphprune.planning.sensitivity import measure, merge_shards
from models import builders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sens")
    m = builders.residual_net(width=8, blocks=3, num_classes=4, input_shape=[1, 3, 8, 8])
    onnx.save(m, d / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32)
    np.savez(d / "calib.npz", input=x, labels=np.arange(12) % 4)
    return d


@pytest.mark.parametrize("n", [2, 3])
def test_merged_shards_equal_the_whole_run(tiny, n):
    model = onnx.load(tiny / "tiny.onnx")
    deps = analyze(model)
    data = open_dataset(tiny / "calib.npz")
    whole = measure(model, deps, data, labels="labels", samples=12)
    shards = [measure(model, deps, data, labels="labels", samples=12, shard=(k, n)) for k in range(n)]
    assert all(len(s.groups) < len(whole.groups) for s in shards)
    assert merge_shards(shards).to_json() == whole.to_json()
    assert len(whole.groups) >= 3 and whole.blocks


def test_sensitivity_on_ray_writes_the_single_process_result(tiny, tmp_path):
    pytest.importorskip("ray")
    common = ["sensitivity", str(tiny / "tiny.onnx"), "--calib", str(tiny / "calib.npz"), "--labels", "-q"]
    assert main([*common, "-o", str(tmp_path / "local.json")]) == 0
    assert main([*common, "-o", str(tmp_path / "ray.json"), "--executor", "ray", "--workers", "2"]) == 0
    local = json.loads((tmp_path / "local.json").read_text())
    assert json.loads((tmp_path / "ray.json").read_text()) == local
    assert len(local["groups"]) >= 3


def test_sensitivity_unknown_executor_is_exit_2(tiny, tmp_path, capsys):
    args = ["sensitivity", str(tiny / "tiny.onnx"), "--calib", str(tiny / "calib.npz"), "-o", str(tmp_path / "s.json")]
    assert main([*args, "--executor", "spark"]) == 2
    assert "unknown executor 'spark'" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
