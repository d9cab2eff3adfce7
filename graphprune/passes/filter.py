"""Filter pruning: remove output filters ranked by a criterion; everything coupled follows.

With calibration data (``calib``) the data criteria (``activation``, ``apoz``,
``fluctuation``, ``wanda``) can rank, and ``compensate`` (``bias`` or ``lstsq``) folds what
the removed channels contributed back into their consumers' weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from ..allocate import allocate, protected
from ..calibrate import Statistics
from ..criteria import CRITERIA, score_groups
from ..criteria.data import DATA_CRITERIA
from ..data import DEFAULT_BATCH
from ..dependency import DependencyGraph, analyze
from ..errors import InputError
from ..plan import Plan, plan_from_json
from . import PassResult, PruneOutcome, TransformMixin
from .finish import PLAN_METADATA_KEY, check_data_options, finish, get_metadata, measure, set_metadata

__all__ = ["FilterPruning", "PLAN_METADATA_KEY", "get_metadata", "set_metadata"]
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
    compensate: str = "none"  # none | bias | lstsq (needs calib)
    calib: Any = None  # calibration data: a Dataset, or a path to an .npz file or a folder of them
    calib_samples: int | None = None  # use at most this many samples of calib
    batch_size: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if self.plan is None:
            if not 0.0 < self.ratio < 1.0:
                raise InputError(f"ratio must be between 0 and 1 (exclusive), got {self.ratio}")
            if self.criterion not in CRITERIA:
                raise InputError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        needs_data = self.plan is None and self.criterion in DATA_CRITERIA
        what = f"criterion {self.criterion!r}"
        check_data_options(what, self.compensate, self.calib, needs_data, self.batch_size, self.calib_samples)
        unknown = set(self.units) - set(UNITS)
        if unknown:
            raise InputError(f"unknown unit {sorted(unknown)[0]!r}; choose from {', '.join(UNITS)}")
        if self.round_to < 1:
            raise InputError(f"round-to must be a positive integer, got {self.round_to}")
        if self.min_keep < 1:
            raise InputError(f"min-keep must be a positive integer, got {self.min_keep}")

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        deps = analyze(model, inexact=self.inexact)
        outcome = self.prune(model, deps)
        return PassResult(outcome.pruned, outcome.report)

    @property
    def inexact(self) -> bool:
        """Whether this pass needs an inexact analysis: hidden width asked for, or a plan
        (which may name such groups)."""
        return "hidden" in self.units or self.plan is not None

    def choose(self, deps: DependencyGraph, stats: Statistics | None = None) -> tuple[Plan, dict]:
        """The plan this pass would apply to ``deps``, and notes for the report (``stats``:
        calibration statistics for a data criterion)."""
        if self.plan is not None:
            return plan_from_json(self.plan, deps, source=self.plan_source), {"source": self.plan_source}
        scores, ctx = score_groups(deps, self.criterion, seed=self.seed, stats=stats)
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
        outcome = self.prune(model, deps, inplace=inplace)
        return outcome.pruned, outcome.plan, outcome.report

    def prune(self, model: onnx.ModelProto, deps: DependencyGraph, *, inplace: bool = False) -> PruneOutcome:
        """Calibrate (if the criterion needs data), plan, compensate (if asked) and cut."""
        stats = None
        if self.plan is None and self.criterion in DATA_CRITERIA:
            stats = measure(self, model, deps, {"channels"})
        plan, notes = self.choose(deps, stats)
        outcome, data_notes = finish(self, model, deps, plan, stats, inplace=inplace, inexact=self.inexact)
        outcome.report = {**self.report(deps, plan, notes), **data_notes}
        return outcome

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
