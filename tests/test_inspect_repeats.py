"""``inspect``'s terminal table of a large model: groups and residual blocks per repeated layer.

Contract under test: above ``REPEATS_FROM`` groups, the groups made by the same nodes of 3 or
more layers with the same size, unit and status are one row (``layers.0-11: mlp/...``,
``×12``), residual blocks likewise; a small model keeps one row per group; ``--json`` keeps
every group.
"""

from __future__ import annotations

import pytest

from benchmarks.html_view import decoder_stack
from graphprune.analysis.dependency import analyze
from graphprune.present.inspection import _layer_of, describe, table


@pytest.fixture(scope="module")
def deep():
    return analyze(decoder_stack(2500))  # 47 layers, 96 groups


def test_repeated_layers_are_one_row_each(deep):
    text = table(deep)
    assert "layers.0-46: mlp/gate_proj/MatMul, mlp/up_proj/MatMul" in text
    assert "×47" in text
    assert "layers.5/mlp" not in text.split("residual blocks")[0]  # no per-layer rows left
    assert "layers.0-46: Add_1" in text  # the residual blocks too
    assert text.rstrip().endswith("96 groups: 94 prunable (2350 channels), 2 blocked")


def test_json_keeps_every_group(deep):
    assert len(describe(deep)["groups"]) == len(deep.groups) == 96


def test_small_models_keep_one_row_per_group():
    deps = analyze(decoder_stack(500))  # 9 layers, fewer groups than REPEATS_FROM
    text = table(deps)
    assert "×" not in text.split("blocked groups")[0]
    assert "/layers.8/mlp/gate_proj/MatMul" in text


@pytest.mark.parametrize(
    "name, layer",
    [
        ("/layers.3/mlp/up_proj/MatMul", ("layers", 3, "mlp/up_proj/MatMul")),
        ("blocks.12.conv1", ("blocks", 12, "conv1")),
        ("p2o.Conv.14", None),  # a numbered op, not a layer
        ("/features/features.5/features.5.3/mlp/mlp.0/MatMul", ("features", 5, "features.5.3/mlp/mlp.0/MatMul")),
    ],
)
def test_layer_of_a_name(name, layer):
    assert _layer_of(name) == layer
