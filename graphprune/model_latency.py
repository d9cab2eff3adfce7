"""In-model latency tables: what pruning one group saves in the WHOLE model, measured with
onnxruntime on this machine, and the latency model they give a plan.

Per-layer curves (:mod:`graphprune.latency_table`) time each layer alone; they miss what a
layer's width changes around it inside the model (fused activations, layout changes, memory
traffic), so they rank layers wrongly. Rules:
1. For each prunable group and a few unit counts it keeps (about 1/8, 1/4, 1/2 and 3/4 of it,
   at multiples of 8 channels where the group is wide enough), the model with only that group
   pruned is built (surgery on the original; which units go does not change latency) and
   timed in rounds interleaved with the unpruned model: one run of the original, then one of
   each point of the group. A point's saving is the median over rounds of (original - pruned)
   run times, so a load change on a shared machine cancels in each pair.
2. A single saving is small against the noise of a shared machine (a group of 25 pruned by half
   saves ~1% of mobilenet_v2; two tables of 10 rounds agree to a correlation of ~0.6), so a
   group's points are pooled: its latency per MAC saved, ``a_g``, is the least-squares slope of
   its savings on the MACs each point saves, shrunk toward the model's average latency per MAC
   (the prior weighs as two points), and at least 0.
3. The latency of a plan is ``L0 - sum_g a_g * macs_g(plan)``, ``macs_g`` the MACs removing the
   group's units saves at the plan (the plan with the group restored, less the plan): additive
   over groups, and a conv between two groups thinned by both saves less than the sum of the
   two alone. With one group pruned this is its fitted saving; ``coupled=False`` prices every
   group as if it were pruned alone (a plain sum of parts).
4. A table is cached as JSON (written atomically) beside the per-layer tables, keyed by the
   graph's structure, the machine, the onnxruntime version, the threads, the rounds and the
   points; a table whose key differs is measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .costmodel import CostModel
from .dependency import DependencyGraph, Group
from .latency_table import Progress, cache_dir, machine, structure_hash

FORMAT = "graphprune-model-latency-v1"
FRACTIONS = (0.125, 0.25, 0.5, 0.75)


def points(group: Group, fractions: tuple[float, ...] = FRACTIONS) -> list[int]:
    """Unit counts a group is measured keeping (rule 1), increasing, without the full count."""
    from .allocate import unit_step

    n = group.size
    step = unit_step(group, 8)
    if n < 4 * step:  # too narrow for multiples of 8: plain counts
        step = 1
    keeps = {max(step, int(round(n * f / step)) * step) for f in fractions}
    return sorted(k for k in keeps if 0 < k < n)


@dataclass
class ModelTable:
    """Savings (ms) of each measured group at the unit counts it kept, and the model's latency."""

    key: dict
    model_ms: float
    groups: dict[int, dict[str, list]]  # group id -> {"counts": [...], "saved_ms": [...], "full": n}
    measured: int = 0  # pruned models timed to build it (0 when read from the cache)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "key": self.key,
            "model_ms": self.model_ms,
            "groups": {str(g): v for g, v in self.groups.items()},
        }


def table_key(model: onnx.ModelProto, group_ids: list[int], threads: int, rounds: int) -> dict:
    return {
        "kind": "model",
        "graph": structure_hash(model),
        **machine(),
        "threads": threads,
        "rounds": rounds,
        "fractions": list(FRACTIONS),
        "groups": list(group_ids),
    }


def default_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"model-latency-{key['graph'][:12]}-{digest}.json"


