"""Mask mode: a structured pass writes zeros where it would remove, every shape kept, and its
outputs equal those of the really pruned model (residual streams, concats, splits, attention
heads, MLP neurons, compensated channel refits, residual blocks)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune.cli import main
from graphprune.errors import InputError
from graphprune.validation.contract import run
from models import builders, fused, transformers, variants
from tests.test_calibrate import conv_model
from tests.test_calibrate import save as save_npz

STRUCTURES = {
    "residual": (lambda: builders.residual_net(), {}),
    "concat": (lambda: builders.dense_block(), {}),
    "split": (lambda: builders.split_chunk(), {}),
    "heads": (lambda: transformers.encoder_block(), {"units": ["heads"]}),
    "mlp": (lambda: transformers.encoder_block(), {"units": ["mlp"]}),
    "convtranspose": (lambda: builders.convtranspose_decoder(), {}),
    "fused": (lambda: fused.fused_conv_gemm(), {}),  # com.microsoft FusedConv / FusedGemm
    "qdq": (lambda: variants.to_qdq(builders.residual_net()), {}),  # weights dequantized: Muls at the consumers
}


def shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds) -> None:
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * float(np.abs(x).max()))


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_masked_filter_pruning_equals_real_pruning(name):
    build, kwargs = STRUCTURES[name]
    model = build()
    removed = graphprune.prune(model, ratio=0.5, latency=False, **kwargs)
    masked = graphprune.prune(model, ratio=0.5, latency=False, mode="mask", **kwargs)
    assert masked.report.passed and masked.report.exact.checked and masked.report.exact.passed
    assert masked.report.prune["mode"] == "mask" and masked.report.prune["channels_removed"] > 0
    kept = shapes(masked.model)
    assert all(kept[k] == v for k, v in shapes(model).items())  # nothing removed (a Mul's mask may be added)
    added = len(masked.model.graph.node) - len(model.graph.node)
    assert added > 0 if name == "qdq" else added == 0  # float weights are zeroed in place, no Mul
    if name != "qdq":  # a Mul's mask adds its elements and its products
        assert masked.report.params_after == masked.report.params_before
    assert removed.report.params_after < removed.report.params_before
    assert masked.plan.same_removals(removed.plan)
    assert_same_outputs(removed.model, masked.model, builders.random_input(model))
    # the producers' removed filters are zeros (soft filter pruning's export form)
    weights = {t.name: numpy_helper.to_array(t) for t in masked.model.graph.initializer}
    group = next(g for g in masked.deps.groups if len(masked.plan.removed(g)))
    gone = masked.plan.removed(group)
    for m in group.weights("out"):
        if m.tensor in weights and weights[m.tensor].dtype.kind == "f":  # integer weights: masked at the consumers
            idx = m.indices[gone].ravel()
            assert not np.take(weights[m.tensor], idx, axis=m.axis).any()


def test_masked_channel_pass_with_refit_equals_real_pruning(tmp_path):
    model = conv_model(batch=None)
    data = save_npz(tmp_path, "c.npz", 30, (3, 9, 9))
    kw = dict(pass_="channel", ratio=0.5, calib=data, latency=False)
    removed = graphprune.prune(model, **kw)
    masked = graphprune.prune(model, mode="mask", **kw)
    assert masked.report.passed and masked.report.exact.passed
    assert masked.report.prune["compensate"]["method"] == "lstsq"
    kept = shapes(masked.model)
    assert all(kept[name] == dims for name, dims in shapes(model).items())  # the refit may add a bias
    feeds = {"x": np.load(data)["x"][:8]}
    assert_same_outputs(removed.model, masked.model, feeds)


@pytest.mark.parametrize("build", [lambda: builders.residual_net(), lambda: transformers.encoder_block()])
def test_masked_layer_pass_equals_removing_the_block(build):
    model = build()
    removed = graphprune.prune(model, pass_="layer", remove_blocks=1, latency=False)
    masked = graphprune.prune(model, pass_="layer", remove_blocks=1, latency=False, mode="mask")
    assert masked.report.passed and masked.report.exact.checked and masked.report.exact.passed
    assert len(masked.model.graph.node) == len(model.graph.node)  # f is still there, silenced
    assert len(removed.model.graph.node) < len(model.graph.node)
    assert masked.report.prune["blocks_removed"] == removed.report.prune["blocks_removed"]
    assert_same_outputs(removed.model, masked.model, builders.random_input(model))


def test_unknown_mode_is_an_input_error():
    with pytest.raises(InputError, match="unknown mode"):
        graphprune.prune(builders.residual_net(), ratio=0.5, mode="zero", validate=False)


def test_cli_mode_mask_keeps_every_shape(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "masked.onnx"
    model = builders.residual_net()
    onnx.save(model, src)
    code = main(["prune", str(src), "-o", str(out), "--mode", "mask", "--ratio", "0.5", "--no-latency", "-q"])
    assert code == 0, capsys.readouterr().err
    assert shapes(onnx.load(out)) == shapes(model)
    code = main(["prune", str(src), "-o", str(out), "--force", "--mode", "hide", "-q"])
    assert code == 2 and "invalid choice" in capsys.readouterr().err


def test_validate_reads_a_masked_history_without_failing_a_good_model():
    model = builders.residual_net()
    masked = graphprune.prune(model, ratio=0.5, mode="mask", latency=False).model
    assert graphprune.validate(model, masked, latency=False).exact.passed  # its plan, in the original's indices
    # removed after it was masked: the second plan addresses the masked (full-size) shapes
    removed = graphprune.prune(masked, ratio=0.5, latency=False)
    assert removed.report.exact.passed
    later = graphprune.validate(model, removed.model, latency=False)
    assert later.passed and not later.exact.checked and "--mode mask" in later.exact.note
    assert graphprune.validate(masked, removed.model, latency=False).exact.passed
