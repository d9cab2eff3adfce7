"""In-model latency tables: what pruning saves in the WHOLE model, measured with onnxruntime
on this machine, and the latency model they give a plan.

Per-layer curves (:mod:`graphprune.planning.layer_latency`) time each layer alone; they miss what a
layer's width changes around it inside the model (fused activations, layout changes, memory
traffic), so they rank layers wrongly. Rules:
1. Random plans are timed in the whole model: in a plan of depth ``u`` (spread evenly over
   0..1 across the plans) each prunable group, with probability ``u``, keeps about 1/8, 1/4,
   1/2 or 3/4 of its units (multiples of 8 channels where the group is wide enough), else all.
   Each pruned model (surgery on the original; which units go does not change latency) is
   timed in rounds interleaved with the unpruned model, a batch of plans at a time; a plan's
   saving is the median over rounds of (original - pruned) run times, so a load change on a
   shared machine cancels in each pair. Pruning one group alone saves ~1% of mobilenet_v2,
   below the noise of a shared machine (two tables of 10 rounds per group agreed to a
   correlation of ~0.6, and allocation then chased the noise); random plans save up to ~90%,
   and every one of them informs every group (a factorial design).
2. The latency of a plan is ``L0 - sum_g a_g * macs_g(plan)``: ``macs_g`` the MACs removing
   group ``g``'s units saves at the plan (the plan with ``g`` restored, less the plan), ``a_g``
   the group's latency per MAC saved. Additive over groups, and a conv between two groups thinned
   by both saves less than the sum of the two alone (``coupled=False``: every group priced as if
   pruned alone, a plain sum of parts).
3. ``a_g`` is fitted to the measured savings by least squares, shrunk toward the model's average
   latency per MAC (ridge: the prior weighs as ``PRIOR_PLANS`` plans; 10 predicted held-out
   mobilenet_v2 plans best of 2, 10, 30, 100), and at least 0.
4. Allocation keeps each group at multiples of 8 channels, as its points were timed, and not
   below the fewest units it was timed keeping: emptied, a residual stream saves MACs by the
   billion but little time, and nothing measured says so.
5. A table is cached as JSON (written atomically) beside the per-layer tables, keyed by the
   graph's structure, the machine, the onnxruntime version, the threads, the rounds, the plans
   and the groups; a table whose key differs is measured again.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..analysis.dependency import DependencyGraph, Group
from . import layer_latency as latency_table
from .cost_model import CostModel
from .layer_latency import Progress, machine, structure_hash

FORMAT = "graphprune-model-latency-v3"
FRACTIONS = (0.125, 0.25, 0.5, 0.75)
PRIOR_PLANS = 10.0


def step(group: Group) -> int:
    """The unit count a group is measured and kept at multiples of: 8 channels in its units, or
    1 for a group under 4 such steps."""
    from .allocate import unit_step

    s = unit_step(group, 8)
    return 1 if group.size < 4 * s else s


def points(group: Group, fractions: tuple[float, ...] = FRACTIONS) -> list[int]:
    """Unit counts a group is measured keeping (rule 1), increasing, without the full count."""
    n, s = group.size, step(group)
    keeps = {max(s, int(round(n * f / s)) * s) for f in fractions}
    return sorted(k for k in keeps if 0 < k < n)


@dataclass
class ModelTable:
    """Timed plans (group id -> units removed) with the time each saved (ms), and the model's latency."""

    key: dict
    model_ms: float
    plans: list[dict[int, int]]
    saved_ms: list[float]
    measured: int = 0  # pruned models timed to build it (0 when read from the cache)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "key": self.key,
            "model_ms": self.model_ms,
            "plans": [{str(g): r for g, r in p.items()} for p in self.plans],
            "saved_ms": self.saved_ms,
        }


def table_key(model: onnx.ModelProto, group_ids: list[int], threads: int, rounds: int, plans: int) -> dict:
    return {
        "kind": "model",
        "graph": structure_hash(model),
        **machine(),
        "threads": threads,
        "rounds": rounds,
        "plans": plans,
        "fractions": list(FRACTIONS),
        "groups": list(group_ids),
    }


