"""Every CNN of the zoo (classic exporter) analyses, prunes at 0.5 and passes the whole contract."""

from __future__ import annotations

import pytest

import graphprune
from models import zoo
from models.coverage import CNNS


@pytest.mark.parametrize("name", CNNS)
def test_zoo_cnn_prunes_at_half_and_passes_validation(name):
    model = zoo.load(name, "torchscript")
    result = graphprune.prune(model, ratio=0.5, latency=False)
    r = result.report
    assert len(result.deps.prunable_groups()) > 0
    assert r.checker["passed"], r.checker["error"]
    assert r.runtime["passed"], r.runtime["error"]
    assert r.exact.checked and r.exact.passed, r.exact.max_rel_diff
    assert r.params_after < r.params_before
    assert r.flops_after < r.flops_before
