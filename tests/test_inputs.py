"""Symbolic input dims (graphprune.ir.input_sizes): costs per sample, sizes from --input-shape, data or
defaults, validation inputs the original accepts, feeds of every type onnxruntime takes, and
structural comparison of sequence and map outputs."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphprune
from graphprune.cli import main
from graphprune.errors import InputError
from graphprune.ir.input_sizes import parse_input_shape, resolve
from graphprune.objectives.cost import cost_of, random_feeds
from graphprune.validation.contract import fidelity, rel_diff, run
from models import builders, dynamic, variants


def _identity_model(elem: int, shape, opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


# ----------------------------------------------------------------------------- costs per sample


def test_a_dynamic_batch_cnn_counts_its_macs_per_sample():
    fixed = builders.residual_net(width=16, blocks=3)
    dynamic_batch = variants.with_dynamic_dims(fixed, spatial=False)
    report = graphprune.prune(dynamic_batch, ratio=0.25, validate=False).report
    assert report.flops_before == cost_of(fixed).flops > 0
    assert report.params_before == cost_of(fixed).params
    assert report.assumed_shapes == {"input": [1, 3, 32, 32]}
    assert report.assumed_shapes_from == {"input": "default"}


def test_a_flops_target_on_a_dynamic_batch_cnn_lands_within_two_percent_and_keeps_the_batch_symbolic():
    model = variants.with_dynamic_dims(builders.residual_net(width=32, blocks=4), spatial=False)
    result = graphprune.prune(model, target_flops=0.5, latency=False)
    r = result.report
    assert r.passed and r.exact.checked
    assert abs(r.flops_after / r.flops_before - 0.5) <= 0.02
    for vi in (result.model.graph.input[0], result.model.graph.output[0]):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_a_symbolic_sequence_is_counted_at_the_default_length_and_reported():
    model = dynamic.token_mlp(hidden=32, inner=64)
    r = graphprune.prune(model, ratio=0.5, latency=False).report
    seq = 16
    # two matmuls, then Add + Relu on the inner width and two Adds on the hidden width
    assert r.flops_before == seq * 32 * 64 * 2 + seq * 64 * 2 + seq * 32 * 2
    assert r.assumed_shapes == {"x": [1, seq, 32]} and r.assumed_shapes_from == {"x": "default"}
    assert r.passed and r.exact.checked and r.exact.passed


def test_input_shapes_set_the_sequence_and_the_batch_does_not_count():
    model = dynamic.token_mlp(hidden=32, inner=64)
    default = graphprune.prune(model, ratio=0.5, validate=False).report
    given = graphprune.prune(model, ratio=0.5, latency=False, input_shapes={"x": (4, 8, 32)}).report
    assert given.flops_before * 2 == default.flops_before
    assert given.assumed_shapes == {"x": [1, 8, 32]} and given.assumed_shapes_from == {"x": "--input-shape"}
    assert given.passed


def test_the_dims_a_dim_param_gets_are_shared_by_every_input_that_declares_it():
    graph = helper.make_graph(
        [helper.make_node("Mul", ["ids", "mask"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sizes = resolve(model, {"ids": (2, 40)})
    assert sizes.dims == {"ids": (2, 40), "mask": (2, 40)}
    assert sizes.source == {"ids": "--input-shape", "mask": "default"}
    assert sizes.per_sample() == {"ids": (1, 40), "mask": (1, 40)}


def _rnn_like():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["state"], ["s"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "batch", 8]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_batch_is_one_wherever_its_dim_param_appears():
    sizes = resolve(_rnn_like())
    assert sizes.dims == {"x": (1, 16), "state": (2, 1, 8)}
    given = resolve(_rnn_like(), data_shapes={"x": (4, 100), "state": (2, 4, 8)})
    assert given.per_sample() == {"x": (1, 100), "state": (2, 1, 8)}


def test_a_sequence_is_the_first_candidate_length_the_original_runs_on():
    tried = []

    def probe(dims):
        tried.append(dims["x"][1])
        return dims["x"][1] >= 200  # e.g. an STFT's reflect padding

    assert resolve(_rnn_like(), probe=probe).dims["x"] == (1, 256) and tried == [16, 64, 256]


def test_input_shapes_that_contradict_the_model_are_input_errors():
    model = dynamic.token_mlp(hidden=32)
    with pytest.raises(InputError, match="fixes it to 32"):
        resolve(model, {"x": (1, 8, 16)})
    with pytest.raises(InputError, match="rank 3"):
        resolve(model, {"x": (1, 8)})
    with pytest.raises(InputError, match="no such input"):
        resolve(model, {"tokens": (1, 8, 32)})


def test_parse_input_shape_takes_onnxsims_syntax():
    assert parse_input_shape("images:1,3,640,640") == ("images", (1, 3, 640, 640))
    assert parse_input_shape("a:b:2,3") == ("a:b", (2, 3))  # the name may hold a colon
    for bad in ("images", "images:", "images:1,x", ":1,2", "images:0,3"):
        with pytest.raises(InputError, match="NAME:D1,D2"):
            parse_input_shape(bad)


def test_a_flops_target_is_still_an_error_when_no_size_can_be_assumed():
    # the Conv reads a custom op's output: no shape inference, at any input size
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Opaque", ["x"], ["h"], domain="custom"),
            helper.make_node("Conv", ["h", "w"], ["y"]),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    with pytest.raises(InputError, match="cannot count this model's MACs"):
        graphprune.prune(model, target_flops=0.5, validate=False)


# ----------------------------------------------------------------------------- validation inputs


def test_a_detector_that_takes_multiples_of_32_validates_with_the_default_image_size():
    r = graphprune.prune(dynamic.fpn_detector(), ratio=0.5, latency=False).report
    assert r.passed and r.exact.checked and r.exact.passed
    assert r.assumed_shapes == {"input": [1, 3, 64, 64]} and r.assumed_shapes_from == {"input": "default"}


def test_the_default_image_size_is_the_first_candidate_the_original_runs_on():
    runs_on = []

    def probe(dims):
        runs_on.append(dims["input"][2])
        return dims["input"][2] >= 256

    sizes = resolve(dynamic.fpn_detector(), probe=probe)
    assert sizes.dims["input"] == (1, 3, 256, 256) and runs_on == [64, 224, 256]


def test_inputs_the_original_rejects_are_an_input_error_not_a_pruning_failure(capfd):
    with pytest.raises(InputError, match=r"original model does not run on the generated inputs \(input: 1x3x48x48\)"):
        graphprune.prune(dynamic.fpn_detector(), ratio=0.5, latency=False, input_shapes={"input": (1, 3, 48, 48)})
    assert "onnxruntime" not in capfd.readouterr().err  # its log lines stay out of the terminal


def test_a_detector_prunes_and_validates_at_the_given_image_size():
    model = dynamic.fpn_detector()
    r = graphprune.prune(model, target_flops=0.5, latency=False, input_shapes={"input": (2, 3, 96, 96)}).report
    assert r.passed and r.exact.checked and r.exact.passed
    assert abs(r.flops_after / r.flops_before - 0.5) <= 0.02
    assert r.assumed_shapes == {"input": [1, 3, 96, 96]}
    at_64 = graphprune.prune(model, target_flops=0.5, validate=False).report
    assert r.flops_before == pytest.approx(at_64.flops_before * (96 / 64) ** 2, rel=0.01)


def test_the_cli_refuses_inputs_the_original_rejects_with_exit_2_and_writes_nothing(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(dynamic.fpn_detector(), src)
    code = main(["prune", str(src), "-o", str(out), "--no-latency", "--input-shape", "input:1,3,48,48"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err[-1].startswith("graphprune: ") and "--input-shape" in err[-1] and "1x3x48x48" in err[-1]
    assert not any("[E:onnxruntime" in line for line in err)


def test_the_cli_input_shape_reaches_the_report(tmp_path):
    src, out, rep = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(dynamic.fpn_detector(), src)
    args = ["prune", str(src), "-o", str(out), "-q", "--no-latency", "--input-shape", "input:1,3,128,96"]
    assert main([*args, "--report", str(rep)]) == 0
    report = json.loads(rep.read_text())
    assert report["assumed_shapes"] == {"input": [1, 3, 128, 96]}
    assert report["assumed_shapes_from"] == {"input": "--input-shape"}
    assert main(["validate", str(src), str(out), "--no-latency", "--input-shape", "input:1,3,128,96"]) == 0


def test_validate_with_data_runs_exactness_on_the_data(tmp_path):
    model = dynamic.fpn_detector()
    pruned = graphprune.prune(model, ratio=0.5, latency=False).model
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((3, 3, 96, 96)).astype(np.float32))
    r = graphprune.validate(model, pruned, data=data, latency=False)
    assert r.passed and r.exact.checked
    assert r.assumed_shapes == {"input": [1, 3, 96, 96]} and r.assumed_shapes_from == {"input": "data"}
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((2, 3, 48, 48), np.float32))
    with pytest.raises(InputError, match="does not run on the data's first batch"):
        graphprune.validate(model, pruned, data=bad, latency=False)


def test_prune_with_calib_validates_on_the_calibration_data(tmp_path):
    data = tmp_path / "c.npz"
    np.savez(data, input=np.random.default_rng(1).standard_normal((4, 3, 96, 96)).astype(np.float32))
    r = graphprune.prune(dynamic.fpn_detector(), ratio=0.5, criterion="activation", calib=data, latency=False).report
    assert r.passed and r.exact.checked
    assert r.assumed_shapes_from == {"input": "data"} and r.assumed_shapes == {"input": [1, 3, 96, 96]}


# ----------------------------------------------------------------------------- feeds of every type

_RAW_TYPES = [
    ("BFLOAT16", ml_dtypes.bfloat16),
    ("FLOAT8E4M3FN", ml_dtypes.float8_e4m3fn),
    ("FLOAT8E4M3FNUZ", ml_dtypes.float8_e4m3fnuz),
    ("FLOAT8E5M2", ml_dtypes.float8_e5m2),
    ("FLOAT8E5M2FNUZ", ml_dtypes.float8_e5m2fnuz),
]


@pytest.mark.parametrize("name,dtype", _RAW_TYPES)
def test_types_onnxruntime_has_no_numpy_type_for_are_fed_and_read_back_bit_for_bit(name, dtype):
    model = _identity_model(getattr(TensorProto, name), ["batch", 5], opset=19)
    feeds = random_feeds(model, seed=2)
    assert feeds["x"].dtype == np.dtype(dtype) and feeds["x"].shape == (1, 5)
    (out,) = run(model, feeds)
    assert out.dtype == np.dtype(dtype)
    assert np.array_equal(out.view(np.uint8), feeds["x"].view(np.uint8))
    assert rel_diff([out], [feeds["x"]]) == 0.0


@pytest.mark.parametrize("name", ["INT4", "UINT4"])
def test_int4_inputs_are_packed_for_onnxruntime(name):
    # onnxruntime has no Identity for 4-bit types: dequantize them, which is what they are for
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "scale"], ["y"])],
        "dq",
        [helper.make_tensor_value_info("x", getattr(TensorProto, name), [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        initializer=[onnx.numpy_helper.from_array(np.array(1.0, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    feeds = random_feeds(model, seed=4)
    (out,) = run(model, feeds)
    assert np.array_equal(out, feeds["x"].astype(np.float32))  # 15 elements: an odd count packs a half byte


def test_strings_booleans_and_minus_one_dims_are_fed():
    model = _identity_model(TensorProto.STRING, [-1, 3])
    feeds = random_feeds(model)
    assert feeds["x"].dtype == object and feeds["x"].shape == (1, 3)
    (out,) = run(model, feeds)
    assert list(out.ravel()) == list(feeds["x"].ravel())
    assert rel_diff([out], [feeds["x"]]) == 0.0
    changed = out.copy()
    changed[0, 0] = changed[0, 0] + "!"
    assert rel_diff([changed], [feeds["x"]]) == float("inf")
    booleans = _identity_model(TensorProto.BOOL, [2, None])
    assert random_feeds(booleans)["x"].shape == (2, 16)


def test_sequence_and_optional_inputs_are_fed():
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 3]))
    opt_type = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [4]))
    graph = helper.make_graph(
        [
            helper.make_node("ConcatFromSequence", ["s"], ["cat"], axis=0),
            helper.make_node("OptionalGetElement", ["o"], ["e"]),
        ],
        "g",
        [helper.make_value_info("s", seq_type), helper.make_value_info("o", opt_type)],
        [
            helper.make_tensor_value_info("cat", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    feeds = random_feeds(model)
    assert isinstance(feeds["s"], list) and len(feeds["s"]) == 2 and feeds["s"][0].shape == (2, 3)
    cat, e = run(model, feeds)
    assert np.array_equal(cat, np.concatenate(feeds["s"])) and np.array_equal(e, feeds["o"])


def _zipmap_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ZipMap", ["x"], ["z"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_value_info(
                "z",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            )
        ],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8
    )


def test_zipmap_outputs_are_compared_by_structure_and_value():
    model = _zipmap_model()
    feeds = {"x": np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)}
    (out,) = run(model, feeds)
    assert isinstance(out, list) and out[0].keys() == {0, 1, 2}
    assert rel_diff([out], [out]) == 0.0
    f = fidelity([out], [out])
    assert f.cosine == pytest.approx(1.0) and f.rel_l2 == 0.0
    nudged = [dict(m) for m in out]
    nudged[1][2] = nudged[1][2] + 0.07  # 0.07 of a largest value of 0.7
    assert rel_diff([nudged], [out]) == pytest.approx(0.1, rel=1e-4)
    assert 0 < fidelity([nudged], [out]).rel_l2 < 0.1
    shorter = out[:1]
    assert rel_diff([shorter], [out]) == float("inf")
    assert fidelity([shorter], [out]).cosine == 0.0
    other_keys = [{k + 1: v for k, v in m.items()} for m in out]
    assert rel_diff([other_keys], [out]) == float("inf")


def test_a_model_with_a_zipmap_output_validates():
    # Gemm -> Softmax -> ZipMap: a classifier as sklearn exports it
    zip_model = _zipmap_model()
    w1 = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
        helper.make_node("ZipMap", ["p"], ["z"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        list(zip_model.graph.output),
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=list(zip_model.opset_import), ir_version=8)
    r = graphprune.prune(model, ratio=0.5, latency=False).report
    assert r.runtime["passed"] and r.exact.checked and r.exact.passed
    assert r.fidelity.cosine is not None and r.fidelity.cosine > 0


def test_residual_blocks_of_a_dynamic_model_are_counted_per_sample():
    from graphprune.analysis.blocks import find_blocks

    fixed = builders.residual_net(width=16, blocks=3, input_shape=(1, 3, 64, 64))
    dynamic_dims = variants.with_dynamic_dims(fixed)
    macs = [b.macs for b in find_blocks(dynamic_dims)]
    assert macs == [b.macs for b in find_blocks(fixed)] and all(m > 0 for m in macs)


def test_fidelity_over_data_compares_zipmap_outputs_element_by_element(tmp_path):
    from graphprune.validation.evaluate import evaluate

    model = _zipmap_model()
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((5, 3)).astype(np.float32))
    ev = evaluate(model, model, data, batch_size=2)
    assert ev.fidelity.cosine == pytest.approx(1.0) and ev.fidelity.rel_l2 == 0.0
    assert ev.fidelity.samples == 5 and ev.fidelity.top1_agreement is None


def test_a_batch_declared_minus_one_is_symbolic_for_data_random_inputs_and_costs(tmp_path):
    model = dynamic.token_mlp(hidden=8, inner=16)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # as some exporters write "dynamic"
    assert random_feeds(model)["x"].shape == (1, 16, 8)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32))
    r = graphprune.prune(model, ratio=0.5, criterion="activation", calib=data, latency=False).report
    assert r.passed and r.assumed_shapes == {"x": [1, 5, 8]} and r.assumed_shapes_from == {"x": "data"}


def test_when_no_default_size_runs_the_error_comes_before_any_pruning(monkeypatch):
    from graphprune.passes.filter import FilterPruning

    # the last dim must be 7 to broadcast with the constant: no default length is
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "c"], ["a"]),
            helper.make_node("MatMul", ["a", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            onnx.numpy_helper.from_array(np.ones(7, np.float32), "c"),
            onnx.numpy_helper.from_array(rng.standard_normal((7, 8)).astype(np.float32), "w1"),
            onnx.numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    monkeypatch.setattr(FilterPruning, "__call__", lambda *a, **k: pytest.fail("pruned before the error"))
    with pytest.raises(InputError, match=r"does not run on the generated inputs \(x: 1x16\)"):
        graphprune.prune(model, ratio=0.5, latency=False)
    sizes = resolve(model, probe=lambda dims: False)
    assert sizes.runs is False and sizes.dims["x"] == (1, 16)


def test_a_model_with_nothing_to_prune_says_so_even_when_its_inputs_cannot_be_guessed():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
        initializer=[onnx.numpy_helper.from_array(np.ones(7, np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.plan.total_removed == 0 and result.report.prune["nothing_pruned"]
    assert not result.report.validated  # nothing to check, on inputs the original rejects


def test_a_map_input_is_fed_a_dict():
    map_type = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    graph = helper.make_graph(
        [helper.make_node("DictVectorizer", ["m"], ["v"], domain="ai.onnx.ml", int64_vocabulary=[0, 1, 2, 5])],
        "g",
        [helper.make_value_info("m", map_type)],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=8
    )
    feeds = random_feeds(model)
    assert sorted(feeds["m"]) == [0, 1, 2]
    (v,) = run(model, feeds)
    assert np.allclose(v[0], [feeds["m"][0], feeds["m"][1], feeds["m"][2], 0.0])
