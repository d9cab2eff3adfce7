"""The pruned model's shapes, derived from the analysis and the plan, are the ones shape inference
finds in it: prune counts its after-costs from them instead of inferring shapes a second time."""

from __future__ import annotations

import pytest

from graphprune.analysis.dependency import analyze
from graphprune.edit.surgery import apply_plan, pruned_shapes
from graphprune.ir.graph import infer_shapes
from graphprune.objectives.cost import cost_of
from graphprune.passes.filter import FilterPruning
from models import builders

MODELS = {
    "residual": lambda: builders.residual_net(width=8, blocks=2, seed=0),
    "dense concat": lambda: builders.dense_block(channels=16, growth=8, layers=3),
    "inception": lambda: builders.inception_block(),
    "split/chunk": lambda: builders.split_chunk(),
    "squeeze-excite": lambda: builders.squeeze_excite(),
    "flatten->gemm": lambda: builders.flatten_gemm(),
    "unet": lambda: builders.unet(),
    "grouped conv": lambda: builders.grouped_conv(),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_derived_shapes_are_the_inferred_shapes_of_the_pruned_model(name):
    model = MODELS[name]()
    deps = analyze(model)
    plan, _ = FilterPruning(ratio=0.5, criterion="l2").choose(deps)
    assert plan.total_removed > 0
    pruned = apply_plan(model, deps, plan)
    derived, inferred = pruned_shapes(deps, plan), infer_shapes(pruned)
    assert {k: derived[k] for k in inferred} == inferred
    assert cost_of(pruned, derived) == cost_of(pruned)
