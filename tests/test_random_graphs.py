"""Random block-composed models (``models/random_graphs.py``): the generator makes valid,
varied models, and graphprune keeps its whole contract on each (``models/soak.py``)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.objectives.cost import random_feeds
from graphprune.planning.criteria import CRITERIA
from graphprune.rules import rule_for
from graphprune.validation.contract import run
from models import soak
from models.random_graphs import (
    ACTIVATIONS,
    BLOCKS,
    DEFAULT_IDIOMS,
    HEADS,
    IDIOMS,
    MYSTERY_BODIES,
    MYSTERY_DOMAIN,
    MYSTERY_OP,
    blocks_used,
    describe,
    features_used,
    models,
    random_model,
)
from models.soak import Settings, check_example, mystery_tensors

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^examples (\d+), pruned (\d+), blocked groups (\d+), failures (\d+)$", re.M)


@pytest.fixture(scope="module")
def first_200():
    return [random_model(seed) for seed in range(200)]


# ---------------------------------------------------------------------------- the invariant


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    model=models(),
    ratio=st.floats(0.05, 0.95),
    criterion=st.sampled_from(soak.SOAK_CRITERIA),
    round_to=st.sampled_from([1, 2, 4, 8]),
    global_threshold=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_model_prunes_within_the_contract(model, ratio, criterion, round_to, global_threshold, seed):
    """No exception, checker + onnxruntime + exactness pass, Mystery groups blocked and reported."""
    outcome = check_example(model, Settings(ratio, criterion, round_to, global_threshold, seed))
    assert outcome.failure is None, f"{describe(model)}: {outcome.failure}"


def test_mystery_groups_are_blocked_with_the_reason():
    """A model where the unknown op sits between two convs: both sides block, nothing else."""
    for seed in range(200):
        model = random_model(seed, max_blocks=3, kinds=["conv_bn_act", "mystery"])
        if mystery_tensors(model) and len(graphprune.analyze(model).groups) >= 3:
            break
    deps = graphprune.analyze(model)
    touched = [g for g in deps.groups if any(m.tensor in mystery_tensors(model) for m in g.members)]
    assert touched
    for g in touched:
        assert not g.prunable
        assert any(f"no rule for {MYSTERY_DOMAIN}.{MYSTERY_OP}" in r for r in g.reasons), g.reasons
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.passed
    for g in touched:
        assert len(result.plan.removed(g)) == 0


# ---------------------------------------------------------------------------- the generator


def test_generated_models_are_valid_and_run():
    for seed in range(60):
        model = random_model(seed)
        onnx.checker.check_model(model, full_check=True)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outputs = sess.run(None, random_feeds(model))
        for out, vi in zip(outputs, model.graph.output):
            declared = [d.dim_value or None for d in vi.type.tensor_type.shape.dim]
            assert [d or s for d, s in zip(declared, out.shape)] == list(out.shape), (seed, vi.name)
            assert np.isfinite(out).all(), seed
        info = describe(model)
        assert info["seed"] == seed and info["blocks"] == blocks_used(model)
        shape = info["input_shape"]  # as built; the declared batch and image size may be symbolic
        declared = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert [d if isinstance(d, int) else None for d in declared] in (
            shape,
            [None, *shape[1:]],
            [None, shape[1], None, None],
        ), (seed, declared)
        assert shape[0] == 1 and 1 <= shape[1] <= 8 and shape[2] == shape[3] in (8, 16, 32)


def test_mystery_op_is_a_model_local_function_that_graphprune_does_not_know():
    model = next(m for m in (random_model(s) for s in range(100)) if "mystery" in blocks_used(m))
    nodes = [n for n in model.graph.node if n.domain == MYSTERY_DOMAIN]
    assert nodes and all(n.op_type == MYSTERY_OP for n in nodes)
    assert rule_for(nodes[0]) is None
    assert [(f.domain, f.name) for f in model.functions] == [(MYSTERY_DOMAIN, MYSTERY_OP)]
    assert any(o.domain == MYSTERY_DOMAIN for o in model.opset_import)


def test_same_seed_same_model():
    for seed in (0, 7, 12345, 2**32 - 1):
        assert random_model(seed).SerializeToString() == random_model(seed).SerializeToString()
    a = random_model(np.random.default_rng(3))
    b = random_model(np.random.default_rng(3))
    assert a.SerializeToString() == b.SerializeToString()
    assert describe(a)["seed"] is None


def test_max_blocks_and_kinds_are_respected():
    for seed in range(30):
        model = random_model(seed, max_blocks=2, kinds=["split", "pad"])
        assert set(blocks_used(model)) <= {"split", "pad"}
    with pytest.raises(ValueError):
        random_model(0, kinds=["nonsense"])
    with pytest.raises(ValueError):
        random_model(0, max_blocks=0)


def test_generator_covers_every_block_type(first_200):
    used = {b for m in first_200 for b in blocks_used(m)}
    assert set(BLOCKS) <= used, set(BLOCKS) - used


FEATURES = sorted(
    {f"block:{b}" for b in BLOCKS}
    | {f"head:{h}" for h in HEADS}
    | {f"act:{a}" for a in ACTIVATIONS}
    | {f"mystery:{b}" for b in MYSTERY_BODIES}
    | {"concat:2", "concat:3", "concat:4", "concat:negative_axis", "concat_repeat", "nested"}
    | {"depthwise:x1", "depthwise:x2", "grouped_conv:2", "grouped_conv:3", "residual:sum", "conv:tied_weight"}
    | {"split:2:equal", "split:2:unequal", "split:3:unequal", "split:slice", "split:num_outputs"}
    | {"split:implicit_equal", "split:negative_axis", "split:unused_chunk"}
    | {"transpose:matmul", "transpose:hw", "transpose:scale", "resize:scales", "resize:sizes", "resize:sizes_axes"}
    | {"pad:constant", "pad:reflect", "pad:edge", "pad:axes", "pad:channels", "norm:affine"}
    | {"se:dense:reshape", "se:dense:reshape0", "se:dense:unsqueeze", "se:dense:keepdims0"}
    | {"act:mish:op", "act:mish:decomposed", "act:gelu:op", "act:gelu:decomposed"}
    | {"opset:17", "opset:18", "opset:20", "head:matmul", "head:reshape", "gemm:variant"}
    | {"model:value_info", "model:constant_nodes", "model:initializers_as_inputs"}
    | {"model:shared_constants", "model:dynamic_batch", "model:extra_outputs"}
    | {f"idiom:select:{form}" for form in ("gather", "range", "strided", "reversed")}
    | {"idiom:symbolic_dims", "idiom:constant_weights"}
)


@functools.lru_cache(maxsize=1)
def first_seed_with() -> dict[str, int]:
    """The first seed (of 0..599) whose model has each feature."""
    found: dict[str, int] = {}
    for seed in range(600):
        for f in features_used(random_model(seed)):
            found.setdefault(f, seed)
    return found


def test_generator_covers_heads_activations_and_variants(first_200):
    features = set().union(*(features_used(m) for m in first_200))
    assert set(FEATURES) <= features, sorted(set(FEATURES) - features)


@pytest.mark.parametrize("feature", FEATURES)
def test_every_variant_prunes_within_the_contract(feature):
    """The first model with each block, head, activation and variant, pruned at 0.5: a
    deterministic complement of the hypothesis test, one case per feature."""
    seed = first_seed_with().get(feature)
    assert seed is not None, f"no model of seeds 0..599 has {feature}"
    outcome = check_example(random_model(seed), Settings(0.5, "l2", 1, False, 0))
    assert outcome.failure is None, f"seed {seed}: {outcome.failure}"


def test_channel_counts_include_edge_cases(first_200):
    widths = set()
    for m in first_200:
        dims = {t.name: list(t.dims) for t in m.graph.initializer}
        widths.update(dims[n.input[1]][0] for n in m.graph.node if n.op_type == "Conv" and n.input[1] in dims)
    assert {1, 2} <= widths
    assert max(widths) >= 20


# ---------------------------------------------------------------------------- the soak command


def test_soak_command_prints_the_summary_and_exits_0():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "models.soak", "20"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = SUMMARY.search(proc.stdout)
    assert match, proc.stdout
    examples, pruned, blocked, failures = map(int, match.groups())
    assert (examples, failures) == (20, 0)
    assert 0 < pruned <= 20 and blocked > 0
    assert proc.stdout.strip().splitlines()[-1] == match.group(0)


def test_soak_reports_and_saves_failures(tmp_path, capsys, monkeypatch):
    def fail_on_odd(model, settings):
        outcome = soak.Outcome(blocked=2, pruned_groups=1)
        if describe(model)["seed"] % 2:
            outcome.failure = "injected failure"
        return outcome

    monkeypatch.setattr(soak, "check_example", fail_on_odd)
    code = soak.main(["4", "--seed", "10", "--save-failures", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "examples 4, pruned 4, blocked groups 8, failures 2" in out
    assert out.strip().splitlines()[-1] == "failing seeds: 11 13"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_11.onnx", "seed_11.txt", "seed_13.onnx", "seed_13.txt"]
    assert "injected failure" in (tmp_path / "seed_11.txt").read_text()
    onnx.checker.check_model(onnx.load(tmp_path / "seed_11.onnx"), full_check=True)


def test_soak_settings_are_drawn_from_the_seed():
    a, b = soak.draw_settings(5), soak.draw_settings(5)
    assert a == b
    draws = [soak.draw_settings(s) for s in range(200)]
    assert all(0.05 < d.ratio < 0.95 and d.criterion in CRITERIA and d.round_to in (1, 2, 4, 8) for d in draws)
    assert {d.criterion for d in draws} == set(soak.SOAK_CRITERIA) == set(CRITERIA) - {"dcp"}
    assert {d.global_threshold for d in draws} == {True, False}


@pytest.mark.parametrize(
    ("size", "ratio", "round_to", "expected"),
    [(10, 0.5, 1, True), (10, 0.05, 1, False), (8, 0.5, 8, False), (12, 0.5, 8, True), (1, 0.9, 1, False)],
)
def test_expected_to_prune(size, ratio, round_to, expected):
    assert soak.expected_to_prune(size, ratio, round_to) is expected


def test_pad_with_axes_never_follows_a_transpose():
    """onnxruntime (1.32) pushes a Transpose through a Pad with an ``axes`` input by permuting
    ``pads`` as if it were full rank (seed 987713: Gather out of bounds in the original model):
    the generator gives such a Pad full-rank pads instead."""
    both = 0
    for seed in range(400):
        model = random_model(seed, max_blocks=4, kinds=["transpose_pair", "pad"])
        ops = [(n.op_type, len(n.input)) for n in model.graph.node]
        if ("Pad", 4) not in ops:
            continue
        first_pad_with_axes = ops.index(("Pad", 4))
        last_pad_with_axes = len(ops) - 1 - ops[::-1].index(("Pad", 4))
        assert "Transpose" not in [op for op, _ in ops[:last_pad_with_axes]], seed
        both += "Transpose" in [op for op, _ in ops[first_pad_with_axes:]]
    assert both > 0  # Pads with axes are still drawn, before Transposes
    model = random_model(987713)
    run(model, random_feeds(model))  # the original runs: onnxruntime does not reach the Pad bug


def test_a_model_onnxruntime_cannot_run_is_reported_as_the_generators_fault():
    # Valid for the checker (it does not read index values), out of bounds for onnxruntime.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    idx = numpy_helper.from_array(np.array([5], np.int64), "idx")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Gather", ["c", "idx"], ["y"], name="gather", axis=1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [w, idx]), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model, full_check=True)
    outcome = check_example(model, Settings(0.5, "l2", 1, False, 0))
    assert outcome.failure.startswith("generator made a model onnxruntime cannot run: "), outcome.failure


def test_idioms_change_only_the_models_they_are_drawn_in():
    plain = 0
    for seed in range(60):
        model = random_model(seed, idioms=IDIOMS)
        if any(f.startswith("idiom:") for f in features_used(model)):
            continue
        plain += 1
        bare = random_model(seed, idioms=())
        model.doc_string = bare.doc_string = ""
        assert model.SerializeToString() == bare.SerializeToString(), seed
    assert 0 < plain < 60
    assert set(DEFAULT_IDIOMS) <= set(IDIOMS)
    with pytest.raises(ValueError, match="unknown idioms"):
        random_model(0, idioms=["nope"])


def test_qdq_models_prune_their_int8_weights_exactly():
    """The qdq idiom (opt-in): activations through QuantizeLinear -> DequantizeLinear, int8
    weights through DequantizeLinear; the int8 weights and their per-channel scales are pruned."""
    seed = next(s for s in range(100) if "idiom:qdq_weight" in features_used(random_model(s, idioms=["qdq"])))
    model = random_model(seed, idioms=["qdq"])
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4}
    deps = graphprune.analyze(model)
    assert any(m.tensor in int8 for g in deps.prunable_groups() for m in g.members)
    outcome = check_example(model, Settings(0.5, "l2", 1, False, 0))
    assert outcome.failure is None and outcome.pruned_groups > 0, (seed, outcome.failure)
    pruned = graphprune.prune(model, ratio=0.5, latency=False).model
    before = {t.name: t.dims[0] for t in model.graph.initializer if t.name in int8}
    after = {t.name: t.dims[0] for t in pruned.graph.initializer if t.name in int8}
    assert any(after[name] < before[name] for name in before), (before, after)
