"""One head count in every layer (``--uniform-heads``), for runtimes configured by one number.

A decoder's runtime config (``num_key_value_heads`` in a Hugging Face or onnxruntime-genai
config) gives one KV head count for all layers: a model whose layers keep different counts
no longer fits it.

Rules:
1. The head groups are the groups of unit ``heads`` (each owns a layer's KV heads; with
   grouped-query attention a unit is one KV head and the query heads that read it).
2. After allocation every head group keeps the same count ``k``: the mean of what allocation
   kept over the prunable head groups, rounded, on the groups' ``round_to`` step, at least
   ``min_keep``, at most the smallest head group. Each group then removes its lowest-scoring
   heads down to ``k``. A head group that cannot lose heads (blocked, ignored, or of a unit
   not asked for) keeps all of its heads, so ``k`` is at least its size: then no head goes.
3. A plan given as it is (``--plan``) is not changed: it must already leave every head group
   the same count, else ``InputError``.
4. The report gives ``num_key_value_heads`` (``k``) and ``num_attention_heads`` (``k`` times
   the query heads per KV head, when that is the same in every layer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..analysis.dependency import DependencyGraph, Group
from ..analysis.plan import Plan
from ..errors import InputError
from .allocate import protected, unit_step


def head_groups(deps: DependencyGraph) -> list[Group]:
    return [g for g in deps.groups if g.unit == "heads"]


def even_heads(
    deps: DependencyGraph,
    plan: Plan,
    scores: Callable[[], dict[int, np.ndarray]] | None,
    *,
    units: tuple[str, ...] = (),
    min_keep: int = 1,
    round_to=1,
    ignore=(),
) -> tuple[Plan, dict]:
    """``plan`` with every head group keeping the same count (rule 2), and the report's keys.

    ``scores()`` gives the criterion's scores per group id (called only when counts must move);
    None means the plan was given as it is (rule 3)."""
    groups = head_groups(deps)
    if not groups:
        return plan, {"num_key_value_heads": None, "uniform_heads": "the model has no attention head groups"}
    kept = {g.id: g.size - len(plan.removed(g)) for g in groups}
    if scores is None:
        if len(set(kept.values())) > 1:
            counts = ", ".join(f"{g.label} {kept[g.id]}" for g in groups)
            raise InputError(f"--uniform-heads: the plan leaves the head groups different counts ({counts})")
        return plan, _keys(groups, kept)
    skip = protected(deps, ignore)
    fixed = [g for g in groups if not g.prunable or g.id in skip or (units and "heads" not in units)]
    free = [g for g in groups if g not in fixed]
    k = int(round(float(np.mean([kept[g.id] for g in free])))) if free else 0
    step = max((unit_step(g, round_to) for g in free), default=1)
    if step > 1:
        k = max(step, int(round(k / step)) * step)
    k = max(k, min_keep, 1, *(g.size for g in fixed))
    k = min(k, *(g.size for g in groups))
    removals = {gid: idx for gid, idx in plan.removals.items() if deps.groups[gid].unit != "heads"}
    if any(kept[g.id] != k for g in free):
        table = scores()
        for g in free:
            n = g.size - k
            if n > 0:
                order = np.argsort(table[g.id], kind="stable")
                removals[g.id] = np.sort(order[:n]).astype(np.int64)
    else:
        removals.update({g.id: plan.removed(g) for g in free if len(plan.removed(g))})
    out = Plan(removals)
    notes = _keys(groups, {g.id: g.size - len(out.removed(g)) for g in groups})
    if fixed and k >= max(g.size for g in free or groups):
        notes["uniform_heads"] = (
            f"{len(fixed)} head group{'s' if len(fixed) > 1 else ''} cannot lose heads (blocked, ignored or not in"
            " --unit): every layer keeps all of its heads"
        )
    return out, notes


def _keys(groups: list[Group], kept: dict[int, int]) -> dict:
    counts = {kept[g.id] for g in groups}
    k = counts.pop() if len(counts) == 1 else None
    per = {g.facts.get("query_heads_per_unit", 1) for g in groups}
    q = k * per.pop() if k is not None and len(per) == 1 else None
    return {"num_key_value_heads": k, "num_attention_heads": q}
