"""Where analysis cannot follow a model (shape inference stops at an op of another domain,
an op has no rule), it says so: per weight, in model-level notes, in inspect's table and
JSON; and ``prune`` with nothing to remove says why in one line, writes nothing, exits 0."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.cli import main
from models import builders

STOP = "ai.onnx.ml.FeatureVectorizer 'FeatureVectorizer'"  # where shape inference stops


def scaler_mlp(front: str = "FeatureVectorizer") -> onnx.ModelProto:
    """What skl2onnx writes for a feature step + MLPClassifier (without the ZipMap):
    ``ai.onnx.ml.<front> -> MatMul -> Add -> Relu -> MatMul``. onnx shape inference does not
    follow ai.onnx.ml ops; graphprune tells it the shape-keeping ones (``front="Scaler"``), not
    a FeatureVectorizer, so then nothing after it has a shape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "coefficient"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "intercepts"),
        numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "coefficient1"),
    ]
    nodes = [
        helper.make_node(
            "Scaler", ["X"], ["variable"], name="Scaler", domain="ai.onnx.ml", offset=[0.1] * 4, scale=[2.0] * 4
        )
        if front == "Scaler"
        else helper.make_node(
            "FeatureVectorizer", ["X"], ["variable"], name=front, domain="ai.onnx.ml", inputdimensions=[4]
        ),
        helper.make_node("MatMul", ["variable", "coefficient"], ["mul_result"], name="MatMul"),
        helper.make_node("Add", ["mul_result", "intercepts"], ["add_result"], name="Add"),
        helper.make_node("Relu", ["add_result"], ["next_activations"], name="Relu"),
        helper.make_node("MatMul", ["next_activations", "coefficient1"], ["probabilities"], name="MatMul1"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn_with_contrib_op() -> onnx.ModelProto:
    """conv -> relu -> conv -> com.microsoft.Gelu -> conv -> relu -> conv: onnx does not know
    the contrib op's schema, so the shapes after it are unknown (onnxruntime runs it)."""
    rng = np.random.default_rng(1)
    chans = [3, 8, 8, 8, 4]
    inits, nodes, x = [], [], "input"
    for i in range(4):
        w = f"conv{i}.weight"
        inits.append(numpy_helper.from_array(rng.standard_normal((chans[i + 1], chans[i], 3, 3)).astype(np.float32), w))
        nodes.append(helper.make_node("Conv", [x, w], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        x = f"c{i}"
        if i in (0, 2):
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
        if i == 1:
            nodes.append(helper.make_node("Gelu", [x], ["g"], name="gelu", domain="com.microsoft"))
            x = "g"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 16, 16])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_weights_after_a_shape_inference_stop_get_a_reason_each():
    deps = graphprune.analyze(scaler_mlp())
    assert deps.groups == []
    assert set(deps.unanalysed) == {"coefficient", "coefficient1"}
    for reasons in deps.unanalysed.values():
        assert reasons == [r for r in reasons if f"unknown shape (after {STOP})" in r]
    assert any(n.startswith(f"shape unknown after {STOP}: 4 tensors") for n in deps.notes)
    assert deps.unanalysed_counts() == {f"MatMul reads a tensor of unknown shape (after {STOP})": 2}


def test_inspect_never_says_0_groups_without_why(tmp_path, capsys):
    path = tmp_path / "mlp.onnx"
    onnx.save(scaler_mlp(), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    foot = out.strip().splitlines()[-1]
    assert foot.startswith("0 groups: no weight tensor has a channel axis that analysis could follow;"), foot
    assert f"2 weights outside any group: MatMul reads a tensor of unknown shape (after {STOP}" in foot
    assert "weights outside any group, by reason:" in out  # beside the blocked summary
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups_total"] == 0
    assert data["nothing_prunable"] == foot
    assert {u["tensor"] for u in data["unanalysed"]} == {"coefficient", "coefficient1"}
    assert data["notes"] and data["unanalysed_reasons"]


def test_prune_with_nothing_to_prune_says_why_in_one_line_and_writes_nothing(tmp_path, capsys):
    path, out = tmp_path / "mlp.onnx", tmp_path / "out.onnx"
    onnx.save(scaler_mlp(), path)
    report = tmp_path / "report.json"
    assert main(["prune", str(path), "-o", str(out), "-q", "--no-latency", "--report", str(report)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"graphprune: nothing to prune in {path}: 0 groups:")
    assert STOP in err[0] and err[0].endswith("; nothing written")
    assert not out.exists() and not report.exists()


def test_prune_whose_plan_removes_nothing_says_so(tmp_path, capsys, tiny_model_path):
    out = tmp_path / "out.onnx"
    code = main(["prune", str(tiny_model_path), "-o", str(out), "--ratio", "0.01", "-q", "--no-latency"])
    assert code == 0
    err = capsys.readouterr().err.strip()
    assert "nothing to prune" in err and "the ratio, round-to, min-keep, ignore or unit leaves every one of the" in err
    assert not out.exists()


def test_a_contrib_op_in_a_cnn_is_named_for_every_weight_it_hides(monkeypatch):
    from graphprune import rules
    from graphprune.ir import ortshapes

    # an op graphprune knows nothing of: no rule, and no shape inference through it
    monkeypatch.delitem(rules.DOMAIN_RULES, ("com.microsoft", "Gelu"))
    monkeypatch.setattr(ortshapes, "needs_fallback", lambda inferred: False)
    model = cnn_with_contrib_op()
    deps = graphprune.analyze(model)
    assert any(n.startswith("shape unknown after com.microsoft.Gelu 'gelu'") for n in deps.notes), deps.notes
    # before the contrib op: prunable (conv0's filters); after it: nothing is, and each weight says why
    assert deps.group_of("conv0.weight", 0).prunable
    for w in ("conv2.weight", "conv3.weight"):
        g = deps.group_of(w, 1)
        reasons = deps.unanalysed.get(w, []) + (g.reasons if g is not None else [])
        assert any("unknown shape (after com.microsoft.Gelu 'gelu')" in r for r in reasons), (w, reasons)
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.groups_pruned > 0
    assert result.report.exact.checked and result.report.exact.passed
    assert result.report.prune["notes"] == deps.notes


def test_a_weight_only_a_subgraph_reads_is_named_with_its_reader():
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "then", [], out)
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], out)
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
        ],
        out,
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    deps = graphprune.analyze(model)
    assert deps.unanalysed == {"w": ["branch (If reads it inside a subgraph)"]}
    assert deps.why_nothing().endswith("1 weight outside any group: If reads it inside a subgraph")


def test_the_api_says_why_a_prune_removed_nothing():
    result = graphprune.prune(scaler_mlp(), latency=False)
    assert result.plan.total_removed == 0
    assert result.report.prune["nothing_pruned"].startswith("0 groups: no weight tensor has a channel axis")
    empty = graphprune.prune(builders.residual_net(width=8, blocks=1), plan={"groups": []}, latency=False)
    assert empty.report.prune["nothing_pruned"].startswith("the plan leaves every one of the")


def test_an_skl2onnx_scaler_keeps_its_shape_so_the_mlp_behind_it_prunes_exactly():
    model = scaler_mlp(front="Scaler")
    deps = graphprune.analyze(model)
    assert [g.size for g in deps.prunable_groups()] == [16] and not deps.unanalysed
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.passed and result.report.exact.checked
    # per sample: both MatMuls, and the bias Add and Relu at one MAC per element
    assert result.report.flops_before == 4 * 16 + 16 + 16 + 16 * 3
    assert result.report.flops_after == 4 * 8 + 8 + 8 + 8 * 3
