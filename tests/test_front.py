"""The front door: the CLI's conventions and the defaults a new user meets (issue 13).

Each test states one behaviour a user relies on: flags accepted where they are typed, one
error line with one prefix, nothing overwritten or accepted silently, and defaults that do
not make a model slower or an agreement look better than it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphprune import InputError, api
from graphprune.cost import random_feeds
from models import builders

DIGITS = Path(__file__).resolve().parents[1] / "models" / "examples" / "digits"


# ------------------------------------------------------------------------- the Python API


def test_api_prune_with_the_layer_pass_removes_blocks_validated_like_prune_layers():
    model = builders.residual_net(blocks=5)
    result = api.prune(model, pass_="layer", criterion="weight-norm", remove_blocks=2, latency=False)
    reference = api.prune_layers(model, remove_blocks=2, criterion="weight-norm", latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.exact.max_rel_diff <= 1e-4
    removed = [b["add"] for b in result.report.prune["blocks_removed"]]
    assert removed == [b["add"] for b in reference.report.prune["blocks_removed"]] and len(removed) == 2
    assert result.report.flops_after == reference.report.flops_after < result.report.flops_before
    assert result.plan.total_removed == 0  # no channel group lost entries: whole blocks went


def test_api_prune_with_the_layer_pass_refuses_a_filter_option():
    with pytest.raises(InputError, match="layer pass does not take target-flops"):
        api.prune(builders.residual_net(blocks=5), pass_="layer", target_flops=0.5)
