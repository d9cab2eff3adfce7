"""Loading and saving: external data, old opsets, dynamic shapes, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import version_converter

import graphprune
from graphprune.errors import InputError
from graphprune.ir import files as io
from models import builders


def test_model_with_external_data_prunes_from_file(tmp_path):
    src = tmp_path / "ext" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(
        builders.residual_net(width=32),
        src,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.weights",
        size_threshold=64,
    )
    assert (src.parent / "model.weights").exists()
    result = graphprune.prune(src, ratio=0.5, latency=False)
    assert result.report.exact.passed
    out = io.save(result.model, tmp_path / "out" / "small.onnx", external_data=True)
    assert (out.parent / "small.onnx.data").exists()
    back = io.load(out)
    assert graphprune.validate(src, back, latency=False).exact.passed


def test_external_data_that_escapes_the_folder_is_refused(tmp_path):
    model = builders.conv_chain()
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    m = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    (tmp_path / "evil.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(InputError, match="escapes the model's folder"):
        io.load(tmp_path / "evil.onnx")


def test_missing_external_data_file_is_a_clear_error(tmp_path):
    onnx.save_model(builders.conv_chain(), tmp_path / "m.onnx", save_as_external_data=True, location="w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(InputError, match="missing external data file 'w.bin'"):
        io.load(tmp_path / "m.onnx")


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
def test_old_and_new_opsets_prune_exactly(opset):
    # The attribute form of Split is opset 11; converting up rewrites Split, ReduceMean, ...
    base = builders.split_chunk(split_form="attribute")
    model = base if opset == 11 else version_converter.convert_version(base, opset)
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed
    assert result.report.groups_pruned > 0


def test_dynamic_batch_and_spatial_dims_prune_exactly():
    model = builders.residual_net()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    out_dims[0].dim_param = "N"
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed
    assert result.report.groups_pruned > 0


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "m.onnx"
    io.save(builders.conv_chain(), target)
    assert onnx.load(target).graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_float16_weights_keep_their_dtype_and_prune_exactly():
    from onnx import numpy_helper

    model = builders.conv_chain()
    for t in model.graph.initializer:
        name = t.name
        if name.endswith("conv.weight"):
            arr = numpy_helper.to_array(t).astype(np.float16)
            # Conv needs matching input types: cast the half weight back to float in the graph.
            t.CopyFrom(numpy_helper.from_array(arr, name + ".half"))
            cast = onnx.helper.make_node("Cast", [name + ".half"], [name], to=onnx.TensorProto.FLOAT)
            model.graph.node.insert(0, cast)
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed
    halves = [t for t in result.model.graph.initializer if t.name.endswith(".half")]
    assert halves and all(t.data_type == onnx.TensorProto.FLOAT16 for t in halves)


@pytest.mark.parametrize("limit_over_weights, external", [(8.0, False), (1.5, None), (0.5, True)])
def test_save_splits_out_weights_only_when_the_model_would_not_fit_one_protobuf(
    tmp_path, monkeypatch, limit_over_weights, external
):
    # Far under the limit the weights' bytes decide without serialising; near it ByteSize does.
    model = builders.residual_net()
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    monkeypatch.setattr(io, "_PROTOBUF_LIMIT", int(weights * limit_over_weights))
    asked = []
    monkeypatch.setattr(io, "_byte_size", lambda m: asked.append(1) or m.ByteSize())
    io.save(model, tmp_path / "m.onnx")
    split = (tmp_path / "m.onnx.data").exists()
    if external is None:  # within a quarter of the limit: the exact size decides
        assert asked and split == (model.ByteSize() > io._PROTOBUF_LIMIT)
    else:
        assert split == external
        assert bool(asked) == (limit_over_weights < 4)
