"""Data-driven criteria: scores from calibration statistics of what the group's consumers read.

- ``activation``: root mean square of each channel at the consumers' inputs.
- ``apoz``: one minus the average percentage of zeros (Hu et al. 2016): a channel that a
  ReLU zeroes most of the time matters least. A group whose inputs have no zeros (no ReLU
  before its consumers) falls back to ``activation``.
- ``fluctuation``: FLAP (An et al. 2024): the variance of a channel's input times the
  squared norm of the consumer's weight column: what removing it, with its mean folded
  into the bias, changes in the consumer's output.
- ``wanda``: Wanda (Sun et al. 2024) made structured: ``Σ |W| · ‖X‖`` over the consumer's
  weight column, ``‖X‖`` the channel's input norm.

Each sums over the group's consumers (a residual stream has many); a group with no
calibrated consumer falls back to ``l2`` and the report counts it.
"""

from __future__ import annotations

import numpy as np

from ...analysis.dependency import DependencyGraph, Group
from . import ScoreContext, criterion, normalised_mean
from .magnitude import l2

DATA_CRITERIA = ("activation", "apoz", "fluctuation", "wanda")


def _inputs(group: Group, ctx: ScoreContext):
    """``(member, consumer, channel stats)`` for each calibrated consumer reading the group."""
    stats = ctx.stats
    if stats is None:
        return []
    out = []
    for m in group.members:
        for c in stats.consumers.values():
            if (c.data, c.axis) == (m.tensor, m.axis) and (m.tensor, m.axis) in stats.channels:
                out.append((m, c, stats.channels[(m.tensor, m.axis)]))
    return out


def _fallback(group: Group, deps: DependencyGraph, ctx: ScoreContext, name: str) -> np.ndarray:
    ctx.fell_back(f"{name} -> l2 (no calibrated consumer in the group)")
    return l2(group, deps, ctx)


def _weight_columns(deps: DependencyGraph, c, p: str) -> np.ndarray | None:
    """Per input channel of consumer ``c``: the l1 or squared-l2 mass of its weight column."""
    if c.layout == "":
        return None
    from ...analysis.consumers import weight_matrix, weight_value

    w = weight_value(deps, c)
    if w is None:
        return None
    m = weight_matrix(c, w).reshape(-1, c.channels, c.taps)
    return np.abs(m).sum(axis=(0, 2)) if p == "l1" else np.square(m).sum(axis=(0, 2))


@criterion("activation")
def activation(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    found = _inputs(group, ctx)
    if not found:
        return _fallback(group, deps, ctx, "activation")
    cols = [np.sqrt(s.mean_square)[m.indices].mean(axis=1) for m, _, s in found]
    return normalised_mean(cols, group.size)


@criterion("apoz")
def apoz(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    found = _inputs(group, ctx)
    if not found:
        return _fallback(group, deps, ctx, "apoz")
    zeros = [s.zero_fraction[m.indices].mean(axis=1) for m, _, s in found]
    if max(float(z.max()) for z in zeros) == 0.0:
        ctx.fell_back("apoz -> activation (no zeros at the group's consumers: no ReLU before them)")
        return activation(group, deps, ctx)
    return normalised_mean([1.0 - z for z in zeros], group.size) + 1e-9  # keep scores positive


@criterion("fluctuation")
def fluctuation(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    cols = []
    for m, c, s in _inputs(group, ctx):
        w2 = _weight_columns(deps, c, "l2")
        if w2 is not None:
            cols.append((s.variance * w2)[m.indices].sum(axis=1))
    if not cols:
        return _fallback(group, deps, ctx, "fluctuation")
    return normalised_mean(cols, group.size)


@criterion("wanda")
def wanda(group: Group, deps: DependencyGraph, ctx: ScoreContext) -> np.ndarray:
    cols = []
    for m, c, s in _inputs(group, ctx):
        w1 = _weight_columns(deps, c, "l1")
        if w1 is not None:
            cols.append((w1 * np.sqrt(s.sum_sq))[m.indices].sum(axis=1))
    if not cols:
        return _fallback(group, deps, ctx, "wanda")
    return normalised_mean(cols, group.size)
