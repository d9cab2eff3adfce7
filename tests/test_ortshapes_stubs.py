"""Symbolic shape inference through contrib ops sees past an Add of a large float constant.

The light copy it runs on keeps large weights as stubs without data; symbolic inference reads
the values of an ``Add``'s constant inputs, so a causal mask of 64 x 64 after a fused
``SkipSimplifiedLayerNormalization`` stopped it and left the decoder with 0 groups.
"""

from __future__ import annotations

import pytest

import graphprune
from graphprune.analysis.dependency import analyze

pytest.importorskip("onnxruntime.transformers")


def test_a_fused_decoder_with_a_large_causal_mask_keeps_heads_and_mlp_prunable():
    from models import fused
    from models.transformers import decoder_block

    model = fused.optimize(decoder_block(embed=32, heads=8, kv_heads=8, mlp=48, seq=64), "gpt2", 8, 32)
    mask = next(t for t in model.graph.initializer if t.name.endswith("causal_mask"))
    assert list(mask.dims) == [1, 1, 64, 64]  # above the light copy's 1,024 entries: a stub there
    deps = analyze(model)
    assert sorted(g.unit for g in deps.prunable_groups()) == ["heads", "mlp"]
    assert not deps.notes
    result = graphprune.prune(model, ratio=0.5, latency=False)
    assert result.report.exact.checked and result.report.exact.passed
    assert result.report.flops_after < result.report.flops_before
