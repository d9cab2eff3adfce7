"""Second-order selection (obs), the OBS update, sequential refits and margin-weighted (dcp)
selection: measured against the methods they improve on, and still exactly validated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.analysis.consumers import weight_matrix
from graphprune.analysis.dependency import analyze
from graphprune.analysis.plan import Plan
from graphprune.calibration.datasets import open_dataset
from graphprune.calibration.statistics import calibrate
from graphprune.cli import main
from graphprune.edit.compensate import compensate
from graphprune.edit.obs import _part, _remove, obs_refit
from graphprune.errors import InputError
from graphprune.validation.contract import run
from tests.test_calibrate import conv_model, save


def chain(widths=(3, 16, 16, 4), seed: int = 0, classes: bool = False) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> Conv over 8x8 images (the last conv's output is ``y``);
    ``classes``: then GlobalAveragePool -> Flatten, ``y`` the logits of a classifier."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0], 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes, inits, prev = [], [], "x"
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        last = k == len(widths) - 2
        out = ("c" if classes else "y") if last else f"h{k}"
        nodes.append(helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [out], name=f"conv{k}", pads=[1] * 4))
        w = rng.normal(size=(b, a, 3, 3)) / np.sqrt(9 * a)
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(rng.normal(size=b).astype(np.float32) * 0.1, f"b{k}")]  # fmt: skip
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"], name=f"relu{k}"))
            prev = f"r{k}"
    if classes:
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def rel_error(model, pruned, path) -> float:
    data = np.load(path)["x"]
    a, b = run(model, {"x": data})[0].astype(np.float64), run(pruned, {"x": data})[0].astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def redundant(seed: int = 0) -> onnx.ModelProto:
    """``chain((3, 16, 4))`` whose first conv's filters 4-7 copy its large filters 0-3 (the
    copies' outputs are the originals': either one of a pair can go at no cost under the
    update), filters 8-15 small but each one of a kind."""
    model = chain((3, 16, 4), seed=seed)
    w = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    w["w0"][:4] *= 3.0
    w["w0"][4:8], w["b0"][4:8] = w["w0"][:4], w["b0"][:4]
    w["w0"][8:] *= 0.5
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(w[t.name], t.name))
    return model


def test_obs_removes_redundant_channels_that_l2_keeps(tmp_path):
    model = redundant()
    calib = save(tmp_path, "c.npz", 64, (3, 8, 8))
    by_obs = graphprune.prune(model, ratio=0.5, criterion="obs", calib=calib, latency=False)
    by_l2 = graphprune.prune(model, ratio=0.5, criterion="l2", compensate="obs", calib=calib, latency=False)
    assert by_obs.report.prune["compensate"]["method"] == "obs"  # obs's default compensation
    for r in (by_obs, by_l2):
        assert r.report.passed and r.report.exact.checked and r.report.exact.passed
    (gone,) = by_obs.plan.removals.values()
    assert all((c in gone) != (c + 4 in gone) for c in range(4))  # one of each pair of copies goes, never both
    e_obs, e_l2 = rel_error(model, by_obs.model, calib), rel_error(model, by_l2.model, calib)
    assert e_obs < 0.6 * e_l2, (e_obs, e_l2)


def test_obs_never_does_worse_than_l2_with_the_same_update_on_random_layers(tmp_path):
    errors = []
    for seed in range(4):
        model = chain((3, 16, 4), seed=seed)
        calib = save(tmp_path, f"c{seed}.npz", 64, (3, 8, 8), seed=seed)
        kw = dict(ratio=0.5, calib=calib, validate=False)
        by_obs = graphprune.prune(model, criterion="obs", **kw).model
        by_l2 = graphprune.prune(model, criterion="l2", compensate="obs", **kw).model
        errors.append((rel_error(model, by_obs, calib), rel_error(model, by_l2, calib)))
    assert all(o <= l * (1 + 1e-9) for o, l in errors), errors
    assert sum(o for o, _ in errors) < 0.97 * sum(l for _, l in errors), errors


def test_obs_update_equals_the_lstsq_refit_on_the_same_statistics(tmp_path):
    model = conv_model()
    deps = analyze(model)
    stats = calibrate(model, deps, open_dataset(save(tmp_path, "c.npz", 40, (3, 9, 9))))
    (g,) = deps.prunable_groups()
    plan = Plan({g.id: np.array([1, 4, 6])})
    weights = {}
    for method in ("obs", "lstsq"):
        out = compensate(model, deps, plan, stats, method, ridge=1e-10).model
        weights[method] = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for name in ("w2", *(n for n in weights["obs"] if "bias" in n)):
        np.testing.assert_allclose(weights["obs"][name], weights["lstsq"][name], rtol=1e-4, atol=1e-5)
    # at the default ridge they differ (obs is damped toward the original weights), slightly
    obs = compensate(model, deps, plan, stats, "obs").model
    lstsq = compensate(model, deps, plan, stats, "lstsq").model
    a, b = (numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w2")) for m in (obs, lstsq))
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(b).max()


def test_greedy_obs_updates_compose_to_the_closed_form(tmp_path):
    model = conv_model()
    deps = analyze(model)
    stats = calibrate(model, deps, open_dataset(save(tmp_path, "c.npz", 40, (3, 9, 9))))
    (i, c), *_ = [(i, c) for i, c in stats.consumers.items() if c.name == "conv2"]
    m = weight_matrix(c, deps.view.value("w2"))
    p = _part(c, m, stats.grams[i], np.arange(8)[:, None], ridge=1e-3)
    for ch in (5, 0, 3):  # one channel (its 9 taps) at a time, H⁻¹ downdated in between
        _remove(p, p.blocks[ch])
    h = stats.grams[i].second_moment(True)
    lam = 1e-3 * np.trace(h) / len(h)
    keep = np.array([f for f in range(72) if f // 9 not in (5, 0, 3)])
    np.testing.assert_allclose(p.w[:, keep], obs_refit(m, h, keep, lam)[:, keep], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["lstsq", "obs"])
def test_sequential_refits_lower_the_final_output_error_of_a_three_layer_model(tmp_path, method):
    model = chain()
    calib = save(tmp_path, "c.npz", 64, (3, 8, 8))
    held_out = save(tmp_path, "t.npz", 64, (3, 8, 8), seed=7)
    kw = dict(ratio=0.5, criterion="l2", compensate=method, calib=calib, latency=False)
    one_shot = graphprune.prune(model, **kw)
    seq = graphprune.prune(model, sequential=True, **kw)
    for r in (one_shot, seq):
        assert r.report.passed and r.report.exact.checked and r.report.exact.passed
    assert seq.report.prune["compensate"]["sequential_stages"] == 2  # conv1, then conv2
    for data in (calib, held_out):
        e_one, e_seq = rel_error(model, one_shot.model, data), rel_error(model, seq.model, data)
        assert e_seq < (0.985 if data == calib else 1.0) * e_one, (data, e_seq, e_one)


@pytest.mark.parametrize("weighted", [False, True])
def test_sequential_sums_gathered_in_blocks_equal_the_sums_of_every_batch(weighted, monkeypatch):
    from graphprune.edit import sequential

    monkeypatch.setattr(sequential, "PENDING_BYTES", 1 << 20)  # batches of 300 KB: a block every 4, 2 left over
    rng = np.random.default_rng(0)
    f, pair = 300, sequential._Pair(300)
    a, b, mu, mu_p, n = np.zeros((f, f)), np.zeros((f, f)), np.zeros(f), np.zeros(f), 0.0
    for _ in range(42):
        x, xp = rng.normal(size=(64, f)), rng.normal(size=(64, f))
        w = rng.uniform(0.1, 2.0, size=64) if weighted else None
        pair.add(x, xp, w)
        w = np.ones(64) if w is None else w
        a, b = a + (xp * w[:, None]).T @ xp, b + (xp * w[:, None]).T @ x
        mu, mu_p, n = mu + w @ x, mu_p + w @ xp, n + w.sum()
    assert len(pair.pending) == 2
    pair.flush()
    assert not pair.pending and pair.n == pytest.approx(n)
    np.testing.assert_allclose(pair.a, a, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(pair.b, b, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(pair.mu, mu, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(pair.mu_p, mu_p, rtol=1e-12, atol=1e-9)


def test_sequential_bias_compensation_passes_exactness(tmp_path):
    model = chain()
    calib = save(tmp_path, "c.npz", 32, (3, 8, 8))
    r = graphprune.prune(model, ratio=0.5, compensate="bias", sequential=True, calib=calib, latency=False)
    assert r.report.passed and r.report.exact.checked and r.report.exact.passed


def test_sequential_without_compensation_is_refused():
    with pytest.raises(InputError, match="--sequential refits weights"):
        graphprune.FilterPruning(ratio=0.5, sequential=True, calib="c.npz")


def labelled(tmp_path, model, n: int = 96):
    """Images and the labels the model gives them, a fifth of them changed to the runner-up class."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    logits = run(model, {"x": x})[0]
    labels = logits.argmax(axis=1)
    flip = rng.random(n) < 0.2
    labels[flip] = np.argsort(logits[flip], axis=1)[:, -2]
    path = tmp_path / "labelled.npz"
    np.savez(path, x=x, labels=labels)
    return path


