"""Compensation and the channel pass: weights repaired from calibration data, still exactly validated."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.errors import InputError
from graphprune.passes.channel import greedy, lasso
from graphprune.validation.contract import check_pruned, run
from models import builders
from tests.test_calibrate import conv_model, save


def mlp(tail: str = "gemm", seed: int = 0, act: str = "Relu") -> onnx.ModelProto:
    """x[N,16] -> Gemm(16->12) -> Relu -> consumer(12->5) -> y. The consumer is a Gemm with a
    bias, a MatMul followed by a bias Add ("matmul_add"), or a bare MatMul ("matmul")."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node(act, ["h"], ["r"], name="relu"),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(12, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=12).astype(np.float32), "b1"),
    ]
    if tail == "gemm":
        nodes.append(helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1))
        inits.append(numpy_helper.from_array(rng.normal(size=(5, 12)).astype(np.float32), "w2"))
    else:
        nodes.append(helper.make_node("MatMul", ["r", "w2"], ["z" if tail == "matmul_add" else "y"], name="fc2"))
        inits.append(numpy_helper.from_array(rng.normal(size=(12, 5)).astype(np.float32), "w2"))
        if tail == "matmul_add":
            nodes.append(helper.make_node("Add", ["z", "b2"], ["y"], name="fc2_add"))
    if tail != "matmul":
        inits.append(numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "b2"))
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def outputs(model, path, key="x"):
    data = np.load(path)[key]
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    parts = [data[i : i + 1] for i in range(len(data))] if fixed else [data]
    return np.concatenate([run(model, {key: p})[0] for p in parts]).astype(np.float64)


@pytest.mark.parametrize("tail", ["gemm", "matmul_add"])
def test_bias_compensation_keeps_the_mean_output_of_a_linear_consumer(tmp_path, tail):
    model = mlp(tail)
    calib = save(tmp_path, "c.npz", 200, (16,))
    result = graphprune.prune(model, ratio=0.5, calib=calib, compensate="bias", latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.prune["compensate"]["consumers"] == 1
    before, after = outputs(model, calib), outputs(result.model, calib)
    np.testing.assert_allclose(after.mean(axis=0), before.mean(axis=0), rtol=1e-5, atol=1e-5)
    plain = outputs(graphprune.prune(model, ratio=0.5, validate=False).model, calib)
    assert np.abs(plain.mean(axis=0) - before.mean(axis=0)).max() > 0.1  # without it, the mean moves


@pytest.mark.parametrize("k, pad", [(1, 0), (3, 1)])
def test_bias_compensation_keeps_the_mean_output_of_a_conv_borders_included(tmp_path, k, pad):
    model = conv_model(k=k, pad=pad)
    calib = save(tmp_path, "c.npz", 30, (3, 9, 9))
    result = graphprune.prune(model, ratio=0.5, calib=calib, compensate="bias", latency=False)
    assert result.report.passed and result.report.exact.checked
    # conv2 had no bias: one was added (zero, then compensated), and the surgery kept it
    conv2 = next(n for n in result.model.graph.node if n.name == "conv2")
    assert len(conv2.input) == 3 and conv2.input[2].startswith("conv2.graphprune_bias")
    before, after = outputs(model, calib), outputs(result.model, calib)
    np.testing.assert_allclose(after.mean(axis=(0, 2, 3)), before.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tail", ["gemm", "matmul_add", "matmul"])
def test_least_squares_refit_reduces_the_error_on_held_out_data(tmp_path, tail):
    model = mlp(tail)
    calib = save(tmp_path, "c.npz", 300, (16,), seed=1)
    test = save(tmp_path, "t.npz", 300, (16,), seed=2)
    truth = outputs(model, test)
    err = {}
    for method in ("none", "bias", "lstsq"):
        kwargs = {} if method == "none" else dict(calib=calib, compensate=method)
        if tail == "matmul" and method == "bias":
            continue  # a bare MatMul has no bias to fold a mean into
        r = graphprune.prune(model, ratio=0.5, latency=False, **kwargs)
        assert r.report.passed and r.report.exact.checked
        err[method] = np.linalg.norm(outputs(r.model, test) - truth) / np.linalg.norm(truth)
    assert err["lstsq"] < 0.85 * err["none"]
    if "bias" in err:
        assert err["lstsq"] < err["bias"] < err["none"]


def test_a_bare_matmul_gets_no_bias_compensation_and_says_so(tmp_path):
    calib = save(tmp_path, "c.npz", 50, (16,))
    r = graphprune.prune(mlp("matmul"), ratio=0.5, calib=calib, compensate="bias", latency=False)
    assert r.report.passed
    assert r.report.prune["compensate"]["skipped"] == {"fc2": "no bias to fold the mean into"}


def test_exactness_is_checked_against_the_compensated_original(tmp_path):
    model = conv_model()
    calib = save(tmp_path, "c.npz", 20, (3, 9, 9))
    r = graphprune.prune(model, ratio=0.5, calib=calib, compensate="lstsq", latency=False)
    assert r.report.exact.passed and r.report.exact.max_rel_diff < 1e-5
    # the same pruned model against the uncompensated original is far off: the reference matters
    wrong = check_pruned(model, r.model, r.deps, r.plan)
    assert wrong.exact.checked and not wrong.exact.passed and wrong.exact.max_rel_diff > 1e-2


def _weight_through(model: onnx.ModelProto, name: str, op: str) -> onnx.ModelProto:
    """``name`` stored as float16 and read through a Cast, or as int8 through DequantizeLinear."""
    w = next(t for t in model.graph.initializer if t.name == name)
    arr = numpy_helper.to_array(w)
    model.graph.initializer.remove(w)
    if op == "Cast":
        model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float16), name + "_half"))
        node = helper.make_node("Cast", [name + "_half"], [name], name="cast_" + name, to=TensorProto.FLOAT)
    else:
        scale = np.float32(np.abs(arr).max() / 127)
        q = np.clip(np.round(arr / scale), -127, 127).astype(np.int8)
        model.graph.initializer.extend(
            [numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(np.array(scale), name + "_scale")]
        )
        node = helper.make_node("DequantizeLinear", [name + "_q", name + "_scale"], [name], name="dq_" + name)
    model.graph.node.insert(0, node)
    return model


