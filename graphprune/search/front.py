"""The Pareto front of finished trials: the most metric for the fewest MACs.

Rules:
1. A done trial is on the front when no other done trial has a metric at least as high and a
   MACs ratio at most as low, one of the two strictly. Both are deterministic (latency is
   noisy, so it constrains the front but does not shape it).
2. ``max_flops`` / ``max_latency`` (ratios to the original) drop the trials above them first.
3. The front is listed best first: highest metric, then fewest MACs, then id.
"""

from __future__ import annotations

from .store import Trial


def feasible(trials: list[Trial], max_flops: float | None = None, max_latency: float | None = None) -> list[Trial]:
    """Done trials within the constraints (rule 2)."""
    out = []
    for t in trials:
        if t.status != "done" or t.metric is None or t.macs_ratio is None:
            continue
        if max_flops is not None and t.macs_ratio > max_flops:
            continue
        if max_latency is not None and (t.latency_ratio is None or t.latency_ratio > max_latency):
            continue
        out.append(t)
    return out


def pareto(trials: list[Trial]) -> list[Trial]:
    """The non-dominated trials of ``trials`` (rule 1), best first (rule 3)."""
    front = []
    for t in trials:
        dominated = any(
            o.metric >= t.metric
            and o.macs_ratio <= t.macs_ratio
            and (o.metric > t.metric or o.macs_ratio < t.macs_ratio)
            for o in trials
            if o is not t
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (-t.metric, t.macs_ratio, t.id))
