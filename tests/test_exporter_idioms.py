"""Graphs written by exporters: run-time shape arithmetic, Constant-node weights, unknown
shapes, weights inside control flow. Each is understood, or blocked with a reason; none crashes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune.analysis.dependency import analyze, body_notes
from graphprune.calibration.datasets import open_dataset
from graphprune.calibration.statistics import calibrate
from graphprune.ir.graph import infer_with_folding, view
from graphprune.ir.shapefold import shape_elements
from graphprune.objectives.cost import count_params, random_feeds
from graphprune.planning.criteria import CRITERIA, ScoreContext
from graphprune.present.inspection import table
from graphprune.validation.contract import run
from models import exporter_idioms
from tests.test_calibrate import save


def _feeds(batch=2, seq=5, hidden=32, seed=1):
    return {"input": np.random.default_rng(seed).standard_normal((batch, seq, hidden)).astype(np.float32)}


# --- run-time shape arithmetic ---------------------------------------------------------------


def test_shape_elements_tell_run_time_dims_from_constants_and_where_the_constants_are():
    mv = view(exporter_idioms.dynamic_attention(hidden=32, heads=4))
    reshape = next(i for i, n in enumerate(mv.nodes) if n.name == "/query/Reshape")
    concat = mv.producer["query/new_shape"]
    els = shape_elements(mv, "query/new_shape", (reshape, 1))
    assert [e.source for e in els] == [("query/out", 0), ("query/out", 1), None, None]
    assert [e.value for e in els[2:]] == [4, 8]
    assert [e.where for e in els[2:]] == [(concat, 2, 0), (concat, 3, 0)]


def test_heads_split_by_a_shape_computed_at_run_time_are_one_prunable_group():
    deps = analyze(exporter_idioms.dynamic_attention(hidden=32, heads=4))
    heads = [g for g in deps.groups if g.unit == "heads"]
    assert len(heads) == 1 and heads[0].prunable, [(g.label, g.reasons) for g in deps.groups]
    assert heads[0].size == 4 and heads[0].facts["heads"] == 8
    members = {(m.tensor, m.axis) for m in heads[0].members}
    assert {("query.weight", 1), ("key.weight", 1), ("value.weight", 1), ("output.weight", 0)} <= members


def test_heads_pruned_through_run_time_shapes_are_exact_and_stay_dynamic():
    model = exporter_idioms.dynamic_attention(hidden=32, heads=4)
    result = graphprune.prune(model, ratio=0.5, units=("heads",), latency=False, feeds=_feeds())
    report = result.report
    assert report.passed, (report.checker, report.runtime)
    assert report.exact.checked and report.exact.passed
    assert report.groups_pruned == 1
    assert report.params_after == report.params_before - 4 * 16 * 32 - 3 * 16  # q, k, v, o and 3 biases lose 16 of 32
    # the head count and the merged width are rewritten where the Concats hold them
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in result.model.graph.node if n.op_type == "Constant"
    }
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert consts["num_heads"].tolist() == [2] and inits["all_head_size"].tolist() == [16]
    assert inits["head_dim"].tolist() == [8]
    # batch and sequence are still read at run time: other sizes run
    (out,) = run(result.model, _feeds(batch=3, seq=7))
    assert out.shape == (3, 7, 32)


def test_a_flatten_that_shape_inference_gives_up_on_is_traced_and_prunes_exactly():
    model = exporter_idioms.flatten_to_sequence(channels=8, hidden=6)
    assert infer_with_folding(model)[0].get("h") is None  # ONNX inference alone gives up at the Reshape
    assert view(model).shapes["h"] == (None, None, 6)
    deps = analyze(model)
    assert deps.group_of("conv.weight", 0).prunable and deps.group_of("fc1.weight", 1).prunable
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)}
    result = graphprune.prune(model, ratio=0.5, latency=False, feeds=feeds)
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.groups_pruned == 2
    other = {"input": np.zeros((1, 3, 4, 9), np.float32)}
    assert run(result.model, other)[0].shape == (1, 36, 4)


def test_a_token_expanded_to_a_run_time_batch_prunes_with_its_width_rewritten():
    model = exporter_idioms.expanded_token(hidden=8)
    group = analyze(model).group_of("fc1.weight", 1)
    assert group.prunable and ("token", 2) in {(m.tensor, m.axis) for m in group.members}
    result = graphprune.prune(
        model, ratio=0.5, latency=False, feeds={"input": np.random.default_rng(0).random((3, 4, 8), np.float32)}
    )
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["width"].tolist() == [4] and inits["token"].shape == (1, 1, 4)
    assert run(result.model, {"input": np.zeros((5, 4, 8), np.float32)})[0].shape == (5, 5, 4)


def test_a_resize_to_the_size_of_a_skip_read_at_run_time_prunes_exactly():
    model = exporter_idioms.resize_to_skip(channels=8)
    deps = analyze(model)
    assert deps.group_of("conv2.weight", 0).prunable, deps.group_of("conv2.weight", 0).reasons
    feeds = {"input": np.random.default_rng(0).random((2, 3, 9, 10), np.float32)}
    result = graphprune.prune(model, ratio=0.5, latency=False, feeds=feeds)
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.groups_pruned == 2
    assert run(result.model, {"input": np.zeros((1, 3, 6, 7), np.float32)})[0].shape == (1, 4, 6, 7)


def test_heads_split_with_sizes_of_another_tensor_and_a_minus_one_head_count_prune_exactly():
    model = exporter_idioms.dynamic_attention(hidden=32, heads=4, style="hf")
    heads = [g for g in analyze(model).groups if g.unit == "heads"]
    assert len(heads) == 1 and heads[0].prunable and heads[0].size == 4
    result = graphprune.prune(model, ratio=0.5, units=("heads",), latency=False, feeds=_feeds())
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.params_after == result.report.params_before - 4 * 16 * 32 - 3 * 16
    assert run(result.model, _feeds(batch=3, seq=7))[0].shape == (3, 7, 32)


def test_tile_by_run_time_repeats_and_constant_of_a_run_time_shape_follow_the_pruned_width():
    model = exporter_idioms.expanded_token(hidden=8, op="Tile")
    group = analyze(model).group_of("fc1.weight", 1)
    members = {(m.tensor, m.axis) for m in group.members}
    assert group.prunable and {("token", 2), ("tokens", 2), ("zeros", 2)} <= members
    result = graphprune.prune(
        model, ratio=0.5, latency=False, feeds={"input": np.random.default_rng(0).random((3, 4, 8), np.float32)}
    )
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.groups_pruned == 1
    assert run(result.model, {"input": np.zeros((5, 4, 8), np.float32)})[0].shape == (5, 5, 4)


# --- unknown shapes -----------------------------------------------------------------------


def test_slice_reshape_expand_of_unknown_shape_do_not_crash_and_block_with_a_reason():
    model = exporter_idioms.unknown_shapes()
    feeds = {
        "input": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32),
        "aux": np.arange(6, dtype=np.float32),
        "target": np.array([2, -1], np.int64),
    }
    deps = analyze(model)
    conv3 = deps.group_of("conv3.weight", 0)
    assert not conv3.prunable
    assert any("/flat/Reshape (Reshape with a shape computed at run time)" == r for r in conv3.reasons), conv3.reasons
    result = graphprune.prune(model, ratio=0.5, latency=False, feeds=feeds)
    assert result.report.passed and result.report.exact.passed
    assert result.report.groups_pruned == 1  # conv1's channels (they reach conv3 and conv2 as inputs)


def test_dims_declared_as_minus_one_are_unknown_sizes():
    model = exporter_idioms.constant_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # paddle2onnx's dynamic batch
    assert view(model).shapes["input"][0] is None
    assert random_feeds(model)["input"].shape == (1, 3, 16, 16)


# --- Constant-node weights ----------------------------------------------------------------


def test_constant_node_weights_prune_exactly_and_stay_constant_nodes():
    model = exporter_idioms.constant_cnn()
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.passed
    assert result.report.groups_pruned == 2
    assert len(result.model.graph.initializer) == 0
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in result.model.graph.node if n.op_type == "Constant"
    }
    assert consts["conv1.weight"].shape == (8, 3, 3, 3)
    assert consts["conv2.weight_const"].shape == (8, 8, 3, 3)
    assert consts["conv3.weight_fp16"].shape == (8, 8, 3, 3) and consts["conv3.weight_fp16"].dtype == np.float16


def test_constant_node_groups_are_named_by_the_conv_reading_them_through_identity_or_cast():
    text = table(analyze(exporter_idioms.constant_cnn()))
    assert "/conv2/Conv" in text and "/conv3/Conv" in text
    assert "/conv2/Identity" not in text and " mlp " not in text


@pytest.mark.parametrize("name", ["l1", "l2", "fpgm", "random"])
def test_criteria_score_constant_node_weights_as_initializers(name):
    const, init = exporter_idioms.constant_cnn(), exporter_idioms.initializers_of(exporter_idioms.constant_cnn())
    dc, di = analyze(const), analyze(init)
    assert len(dc.prunable_groups()) == len(di.prunable_groups()) == 2
    for gc, gi in zip(dc.prunable_groups(), di.prunable_groups()):
        np.testing.assert_array_equal(CRITERIA[name](gc, dc, ScoreContext()), CRITERIA[name](gi, di, ScoreContext()))


@pytest.mark.parametrize("name", ["activation", "wanda"])
def test_data_criteria_score_constant_node_weights_as_initializers(tmp_path, name):
    calib = save(tmp_path, "c.npz", 8, (3, 16, 16), key="input")
    scores = []
    for model in (exporter_idioms.constant_cnn(), exporter_idioms.initializers_of(exporter_idioms.constant_cnn())):
        deps = analyze(model)
        ctx = ScoreContext(stats=calibrate(model, deps, open_dataset(calib)))
        scores.append([CRITERIA[name](g, deps, ctx) for g in deps.prunable_groups()])
        assert not ctx.fallbacks
    for a, b in zip(*scores):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_least_squares_refits_consumers_whose_weights_are_constant_nodes(tmp_path):
    calib = save(tmp_path, "c.npz", 20, (3, 16, 16), key="input")
    const = exporter_idioms.constant_cnn()
    got = graphprune.prune(const, ratio=0.5, calib=calib, compensate="lstsq", latency=False)
    want = graphprune.prune(
        exporter_idioms.initializers_of(const), ratio=0.5, calib=calib, compensate="lstsq", latency=False
    )
    assert got.report.passed and got.report.exact.checked
    comp = got.report.prune["compensate"]
    assert comp["consumers"] == 2 and comp["skipped"] == {}
    refit = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in got.model.graph.node if n.op_type == "Constant"
    }
    for t in want.model.graph.initializer:
        np.testing.assert_array_equal(refit[t.name], numpy_helper.to_array(t), err_msg=t.name)
    plain = graphprune.prune(const, ratio=0.5, latency=False).model
    w_plain = next(
        numpy_helper.to_array(n.attribute[0].t) for n in plain.graph.node if n.output[0] == "conv2.weight_const"
    )
    assert not np.allclose(refit["conv2.weight_const"], w_plain)  # the refit changed the weight


def test_weights_computed_at_run_time_are_named_by_their_op():
    from graphprune.analysis.consumers import consumers_of

    model = exporter_idioms.constant_cnn()
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    cast.op_type, cast.domain = "Neg", ""  # conv3's weight is now computed, not converted
    del cast.attribute[:]
    notes = {c.name: c.note for c in consumers_of(analyze(model)).values()}
    assert notes["/conv3/Conv"] == "weight is computed at run time (Neg): left as it is"
    assert notes["/conv2/Conv"] == ""


# --- control flow ---------------------------------------------------------------------------


def test_parameters_inside_if_branches_are_counted_and_said_to_be_not_analysed():
    model = exporter_idioms.conv_in_if()
    branch = 8 * 3 * 9 + 8 + 3 * 8 * 9
    assert count_params(model) == 3 * 3 + 2 * branch
    assert body_notes(model) == [f"{2 * branch} parameters inside If '/branches/If' branches are not analysed"]
    assert f"- {2 * branch} parameters inside If '/branches/If' branches are not analysed" in table(analyze(model))


def test_main_graph_weights_read_only_inside_a_branch_are_said_to_be_not_analysed():
    model = exporter_idioms.conv_in_if()
    then = next(a.g for a in model.graph.node[1].attribute if a.name == "then_branch")
    moved = then.initializer.pop(0)  # then.conv1.weight now lives in the main graph
    model.graph.initializer.append(moved)
    onnx.checker.check_model(model)
    notes = body_notes(model)
    assert f"{8 * 3 * 9} parameters read inside If '/branches/If' branches are not analysed" in notes
    # analysis lists such a weight itself, with the node that reads it inside its branches
    assert analyze(model).unanalysed[moved.name] == ["/branches/If (If reads it inside a subgraph)"]
