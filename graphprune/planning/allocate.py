"""Allocation: scores -> plan.

Rules:
1. Uniform: every prunable group loses ``floor(N * ratio)`` of its lowest-scoring indices.
2. Global: one threshold over all groups' (normalised) scores removes the ``ratio``
   fraction of all indices, so groups lose more or less by their scores.
3. Then, per group: at least ``min_keep`` indices stay; with ``round_to = R`` the number of
   channels kept is a multiple of R (groups of R units or fewer are left alone); a unit of
   several channels (a head, a conv group) counts with its width. ``round_to`` may also be one
   multiple per unit (``{"channels": 16}``: conv channels on the runtime's channel step, the
   passes' default; a unit it does not name has 1).
4. Groups with a member the user protects (``ignore``: node or tensor names, glob
   patterns allowed) are not pruned.
5. Target: instead of a ratio, a fraction of the original FLOPs, parameters or latency to
   keep; one global price per unit of cost saved decides how much each group loses
   (:func:`allocate_to_target`), within rules 3 and 4. The plan is the one nearest the target,
   or with ``at_most`` the nearest that keeps at most the target (a budget: ``round_to``
   steps never carry it over).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..analysis.dependency import DependencyGraph, Group
from ..analysis.plan import Plan


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


RoundTo = int | Mapping[str, int]  # one multiple for every group, or one per unit (rule 3)


def unit_step(group: Group, round_to: RoundTo) -> int:
    """``round_to`` in the group's own units: a head of 64 channels, or a conv group of 4,
    already keeps channel counts at multiples of its width, so fewer units per step are needed."""
    if isinstance(round_to, Mapping):
        round_to = round_to.get(group.unit, 1)
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


def keep_choices(group: Group, round_to: int, min_keep: int, grid: np.ndarray | None = None) -> np.ndarray:
    """The unit counts a group may keep under rule 3, largest (all of it) first; with ``grid``
    (counts where a latency curve was measured), only those counts and the full size."""
    n, step = group.size, unit_step(group, round_to)
    if step > 1 and n <= step:
        return np.array([n])
    keeps = np.arange(step, n, step)
    keeps = keeps[keeps >= max(min_keep, 1)]
    if grid is not None:
        keeps = keeps[np.isin(keeps, grid)]
    return np.concatenate([[n], keeps[::-1]]).astype(np.int64)


CostFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class TargetResult:
    """A plan chosen for a target, and the fraction of the target's cost it keeps."""

    plan: Plan
    reached: float
    removed: np.ndarray  # units removed per column of the cost functions


