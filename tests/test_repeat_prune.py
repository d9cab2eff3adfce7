"""Pruning a pruned model keeps every step: ``validate ORIGINAL LATEST`` proves exactness
through the chain (the plans composed into the original's indices), and a tampered chain fails."""

from __future__ import annotations

import json

import onnx
import pytest

import graphprune
from graphprune.cli import main
from graphprune.passes.finish import HISTORY_METADATA_KEY, PLAN_METADATA_KEY, fingerprint, get_metadata, set_metadata
from models import builders


@pytest.fixture(scope="module")
def chain():
    """The original and the models after pruning it at 0.3, then at 0.4, then at 0.25."""
    original = builders.residual_net(width=16, blocks=3)
    models = [original]
    for ratio in (0.3, 0.4, 0.25):
        models.append(graphprune.prune(models[-1], ratio=ratio, validate=False).model)
    return models


def history(model: onnx.ModelProto) -> list[dict]:
    return json.loads(get_metadata(model, HISTORY_METADATA_KEY))["steps"]


def test_a_model_pruned_twice_records_both_plans(chain):
    original, once, twice, _ = chain
    assert get_metadata(once, HISTORY_METADATA_KEY) is None  # pruned once: its plan is its history
    steps = history(twice)
    assert len(steps) == 2
    assert steps[0]["plan"] == json.loads(get_metadata(once, PLAN_METADATA_KEY))
    assert steps[1]["plan"] == json.loads(get_metadata(twice, PLAN_METADATA_KEY))
    assert steps[0]["input"] is None and steps[1]["input"] == fingerprint(once)
    assert fingerprint(once) != fingerprint(original)


@pytest.mark.parametrize("times", [2, 3])
def test_validate_against_the_original_is_exact_through_the_chain(chain, times):
    original, latest = chain[0], chain[times]
    report = graphprune.validate(original, latest, latency=False)
    assert report.exact.checked and report.exact.passed, report.exact
    assert f"through {times} pruning steps" in report.exact.note
    assert report.params_after < graphprune.validate(original, chain[1], latency=False).params_after


def test_validate_against_an_intermediate_model_uses_the_steps_since_it(chain):
    _, once, twice, thrice = chain
    for earlier in (once, twice):
        report = graphprune.validate(earlier, thrice, latency=False)
        assert report.exact.checked and report.exact.passed, report.exact
    assert "through 2 pruning steps" in graphprune.validate(once, thrice, latency=False).exact.note


@pytest.mark.parametrize("step", [0, 1])
def test_a_tampered_chain_fails_exactness(chain, step):
    original, _, twice, _ = chain
    tampered = onnx.ModelProto()
    tampered.CopyFrom(twice)
    steps = history(tampered)
    entry = next(e for e in steps[step]["plan"]["groups"] if e["remove"])
    # same count, other channels: the chain no longer says what was cut
    entry["remove"] = [(i + 1) % entry["size"] for i in entry["remove"]]
    assert len(set(entry["remove"])) == len(entry["remove"])
    set_metadata(tampered, HISTORY_METADATA_KEY, json.dumps({"steps": steps}))
    report = graphprune.validate(original, tampered, latency=False)
    assert report.exact.checked and not report.exact.passed, report.exact


def test_cli_validate_of_a_twice_pruned_file(tmp_path, capsys, tiny_model_path):
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    # --round-to 1: this 16-wide model keeps whole channel steps by default, and would not be pruned twice
    once_args = ["--ratio", "0.3", "--round-to", "1", "-q", "--no-latency"]
    assert main(["prune", str(tiny_model_path), "-o", str(once), *once_args]) == 0
    assert main(["prune", str(once), "-o", str(twice), "--ratio", "0.5", "--round-to", "1", "-q", "--no-latency"]) == 0
    capsys.readouterr()
    assert main(["validate", str(tiny_model_path), str(twice), "--json", "--no-latency"]) == 0
    exact = json.loads(capsys.readouterr().out)["exact"]
    assert exact["checked"] and exact["passed"] and "through 2 pruning steps" in exact["note"]
