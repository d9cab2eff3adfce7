"""Exactness of models whose outputs saturate (a detector's Sigmoid, a classifier's Softmax):
compared at the saturating op's input, so random inputs that drive the output to ~1e-7 neither
raise a false alarm nor let a wrong surgery through."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.objectives.cost import random_feeds
from graphprune.validation.contract import check_pruned, fidelity, run, saturating_inputs


def _saturated_head(bias: float = -20.0) -> onnx.ModelProto:
    """x[1,4,8,8] -> Conv(16) -> Relu -> Conv(1, bias) -> Reshape -> Sigmoid: with a large
    negative bias every output sits in Sigmoid's saturated tail (a text detector's empty page)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((1, 16, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(np.array([bias], np.float32), "b2"),
        numpy_helper.from_array(np.array([1, 64], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["logit"], name="conv2"),
        helper.make_node("Reshape", ["logit", "flat"], ["flat_logit"], name="flatten"),
        helper.make_node("Sigmoid", ["flat_logit"], ["prob"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "saturated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 64])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_input_of_a_saturating_output_is_found_through_shape_ops():
    assert saturating_inputs(_saturated_head()) == {0: "flat_logit"}


def test_a_saturated_output_prunes_exactly_and_the_model_keeps_its_outputs():
    model = _saturated_head()
    probs = run(model, {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)})[0]
    assert probs.max() < 1e-6  # the outputs carry almost nothing: only the logits can prove exactness
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.exact.max_rel_diff < 1e-5
    assert [o.name for o in result.model.graph.output] == ["prob"]  # the probe outputs are gone again
    assert [o.name for o in model.graph.output] == ["prob"]


def test_a_wrong_surgery_behind_a_saturated_output_still_fails():
    model = _saturated_head()
    result = graphprune.prune(model, ratio=0.5, validate=False)
    broken = result.model
    (w2,) = [t for t in broken.graph.initializer if t.name == "w2"]
    arr = numpy_helper.to_array(w2).copy()
    arr[:, [0, 1]] = arr[:, [1, 0]]  # the consumer reads two kept channels the wrong way round
    w2.CopyFrom(numpy_helper.from_array(arr, "w2"))
    v = check_pruned(model, broken, result.deps, result.plan)
    assert v.checker_ok and v.runtime_ok
    assert v.exact.checked and not v.exact.passed


def test_a_saturating_output_whose_input_is_an_output_too_is_compared_there():
    """A detector that outputs its logits beside their Sigmoid: the logits are compared as the
    graph output they are (nothing fetched twice, every output aligned with its reference)."""
    model = _saturated_head()
    model.graph.output.insert(0, helper.make_tensor_value_info("flat_logit", TensorProto.FLOAT, [1, 64]))
    assert saturating_inputs(model) == {1: "flat_logit"}
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    assert [o.name for o in result.model.graph.output] == ["flat_logit", "prob"]
    # fidelity still sees both outputs, the probe taking none of their places
    feeds = random_feeds(model)
    v = check_pruned(model, result.model, result.deps, result.plan, feeds=feeds)
    assert v.fidelity.rel_l2 == fidelity(run(result.model, feeds), run(model, feeds)).rel_l2
    broken = result.model
    (w2,) = [t for t in broken.graph.initializer if t.name == "w2"]
    arr = numpy_helper.to_array(w2).copy()
    arr[:, [0, 1]] = arr[:, [1, 0]]
    w2.CopyFrom(numpy_helper.from_array(arr, "w2"))
    v = check_pruned(model, broken, result.deps, result.plan)
    assert v.exact.checked and not v.exact.passed
