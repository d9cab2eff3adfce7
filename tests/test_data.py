"""Datasets: .npz files and folders streamed in batches the model can take."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphprune.calibration.datasets import input_specs, open_dataset
from graphprune.errors import InputError


def _model(batch, elem=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("x", elem, [batch, 3, 4])
    y = helper.make_tensor_value_info("y", elem, [batch, 3, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g)


def test_dynamic_batch_streams_every_sample_in_order(tmp_path):
    data = np.arange(70 * 12, dtype=np.float64).reshape(70, 3, 4)
    np.savez(tmp_path / "d.npz", x=data, labels=np.arange(70))
    ds = open_dataset(tmp_path / "d.npz")
    assert ds.n_samples == 70
    batches = list(ds.batches(input_specs(_model("N")), batch_size=32, extra=("labels",)))
    assert [len(b["x"]) for b in batches] == [32, 32, 6]
    assert all(b["x"].dtype == np.float32 for b in batches)  # cast to the input's type
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), data.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), np.arange(70))


def test_fixed_batch_one_is_fed_one_sample_at_a_time_across_files(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", x=np.zeros((3, 3, 4), np.float32))
    np.savez(folder / "b.npz", x=np.ones((2, 3, 4), np.float32))
    ds = open_dataset(folder)
    batches = list(ds.batches(input_specs(_model(1))))
    assert [b["x"].shape for b in batches] == [(1, 3, 4)] * 5
    assert [float(b["x"].mean()) for b in batches] == [0, 0, 0, 1, 1]
    assert len(list(ds.batches(input_specs(_model(1)), limit=4))) == 4


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.zeros((2, 3, 4))}, "no array 'x'"),
        ({"x": np.zeros((2, 5, 4))}, "the model expects"),
        ({"x": np.zeros((2, 3))}, "rank 3"),
        ({"x": np.zeros((2, 3, 4)), "labels": np.zeros(3)}, "different numbers of samples"),
    ],
)
def test_bad_data_names_the_file_and_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message) as err:
        list(open_dataset(tmp_path / "bad.npz").batches(input_specs(_model("N"))))
    assert "bad.npz" in str(err.value)


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(InputError, match="cannot read as .npz"):
        open_dataset(tmp_path / "x.npz")
    with pytest.raises(InputError, match="no such data"):
        open_dataset(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .npz files"):
        open_dataset(tmp_path / "empty")


def test_initializers_listed_as_inputs_are_not_model_inputs():
    m = _model("N")
    m.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0]))
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]))
    assert [s.name for s in input_specs(m)] == ["x"]
    assert isinstance(m, onnx.ModelProto)


def test_stream_activations_exposes_intermediates_and_leaves_the_model_alone(tmp_path):
    from graphprune.calibration.activations import stream_activations

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Neg", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    before = m.SerializeToString()
    data = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=data, labels=np.arange(10))
    out = list(stream_activations(m, open_dataset(tmp_path / "d.npz"), ["h"], batch_size=4, extra=("labels",)))
    assert m.SerializeToString() == before
    np.testing.assert_array_equal(np.concatenate([o["h"] for o in out]), -data)
    np.testing.assert_array_equal(np.concatenate([o["y"] for o in out]), np.maximum(-data, 0))
    np.testing.assert_array_equal(np.concatenate([o["labels"] for o in out]), np.arange(10))


def test_a_scalar_input_takes_its_0d_array_with_every_batch(tmp_path):
    """A sample rate or step count declared as a scalar input is fed as is (it has no samples),
    and pruning with such data validates on it."""
    from onnx import numpy_helper

    import graphprune

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "rate"], ["xs"]),
            helper.make_node("MatMul", ["xs", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("rate", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.standard_normal((10, 4)).astype(np.float32), rate=np.array(16000.0, np.float32))
    ds = open_dataset(path)
    assert ds.n_samples == 10
    batches = list(ds.batches(input_specs(model), batch_size=4))
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    assert all(b["rate"].shape == () and b["rate"] == 16000.0 for b in batches)
    result = graphprune.prune(model, ratio=0.5, calib=path, compensate="lstsq", latency=False)
    assert result.report.passed and result.report.fidelity.samples == 10


def test_a_scalar_array_for_an_input_with_samples_is_an_error(tmp_path):
    from graphprune.calibration.datasets import InputSpec

    path = tmp_path / "data.npz"
    np.savez(path, x=np.array(1.0, np.float32), y=np.zeros((3, 2), np.float32))
    spec = InputSpec("x", (None, 2), np.dtype(np.float32))
    with pytest.raises(InputError, match="'x' is a scalar; samples must be on axis 0"):
        list(open_dataset(path).batches([spec]))
    np.savez(path, x=np.array(1.0, np.float32))
    with pytest.raises(InputError, match="every array is a scalar"):
        open_dataset(path)