def default_path(key: dict) -> Path:
    return latency_table.default_path(key, prefix="model-latency")


def _paired_savings(base, pruned: list, rounds: int) -> tuple[list[float], list[float]]:
    """Rule 1: per pruned session, the median over rounds of (base - pruned) run time (ms);
    and the base's run times (ms)."""
    diffs: list[list[float]] = [[] for _ in pruned]
    base_times = []
    for _ in range(rounds):
        t = time.perf_counter()
        base[0].run(None, base[1])
        b = time.perf_counter() - t
        base_times.append(b * 1000.0)
        for i, (sess, feeds) in enumerate(pruned):
            t = time.perf_counter()
            sess.run(None, feeds)
            diffs[i].append(b - (time.perf_counter() - t))
    return [statistics.median(d) * 1000.0 for d in diffs], base_times


def random_plans(deps: DependencyGraph, group_ids: list[int], n: int, seed: int = 0) -> list[dict[int, int]]:
    """Rule 1's plans: each plan draws a depth ``u`` (evenly spread over 0..1 across the plans);
    each group is then pruned with probability ``u`` to one of its measuring points, so the plans
    span light to deep pruning, as allocation to a target does."""
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n):
        depth = (i + 0.5) / n
        plan = {}
        for gid in group_ids:
            counts = points(deps.groups[gid])
            if rng.random() < depth:
                plan[gid] = deps.groups[gid].size - counts[int(rng.integers(len(counts)))]
        plans.append(plan)
    return plans


def model_table(
    deps: DependencyGraph,
    cm: CostModel,
    *,
    threads: int = 1,
    rounds: int = 5,
    plans: int | None = None,
    batch: int = 8,
    path: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> ModelTable:
    """The in-model latency table of ``deps.model`` for the groups of ``cm``: read from ``path``
    (default: the cache directory) when its key matches, else measured and written there.
    ``plans`` random plans (default: 4 per group, at least 24), ``rounds`` paired runs each."""
    from ..analysis.plan import Plan
    from ..edit.surgery import apply_plan
    from ..ir.files import write_text_atomic

    model = deps.model
    gids = [gid for gid in cm.group_ids if points(deps.groups[gid])]
    n = plans if plans is not None else max(24, 4 * len(gids))
    key = table_key(model, gids, threads, rounds, n)
    file = Path(path) if path is not None else default_path(key)
    cached = latency_table.read_cached(file, FORMAT)
    if cached is not None and cached.get("key") == key:
        timed = [{int(g): int(r) for g, r in p.items()} for p in cached["plans"]]
        return ModelTable(key, float(cached["model_ms"]), timed, [float(x) for x in cached["saved_ms"]])
    say = progress or (lambda _msg: None)
    base = latency_table.timing_sessions([model], threads, warmup=2)[0]
    todo = random_plans(deps, gids, n)
    saved: list[float] = []
    base_ms: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        pruned = [
            apply_plan(
                model, deps, Plan({g: np.arange(deps.groups[g].size - r, deps.groups[g].size) for g, r in p.items()})
            )
            for p in chunk
        ]
        sessions = latency_table.timing_sessions(pruned, threads, warmup=2)
        del pruned
        s, b = _paired_savings(base, sessions, rounds)
        del sessions
        saved += s
        base_ms += b
        say(f"model latency table: {len(saved)}/{len(todo)} plans timed ({time.perf_counter() - started:.0f}s)")
    table = ModelTable(key, statistics.median(base_ms) if base_ms else 0.0, todo, saved, measured=len(todo))
    file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, json.dumps(table.to_json()) + "\n")
    return table


