"""ONNX's own ``Attention`` op (opset 23, what torch's dynamo exporter writes for
``F.scaled_dot_product_attention`` at opset 23): whole heads prune through it, exactly; the
forms it does not handle (grouped kv heads, 3-D inputs) block with their reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune

S, E = 6, 32


def _block(heads: int = 4, kv_heads: int | None = None, mask: bool = False, three_d: bool = False, seed: int = 0):
    """x [1, S, E] -> q, k, v projections -> head split -> Attention -> merge -> output projection."""
    kv_heads = kv_heads or heads
    d = E // heads
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    split = {}
    for p, h in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
        nodes.append(helper.make_node("MatMul", ["x", w(f"{p}.weight", (E, h * d))], [f"{p}_mm"]))
        nodes.append(helper.make_node("Add", [f"{p}_mm", w(f"{p}.bias", (h * d,))], [f"{p}_lin"]))
        if three_d:
            split[p] = f"{p}_lin"
            continue
        nodes.append(helper.make_node("Reshape", [f"{p}_lin", const(f"{p}.shape", [1, S, h, d])], [f"{p}_r"]))
        nodes.append(helper.make_node("Transpose", [f"{p}_r"], [f"{p}_t"], perm=[0, 2, 1, 3]))
        split[p] = f"{p}_t"
    inputs = [split["q"], split["k"], split["v"]]
    if mask:
        inputs.append(w("mask", (1, heads, S, S), 1.0))
    attrs = dict(q_num_heads=heads, kv_num_heads=kv_heads) if three_d else {}
    nodes.append(helper.make_node("Attention", inputs, ["ctx"], **attrs))
    if three_d:
        merged = "ctx"
    else:
        nodes.append(helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", ["ctx_t", const("merge.shape", [1, S, heads * d])], ["merged"]))
        merged = "merged"
    nodes.append(helper.make_node("MatMul", [merged, w("proj.weight", (heads * d, E))], ["proj_mm"]))
    nodes.append(helper.make_node("Add", ["proj_mm", w("proj.bias", (E,))], ["y"]))
    graph = helper.make_graph(
        nodes,
        "sdpa",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, E])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, E])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _heads_groups(deps):
    """The groups that own rows of the output projection (its input axis: the heads' contexts)."""
    return [g for g in deps.groups if ("proj.weight", 0) in {(m.tensor, m.axis) for m in g.members}]


@pytest.mark.parametrize("mask", [False, True])
def test_half_the_heads_through_attention_equal_the_original_with_their_projection_rows_zeroed(mask):
    model = _block(heads=4, mask=mask)
    deps = graphprune.analyze(model)
    (group,) = _heads_groups(deps)
    assert group.prunable and group.unit == "heads" and group.describe_size == "4 heads x 8"
    result = graphprune.prune(model, ratio=0.5, units=("heads",), criterion="l2", latency=False)
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    (group,) = _heads_groups(result.deps)
    removed = result.plan.removed(group)
    assert len(removed) == 2
    reference = onnx.load_from_string(model.SerializeToString())
    proj = next(t for t in reference.graph.initializer if t.name == "proj.weight")
    w = numpy_helper.to_array(proj).copy()
    for h in removed:
        w[h * 8 : (h + 1) * 8] = 0
    proj.CopyFrom(numpy_helper.from_array(w, "proj.weight"))
    pruned_inits = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert pruned_inits["q.weight"] == [E, 16] and pruned_inits["proj.weight"] == [16, E]
    if mask:  # the mask's heads axis followed
        assert pruned_inits["mask"] == [1, 2, S, S]
    x = np.random.default_rng(1).standard_normal((1, S, E)).astype(np.float32)
    out, ref = _run(result.model, x), _run(reference, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert np.abs(out - _run(model, x)).max() > 1e-3  # the removed heads did contribute


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(heads=4, kv_heads=2), "Attention with grouped kv heads is not handled"),
        (dict(heads=4, three_d=True), "Attention with 3-D inputs (q_num_heads) or unknown shapes is not handled"),
    ],
)
def test_forms_it_does_not_handle_block_the_heads_with_their_reason(kwargs, reason):
    deps = graphprune.analyze(_block(**kwargs))
    (group,) = _heads_groups(deps)
    assert not group.prunable
    assert any(reason in str(r) for r in group.reasons)
