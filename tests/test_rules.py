"""Op rules on small probes: each variant either prunes exactly or blocks with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune


def _model(nodes, inits, out_shape, opset=17):
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _w(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _stem(c=8):
    return [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])], [
        _w("w1", (c, 3, 3, 3))
    ]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_prunes_exactly_with_any_transposition(trans_a, trans_b):
    nodes, inits = _stem()
    nodes += [
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),  # [1, 8]
    ]
    a = "f"
    if trans_a:
        nodes.append(helper.make_node("Transpose", ["f"], ["ft"], perm=[1, 0]))
        a = "ft"
    nodes += [
        helper.make_node("Gemm", [a, "wg", "bg"], ["h"], transA=trans_a, transB=trans_b),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "wo"], ["y"], transB=1),
    ]
    inits += [_w("wg", (6, 8) if trans_b else (8, 6), 1), _w("bg", (6,), 2), _w("wo", (5, 6), 3)]
    result = graphprune.prune(_model(nodes, inits, [1, 5]), ratio=0.5, latency=False)
    assert result.report.exact.passed
    assert result.deps.group_of("wg", 0 if trans_b else 1).prunable  # the hidden units
    assert result.report.groups_pruned == 2


def test_resize_with_constant_sizes_is_rewritten():
    nodes, inits = _stem()
    nodes += [
        helper.make_node("Resize", ["r", "", "", "sizes"], ["u"], mode="nearest"),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits += [_i64("sizes", [1, 8, 16, 16]), _w("w2", (4, 8, 1, 1))]
    result = graphprune.prune(_model(nodes, inits, [1, 4, 16, 16]), ratio=0.5, latency=False)
    assert result.report.exact.passed
    sizes = next(t for t in result.model.graph.initializer if t.name == "sizes")
    assert numpy_helper.to_array(sizes).tolist() == [1, 4, 16, 16]


def test_pad_on_the_channel_axis_blocks():
    nodes, inits = _stem()
    nodes += [helper.make_node("Pad", ["r", "pads"], ["u"]), helper.make_node("Conv", ["u", "w2"], ["y"])]
    inits += [_i64("pads", [0, 1, 0, 0, 0, 1, 0, 0]), _w("w2", (4, 10, 1, 1))]
    deps = graphprune.analyze(_model(nodes, inits, [1, 4, 8, 8]))
    assert not deps.group_of("w1", 0).prunable
    assert any("Pad" in r for r in deps.group_of("w1", 0).reasons)


def test_spatial_pad_keeps_channels_prunable():
    nodes, inits = _stem()
    nodes += [helper.make_node("Pad", ["r", "pads"], ["u"]), helper.make_node("Conv", ["u", "w2"], ["y"])]
    inits += [_i64("pads", [0, 0, 1, 1, 0, 0, 1, 1]), _w("w2", (4, 8, 1, 1))]
    result = graphprune.prune(_model(nodes, inits, [1, 4, 10, 10]), ratio=0.5, latency=False)
    assert result.report.exact.passed and result.report.groups_pruned == 1


def test_reshape_split_into_heads_prunes_whole_heads_and_rewrites_the_shape():
    # [1, 8, 8, 8] -> [1, 4, 2, 64]: 4 "heads" of 2 channels; the unit is a head.
    nodes, inits = _stem()
    nodes += [
        helper.make_node("Reshape", ["r", "shape"], ["h"]),
        helper.make_node("Reshape", ["h", "back"], ["u"]),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits += [_i64("shape", [1, 4, 2, 64]), _i64("back", [1, 8, 8, 8]), _w("w2", (4, 8, 1, 1))]
    model = _model(nodes, inits, [1, 4, 8, 8])
    group = graphprune.analyze(model).group_of("w1", 0)
    assert group.prunable
    assert group.size == 4 and group.anchor.indices.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(graphprune.InputError, match="must be removed together"):
        graphprune.prune(model, plan={"groups": [{"anchor": "w1", "axis": 0, "remove": [1, 6]}]}, validate=False)
    result = graphprune.prune(model, plan={"groups": [{"anchor": "w1", "axis": 0, "remove": [2, 3]}]})
    assert result.report.exact.passed
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["shape"].tolist() == [1, 3, 2, 64] and inits["back"].tolist() == [1, 6, 8, 8]


def test_packed_projection_split_into_a_selector_keeps_the_hidden_axis_as_the_unit():
    # [1, 24, 8, 8] -> [1, 3, 8, 64], then Gather picks one third (like q of a packed qkv): the
    # 3-axis is a selector, so the unit is one of the 8 channels of each third: {c, 8+c, 16+c}.
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["h"]),
        helper.make_node("Gather", ["h", "zero"], ["q"], axis=1),
        helper.make_node("Reshape", ["q", "back"], ["u"]),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits = [
        _w("w1", (24, 3, 3, 3)),
        _i64("shape", [1, 3, 8, 64]),
        _i64("zero", 0),
        _i64("back", [1, 8, 8, 8]),
        _w("w2", (4, 8, 1, 1)),
    ]
    model = _model(nodes, inits, [1, 4, 8, 8])
    group = graphprune.analyze(model).group_of("w1", 0)
    w1 = next(m for m in group.members if m.tensor == "w1" and m.axis == 0)
    assert group.size == 8 and w1.indices[2].tolist() == [2, 10, 18]
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed


def test_split_without_a_selector_keeps_the_major_axis_as_the_unit():
    # The same reshape with nothing selecting on the 3-axis: two or three "heads" of 8.
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["h"]),
        helper.make_node("Reshape", ["h", "back"], ["u"]),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits = [_w("w1", (24, 3, 3, 3)), _i64("shape", [1, 3, 8, 64]), _i64("back", [1, 24, 8, 8])]
    inits.append(_w("w2", (4, 24, 1, 1)))
    group = graphprune.analyze(_model(nodes, inits, [1, 4, 8, 8])).group_of("w1", 0)
    w1 = next(m for m in group.members if m.tensor == "w1" and m.axis == 0)
    assert group.size == 3 and w1.indices[1].tolist() == list(range(8, 16))


def test_transpose_to_channels_last_and_back_prunes_exactly():
    nodes, inits = _stem()
    nodes += [
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "wm"], ["m"]),  # [1, 8, 8, 8] x [8, 6]
        helper.make_node("Transpose", ["m"], ["u"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits += [_w("wm", (8, 6), 5), _w("w2", (4, 6, 1, 1))]
    result = graphprune.prune(_model(nodes, inits, [1, 4, 8, 8]), ratio=0.5, latency=False)
    assert result.report.exact.passed
    assert result.report.groups_pruned == 2


def test_resize_with_axes_and_sizes_for_spatial_axes_only_prunes_channels():
    # opset 18: sizes lists only the axes named by the attribute; the channel axis is not there.
    nodes, inits = _stem()
    nodes += [
        helper.make_node("Resize", ["r", "", "", "sizes"], ["u"], mode="nearest", axes=[2, 3]),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits += [_i64("sizes", [16, 16]), _w("w2", (4, 8, 1, 1))]
    result = graphprune.prune(_model(nodes, inits, [1, 4, 16, 16], opset=18), ratio=0.5, latency=False)
    assert result.report.exact.passed and result.report.groups_pruned == 1
    sizes = next(t for t in result.model.graph.initializer if t.name == "sizes")
    assert numpy_helper.to_array(sizes).tolist() == [16, 16]


def test_channel_shuffle_prunes_channel_pairs_exactly():
    # [1, 8, 8, 8] -> [1, 2, 4, 8, 8] -> transpose(0, 2, 1, 3, 4) -> [1, 8, 8, 8]: channel c of the
    # first half and c of the second land side by side, so they are one unit.
    nodes, inits = _stem()
    nodes += [
        helper.make_node("Reshape", ["r", "split"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge"], ["u"]),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ]
    inits += [_i64("split", [1, 2, 4, 8, 8]), _i64("merge", [1, 8, 8, 8]), _w("w2", (4, 8, 1, 1))]
    model = _model(nodes, inits, [1, 4, 8, 8])
    group = graphprune.analyze(model).group_of("w1", 0)
    w1 = next(m for m in group.members if m.tensor == "w1")
    w2 = next(m for m in group.members if m.tensor == "w2")
    assert group.size == 4 and w1.indices[1].tolist() == [1, 5] and w2.indices[1].tolist() == [2, 3]
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed
