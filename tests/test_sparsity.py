"""The sparsity pass: zeros written into weights under a pattern, shapes kept, validated.

Properties: the N:M checker fails on a violating tensor and passes on a correct one; every
pattern holds on Conv, MatMul and Gemm(transB) models, read back from the written weights;
the result equals the original with the same zeros masked; OBS with its update reconstructs
a layer's output better than magnitude at the same sparsity; zeros shrink the zipped model;
the CLI flags and their bad combinations.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune.cli import main
from graphprune.errors import InputError
from graphprune.passes.sparsity import SparsityPruning, check_pattern
from graphprune.validation.contract import run
from models import builders
from tests.test_calibrate import conv_model
from tests.test_calibrate import save as save_npz

MODELS = {
    "conv": lambda: builders.conv_chain(channels=(8, 16, 16, 8)),
    "matmul": lambda: builders.flatten_gemm(head="matmul"),
    "gemm": lambda: builders.flatten_gemm(head="gemm"),
}


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_pattern_checker_passes_a_2_4_tensor_and_fails_one_violation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 8, 3, 3)).astype(np.float32)
    # two zeros in every group of 4 consecutive input channels (axis 1), per output and tap
    groups = w.reshape(8, 2, 4, 3, 3)
    groups[:, :, 1] = 0
    groups[:, :, 3] = 0
    w = groups.reshape(8, 8, 3, 3)
    assert check_pattern(w, 1, 2, 4) == 0
    assert check_pattern(w, 1, 4, 8) == 0  # 4 of every 8 too
    bad = w.copy()
    bad[2, 5, 1, 1] = 1.0  # channel 5 is position 1 of the second group: now one zero there
    assert check_pattern(bad, 1, 2, 4) == 1
    assert check_pattern(w, 0, 2, 4) > 0  # the zeros are along axis 1, not axis 0
    with pytest.raises(ValueError):
        check_pattern(w, 2, 2, 4)  # 3 kernel rows: not a multiple of 4


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8", "kernel"])
def test_each_pattern_holds_and_equals_the_masked_original(kind, pattern):
    model = MODELS[kind]()
    sparsity = 0.5 if ":" in pattern else 0.6
    result = graphprune.prune(
        model, pass_="sparsity", pattern=pattern, sparsity=None if ":" in pattern else sparsity, latency=False
    )
    report = result.report
    assert report.passed and report.exact.checked and report.exact.passed
    assert report.params_after == report.params_before and report.flops_after == report.flops_before
    before, after = weights_of(model), weights_of(result.model)
    sp = report.prune["sparsity"]
    assert sp["layers_sparsified"] >= 4
    for layer in sp["layers"]:
        w0, w = before[layer["weight"]], after[layer["weight"]]
        assert w.shape == w0.shape
        kept = w != 0
        np.testing.assert_array_equal(w[kept], w0[kept])  # magnitude writes zeros and nothing else
        if ":" in pattern:
            n, m = map(int, pattern.split(":"))
            assert check_pattern(w, layer["in_axis"], n, m) == 0
            assert layer["sparsity"] == pytest.approx(0.5)
        else:
            assert layer["sparsity"] == pytest.approx(sparsity, abs=0.02)
        if pattern == "kernel" and w.ndim == 4:
            zeros_per_kernel = (w == 0).sum(axis=(2, 3))
            whole = zeros_per_kernel == w.shape[2] * w.shape[3]
            assert whole.mean() == pytest.approx(sparsity, abs=0.02)  # whole kernels went
    if kind == "gemm":
        gemm = [ly for ly in sp["layers"] if ly["op"] == "Gemm"]
        assert gemm and all(ly["in_axis"] == 1 for ly in gemm)  # transB=1: [N, K], K is axis 1
    if ":" in pattern:  # the stem reads 3 channels: not a multiple of M
        assert any("not a multiple of" in s["reason"] for s in sp["skipped"])
    # the sparse model runs as the original with the same weights zeroed by hand
    feeds = builders.random_input(model)
    by_hand = onnx.ModelProto()
    by_hand.CopyFrom(model)
    for t in by_hand.graph.initializer:
        if t.name in {ly["weight"] for ly in sp["layers"]}:
            t.CopyFrom(numpy_helper.from_array(np.where(after[t.name] == 0, 0, before[t.name]), t.name))
    for a, b in zip(run(result.model, feeds), run(by_hand, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_more_zeros_make_a_smaller_zip():
    model = builders.flatten_gemm(head="matmul")
    half = graphprune.prune(model, pass_="sparsity", sparsity=0.5, validate=False).report.prune
    most = graphprune.prune(model, pass_="sparsity", sparsity=0.9, validate=False).report.prune
    assert half["zip_bytes_after"] < half["zip_bytes_before"]
    assert most["zip_bytes_after"] < 0.6 * half["zip_bytes_after"]
    assert most["sparsity"]["overall"] == pytest.approx(0.9, abs=0.01)


def _output_error(model, sparse, data) -> float:
    feeds = {"x": np.load(data)["x"]}
    (y0,), (y1,) = run(model, feeds), run(sparse, feeds)
    return float(np.linalg.norm(y1 - y0) / np.linalg.norm(y0))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_obs_update_reconstructs_a_layer_better_than_magnitude(tmp_path, pattern):
    # only conv2 (the last layer, 8 x 9 input features) is sparsified, so the model's output
    # error on the calibration data is that layer's reconstruction error
    model = conv_model(batch=None)
    data = save_npz(tmp_path, "c.npz", 40, (3, 9, 9))
    errors = {}
    for criterion in ("magnitude", "wanda", "obs"):
        r = graphprune.prune(
            model,
            pass_="sparsity",
            pattern=pattern,
            sparsity_criterion=criterion,
            calib=None if criterion == "magnitude" else data,
            ignore=["conv1"],
            latency=False,
        )
        assert r.report.passed and r.report.exact.passed
        (layer,) = r.report.prune["sparsity"]["layers"]
        assert layer["criterion"] == criterion and layer["sparsity"] == pytest.approx(0.5)
        errors[criterion] = _output_error(model, r.model, data)
    assert errors["obs"] < 0.8 * errors["magnitude"], errors


def test_obs_changes_the_kept_weights_and_exactness_uses_them(tmp_path):
    model = conv_model(batch=None)
    data = save_npz(tmp_path, "c.npz", 20, (3, 9, 9))
    r = graphprune.prune(model, pass_="sparsity", sparsity_criterion="obs", calib=data, latency=False)
    assert r.report.exact.checked and r.report.exact.passed and "OBS" in r.report.exact.note
    w0, w = weights_of(model)["w2"], weights_of(r.model)["w2"]
    kept = w != 0
    assert not np.allclose(w[kept], w0[kept])  # updated, not only masked


def test_bad_options_raise_input_errors():
    with pytest.raises(InputError, match="sparsity must be between 0 and 1"):
        SparsityPruning(sparsity=1.0)
    with pytest.raises(InputError, match="its sparsity is 0.5"):
        SparsityPruning(pattern="2:4", sparsity=0.75)
    with pytest.raises(InputError, match="needs calibration data"):
        SparsityPruning(sparsity_criterion="wanda")
    with pytest.raises(InputError, match="unknown pattern"):
        SparsityPruning(pattern="1:3")


def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_cli_sparsity_writes_model_and_report_keys(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(builders.flatten_gemm(head="matmul"), src)
    out, rep = tmp_path / "s.onnx", tmp_path / "r.json"
    args = ["prune", str(src), "-o", str(out), "--pass", "sparsity", "--pattern", "4:8", "--report", str(rep)]
    code, _ = _cli([*args, "--no-latency", "-q"], capsys)
    assert code == 0
    report = json.loads(rep.read_text())
    assert report["passed"] and report["pattern"] == "4:8" and report["pattern_check"]["passed"]
    assert report["zip_bytes_after"] < report["zip_bytes_before"]
    assert report["sparsity"]["overall"] == pytest.approx(0.5)
    for layer in report["sparsity"]["layers"]:
        w = weights_of(onnx.load(out))[layer["weight"]]
        assert check_pattern(w, layer["in_axis"], 4, 8) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pattern", "2:4"], "--pattern needs --pass sparsity"),
        (["--sparsity", "0.5"], "--sparsity needs --pass sparsity"),
        (["--pass", "sparsity", "--sparsity", "0"], "sparsity must be between 0 and 1"),
        (["--pass", "sparsity", "--sparsity", "1.5"], "sparsity must be between 0 and 1"),
        (["--pass", "sparsity", "--pattern", "2:4", "--sparsity", "0.75"], "its sparsity is 0.5"),
        (["--pass", "sparsity", "--sparsity-criterion", "obs"], "needs calibration data"),
        (["--pass", "sparsity", "--criterion", "l1"], "--sparsity-criterion"),
        (["--pass", "sparsity", "--mode", "mask"], "--mode needs --pass filter or --pass channel or --pass layer"),
        (["--pass", "sparsity", "filter"], "runs alone"),
        (["--pass", "sparsity", "--ratio", "0.3"], "does not take --ratio"),
        (["--pass", "sparsity", "--target-flops", "0.5"], "does not take --target-flops"),
        (["--pass", "sparsity", "--round-to", "8"], "--round-to needs --pass filter or --pass channel"),
        (["--pass", "sparsity", "--unit", "mlp"], "--unit needs --pass filter or --pass channel"),
    ],
)
def test_cli_bad_sparsity_combinations_exit_2(tmp_path, capsys, extra, message):
    src = tmp_path / "m.onnx"
    onnx.save(builders.flatten_gemm(head="matmul"), src)
    out = tmp_path / "s.onnx"
    code, err = _cli(["prune", str(src), "-o", str(out), "-q", *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "name",
    ["--pattern", "--sparsity", "--sparsity-criterion", "--mode", "sparsity", "zip_bytes_before", "zip_bytes_after"]
    + ["pattern_check", "sparsity_criterion", "graphprune.masked", "graphprune.sparsity", "mode"],
)
def test_flags_and_report_keys_are_documented(name):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # fenced blocks would pair the backticks wrongly
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    assert any(word.search(span) for span in re.findall(r"`([^`]+)`", text)), name


def test_layers_it_cannot_sparsify_are_reported_with_their_reason():
    from models import variants

    grouped = graphprune.prune(builders.grouped_conv(), pass_="sparsity", latency=False).report.prune
    reasons = [s["reason"] for s in grouped["sparsity"]["skipped"]]
    assert any("does not sum over one declared input axis" in r for r in reasons)
    assert grouped["sparsity"]["layers_sparsified"] > 0
    qdq = graphprune.prune(variants.to_qdq(builders.conv_chain()), pass_="sparsity", latency=False)
    assert "integer weight" in qdq.report.prune["nothing_pruned"]
    assert qdq.report.prune["sparsity"]["layers_sparsified"] == 0


def test_a_model_with_external_data_is_refused_in_one_line(tmp_path, capsys):
    from onnx.external_data_helper import convert_model_to_external_data

    model = builders.flatten_gemm(head="matmul")
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    onnx.save(model, tmp_path / "m.onnx")
    out = tmp_path / "s.onnx"
    for extra in (["--pass", "sparsity"], ["--mode", "mask"]):
        code, err = _cli(["prune", str(tmp_path / "m.onnx"), "-o", str(out), "-q", "--no-latency", *extra], capsys)
        assert code == 2 and "external data is not supported" in err and not out.exists()


def test_validate_checks_a_sparse_model_from_its_record(tmp_path):
    model = builders.flatten_gemm(head="matmul")
    sparse = graphprune.prune(model, pass_="sparsity", pattern="2:4", latency=False).model
    later = graphprune.validate(model, sparse, latency=False)
    assert later.passed and later.exact.checked and "2:4" in later.exact.note
    tampered = onnx.ModelProto()
    tampered.CopyFrom(sparse)
    layer = json.loads(next(p.value for p in sparse.metadata_props if p.key == "graphprune.sparsity"))["layers"][-1]
    t = next(t for t in tampered.graph.initializer if t.name == layer["weight"])
    w = numpy_helper.to_array(t).copy()
    w[w != 0] *= 1.5  # kept weights changed: no longer the original with zeros
    t.CopyFrom(numpy_helper.from_array(w, t.name))
    assert not graphprune.validate(model, tampered, latency=False).passed
    w[w == 0] = 1.0  # and now the 2:4 pattern is gone too
    t.CopyFrom(numpy_helper.from_array(w, t.name))
    broken = graphprune.validate(model, tampered, latency=False)
    assert not broken.passed and "fails on" in broken.exact.note
    data = save_npz(tmp_path, "c.npz", 16, (3, 9, 9))
    kw = dict(pass_="sparsity", sparsity_criterion="obs", calib=data, latency=False)
    obs = graphprune.prune(conv_model(batch=None), **kw)
    noted = graphprune.validate(conv_model(batch=None), obs.model, latency=False)
    assert noted.passed and not noted.exact.checked and "OBS" in noted.exact.note


def test_cli_with_nothing_to_sparsify_writes_nothing_and_says_why(tmp_path, capsys):
    from models import variants

    src, out = tmp_path / "q.onnx", tmp_path / "s.onnx"
    onnx.save(variants.to_qdq(builders.conv_chain()), src)
    code, err = _cli(["prune", str(src), "-o", str(out), "--pass", "sparsity", "-q"], capsys)
    assert code == 0 and "nothing to prune" in err and "integer weight" in err and not out.exists()


def test_a_pruned_then_sparsified_model_is_validated_against_its_input_not_failed():
    model = builders.flatten_gemm(head="matmul")
    pruned = graphprune.prune(model, ratio=0.5, latency=False).model
    sparse = graphprune.prune(pruned, pass_="sparsity", latency=False).model
    assert graphprune.validate(pruned, sparse, latency=False).exact.passed
    later = graphprune.validate(model, sparse, latency=False)
    assert later.passed and not later.exact.checked and "another shape" in later.exact.note


def test_wanda_compares_within_each_output_row(tmp_path):
    model = conv_model(batch=None)
    data = save_npz(tmp_path, "c.npz", 16, (3, 9, 9))
    r = graphprune.prune(model, pass_="sparsity", sparsity=0.25, sparsity_criterion="wanda", calib=data, latency=False)
    w = weights_of(r.model)["w2"].reshape(4, -1)  # 4 outputs x 72 inputs
    assert ((w == 0).sum(axis=1) == 18).all()  # a quarter of every row, not of the layer
    m = graphprune.prune(model, pass_="sparsity", sparsity=0.25, latency=False)
    assert (weights_of(m.model)["w2"] == 0).sum() == 18 * 4  # magnitude: a quarter of the layer
