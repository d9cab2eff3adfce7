"""Calibration: statistics of consumer inputs, streamed, in memory that does not grow with the data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis.consumers import consumers_of, rows, tap_sums, weight_matrix
from graphprune.analysis.dependency import analyze
from graphprune.calibration.activations import stream_activations
from graphprune.calibration.datasets import open_dataset
from graphprune.calibration.statistics import calibrate
from models import builders


def conv_model(stride: int = 1, pad: int = 1, k: int = 3, batch="N", seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8, k x k) -> Relu -> Conv(8->4, k x k, no bias): the second conv is the consumer."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 9, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    attrs = dict(kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", **attrs),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", **attrs),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, k, k)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(4, 8, k, k)).astype(np.float32), "w2"),
    ]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def save(tmp_path, name: str, n: int, shape, seed: int = 0, key: str = "x"):
    data = np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)
    path = tmp_path / name
    np.savez(path, **{key: data})
    return path


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 1), (2, 0)])
def test_conv_rows_times_the_weight_are_the_conv_output(tmp_path, stride, pad):
    model = conv_model(stride=stride, pad=pad)
    deps = analyze(model)
    (i, c), *_ = [(i, c) for i, c in consumers_of(deps).items() if c.name == "conv2"]
    ds = open_dataset(save(tmp_path, "d.npz", 3, (3, 9, 9)))
    (batch,) = stream_activations(model, ds, ["r"], batch_size=8)
    x = rows(c, batch["r"], per_sample=10**6, rng=np.random.default_rng(0))
    m = weight_matrix(c, deps.view.value("w2"))
    y = batch["y"]  # [3, 4, ho, wo]
    expected = np.moveaxis(y, 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(x @ m.T, expected, rtol=1e-4, atol=1e-4)
    sums, count = tap_sums(c, batch["r"])
    np.testing.assert_allclose(sums / count, x.mean(axis=0), rtol=1e-9, atol=1e-9)


def test_channel_statistics_are_those_of_the_consumer_input(tmp_path):
    model = conv_model()
    deps = analyze(model)
    ds = open_dataset(save(tmp_path, "d.npz", 10, (3, 9, 9)))
    stats = calibrate(model, deps, ds, want=("channels",), batch_size=4)
    assert (stats.samples, stats.batches) == (10, 3)
    r = np.concatenate([b["r"] for b in stream_activations(model, ds, ["r"])]).astype(np.float64)
    s = stats.channels[("r", 1)]
    np.testing.assert_allclose(s.mean, r.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(s.mean_square, (r**2).mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(s.zero_fraction, (r == 0).mean(axis=(0, 2, 3)))
    assert 0.2 < s.zero_fraction.mean() < 0.8  # a ReLU output: many zeros, not all


def test_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    model = builders.residual_net(width=8, blocks=2, input_shape=(1, 3, 16, 16))  # fixed batch 1
    deps = analyze(model)
    small = calibrate(model, deps, open_dataset(save(tmp_path, "a.npz", 4, (3, 16, 16), key="input")))
    large = calibrate(model, deps, open_dataset(save(tmp_path, "b.npz", 40, (3, 16, 16), key="input")))
    assert (small.samples, small.batches) == (4, 4)  # a model fixed to batch 1 is fed one sample at a time
    assert (large.samples, large.batches) == (40, 40)
    assert small.grams and small.channels
    assert large.nbytes == small.nbytes
    assert all(large.grams[i].rows == 10 * small.grams[i].rows for i in small.grams)
    assert all(not g.pending for g in large.grams.values())


def test_rows_are_subsampled_per_sample(tmp_path):
    model = conv_model()
    deps = analyze(model)
    ds = open_dataset(save(tmp_path, "d.npz", 6, (3, 9, 9)))
    stats = calibrate(model, deps, ds, want=("gram",), max_rows=5)
    (g,) = stats.grams.values()
    assert g.rows == 6 * 5
    assert g.gram.shape == (8 * 9, 8 * 9)
    np.testing.assert_allclose(g.gram, g.gram.T)


def test_too_wide_consumers_get_no_gram_and_say_why(tmp_path):
    model = conv_model()
    deps = analyze(model)
    stats = calibrate(model, deps, open_dataset(save(tmp_path, "d.npz", 2, (3, 9, 9))), max_features=10)
    assert not stats.grams
    assert "more than 10" in next(iter(stats.skipped.values()))