def test_weights_stored_in_float16_behind_a_cast_are_refit_in_float16(tmp_path):
    model = _weight_through(_weight_through(mlp("matmul_add"), "w2", "Cast"), "b2", "Cast")
    calib = save(tmp_path, "c.npz", 50, (16,))
    r = graphprune.prune(model, ratio=0.5, calib=calib, compensate="lstsq", latency=False)
    assert r.report.passed and r.report.exact.checked
    assert r.report.prune["compensate"]["consumers"] == 1
    stored = {t.name: t.data_type for t in r.model.graph.initializer}
    assert stored["w2_half"] == stored["b2_half"] == TensorProto.FLOAT16
    before = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b2_half"))
    after = numpy_helper.to_array(next(t for t in r.model.graph.initializer if t.name == "b2_half"))
    assert not np.array_equal(before, after)  # the bias took the refit


def test_quantized_weights_are_left_alone_with_a_note(tmp_path):
    model = _weight_through(mlp("matmul_add"), "w2", "DequantizeLinear")
    calib = save(tmp_path, "c.npz", 50, (16,))
    r = graphprune.prune(model, ratio=0.5, calib=calib, compensate="lstsq", latency=False)
    assert r.report.passed and r.report.exact.checked
    assert "computed at run time" in r.report.prune["compensate"]["skipped"]["fc2"]


def test_float16_weights_are_refit_and_stay_float16(tmp_path):
    model = conv_model()
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    x, y = model.graph.input[0], model.graph.output[0]
    x.type.tensor_type.elem_type = y.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    calib = save(tmp_path, "c.npz", 20, (3, 9, 9))
    r = graphprune.prune(model, ratio=0.5, calib=calib, compensate="lstsq", latency=False)
    assert r.report.runtime["passed"], r.report.runtime
    assert r.report.prune["compensate"]["consumers"] == 1
    w2 = next(t for t in r.model.graph.initializer if t.name == "w2")
    assert w2.data_type == TensorProto.FLOAT16
    assert r.report.exact.passed


def test_data_options_without_data_are_usage_errors():
    for kwargs in (dict(criterion="activation"), dict(compensate="bias"), dict(pass_="channel")):
        with pytest.raises(InputError, match="needs calibration data"):
            graphprune.prune(mlp(), ratio=0.5, validate=False, **kwargs)
    with pytest.raises(InputError, match="does not take plan"):
        graphprune.prune(mlp(), pass_="channel", plan={"groups": []}, calib="x.npz")


# --- data criteria -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["activation", "apoz", "fluctuation", "wanda"])
def test_data_criteria_remove_what_they_measure_as_least_important(tmp_path, name):
    from graphprune.calibration.activations import stream_activations
    from graphprune.calibration.datasets import open_dataset

    model = mlp("gemm")
    calib = save(tmp_path, "c.npz", 64, (16,))
    r = np.concatenate([b["r"] for b in stream_activations(model, open_dataset(calib), ["r"])]).astype(np.float64)
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2")).astype(np.float64)
    expected = {
        "activation": np.sqrt((r**2).mean(axis=0)),
        "apoz": 1.0 - (r == 0).mean(axis=0),
        "fluctuation": r.var(axis=0) * (w2**2).sum(axis=0),
        "wanda": np.abs(w2).sum(axis=0) * np.sqrt((r**2).sum(axis=0)),
    }[name]
    result = graphprune.prune(model, ratio=0.5, criterion=name, calib=calib, latency=False)
    assert result.report.passed and result.report.prune["criterion_fallbacks"] == {}
    gone = np.array(result.plan.to_json(result.deps)["groups"][0]["remove"])
    kept = np.setdiff1d(np.arange(12), gone)
    assert len(gone) == 6 and expected[gone].max() <= expected[kept].min()


