"""Second-order criteria: what removing channels costs the consumers under the optimal update
of their remaining weights (:mod:`graphprune.edit.obs`).

- ``obs``: structured OBS (ZipLM): greedy removal by the increase of the consumers'
  reconstruction error, from the calibration Gram matrices. Its default compensation is the
  OBS update (``compensate="obs"``).
- ``dcp``: discrimination-aware (after DCP, Zhuang et al. 2018): the same selection and
  update on Gram matrices whose samples are weighted by how close the original classifier is
  to getting them wrong (:func:`graphprune.calibration.statistics.margin_weights`): needs labelled
  calibration data.

A group without a calibrated consumer falls back to ``l2`` and the report counts it.
"""

from __future__ import annotations

import numpy as np

from ...analysis.dependency import DependencyGraph, Group
from ...edit.compensate import DEFAULT_RIDGE
from . import ScoreContext, criterion, normalised_mean
from .magnitude import l2

# criteria that read calibration Gram matrices (the filter pass then measures them), and the
# compensation each one implies when none is asked for
GRAM_CRITERIA = ("obs", "dcp")
DEFAULT_COMPENSATION = {"obs": "obs", "dcp": "obs"}


def _second_order(group: Group, deps: DependencyGraph, ctx: ScoreContext, name: str) -> np.ndarray:
    from ...edit.obs import greedy_obs

    scores = None if ctx.stats is None else greedy_obs(group, deps, ctx.stats, DEFAULT_RIDGE)
    if scores is None:
        ctx.fell_back(f"{name} -> l2 (no calibrated consumer with a Gram matrix in the group)")
        return l2(group, deps, ctx)
    return normalised_mean([scores], group.size)


@criterion("obs")
def obs(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    return _second_order(group, deps, ctx, "obs")


@criterion("dcp")
def dcp(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    return _second_order(group, deps, ctx, "dcp")
