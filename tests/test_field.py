"""The field contract on a fixed sample of the onnx backend's node models: whatever a real file
holds (small float types, 4-bit ints, strings, sequences, optionals, control flow, ai.onnx.ml),
``inspect`` then ``prune`` answer with a result or one clean line, never an internal error.

The sample is chosen by name, so it is the same on every run; each case runs through
``benchmarks.field.classify``, the function the field benchmark uses, in this process. The
models are built by onnx itself (nothing is downloaded); the benchmark's other sources are not
used here.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks import field, field_corpus

# name -> what it covers
SAMPLE = {
    # common ops
    "test_conv_with_strides_padding": "Conv",
    "test_conv_with_autopad_same": "Conv auto_pad",
    "test_convtranspose": "ConvTranspose",
    "test_matmul_2d": "MatMul",
    "test_gemm_all_attributes": "Gemm",
    "test_gemm_default_single_elem_vector_bias": "Gemm, broadcast bias",
    "test_batchnorm_example": "BatchNormalization",
    "test_batchnorm_epsilon_training_mode": "BatchNormalization training outputs",
    "test_instancenorm_example": "InstanceNormalization",
    "test_layer_normalization_2d_axis0": "LayerNormalization",
    "test_group_normalization_example": "GroupNormalization",
    "test_rms_normalization_2d_axis0": "RMSNormalization",
    "test_reshape_reordered_all_dims": "Reshape",
    "test_reshape_negative_dim": "Reshape -1",
    "test_slice": "Slice",
    "test_slice_neg_steps": "Slice, negative steps",
    "test_gather_0": "Gather",
    "test_split_equal_parts_1d_opset18": "Split",
    "test_split_variable_parts_2d_opset18": "Split sizes",
    "test_concat_3d_axis_1": "Concat",
    "test_flatten_axis0": "Flatten",
    "test_transpose_default": "Transpose",
    "test_expand_dim_changed": "Expand",
    "test_where_example": "Where",
    "test_constant_pad": "Pad",
    "test_resize_upsample_scales_linear": "Resize",
    "test_maxpool_2d_default": "MaxPool",
    "test_softmax_axis_1": "Softmax",
    "test_reduce_mean_default_axes_keepdims_example": "ReduceMean",
    "test_einsum_batch_matmul": "Einsum",
    "test_top_k": "TopK",
    "test_nonzero_example": "NonZero (data-dependent shape)",
    "test_shape": "Shape",
    "test_constantofshape_int_zeros": "ConstantOfShape",
    "test_lstm_defaults": "LSTM",
    "test_gru_defaults": "GRU",
    "test_attention_4d": "Attention (opset 23)",
    "test_stft": "STFT",
    "test_range_float_type_positive_delta_expanded": "function body with Loop",
    # quantized
    "test_qlinearconv": "QLinearConv",
    "test_qlinearmatmul_2D_uint8_float32": "QLinearMatMul",
    "test_convinteger_with_padding": "ConvInteger",
    "test_matmulinteger": "MatMulInteger",
    "test_dequantizelinear": "DequantizeLinear",
    "test_quantizelinear": "QuantizeLinear",
    "test_dynamicquantizelinear": "DynamicQuantizeLinear",
    "test_dequantizelinear_int4": "int4 input",
    "test_quantizelinear_uint4": "uint4 output",
    # element types
    "test_cast_FLOAT_to_BFLOAT16": "bfloat16 output",
    "test_cast_BFLOAT16_to_FLOAT": "bfloat16 input",
    "test_attention_3d_causal_bf16": "bfloat16 Attention",
    "test_reversesequence_bfloat16": "bfloat16 ReverseSequence",
    "test_cast_FLOAT_to_FLOAT8E4M3FN": "float8 output",
    "test_cast_FLOAT8E5M2_to_FLOAT": "float8 input",
    "test_cast_FLOAT_to_INT4": "int4 output",
    "test_cast_UINT4_to_FLOAT": "uint4 input",
    "test_string_concat": "string inputs",
    "test_regex_full_match_basic": "string input, bool output",
    "test_equal_string": "string Equal",
    # sequences and optionals
    "test_sequence_insert_at_back": "sequence input",
    "test_sequence_map_add_1_sequence_1_tensor": "sequence input, symbolic dims",
    "test_split_to_sequence_1": "sequence output",
    "test_identity_sequence": "sequence Identity",
    "test_identity_opt": "optional Identity",
    "test_optional_get_element_sequence": "optional input",
    "test_optional_get_element_tensor": "optional tensor input",
    "test_optional_has_element_empty_optional_input": "empty optional input",
    # control flow
    "test_loop11": "Loop",
    "test_loop13_seq": "Loop over a sequence",
    "test_if": "If",
    "test_if_seq": "If with sequence outputs",
    "test_if_opt": "If with optional outputs",
    "test_scan9_sum": "Scan",
    "test_scan_sum": "Scan opset 8",
    # ai.onnx.ml
    "test_ai_onnx_ml_binarizer": "ai.onnx.ml Binarizer",
    "test_ai_onnx_ml_label_encoder_string_int": "ai.onnx.ml LabelEncoder, strings",
    "test_ai_onnx_ml_array_feature_extractor": "ai.onnx.ml ArrayFeatureExtractor",
    "test_ai_onnx_ml_tree_ensemble_single_tree": "ai.onnx.ml TreeEnsemble",
}


@pytest.fixture(scope="module")
def cases():
    return {c.name: c for c in field_corpus.node_cases() if c.name in SAMPLE}


@pytest.mark.parametrize("with_data", [True, False], ids=["own-data", "no-data"])
@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_node_model_gets_no_internal_error(name, with_data, cases, tmp_path):
    """With its own inputs (as --calib where the .npz format can carry them) and without any data
    (graphprune makes up the inputs), the CLI answers with a result or one clean line."""
    if name not in cases:
        pytest.skip(f"this onnx has no node test {name}")
    path, feeds = field_corpus.write_node_case(cases[name], tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    data = field_corpus.load_feeds(tmp_path, _entry(path, feeds, tmp_path)) if with_data else None
    out = field.classify(path, data, work, name=name)
    assert out.klass != field.INTERNAL, f"{SAMPLE[name]}: {out.message} (at {out.where}; {out.command})"
    assert out.klass in field.CLASSES


def _entry(path, feeds, root) -> field_corpus.Entry:
    return field_corpus.Entry("node", path.stem, path.relative_to(root).as_posix(), feeds.relative_to(root).as_posix())


def test_dims_declared_minus_one_get_no_internal_error(tmp_path):
    """Some exporters (paddle2onnx, the PP-OCR angle classifier) declare a dynamic dim as -1."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.random.default_rng(0).standard_normal(108))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "minus_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "minus_one.onnx"
    path.write_bytes(model.SerializeToString())  # as the exporter wrote it, unchecked
    out = field.classify(path, None, tmp_path)
    assert out.klass != field.INTERNAL, f"{out.message} (at {out.where}; {out.command})"