class ModelLatency:
    """Estimated latency (ms) of a plan from an in-model table (rules 2 and 3); the interface of
    :class:`graphprune.planning.layer_latency.LatencyModel` (``estimate``, ``fraction``, ``grids``)."""

    def __init__(self, table: ModelTable, cm: CostModel, *, coupled: bool = True):
        self.cm = cm
        self.table = table
        self.coupled = coupled
        self.full_ms = float(table.model_ms)
        measured = sorted({g for p in table.plans for g in p if g in cm.column})
        self.columns = np.array([cm.column[g] for g in measured], dtype=np.int64)
        self.ms_per_mac = fit_rates(self.macs_saved(self.removed(table.plans)), np.array(table.saved_ms))

    def removed(self, plans: list[dict[int, int]]) -> np.ndarray:
        """Removal rows (cost-model columns) of plans given as group id -> units removed."""
        rows = np.zeros((len(plans), len(self.cm.group_ids)))
        for i, p in enumerate(plans):
            for g, r in p.items():
                if g in self.cm.column:
                    rows[i, self.cm.column[g]] = r
        return rows

    def macs_saved(self, removed: np.ndarray) -> np.ndarray:
        """Per row of ``removed`` and measured group: the MACs its removal saves (rule 2), at the
        plan (``coupled``: the plan with the group restored, less the plan) or alone."""
        removed = np.atleast_2d(np.asarray(removed, dtype=np.float64))
        b, k = removed.shape[0], len(self.columns)
        other = np.repeat(removed, k, axis=0)  # row i * k + j: row i, group j
        mine = np.zeros_like(other)
        for j, c in enumerate(self.columns):
            mine[j::k, c] = other[j::k, c]
            other[j::k, c] = 0.0
        if not self.coupled:
            return (self.cm.flops_before - self.cm.flops(mine)).reshape(b, k)
        return (self.cm.flops(other) - self.cm.flops(other + mine)).reshape(b, k)

    def savings(self, removed: np.ndarray) -> np.ndarray:
        """Per row of ``removed`` and measured group: the latency (ms) its removal saves."""
        return self.macs_saved(removed) * self.ms_per_mac[None, :]

    def estimate(self, removed: np.ndarray) -> np.ndarray:
        """Estimated latency in ms for each row of ``removed``: ``L0`` less every group's saving."""
        removed = np.atleast_2d(np.asarray(removed, dtype=np.float64))
        if not len(self.columns):
            return np.full(removed.shape[0], self.full_ms)
        return np.maximum(self.full_ms - self.savings(removed).sum(axis=1), 0.02 * self.full_ms)

    def fraction(self, removed: np.ndarray) -> np.ndarray:
        """Estimated latency as a fraction of the unpruned model's."""
        return self.estimate(removed) / self.full_ms

    def grids(self, deps: DependencyGraph) -> dict[int, np.ndarray]:
        """Per measured group, the unit counts it may keep: multiples of its step (8 channels,
        where every point was timed; onnxruntime's kernels work in blocks of channels) and none
        below the fewest it was timed keeping (the rates say nothing of thinner layers, where
        fixed costs dominate)."""
        out = {}
        for gid in self.cm.group_ids:
            counts = points(deps.groups[gid])
            if counts and self.cm.column[gid] in self.columns:
                out[gid] = np.arange(counts[0], deps.groups[gid].size + 1, step(deps.groups[gid]))
        return out


def fit_rates(x: np.ndarray, y: np.ndarray, prior_plans: float = PRIOR_PLANS) -> np.ndarray:
    """Rule 3: ``a`` minimising ``|y - x a|^2 + sum_g lam_g (a_g - a0)^2``, ``a0`` the one common
    rate that fits best, ``lam_g`` the weight of ``prior_plans`` plans with the group's mean
    squared MACs; then at least 0."""
    if x.size == 0:
        return np.zeros(x.shape[1])
    total = x.sum(axis=1)
    a0 = float(total @ y / (total @ total)) if total @ total > 0 else 0.0
    lam = prior_plans * np.maximum((x**2).mean(axis=0), 1e-30)
    a = np.linalg.solve(x.T @ x + np.diag(lam), x.T @ y + lam * a0)
    return np.maximum(a, 0.0)


__all__ = ["ModelLatency", "ModelTable", "fit_rates", "model_table", "points", "random_plans", "step"]
