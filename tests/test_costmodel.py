"""The cost model of a plan equals ``cost_of`` on the model that surgery makes from the plan."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.dependency import analyze
from graphprune.objectives.cost import cost_of
from graphprune.passes.filter import FilterPruning
from graphprune.planning.cost_model import CostModel
from models import builders, transformers

MODELS = {
    "residual": lambda: builders.residual_net(width=16, blocks=4),
    "dense_concat": lambda: builders.dense_block(),
    "depthwise": lambda: builders.depthwise_separable(),
    "flatten_gemm": lambda: builders.flatten_gemm(),
    "encoder": lambda: transformers.encoder_block(),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_cost_model_equals_cost_of_the_pruned_model(name, ratio):
    model = MODELS[name]()
    deps = analyze(model)
    cm = CostModel(deps)
    pruned, plan, _ = FilterPruning(ratio=ratio, global_threshold=True).run(model, deps)
    removed = cm.removed_of(plan.removals)
    assert removed.sum() > 0
    after = cost_of(pruned)
    assert int(round(cm.flops(removed)[0])) == after.flops
    assert int(round(cm.params(removed)[0])) == after.params


def test_cost_model_at_no_removal_is_the_original_and_prices_rows_at_once():
    model = builders.residual_net(width=16, blocks=4)
    deps = analyze(model)
    cm = CostModel(deps)
    before = cost_of(model)
    rows = np.zeros((3, len(cm.group_ids)))
    rows[1, 0] = 4
    rows[2, :] = 2
    flops = cm.flops(rows)
    assert flops[0] == before.flops and cm.params(rows)[0] == before.params
    assert flops[0] > flops[1] > 0 and flops[0] > flops[2] > 0
