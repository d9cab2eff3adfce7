"""The dependency graph finds the right groups, members and index maps, and blocks what it must."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.errors import InputError
from models import builders
from models.random_graphs import random_model


def member(group, tensor, axis):
    return next((m for m in group.members if m.tensor == tensor and m.axis == axis), None)


def test_identity_shortcut_couples_the_stem_with_the_block_output():
    deps = graphprune.analyze(builders.residual_net())
    g = deps.group_of("conv1.weight", 0)
    assert g.prunable
    assert member(g, "layer1.0.conv2.weight", 0) is not None  # block output filters
    assert member(g, "layer1.0.conv1.weight", 1) is not None  # consumer of the stream
    assert member(g, "layer1.0.bn2.weight", 0) is not None


def test_projection_shortcut_starts_a_new_stream():
    deps = graphprune.analyze(builders.residual_net())
    g = deps.group_of("layer2.0.downsample.0.weight", 0)
    assert member(g, "layer2.0.conv2.weight", 0) is not None
    assert member(g, "conv1.weight", 0) is None
    assert deps.group_of("conv1.weight", 0) is not g


def test_dense_concat_keeps_branches_as_separate_groups_with_segment_maps():
    deps = graphprune.analyze(builders.dense_block(channels=24, growth=8, layers=2))
    stem = deps.group_of("features.conv0.weight", 0)
    layer1 = deps.group_of("features.denseblock1.denselayer1.conv2.weight", 0)
    assert stem is not layer1 and stem.size == 24 and layer1.size == 8
    # layer 2 reads the concat [stem(24), layer1(8)] through its norm1 parameters
    consumer = "features.denseblock1.denselayer2.norm1.weight"
    assert member(stem, consumer, 0).indices.ravel().tolist() == list(range(24))
    assert member(layer1, consumer, 0).indices.ravel().tolist() == list(range(24, 32))


def test_flatten_makes_each_channel_own_a_block_of_gemm_columns():
    deps = graphprune.analyze(builders.flatten_gemm(channels=(8, 16, 16)))
    g = deps.group_of("features.2.conv.weight", 0)
    gemm = member(g, "classifier.0.weight", 1)
    assert gemm.indices.shape == (16, 16)  # 16 channels x (4 x 4) features
    assert gemm.indices[3].tolist() == list(range(48, 64))


def test_matmul_head_after_reshape_prunes_exactly():
    model = builders.flatten_gemm(head="matmul")
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed
    assert result.report.groups_pruned >= 3


def test_depthwise_conv_passes_channels_through():
    deps = graphprune.analyze(builders.depthwise_separable())
    g = deps.group_of("features.1.expand.conv.weight", 0)
    assert member(g, "features.1.dw.conv.weight", 0) is not None
    assert member(g, "features.1.project.conv.weight", 1) is not None


def test_depthwise_multiplier_two_prunes_both_outputs_of_an_input_channel():
    deps = graphprune.analyze(builders.depthwise_separable())
    g = deps.group_of("features.4.dw.conv.weight", 0)
    assert g.prunable
    assert member(g, "features.4.dw.conv.weight", 0).indices.shape[1] == 2


def test_grouped_conv_prunes_whole_groups_and_rewrites_group():
    model = builders.grouped_conv(groups=4, width=32)
    deps = graphprune.analyze(model)
    g = deps.group_of("layer1.0.conv2.weight", 0)
    assert g.size == 4  # the unit is one convolution group
    result = graphprune.prune(model, ratio=0.5, latency=False)
    conv = next(n for n in result.model.graph.node if list(n.input[1:2]) == ["layer1.0.conv2.weight"])
    group = next(a.i for a in conv.attribute if a.name == "group")
    assert group == 2
    assert result.report.exact.passed


@pytest.mark.parametrize("form", ["input", "attribute"])
def test_split_halves_are_separate_groups_and_sizes_are_rewritten(form):
    model = builders.split_chunk(split_form=form)
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.passed
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    shapes = graphprune.analyze(result.model).view.shapes
    sizes = [shapes[o][1] for o in split.output]
    assert sum(sizes) == shapes[split.input[0]][1]


def _tiny(op_node, extra_inits=(), out_channels=8, opset=17):
    """conv(3->8) -> relu -> <op_node: 'r' -> 'u'> -> conv(8->4): a probe for one op."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, out_channels, 1, 1)).astype(np.float32), "w2"),
        *extra_inits,
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        op_node,
        helper.make_node("Conv", ["u", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("custom.domain", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_unknown_op_blocks_the_channels_it_touches_and_the_rest_still_prunes():
    model = _tiny(helper.make_node("Mystery", ["r"], ["u"], name="mystery", domain="custom.domain"))
    deps = graphprune.analyze(model)
    g = deps.group_of("w1", 0)
    assert not g.prunable
    assert "mystery (no rule for custom.domain.Mystery)" in g.reasons


def test_softmax_over_channels_blocks_with_a_reason():
    model = _tiny(helper.make_node("Softmax", ["r"], ["u"], name="sm", axis=1))
    g = graphprune.analyze(model).group_of("w1", 0)
    assert not g.prunable
    assert "sm (Softmax over axis 1, the pruned axis)" in g.reasons


def test_softmax_over_a_spatial_axis_keeps_channels_prunable():
    model = _tiny(helper.make_node("Softmax", ["r"], ["u"], name="sm", axis=3))
    result = graphprune.prune(model, ratio=0.5, latency=False, feeds=None)
    assert result.deps.group_of("w1", 0).prunable
    assert result.report.exact.passed


def test_reduce_mean_over_channels_blocks():
    model = _tiny(helper.make_node("ReduceMean", ["r"], ["u"], name="rm", axes=[1], keepdims=1), out_channels=1)
    g = graphprune.analyze(model).group_of("w1", 0)
    assert not g.prunable and "rm (ReduceMean over axis 1)" in g.reasons


def test_channel_slice_is_a_segment_and_its_bounds_are_rewritten():
    starts = numpy_helper.from_array(np.array([2], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([6], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    node = helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["u"], name="slice")
    model = _tiny(node, [starts, ends, axes], out_channels=4)
    deps = graphprune.analyze(model)
    g = deps.group_of("w1", 0)
    assert g.prunable
    plan = {"groups": [{"anchor": "w1", "axis": 0, "remove": [0, 3, 7]}]}
    result = graphprune.prune(model, plan=plan, latency=False)
    assert result.report.exact.passed
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["starts"].tolist() == [1] and inits["ends"].tolist() == [4]
    assert inits["w2"].shape == (4, 3, 1, 1)


def test_constant_operand_with_the_channel_axis_is_sliced():
    scale = numpy_helper.from_array(np.arange(1, 9, dtype=np.float32).reshape(8, 1, 1), "scale")
    model = _tiny(helper.make_node("Mul", ["r", "scale"], ["u"], name="mul"), [scale])
    plan = {"groups": [{"anchor": "w1", "axis": 0, "remove": [1, 2]}]}
    result = graphprune.prune(model, plan=plan, latency=False)
    assert result.report.exact.passed
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["scale"].ravel().tolist() == [1, 4, 5, 6, 7, 8]


def test_graph_inputs_and_outputs_are_never_pruned():
    deps = graphprune.analyze(builders.conv_chain())
    assert any("input (graph input)" in g.reasons for g in deps.blocked_groups())
    assert any("output (graph output)" in g.reasons for g in deps.blocked_groups())
    assert deps.blocked_counts() == {"graph input": 1, "graph output": 1}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"anchor": "nope", "axis": 0, "remove": [1]}, "no initializer named 'nope'"),
        ({"anchor": "w1", "axis": 0, "remove": [99]}, "index 99 out of range"),
        ({"anchor": "w1", "axis": 5, "remove": [1]}, "has no axis 5"),
        ({"anchor": "w1", "axis": 1, "remove": [1]}, "blocked: x (graph input)"),
        ({"anchor": "w1", "axis": 0, "remove": list(range(8))}, "removes every channel"),
        ({"anchor": "w1", "remove": [1]}, 'needs "anchor", "axis" and "remove"'),
    ],
)
def test_plan_that_does_not_match_the_model_is_a_clear_error(entry, message):
    model = _tiny(helper.make_node("Relu", ["r"], ["u"], name="relu2"))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        graphprune.prune(model, plan={"groups": [entry]}, validate=False)


def test_a_rule_that_fails_blocks_its_dims_instead_of_crashing(monkeypatch):
    from graphprune import rules

    def broken(node, ctx):
        raise ValueError("odd node")

    monkeypatch.setitem(rules.RULES, "Relu", broken)
    model = _tiny(helper.make_node("Identity", ["r"], ["u"], name="id"))
    g = graphprune.analyze(model).group_of("w1", 0)
    assert not g.prunable
    assert "relu (rule for Relu failed: odd node)" in g.reasons


def test_a_weight_coupled_to_a_tensor_of_unknown_shape_is_not_pruned_alone():
    # Concat without its axis: shape inference gives up on its output, so conv2's input
    # columns cannot be matched to any producer and must stay.
    model = _tiny(helper.make_node("Concat", ["r"], ["u"], name="cat"))
    deps = graphprune.analyze(model)
    assert deps.prunable_groups() == []
    assert any("unknown shape" in r for r in deps.group_of("w2", 1).reasons)


def _group_layout(deps):
    return sorted(
        (g.size, tuple(sorted((m.tensor, m.axis, m.indices.tolist().__repr__()) for m in g.members)))
        for g in deps.groups
    )


@pytest.mark.parametrize("salt", [0, 1])
@pytest.mark.parametrize("build", [builders.residual_net, builders.dense_block, builders.split_chunk])
def test_groups_stay_exact_when_every_class_signature_collides(monkeypatch, build, salt):
    # A constant salt makes every class's signature a function of its counts alone (0: all
    # equal), so classes on different dims share a hash bucket; the exact check must split them.
    from graphprune.analysis import dependency

    model = build()
    expected = _group_layout(graphprune.analyze(model))
    monkeypatch.setattr(dependency, "_signature_salt", lambda nd: np.full(nd, salt, dtype=np.uint64))
    assert _group_layout(graphprune.analyze(model)) == expected


def test_class_groups_split_a_bucket_by_the_exact_pairs(monkeypatch):
    from graphprune.analysis import dependency

    monkeypatch.setattr(dependency, "_signature_salt", lambda nd: np.zeros(nd, dtype=np.uint64))
    # (label, dim, count) pairs sorted by (label, dim): classes 0 and 5 are equal; 2 differs
    # from them by a dim, 3 by a count and 7 by having one pair more.
    pairs = [(0, 0, 1), (0, 1, 1), (2, 0, 1), (2, 2, 1), (3, 0, 1), (3, 1, 2), (5, 0, 1), (5, 1, 1)]
    pairs += [(7, 0, 1), (7, 1, 1), (7, 2, 1)]
    label, dim, count = (np.array(col, dtype=np.int64) for col in zip(*pairs))
    roots, group = dependency._class_groups(label, dim, count, nd=3)
    assert roots.tolist() == [0, 2, 3, 5, 7]
    assert group[0] == group[3]
    assert len({int(group[i]) for i in (0, 1, 2, 4)}) == 4


def _groups_in_order(deps):
    return [
        (
            g.size,
            g.unit,
            list(g.reasons),
            [(m.tensor, m.axis, m.kind, m.role, m.indices.dtype.str, m.indices.tolist()) for m in g.members],
        )
        for g in deps.groups
    ]


def _atom_resolutions(monkeypatch) -> list[int]:
    """Count the components resolved over atoms (to show a comparison is not vacuous)."""
    from graphprune.analysis import dependency

    calls: list[int] = []
    real = dependency._atom_parts

    def counted(c, dims, cuts, edges, salt):
        calls.append(len(cuts))
        return real(c, dims, cuts, edges, salt)

    monkeypatch.setattr(dependency, "_atom_parts", counted)
    return calls


ATOM_CASES = [
    builders.dense_block,
    builders.split_chunk,
    builders.inception_block,
    builders.residual_net,
    builders.unet,
    builders.grouped_conv,
    *[lambda seed=seed: random_model(seed) for seed in (3, 17, 40, 41, 99)],
]


@pytest.mark.parametrize("build", ATOM_CASES)
def test_atom_resolution_gives_the_groups_of_entry_resolution(monkeypatch, build):
    # Translation-only components are resolved over entry ranges (atoms); resolving every
    # component entry by entry must give the same groups, members, reasons and order.
    from graphprune.analysis import dependency

    model = build()
    calls = _atom_resolutions(monkeypatch)
    over_atoms = _groups_in_order(graphprune.analyze(model))
    monkeypatch.setattr(dependency, "_cut_points", lambda c, dims, comp: None)
    assert _groups_in_order(graphprune.analyze(model)) == over_atoms
    if build is builders.dense_block:
        assert calls and calls[0] > 0


def test_dense_block_concats_are_resolved_over_atoms_with_one_member_per_segment(monkeypatch):
    calls = _atom_resolutions(monkeypatch)
    deps = graphprune.analyze(builders.dense_block())
    assert calls, "the dense block's components are translations only"
    sizes = {g.size for g in deps.prunable_groups()}
    assert len(sizes) >= 2  # the stem's channels and the growth of each layer
    for g in deps.groups:
        for m in g.members:
            assert m.indices.shape == (g.size, 1)
            # a segment of a concat: consecutive entries of its axis
            assert np.array_equal(np.diff(m.indices[:, 0]), np.ones(g.size - 1, dtype=np.int64))


def test_the_dependency_graph_is_a_networkx_multigraph_of_the_couplings():
    import networkx as nx

    deps = graphprune.analyze(builders.dense_block())
    g = deps.graph
    assert isinstance(g, nx.MultiGraph)
    assert g.number_of_nodes() == len(deps.couplings) and g.number_of_edges() == deps.couplings.number_of_edges()
    assert all({"a", "b", "kind", "param"} <= set(data) for _, _, data in g.edges(data=True))
    assert all({"size", "kind"} <= set(data) for _, data in g.nodes(data=True))
