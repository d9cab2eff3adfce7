"""The bundled digits ViT (a transformer trained on the digits CNN's split) and its pruning.

Contracts under test: the committed model is the one its training run measured (ORT top-1 on
the test split as recorded, at least 97%); analysis finds every block's attention heads and
MLP width prunable and blocks the LayerNorm'd residual stream; removing half the heads gives
the same outputs as the original with those heads' rows of the output projection zeroed (a
reference built here, not by graphprune); and the accuracy benchmark's bar: at half the heads
and half the MLP, the best post-training method keeps at least 95% of the original top-1.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphprune
from benchmarks import accuracy_vs_flops
from benchmarks import transformer_units as bench
from graphprune.passes.sparsity import check_pattern
from models.examples import digits_vit

DEPTH, HEADS, HEAD_DIM, MLP = 3, 4, 16, 256


def _tensors(group) -> set[str]:
    return {m.tensor for m in group.members}


def _heads_group(deps, block: int):
    """The one heads group that owns ``blocks.<block>``'s query bias."""
    (group,) = [g for g in deps.groups if g.unit == "heads" and f"blocks.{block}.attn.q.bias" in _tensors(g)]
    return group


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    """Logits ``[N, 10]``, one sample per run (the model takes a batch of 1)."""
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits_vit.TEST) as npz:
        return npz["input"], npz["labels"]


def test_bundled_model_is_small_and_an_exported_transformer():
    assert digits_vit.MODEL.stat().st_size < 800 << 10
    model = onnx.load(str(digits_vit.MODEL))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Softmax") == DEPTH and ops.count("LayerNormalization") == 2 * DEPTH + 1
    assert ops.count("MatMul") == 8 * DEPTH  # q, k, v, scores, context, proj, fc1, fc2
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert digits_vit.summary()["samples"] == {"train": 1100, "calib": 200, "test": 497}


def test_bundled_model_accuracy_is_what_its_training_run_recorded(test_split):
    x, y = test_split
    accuracy = float(np.mean(_run(str(digits_vit.MODEL), x).argmax(1) == y))
    assert accuracy == digits_vit.summary()["accuracy"]["test"]
    assert accuracy >= 0.97


def test_every_blocks_heads_and_mlp_are_prunable_and_the_residual_stream_is_not():
    deps = graphprune.analyze(onnx.load(str(digits_vit.MODEL)))
    found = sorted((g.unit, g.describe_size) for g in deps.prunable_groups())
    assert found == [("heads", f"{HEADS} heads x {HEAD_DIM}")] * DEPTH + [("mlp", str(MLP))] * DEPTH
    for i in range(DEPTH):  # each heads group owns its block's q, k and v biases
        group = _heads_group(deps, i)
        assert group.prunable and {f"blocks.{i}.attn.{p}.bias" for p in "qkv"} <= _tensors(group)
    reasons = " ".join(str(r) for g in deps.groups if not g.prunable for r in g.reasons)
    assert "LayerNormalization over axis 2" in reasons


def _out_projection(model: onnx.ModelProto, block: int) -> str:
    """The weight of the MatMul whose output gets ``blocks.<block>.attn.proj.bias`` added."""
    add = next(n for n in model.graph.node if n.op_type == "Add" and f"blocks.{block}.attn.proj.bias" in n.input)
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and n.output[0] in add.input)
    return matmul.input[1]


def test_half_the_heads_equal_the_original_with_those_heads_cut_from_the_output_projection(test_split):
    model = onnx.load(str(digits_vit.MODEL))
    result = graphprune.prune(model, ratio=0.5, units=("heads",), criterion="l2", latency=False)
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.flops_after < result.report.flops_before
    reference = onnx.load(str(digits_vit.MODEL))
    inits = {t.name: t for t in reference.graph.initializer}
    for i in range(DEPTH):
        removed = result.plan.removed(_heads_group(result.deps, i))
        assert len(removed) == HEADS // 2
        name = _out_projection(reference, i)
        w = numpy_helper.to_array(inits[name]).copy()  # [heads * head_dim, dim]: rows are heads
        for h in removed:
            w[h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    pruned_inits = {t.name: t for t in result.model.graph.initializer}
    for i in range(DEPTH):
        assert list(pruned_inits[f"blocks.{i}.attn.q.bias"].dims) == [HEADS // 2 * HEAD_DIM]
    x = test_split[0][:64]
    pruned, masked = _run(result.model, x), _run(reference, x)
    np.testing.assert_allclose(pruned, masked, rtol=1e-4, atol=1e-4 * np.abs(masked).max())
    assert np.abs(pruned - _run(str(digits_vit.MODEL), x)).max() > 1e-2  # the heads did matter


def test_best_method_at_half_the_heads_and_half_the_mlp_keeps_95_percent():
    point = [p for p in bench.POINTS if p[0] == "heads 1/2 + mlp 1/2"]
    table = bench.accuracy_table(["l2", "fluctuation+lstsq"], point, calib_samples=256)
    (l2,), (best,) = (r.cells for r in table.rows)
    assert table.accuracy_original == digits_vit.summary()["accuracy"]["test"]
    assert l2.exact and best.exact and 0.45 < best.flops_kept < 0.55
    assert best.accuracy >= 0.95 * table.accuracy_original
    assert l2.accuracy < best.accuracy
    assert table.best("heads 1/2 + mlp 1/2") == ("fluctuation+lstsq", best.accuracy)
    lines = bench.accuracy_grid(table).splitlines()
    assert "heads 1/2 + mlp 1/2" in lines[0] and len(lines) == 2 + 1 + 2  # header, rule, kept, 2 methods
    assert f"{100 * best.accuracy:.1f}" in next(line for line in lines if line.startswith("fluctuation + lstsq"))


def test_second_order_and_sequential_rows_are_exact_at_half_the_heads_and_half_the_mlp():
    point = [p for p in bench.POINTS if p[0] == "heads 1/2 + mlp 1/2"]
    table = bench.accuracy_table(["obs", "obs+seq"], point, calib_samples=32)
    (obs,), (seq,) = (r.cells for r in table.rows)
    assert obs.exact and seq.exact
    assert obs.flops_kept == seq.flops_kept and 0.45 < obs.flops_kept < 0.55
    assert min(obs.accuracy, seq.accuracy) > 0.8  # far above l2's 63% without a refit
    text = bench.accuracy_grid(table)
    assert "obs, sequential" in text and "obs (structured OBS + OBS update)" in text


def test_sparsity_method_gives_the_vit_a_table_over_its_matmul_weights(monkeypatch):
    quick = functools.partial(accuracy_vs_flops.sparsity_sweep, configs=[("2:4", 0.5)], criteria=["magnitude"])
    monkeypatch.setattr(accuracy_vs_flops, "sparsity_sweep", quick)
    table = bench.accuracy_table(["sparsity"], bench.POINTS[:1], calib_samples=32)
    assert table.rows == [] and len(table.sparsity) == 1
    (p,) = table.sparsity
    assert p.exact and 0.5 <= p.nonzero < 0.55  # every MatMul/Gemm weight half zero; LayerNorms and biases stay
    assert "2:4 50%" in bench.sparsity_table(table.sparsity)
    result = graphprune.prune(onnx.load(str(digits_vit.MODEL)), pass_="sparsity", pattern="2:4", latency=False)
    layers = result.report.prune["sparsity"]["layers"]
    assert sum(layer["op"] == "MatMul" for layer in layers) == 6 * DEPTH  # q, k, v, proj, fc1, fc2
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for layer in layers:
        assert check_pattern(weights[layer["weight"]], layer["in_axis"], 2, 4) == 0
