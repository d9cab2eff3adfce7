"""The bundled digits example (a CNN trained on real data) and ``validate --data --labels``.

Contracts under test: the committed model is the one its training run measured (ORT top-1 on
the test split as recorded, at least 97%); it analyses with a prunable residual stream and a
prunable concat; ``validate`` with labelled data reports both models' accuracy, as an
independent onnxruntime loop counts it, and fidelity on that data; bad data is one clear error.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphprune
from graphprune.errors import InputError
from models.examples import digits


def _ort_top1(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    """Predicted classes, one sample per run (the model takes a batch of 1)."""
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.array([sess.run(None, {"input": x[i : i + 1]})[0].argmax() for i in range(len(x))])


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits.TEST) as npz:
        return npz["input"], npz["labels"]


@pytest.fixture(scope="module")
def pruned_l2() -> onnx.ModelProto:
    """The example with 30% of every group removed by l2 magnitude (about half its MACs)."""
    return graphprune.prune(str(digits.MODEL), ratio=0.3, criterion="l2", latency=False).model


def test_bundled_files_are_small_and_the_split_is_disjoint_and_stratified():
    sizes = {p.name: p.stat().st_size for p in digits.HERE.iterdir() if p.suffix in (".onnx", ".npz", ".pt")}
    assert all(size < 2 << 20 for size in sizes.values()), sizes
    splits = {}
    for name, path in (("train", digits.TRAIN), ("calib", digits.CALIB), ("test", digits.TEST)):
        with np.load(path) as npz:
            assert npz["input"].dtype == np.float32 and npz["input"].shape[1:] == (1, 8, 8)
            assert npz["labels"].dtype == np.int64 and len(npz["labels"]) == len(npz["input"])
            assert 0 <= npz["input"].min() and npz["input"].max() <= 1
            splits[name] = (npz["input"].reshape(len(npz["input"]), -1), npz["labels"])
    assert (
        {k: len(v[1]) for k, v in splits.items()}
        == digits.summary()["samples"]
        == {
            "train": 1100,
            "calib": 200,
            "test": 497,
        }
    )
    assert len(np.unique(np.concatenate([x for x, _ in splits.values()]), axis=0)) >= 1790  # 1797 digits, few twins
    for _, labels in splits.values():
        counts = np.bincount(labels, minlength=10)
        assert counts.min() >= 0.8 * counts.max()  # every class, in proportion


def test_bundled_model_keeps_batchnorm_residual_adds_and_a_concat():
    model = onnx.load(str(digits.MODEL))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv") == 12
    assert ops.count("Add") == 4 and ops.count("Concat") == 1
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]


def test_bundled_model_analyses_with_a_prunable_residual_stream_and_concat():
    model = onnx.load(str(digits.MODEL))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    deps = graphprune.analyze(model)

    def producers(group) -> set[str]:
        return {m.tensor for m in group.members if m.tensor in conv_weights and m.axis == 0}

    made_by = sorted((g.size, sorted(producers(g))) for g in deps.prunable_groups())
    # Each stage's residual stream is one group: the conv that starts it and every block's
    # last conv write into it, and they lose the same channels.
    assert (32, ["stage1.0.b.0.weight", "stage1.1.b.0.weight", "stem.0.weight"]) in made_by
    assert (64, ["down.0.weight", "stage2.0.b.0.weight", "stage2.1.b.0.weight"]) in made_by
    # The concat's branches are groups of their own (a segment each of the concat's output).
    assert (32, ["mix.narrow.0.weight"]) in made_by and (32, ["mix.wide.0.weight"]) in made_by
    assert len(made_by) == 8  # and the four blocks' inner convs
    blocked = [g for g in deps.groups if not g.prunable]
    assert [g.size for g in blocked] == [10]  # the classes (graph output)


def test_bundled_model_accuracy_is_what_its_training_run_recorded(test_split):
    x, y = test_split
    accuracy = float(np.mean(_ort_top1(str(digits.MODEL), x) == y))
    assert accuracy == digits.summary()["accuracy"]["test"]
    assert accuracy >= 0.97


def test_validate_the_model_against_itself_gives_equal_accuracies_and_perfect_fidelity():
    report = graphprune.validate(digits.MODEL, digits.MODEL, data=digits.TEST, labels=True, latency=False)
    acc = report.accuracy
    assert acc.samples == 497 and acc.labels == "labels"
    assert acc.original == acc.pruned == digits.summary()["accuracy"]["test"]
    f = report.fidelity
    assert (f.samples, f.top1_agreement, f.rel_l2) == (497, 1.0, 0.0)
    assert f.cosine == pytest.approx(1.0, abs=1e-12) and f.data == str(digits.TEST)


def test_validate_reports_accuracy_of_a_pruned_model_as_onnxruntime_counts_it(pruned_l2, test_split):
    x, y = test_split
    report = graphprune.validate(digits.MODEL, pruned_l2, data=digits.TEST, labels="labels", latency=False)
    assert report.passed and report.exact.checked and report.exact.passed
    ratio = report.flops_after / report.flops_before
    assert 0.45 < ratio < 0.55
    pred_o, pred_p = _ort_top1(str(digits.MODEL), x), _ort_top1(pruned_l2, x)
    assert report.accuracy.original == float(np.mean(pred_o == y))
    assert report.accuracy.pruned == float(np.mean(pred_p == y))
    assert report.accuracy.pruned < report.accuracy.original  # l2 alone at half the MACs loses accuracy
    assert report.fidelity.top1_agreement == float(np.mean(pred_o == pred_p))
    assert report.fidelity.samples == 497 and report.fidelity.cosine < 0.999
    table = report.table()
    assert "top-1 accuracy (497 samples, labels 'labels'): original 0.9960, pruned " in table
    assert f"fidelity vs original on {digits.TEST} (497 samples)" in table


def test_cli_validate_with_data_and_labels_reports_accuracy_in_json(run_cli, pruned_l2, tmp_path):
    pruned = tmp_path / "pruned.onnx"
    graphprune.save(pruned_l2, pruned)
    args = ("validate", digits.MODEL, pruned, "--data", digits.TEST, "--labels", "--no-latency", "--json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    report = json.loads(out)
    assert set(report["accuracy"]) == {"original", "pruned", "samples", "labels"}
    assert report["accuracy"]["original"] == digits.summary()["accuracy"]["test"]
    assert report["accuracy"]["samples"] == report["fidelity"]["samples"] == 497
    assert report["accuracy"]["pruned"] < report["accuracy"]["original"]
    assert report["exact"]["passed"] is True


def test_cli_data_without_labels_measures_fidelity_on_the_data_only(run_cli):
    code, out, err = run_cli("validate", digits.MODEL, digits.MODEL, "--data", digits.CALIB, "--json", "--no-latency")
    assert code == 0, err
    report = json.loads(out)
    assert report["accuracy"] is None
    assert report["fidelity"]["samples"] == 200 and report["fidelity"]["top1_agreement"] == 1.0


def test_labels_under_another_key(run_cli, tmp_path):
    with np.load(digits.CALIB) as npz:
        np.savez(tmp_path / "d.npz", input=npz["input"][:40], digit=npz["labels"][:40])
    args = ("validate", digits.MODEL, digits.MODEL, "--data", tmp_path / "d.npz", "--labels", "digit")
    code, out, err = run_cli(*args, "--json", "--no-latency")
    assert code == 0, err
    assert json.loads(out)["accuracy"]["labels"] == "digit"
    assert json.loads(out)["accuracy"]["samples"] == 40


def _one_line_error(run_cli, *args) -> str:
    code, out, err = run_cli("validate", *args, "--no-latency")
    assert code == 2 and out == ""
    assert err.startswith("graphprune: error: ") and err.splitlines() == [err.strip()]
    return err


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"input": np.zeros((4, 1, 8, 8))}, "d.npz: no labels array 'labels' (has input)"),
        ({"input": np.zeros((4, 1, 8, 8)), "labels": np.zeros(3, np.int64)}, "different numbers of samples"),
        ({"input": np.zeros((4, 1, 8, 8)), "labels": np.full(4, 10)}, "range over 10..10, the model has 10 classes"),
        ({"input": np.zeros((4, 1, 8, 8)), "labels": np.zeros((4, 3))}, "expected class indices [N] or [N, 10]"),
        ({"pixels": np.zeros((4, 1, 8, 8)), "labels": np.zeros(4)}, "no array 'input'"),
    ],
)
def test_bad_labelled_data_is_one_line_naming_the_file(run_cli, tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    err = _one_line_error(run_cli, digits.MODEL, digits.MODEL, "--data", tmp_path / "d.npz", "--labels")
    assert message in err and "d.npz" in err


def test_missing_data_file_and_labels_without_data(run_cli, tmp_path):
    assert "no such data file" in _one_line_error(run_cli, digits.MODEL, digits.MODEL, "--data", tmp_path / "x.npz")
    assert "--labels needs --data" in _one_line_error(run_cli, digits.MODEL, digits.MODEL, "--labels")
    with pytest.raises(InputError, match="labels need data"):
        graphprune.validate(digits.MODEL, digits.MODEL, labels=True, latency=False)


def test_accuracy_needs_a_classifier_output(run_cli, tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "relu.onnx")
    err = _one_line_error(run_cli, tmp_path / "relu.onnx", tmp_path / "relu.onnx", "--data", digits.TEST, "--labels")
    assert "needs a first output of shape [N, classes]" in err and "[32, 1, 8, 8]" in err
    # without labels the same data still measures fidelity (no top-1 agreement: not a classifier)
    report = graphprune.validate(tmp_path / "relu.onnx", tmp_path / "relu.onnx", data=digits.TEST, latency=False)
    assert report.fidelity.samples == 497 and report.fidelity.top1_agreement is None and report.accuracy is None