def test_apoz_without_zeros_falls_back_visibly(tmp_path):
    calib = save(tmp_path, "c.npz", 32, (16,))
    r = graphprune.prune(mlp(act="Tanh"), ratio=0.5, criterion="apoz", calib=calib, latency=False)
    assert r.report.passed
    assert any("apoz -> activation" in k for k in r.report.prune["criterion_fallbacks"])


# --- the channel pass ----------------------------------------------------------------------


def test_greedy_removes_the_least_felt_channels():
    gram = np.diag([5.0, 1.0, 3.0, 0.5, 4.0])
    assert sorted(greedy(gram, 2).tolist()) == [1, 3]
    # two channels that cancel each other cost nothing together, though each alone costs 1
    g = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.9]])
    assert sorted(lasso(g, keep=1).tolist()) == [0, 1]


def test_predicted_reconstruction_error_is_the_measured_one(tmp_path):
    model = conv_model(k=1, pad=0)  # 81 positions, all of them sampled below
    calib = save(tmp_path, "c.npz", 40, (3, 9, 9))
    p = graphprune.passes.ChannelPruning(ratio=0.5, calib=str(calib), compensate="none", max_rows=100)
    result = p(model)
    before, after = outputs(model, calib), outputs(result.model, calib)
    measured = np.sum((after - before) ** 2) / np.sum(before**2)
    assert result.report["reconstruction_error"] == pytest.approx(measured, rel=1e-4)


@pytest.mark.parametrize("selection", ["greedy", "lasso"])
def test_channel_pass_prunes_residual_streams_exactly_and_beats_magnitude(tmp_path, selection):
    model = builders.residual_net(width=8, blocks=2, input_shape=(1, 3, 16, 16))
    calib = save(tmp_path, "c.npz", 24, (3, 16, 16), seed=1, key="input")
    test = save(tmp_path, "t.npz", 24, (3, 16, 16), seed=2, key="input")
    r = graphprune.prune(model, ratio=0.5, pass_="channel", selection=selection, calib=calib, latency=False)
    assert r.report.passed and r.report.exact.checked
    assert r.report.prune["criterion_fallbacks"] == {}  # every group, residual streams too, by reconstruction
    assert r.report.prune["compensate"]["method"] == "lstsq"
    assert r.report.prune["calibration"] == {"samples": 24, "batches": 24}
    l2 = graphprune.prune(model, ratio=0.5, validate=False)
    assert r.report.flops_after == l2.report.flops_after  # the same counts per group: the same cost
    truth = outputs(model, test, "input")

    def err(m):
        return np.linalg.norm(outputs(m, test, "input") - truth) / np.linalg.norm(truth)

    assert err(r.model) < 0.5 * err(l2.model)


def test_cli_channel_pass_and_usage_errors(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(builders.residual_net(width=8, blocks=1, input_shape=(1, 3, 16, 16)), model)
    calib = save(tmp_path, "c.npz", 8, (3, 16, 16), key="input")
    cmd = [sys.executable, "-m", "graphprune.cli", "prune", str(model), "-o", str(tmp_path / "p.onnx")]
    bad = subprocess.run([*cmd, "--criterion", "fluctuation"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "needs calibration data" in bad.stderr
    report = tmp_path / "r.json"
    args = ["--pass", "channel", "--calib", str(calib), "--batch-size", "4", "--report", str(report), "--no-latency"]
    args += ["--round-to", "1"]  # an 8-wide model: whole channel steps (the default) would leave it whole
    ok = subprocess.run([*cmd, *args], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    data = json.loads(report.read_text())
    assert data["passed"] and data["compensate"]["method"] == "lstsq"
    assert data["calibration"] == {"samples": 8, "batches": 8}
    assert "compensation: lstsq" in ok.stdout
    later = subprocess.run(
        [sys.executable, "-m", "graphprune.cli", "validate", str(model), str(tmp_path / "p.onnx"), "--no-latency"],
        capture_output=True,
        text=True,
    )
    assert later.returncode == 0, later.stderr
    assert "exactness: not checked (weights were compensated (lstsq)" in later.stdout