def test_classify_prunes_a_plain_cnn(tmp_path):
    """The classifier itself: a model that prunes lands in the success class, with its data."""
    from models import builders

    # channels wide enough that the default channel step (16 here, 8 on AVX2) leaves some to remove
    model = builders.conv_chain(channels=(8, 64, 64, 8))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = model.graph.input[0]
    shape = [d.dim_value or 1 for d in x.type.tensor_type.shape.dim]
    feeds = {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    out = field.classify(path, feeds, tmp_path)
    assert out.klass == field.PRUNED, out.message
    assert "--calib" in out.args


def test_calib_only_when_the_npz_format_can_carry_the_inputs(tmp_path):
    """Sequences and scalars cannot ride in a samples-on-axis-0 .npz: the CLI generates those."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, ["n"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x, s],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    plain = {"x": np.zeros((2, 3), np.float32), "s": np.zeros((2,), np.int64)}
    assert "--calib" in field.data_flags(path, plain, tmp_path)
    scalar = {"x": np.zeros((2, 3), np.float32), "s": np.array(3, np.int64)}
    assert "--calib" not in field.data_flags(path, scalar, tmp_path)


def test_internal_errors_group_by_exception_and_where():
    rows = [
        field.Outcome("node", "a", field.INTERNAL, "ValueError: input 'x' is bad", exception="ValueError", where="f:1"),
        field.Outcome("node", "b", field.INTERNAL, "ValueError: input 'y' is bad", exception="ValueError", where="f:1"),
        field.Outcome("pypi", "c", field.INTERNAL, "KeyError: 'z'", exception="KeyError", where="g:2"),
        field.Outcome("pypi", "d", field.NOTHING, "no channel groups"),
    ]
    imap = field.internal_map(rows)
    assert [(r["exception"], r["count"], r["examples"]) for r in imap] == [
        ("ValueError", 2, ["node:a", "node:b"]),
        ("KeyError", 1, ["pypi:c"]),
    ]


def test_frames_name_the_innermost_graphprune_line():
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "/x/graphprune/cli.py", line 10, in _main\n'
        '  File "/x/graphprune/rules/shape.py", line 161, in rewrite_slice\n'
        '  File "/usr/lib/numpy/core.py", line 5, in f\n'
        "TypeError: boom\n"
    )
    where, innermost, chain = field._frames(stderr)
    assert (where, innermost) == ("graphprune/rules/shape.py:161 in rewrite_slice", "core.py:5 in f")
    assert chain == ["graphprune/cli.py:10 in _main", "graphprune/rules/shape.py:161 in rewrite_slice"]


def test_input_shape_flag_is_used_when_the_parser_has_it(tmp_path):
    """Dynamic dims are named with --input-shape NAME:D1,D2,... once the CLI takes that flag."""
    import argparse

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), path)
    parser = argparse.ArgumentParser()
    prune = parser.add_subparsers(dest="command").add_parser("prune")
    prune.add_argument("--input-shape", nargs="+")
    feeds = {"x": np.zeros((1, 3, 64, 32), np.float32)}
    flags = field.data_flags(path, feeds, tmp_path, parser=parser)
    assert flags[:2] == ["--input-shape", "x:1,3,64,32"]
    assert "--calib" in flags


def test_message_patterns_blank_names_but_keep_the_cause():
    assert field._pattern("input 'X' has unsupported element type object") == field._pattern(
        "input 'like' has unsupported element type object"
    )
    einsum = "InvalidArgument: \"[ONNXRuntimeError] : 2 : running Einsum node. Name:''\""
    split = "InvalidArgument: \"[ONNXRuntimeError] : 2 : running SplitToSequence node. Name:''\""
    assert field._pattern(einsum) != field._pattern(split)


def _fake_classify(model_path, feeds, workdir, *, source="", name="", phase=None):
    """Stands in for field.classify in the workers (forked, so the patch reaches them)."""
    import os
    import signal
    import time

    phase("prune")
    if name == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if name == "hang":
        time.sleep(60)
    return field.Outcome(source, name, field.NOTHING, "no channel groups")


def test_a_crash_or_a_hang_costs_one_model_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(field, "classify", _fake_classify)
    names = ["fine", "segfault", "hang", "after"]
    entries = [field_corpus.Entry("node", n, f"{n}.onnx") for n in names]
    results = field.run_all(entries, tmp_path, workers=2, timeout_scale=0.05)  # node: 3 s
    got = {r.name: (r.klass, r.message) for r in results}
    assert got["fine"] == got["after"] == (field.NOTHING, "no channel groups")
    assert got["segfault"] == (field.INTERNAL, "crash (signal 11) during prune")
    assert got["hang"][0] == field.INTERNAL and got["hang"][1].startswith("timeout after 3s during prune")


def test_dims_declared_minus_one_are_dynamic_for_the_input_shape_flag(tmp_path):
    import argparse

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, -1, -1])
    path = tmp_path / "m.onnx"
    path.write_bytes(
        helper.make_model(
            helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        ).SerializeToString()
    )
    parser = argparse.ArgumentParser()
    parser.add_subparsers(dest="command").add_parser("prune").add_argument("--input-shape", action="append")
    flags = field.data_flags(path, {"x": np.zeros((1, 3, 48, 192), np.float32)}, tmp_path, parser=parser)
    assert flags[:2] == ["--input-shape", "x:1,3,48,192"]


def test_compare_lists_the_models_that_changed_class():
    old = {
        "models": [
            {"source": "node", "name": "a", "klass": field.INTERNAL},
            {"source": "node", "name": "b", "klass": field.NOTHING},
        ]
    }
    now = [field.Outcome("node", "a", field.NOTHING), field.Outcome("node", "b", field.NOTHING)]
    text = field.compare(now, old)
    assert f"1 x {field.INTERNAL} -> {field.NOTHING}  [node:a]" in text
