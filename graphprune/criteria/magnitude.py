"""Data-free criteria: weight magnitude, BatchNormalization scale, geometric median, random.

- ``l1`` / ``l2``: norm of every member weight's slice for the index (Li et al. 2017).
- ``bn-scale``: |gamma| of the BatchNormalization in the group (Network Slimming, Liu et
  al. 2017); groups without one fall back to ``l2`` and the report counts them.
- ``fpgm``: distance of each filter to the others, summed; filters near the geometric
  median are the most replaceable (He et al. 2019).
- ``random``: a seeded baseline.
"""

from __future__ import annotations

import numpy as np

from ..dependency import DependencyGraph, Group
from . import ScoreContext, criterion, magnitude_members, normalised_mean


def _norm(group: Group, deps: DependencyGraph, p: str, ctx: ScoreContext) -> np.ndarray:
    members = magnitude_members(group)
    if not members:  # weights computed at run time from other tensors: nothing stored to read
        ctx.fell_back("no stored weights in the group: uniform scores")
        return np.ones(group.size)
    cols = []
    for m in members:
        s = ctx.entry_stats(deps, m, p)
        cols.append(s if p == "l1" else np.sqrt(s))
    return normalised_mean(cols, group.size)


@criterion("l1")
def l1(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    return _norm(group, deps, "l1", ctx)


@criterion("l2")
def l2(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    return _norm(group, deps, "l2", ctx)


@criterion("bn-scale")
def bn_scale(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    mv = deps.view
    cols = []
    for m in group.members:  # the scale may reach BatchNormalization through a Cast
        uses = mv.consumers.get(m.tensor, [])
        source = mv.weight_source(m.tensor)
        if source is not None and any(mv.nodes[i].op_type == "BatchNormalization" and pos == 1 for i, pos in uses):
            gamma = np.abs(mv.value(source).astype(np.float64))
            cols.append(gamma[m.indices].sum(axis=1))
    if not cols:
        ctx.fell_back("bn-scale -> l2 (no BatchNormalization in the group)")
        return _norm(group, deps, "l2", ctx)
    return normalised_mean(cols, group.size)


@criterion("fpgm")
def fpgm(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    members = group.weights("out") or magnitude_members(group)
    if not members:
        return _norm(group, deps, "l2", ctx)
    rows = []
    for m in members:
        arr = deps.view.value(m.tensor).astype(np.float32)
        moved = np.moveaxis(arr, m.axis, 0).reshape(arr.shape[m.axis], -1)
        rows.append(moved[m.indices].reshape(group.size, -1))
    f = np.concatenate(rows, axis=1).astype(np.float64)
    sq = np.square(f).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (f @ f.T), 0.0)
    return normalised_mean([np.sqrt(d2).sum(axis=1)], group.size)


@criterion("random")
def random(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    rng = np.random.default_rng([ctx.seed, group.id])
    return rng.random(group.size) + 0.5
