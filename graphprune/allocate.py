"""Allocation: scores -> plan.

Rules:
1. Uniform: every prunable group loses ``floor(N * ratio)`` of its lowest-scoring indices.
2. Global: one threshold over all groups' (normalised) scores removes the ``ratio``
   fraction of all indices, so groups lose more or less by their scores.
3. Then, per group: at least ``min_keep`` indices stay; with ``round_to = R`` the number of
   channels kept is a multiple of R (groups of R units or fewer are left alone); a unit of
   several channels (a head, a conv group) counts with its width.
4. Groups with a member the user protects (``ignore``: node or tensor names, glob
   patterns allowed) are not pruned.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import numpy as np

from .dependency import DependencyGraph, Group
from .plan import Plan


def protected(deps: DependencyGraph, patterns: Iterable[str]) -> set[int]:
    """Ids of groups that touch a node or tensor matching one of ``patterns``."""
    patterns = list(patterns)
    if not patterns:
        return set()
    mv = deps.view

    def hit(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    out = set()
    for g in deps.groups:
        for m in g.members:
            names = [m.tensor]
            names += [mv.node_names[i] for i, _ in mv.consumers.get(m.tensor, [])]
            if m.tensor in mv.producer:
                names.append(mv.node_names[mv.producer[m.tensor]])
            if any(hit(n) for n in names):
                out.add(g.id)
                break
    return out


def unit_step(group: Group, round_to: int) -> int:
    """``round_to`` in the group's own units: a head of 64 channels, or a conv group of 4,
    already keeps channel counts at multiples of its width, so fewer units per step are needed."""
    if round_to <= 1:
        return 1
    widths = [m.indices.shape[1] for m in group.weights("out")] or [1]
    return max(1, round_to // math.gcd(round_to, min(widths)))


def keep_count(n: int, n_remove: int, round_to: int, min_keep: int) -> int:
    keep = max(min_keep, n - n_remove, 1)
    if round_to > 1:
        if n <= round_to:
            return n
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return min(keep, n)


def allocate(
    deps: DependencyGraph,
    scores: dict[int, np.ndarray],
    ratio: float,
    *,
    global_threshold: bool = False,
    round_to: int = 1,
    min_keep: int = 1,
    ignore: Iterable[str] = (),
) -> Plan:
    """Choose the indices to remove from each scored group."""
    skip = protected(deps, ignore)
    groups: list[Group] = [g for g in deps.prunable_groups() if g.id in scores and g.id not in skip]
    threshold = None
    if global_threshold and groups:
        allscores = np.concatenate([scores[g.id] for g in groups])
        threshold = np.quantile(allscores, ratio) if 0 < ratio < 1 else None
    removals = {}
    for g in groups:
        s = scores[g.id]
        n_remove = int(np.sum(s < threshold)) if threshold is not None else int(np.floor(g.size * ratio))
        keep = keep_count(g.size, n_remove, unit_step(g, round_to), min_keep)
        if keep >= g.size:
            continue
        order = np.argsort(s, kind="stable")  # lowest scores first
        removals[g.id] = np.sort(order[: g.size - keep]).astype(np.int64)
    return Plan(removals)
