"""Every synthetic structure prunes exactly at several ratios and with every criterion."""

from __future__ import annotations

import numpy as np
import pytest

import graphprune
from models import builders

RATIOS = [0.25, 0.5, 0.75]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name", sorted(builders.BUILDERS))
def test_builder_prunes_exactly(name, ratio):
    model = builders.BUILDERS[name]()
    result = graphprune.prune(model, ratio=ratio, latency=False)
    report = result.report
    assert report.checker["passed"], report.checker["error"]
    assert report.runtime["passed"], report.runtime["error"]
    assert report.exact.checked
    assert report.exact.passed, report.exact.max_rel_diff
    assert report.groups_pruned > 0
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-scale", "fpgm", "random"])
def test_every_criterion_prunes_the_dense_block_exactly(criterion):
    result = graphprune.prune(builders.dense_block(), ratio=0.5, criterion=criterion, latency=False)
    assert result.report.exact.passed
    assert result.report.params_after < result.report.params_before


def test_global_threshold_prunes_groups_unevenly_and_exactly():
    model = builders.residual_net(width=16, blocks=4)
    result = graphprune.prune(model, ratio=0.5, global_threshold=True, latency=False)
    assert result.report.exact.passed
    fractions = {g.id: len(result.plan.removed(g)) / g.size for g in result.deps.prunable_groups()}
    assert len(set(np.round(list(fractions.values()), 3))) > 1


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_multiples(round_to):
    model = builders.residual_net(width=16, blocks=3)
    result = graphprune.prune(model, ratio=0.4, round_to=round_to, latency=False)
    assert result.report.exact.passed
    for g in result.deps.prunable_groups():
        kept = g.size - len(result.plan.removed(g))
        if g.size > round_to:
            assert kept % round_to == 0, (g.label, g.size, kept)


def test_at_least_one_channel_is_kept():
    model = builders.conv_chain(channels=(2, 3, 2))
    result = graphprune.prune(model, ratio=0.99, latency=False)
    assert result.report.exact.passed
    for g in result.deps.prunable_groups():
        assert len(result.plan.removed(g)) <= g.size - 1


def test_ignored_layer_keeps_its_filters():
    model = builders.residual_net()
    weight = "layer1.0.conv1.weight"
    before = next(t for t in model.graph.initializer if t.name == weight).dims[0]
    result = graphprune.prune(model, ratio=0.5, ignore=["/layer1/0/conv1/*"], latency=False)
    after = next(t for t in result.model.graph.initializer if t.name == weight).dims[0]
    assert after == before
    assert result.report.exact.passed


def test_plan_round_trips_through_json():
    model = builders.inception_block()
    first = graphprune.prune(model, ratio=0.5, validate=False)
    again = graphprune.prune(model, plan=first.plan.to_json(first.deps), validate=False)
    a = {t.name: t for t in first.model.graph.initializer}
    b = {t.name: t for t in again.model.graph.initializer}
    assert a.keys() == b.keys()
    assert all(a[k].SerializeToString() == b[k].SerializeToString() for k in a)


def test_input_model_is_not_modified():
    model = builders.residual_net()
    before = model.SerializeToString()
    graphprune.prune(model, ratio=0.5, latency=False)
    assert model.SerializeToString() == before