def allocate_to_target(
    deps: DependencyGraph,
    scores: dict[int, np.ndarray],
    target: float,
    cost: CostFn,
    columns: list[int],
    *,
    objective: CostFn | None = None,
    grids: dict[int, np.ndarray] | None = None,
    round_to: int = 1,
    min_keep: int = 1,
    ignore: Iterable[str] = (),
    losses: dict[int, Callable[[np.ndarray], np.ndarray]] | None = None,
    at_most: bool = False,
) -> TargetResult:
    """Remove the least important units per unit of ``objective`` saved until ``cost`` keeps
    ``target`` (a fraction) of the original.

    ``losses`` (per group id, optional) prices removing ``r`` units of a group directly, for
    example by the accuracy drop a sensitivity analysis measured; it replaces the sum of the
    removed units' scores for that group (the scores still say which units go).

    ``cost`` and ``objective`` price rows of removed-unit counts (one column per group id in
    ``columns``); ``cost`` returns the fraction of the target's metric kept. Each group picks,
    for one global price ``lam``, the allowed count that minimises (scores of the units it
    removes) - lam * (objective saved); ``lam`` is bisected until ``cost`` meets the target.
    A count inside a flat step of the objective saves nothing and costs importance, so
    allocation lands on the start of steps (the most channels for the same cost). Savings are
    priced at the current plan, re-priced twice, so coupled groups (a conv between two) count
    what they really save together.

    ``at_most``: the plan nearest the target among those keeping at most the target (rule 5),
    when one exists within ``round_to`` and ``min_keep``.
    """
    objective = objective or cost
    skip = protected(deps, ignore)
    col = {gid: i for i, gid in enumerate(columns)}
    groups = [g for g in deps.prunable_groups() if g.id in scores and g.id not in skip and g.id in col]
    options = []  # per group: (column, removed counts, importance lost, order)
    for g in groups:
        keeps = keep_choices(g, round_to, min_keep, None if grids is None else grids.get(g.id))
        if len(keeps) < 2:
            continue
        order = np.argsort(scores[g.id], kind="stable")
        # a unit weighs its score relative to the width left when it goes (N / (N - i) for the
        # i-th removed): emptying a layer costs ever more, so a flat importance signal does not
        # empty the layers where a unit saves the most and leave the others whole
        weight = g.size / (g.size - np.arange(g.size))
        lost = np.concatenate([[0.0], np.cumsum(scores[g.id][order] * weight)])
        r = g.size - keeps
        measured = (losses or {}).get(g.id)
        options.append((col[g.id], r, lost[r] if measured is None else measured(r), order))
    current = np.zeros(len(columns))
    full = float(objective(current[None, :])[0]) or 1.0

    def choose(lam: float, savings: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(len(columns))
        for (c, r, lost, _), saved in zip(options, savings, strict=True):
            out[c] = r[int(np.argmin(lost - lam * saved))]
        return out

    def reached(removed: np.ndarray) -> float:
        return float(cost(removed[None, :])[0])

    candidates = []
    for _ in range(3):
        savings = []
        for c, r, _, _ in options:
            rows = np.repeat(current[None, :], len(r), axis=0)
            rows[:, c] = r
            priced = objective(rows)
            savings.append((priced[0] - priced) / full)
        lo, hi = 0.0, 1.0
        while reached(choose(hi, savings)) > target and hi < 1e12:
            lo, hi = hi, hi * 4
        for _ in range(60):
            mid = (lo + hi) / 2 if lo == 0 else math.sqrt(lo * hi)
            if reached(choose(mid, savings)) > target:
                lo = mid
            else:
                hi = mid
        above, below = choose(lo, savings), choose(hi, savings)
        candidates += [above, below]
        current = below
    within = [x for x in candidates if reached(x) <= target] if at_most else []
    best = min(within or candidates, key=lambda x: abs(reached(x) - target))
    best = _settle(best, options, target, cost, objective, at_most=at_most)
    removals = {}
    for c, _, _, order in options:
        n = int(best[c])
        if n:
            removals[columns[c]] = np.sort(order[:n]).astype(np.int64)
    return TargetResult(Plan(removals), reached(best), best)


def _settle(
    x: np.ndarray,
    options: list,
    target: float,
    cost: CostFn,
    objective: CostFn,
    steps: int = 400,
    *,
    at_most: bool = False,
) -> np.ndarray:
    """Move one group at a time to its next allowed count, toward the target: down, the move
    that loses the least importance per objective saved; up, the one that restores the most
    importance per objective spent. Stops at the count nearest the target as it is crossed
    (``at_most``: the count on the target's side of it, at or below).
    The price bisection lands between two plans that can differ by a large step (several groups
    jump a flat latency step at once): this closes the gap one group step at a time."""
    for _ in range(steps):
        now = float(cost(x[None, :])[0])
        down = now > target
        rows, lost_delta = [], []
        for c, r, lost, _ in options:
            i = int(np.searchsorted(r, x[c]))
            j = i + 1 if down else i - 1
            if 0 <= j < len(r):
                row = x.copy()
                row[c] = r[j]
                rows.append(row)
                lost_delta.append(lost[j] - lost[i])
        if not rows:
            return x
        rows_arr = np.array(rows)
        saved = float(objective(x[None, :])[0]) - objective(rows_arr)
        lost_arr = np.array(lost_delta)
        # down: saved > 0 and lost >= 0, least lost per saved; up: both negative, most restored per spent
        with np.errstate(divide="ignore", invalid="ignore"):
            price = (
                np.where(saved > 0, lost_arr / saved, np.inf)
                if down
                else np.where(saved < 0, lost_arr / saved, -np.inf)
            )
        k = int(np.argmin(price)) if down else int(np.argmax(price))
        if not np.isfinite(price[k]):
            k = int(np.argmin(lost_arr)) if down else int(np.argmax(-lost_arr))
        nxt = rows_arr[k]
        after = float(cost(nxt[None, :])[0])
        if (after > target) != down:  # crossed the target: keep the nearer side (or the one within it)
            if at_most:
                return nxt if down else x
            return nxt if abs(after - target) < abs(now - target) else x
        x = nxt
    return x


def uniform_to_target(
    deps: DependencyGraph,
    scores: dict[int, np.ndarray],
    target: float,
    cost: Callable[[dict[int, np.ndarray]], float],
    *,
    round_to: int = 1,
    min_keep: int = 1,
    ignore: Iterable[str] = (),
) -> tuple[Plan, float]:
    """The uniform plan (rule 1: one ratio for every group) whose ``cost`` (of a plan's
    removals, as a fraction of the original) is nearest ``target``, and that cost.

    Every layer keeps the same share of its width, so none is left thin and slow per
    operation: the plan a latency-aware allocation has to beat."""
    lo, hi = 0.0, 0.99
    best: tuple[float, Plan, float] | None = None
    for _ in range(30):
        mid = (lo + hi) / 2
        plan = allocate(deps, scores, mid, round_to=round_to, min_keep=min_keep, ignore=ignore)
        reached = float(cost(plan.removals))
        if best is None or abs(reached - target) < best[0]:
            best = (abs(reached - target), plan, reached)
        if reached > target:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best[1], best[2]