def _read(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _sessions(models: list[onnx.ModelProto], threads: int) -> list:
    import onnxruntime as ort

    from .cost import random_feeds

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    out = []
    for m in models:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = random_feeds(m)
        sess.run(None, feeds)  # warm-up
        out.append((sess, feeds))
    return out


def _paired_savings(base, pruned: list, rounds: int) -> tuple[list[float], float]:
    """Rule 1: per pruned session, the median over rounds of (base - pruned) run time (ms);
    and the median base time."""
    diffs: list[list[float]] = [[] for _ in pruned]
    base_times = []
    for _ in range(rounds):
        t = time.perf_counter()
        base[0].run(None, base[1])
        b = time.perf_counter() - t
        base_times.append(b)
        for i, (sess, feeds) in enumerate(pruned):
            t = time.perf_counter()
            sess.run(None, feeds)
            diffs[i].append(b - (time.perf_counter() - t))
    return [statistics.median(d) * 1000.0 for d in diffs], statistics.median(base_times) * 1000.0


def model_table(
    deps: DependencyGraph,
    cm: CostModel,
    *,
    threads: int = 1,
    rounds: int = 10,
    path: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> ModelTable:
    """The in-model latency table of ``deps.model`` for the groups of ``cm``: read from ``path``
    (default: the cache directory) when its key matches, else measured and written there."""
    from .io import write_text_atomic
    from .plan import Plan
    from .surgery import apply_plan

    model = deps.model
    key = table_key(model, cm.group_ids, threads, rounds)
    file = Path(path) if path is not None else default_path(key)
    cached = _read(file)
    if cached is not None and cached.get("key") == key:
        groups = {int(g): v for g, v in cached["groups"].items()}
        return ModelTable(key, float(cached["model_ms"]), groups)
    say = progress or (lambda _msg: None)
    base = _sessions([model], threads)[0]
    groups: dict[int, dict[str, list]] = {}
    base_ms = []
    count = 0
    started = time.perf_counter()
    for n, gid in enumerate(cm.group_ids, 1):
        g = deps.groups[gid]
        counts = points(g)
        if not counts:
            continue
        pruned = [apply_plan(model, deps, Plan({gid: np.arange(k, g.size, dtype=np.int64)})) for k in counts]
        sessions = _sessions(pruned, threads)
        del pruned
        saved, b = _paired_savings(base, sessions, rounds)
        del sessions
        base_ms.append(b)
        count += len(counts)
        groups[gid] = {"counts": counts, "saved_ms": saved, "full": g.size}
        say(f"model latency table: {n}/{len(cm.group_ids)} groups measured ({time.perf_counter() - started:.0f}s)")
    model_ms = statistics.median(base_ms) if base_ms else _paired_savings(base, [], max(rounds, 5))[1]
    table = ModelTable(key, model_ms, groups, measured=count)
    file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, json.dumps(table.to_json()) + "\n")
    return table


class ModelLatency:
    """Estimated latency (ms) of a plan from an in-model table (rules 2 and 3); the interface of
    :class:`graphprune.latency_table.LatencyModel` (``estimate``, ``fraction``, ``grids``)."""

    def __init__(self, table: ModelTable, cm: CostModel, *, coupled: bool = True):
        self.cm = cm
        self.table = table
        self.coupled = coupled
        self.full_ms = float(table.model_ms)
        cols, fits = [], []
        for gid, entry in table.groups.items():
            if gid in cm.column:
                kept = np.array(entry["counts"], float)
                cols.append(cm.column[gid])
                fits.append(
                    (kept, np.array(entry["saved_ms"], float), self._alone(cm.column[gid], entry["full"] - kept))
                )
        self.columns = np.array(cols, dtype=np.int64)
        # the prior: the model's latency per MAC over all points (latency falls as MACs do)
        total_saved = sum(float(np.clip(s, 0, None).sum()) for _, s, _ in fits)
        total_macs = sum(float(f.sum()) for _, _, f in fits)
        prior = total_saved / total_macs if total_macs > 0 else 0.0
        self.ms_per_mac = np.zeros(len(cols))
        for j, (_, saved, macs) in enumerate(fits):
            lam = 2.0 * float(np.mean(macs**2)) if len(macs) else 1.0  # the prior weighs as two points
            self.ms_per_mac[j] = max((float(saved @ macs) + lam * prior) / (float(macs @ macs) + lam), 0.0)

    def _alone(self, column: int, removed: np.ndarray) -> np.ndarray:
        """MACs saved by removing ``removed`` units of one group (column), the others whole."""
        rows = np.zeros((len(removed), len(self.cm.group_ids)))
        rows[:, column] = removed
        return self.cm.flops_before - self.cm.flops(rows)

    def macs_saved(self, removed: np.ndarray) -> np.ndarray:
        """Per row of ``removed`` and measured group: the MACs its removal saves (rule 3), at the
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

    def grids(self, deps: DependencyGraph) -> None:
        """No grid: every count ``round_to`` allows is priced."""
        return None


__all__ = ["ModelLatency", "ModelTable", "model_table", "points"]
