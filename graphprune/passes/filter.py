"""Filter pruning: remove output filters ranked by a criterion; everything coupled follows."""

from __future__ import annotations

import json
from dataclasses import dataclass

import onnx

from ..allocate import allocate, protected
from ..criteria import CRITERIA, score_groups
from ..dependency import DependencyGraph, analyze
from ..errors import InputError
from ..plan import Plan, plan_from_json
from ..surgery import apply_plan
from . import PassResult, TransformMixin

PLAN_METADATA_KEY = "graphprune.plan"
UNITS = ("heads", "mlp", "channels", "hidden")
DEFAULT_UNITS = ("heads", "mlp", "channels")  # hidden width is inexact: only when asked for


@dataclass(frozen=True)
class FilterPruning(TransformMixin):
    """Remove the lowest-scoring ``ratio`` of every prunable group (or by one global threshold).

    ``plan`` (a plan's JSON object) replaces scoring and allocation: its removals are
    applied as they are. The pruned model carries its plan in ``metadata_props`` under
    ``graphprune.plan``, so it can be validated later against the original.
    """

    ratio: float = 0.5
    criterion: str = "l2"
    global_threshold: bool = False
    round_to: int = 1
    min_keep: int = 1
    ignore: tuple[str, ...] = ()
    seed: int = 0
    plan: dict | None = None
    plan_source: str = "plan"  # names the plan in error messages (its file, usually)
    units: tuple[str, ...] = ()  # prune only groups of these units (heads, mlp, channels); () = all

    def __post_init__(self) -> None:
        if self.plan is None:
            if not 0.0 < self.ratio < 1.0:
                raise InputError(f"ratio must be between 0 and 1 (exclusive), got {self.ratio}")
            if self.criterion not in CRITERIA:
                raise InputError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        unknown = set(self.units) - set(UNITS)
        if unknown:
            raise InputError(f"unknown unit {sorted(unknown)[0]!r}; choose from {', '.join(UNITS)}")
        if self.round_to < 1:
            raise InputError(f"round-to must be a positive integer, got {self.round_to}")
        if self.min_keep < 1:
            raise InputError(f"min-keep must be a positive integer, got {self.min_keep}")

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        deps = analyze(model, inexact=self.inexact)
        pruned, plan, report = self.run(model, deps)
        return PassResult(pruned, report)

    @property
    def inexact(self) -> bool:
        """Whether this pass needs an inexact analysis: hidden width asked for, or a plan
        (which may name such groups)."""
        return "hidden" in self.units or self.plan is not None

    def choose(self, deps: DependencyGraph) -> tuple[Plan, dict]:
        """The plan this pass would apply to ``deps``, and notes for the report."""
        if self.plan is not None:
            return plan_from_json(self.plan, deps, source=self.plan_source), {"source": self.plan_source}
        scores, ctx = score_groups(deps, self.criterion, seed=self.seed)
        units = self.units or DEFAULT_UNITS
        scores = {gid: s for gid, s in scores.items() if deps.groups[gid].unit in units}
        plan = allocate(
            deps,
            scores,
            self.ratio,
            global_threshold=self.global_threshold,
            round_to=self.round_to,
            min_keep=self.min_keep,
            ignore=self.ignore,
        )
        return plan, {"criterion_fallbacks": dict(ctx.fallbacks)}

    def run(self, model: onnx.ModelProto, deps: DependencyGraph, *, inplace: bool = False):
        """Plan and surgery on an analysed model: ``(pruned, plan, report)``."""
        plan, notes = self.choose(deps)
        plan_json = plan.to_json(deps)
        pruned = apply_plan(model, deps, plan, inplace=inplace)
        set_metadata(pruned, PLAN_METADATA_KEY, json.dumps(plan_json, separators=(",", ":")))
        return pruned, plan, self.report(deps, plan, notes)

    def report(self, deps: DependencyGraph, plan: Plan, notes: dict) -> dict:
        skipped = protected(deps, self.ignore)
        blocked = deps.blocked_groups()
        return {
            "criterion": None if self.plan is not None else self.criterion,
            "ratio": None if self.plan is not None else self.ratio,
            "global": self.global_threshold,
            "round_to": self.round_to,
            "units": list(self.units or DEFAULT_UNITS),
            "groups_total": len(deps.groups),
            "groups_prunable": len(deps.prunable_groups()),
            "groups_pruned": len(plan.removals),
            "groups_blocked": len(blocked),
            "groups_ignored": len(skipped),
            "channels_removed": plan.total_removed,
            "blocked": [{"group": g.label, "size": g.size, "reasons": g.reasons} for g in blocked],
            "blocked_reasons": deps.blocked_counts(),
            **notes,
        }


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def get_metadata(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)
