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

from ...analysis.dependency import DependencyGraph, Group
from ...ir.weights import drop_pages
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
    # Distances from the Gram matrix of the filters, summed over blocks of their coordinates:
    # memory holds the N x N Gram (float64) and one block, never all filters at once.
    n = group.size
    gram = np.zeros((n, n))
    rows = max(1, _BLOCK // n)  # rows of the Gram matrix updated at a time
    for m in members:
        for f in _filter_blocks(deps.view.value(m.tensor), m.axis, m.indices):
            for i in range(0, n, rows):  # the upper triangle only: the Gram matrix is symmetric
                gram[i : i + rows, i:] += f[i : i + rows] @ f[i:].T
    for i in range(0, n, rows):  # mirror it, block by block
        block = gram[i : i + rows, i : i + rows]
        block[...] = np.triu(block) + np.triu(block, 1).T
        gram[i + rows :, i : i + rows] = gram[i : i + rows, i + rows :].T
    sq = np.diag(gram).copy()
    total = np.empty(group.size)
    step = max(1, _BLOCK // group.size)  # rows of distances at a time
    for i in range(0, group.size, step):
        d2 = sq[i : i + step, None] + sq[None, :] - 2.0 * gram[i : i + step]
        total[i : i + step] = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2).sum(axis=1)
    return normalised_mean([total], group.size)


_BLOCK = 1 << 23  # elements (float64) of a block of filters or of Gram rows


def _filter_blocks(arr: np.ndarray, axis: int, indices: np.ndarray, block: int = _BLOCK):
    """The group's filters (one row per group index) as float64 blocks of their coordinates:
    ``arr`` is cut along another axis than ``axis`` into pieces of about ``block`` elements."""
    n = indices.shape[0]
    if arr.ndim < 2 or arr.size <= block:
        moved = np.moveaxis(np.asarray(arr, dtype=np.float64), axis, 0).reshape(arr.shape[axis], -1)
        yield moved[indices].reshape(n, -1)
        return
    cut = 1 if axis == 0 else 0
    step = max(1, block // max(1, arr.size // arr.shape[cut]))
    for i in range(0, arr.shape[cut], step):
        piece = np.take(arr, np.arange(i, min(i + step, arr.shape[cut])), axis=cut).astype(np.float64)
        drop_pages(arr)
        yield np.moveaxis(piece, axis, 0).reshape(arr.shape[axis], -1)[indices].reshape(n, -1)


@criterion("random")
def random(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    rng = np.random.default_rng([ctx.seed, group.id])
    return rng.random(group.size) + 0.5