def test_dcp_weights_the_statistics_by_margin_and_prunes_exactly(tmp_path):
    model = chain(classes=True)
    calib = labelled(tmp_path, model)
    r = graphprune.prune(model, ratio=0.5, criterion="dcp", labels="labels", calib=calib, latency=False)
    assert r.report.passed and r.report.exact.checked and r.report.exact.passed
    assert r.report.prune["compensate"]["method"] == "obs"
    deps = analyze(model)
    ds = open_dataset(calib)
    plain = calibrate(model, deps, ds, want=("gram",))
    weighted = calibrate(model, deps, ds, want=("gram",), labels="labels")
    for i, g in plain.grams.items():
        w = weighted.grams[i]
        assert g.rows < w.rows <= 11 * g.rows  # every sample weighs 1 to 1 + MARGIN_WEIGHT
        assert not np.allclose(g.second_moment(True), w.second_moment(True))


def test_dcp_without_labels_is_refused_with_one_line(tmp_path, capsys):
    model = chain(classes=True)
    calib = labelled(tmp_path, model)
    with pytest.raises(InputError, match="criterion 'dcp' needs labelled calibration data"):
        graphprune.prune(model, ratio=0.5, criterion="dcp", calib=calib, latency=False)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    argv = ["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--criterion", "dcp", "--calib", str(calib)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs labelled calibration data" in err


def test_labels_missing_from_the_data_name_the_file(tmp_path):
    model = chain(classes=True)
    calib = save(tmp_path, "c.npz", 16, (3, 8, 8))
    with pytest.raises(InputError, match="c.npz: no labels array 'labels'"):
        graphprune.prune(model, ratio=0.5, criterion="dcp", labels="labels", calib=calib, latency=False)


def test_labels_that_are_not_classes_of_the_logits_name_the_file(tmp_path):
    model = chain(classes=True)  # 4 classes
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((8, 3, 8, 8), np.float32), labels=np.arange(8))
    with pytest.raises(InputError, match="bad.npz: labels 'labels' range over 0..7, the model has 4 classes"):
        graphprune.prune(model, ratio=0.5, criterion="dcp", labels="labels", calib=path, latency=False)


def test_channel_pass_refits_sequentially_and_stays_exact(tmp_path):
    model = chain()
    calib = save(tmp_path, "c.npz", 32, (3, 8, 8))
    kw = dict(ratio=0.5, pass_="channel", calib=calib, latency=False)
    one_shot, seq = graphprune.prune(model, **kw), graphprune.prune(model, sequential=True, **kw)
    assert seq.report.passed and seq.report.exact.checked and seq.report.exact.passed
    assert seq.report.prune["compensate"]["sequential_stages"] == 2
    assert rel_error(model, seq.model, calib) < rel_error(model, one_shot.model, calib)
