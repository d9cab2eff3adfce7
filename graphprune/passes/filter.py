"""Filter pruning: remove output filters ranked by a criterion; everything coupled follows.

With calibration data (``calib``) the data criteria (``activation``, ``apoz``,
``fluctuation``, ``wanda``) can rank, and ``compensate`` (``bias`` or ``lstsq``) folds what
the removed channels contributed back into their consumers' weights.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..analysis.dependency import DependencyGraph, analyze
from ..analysis.iochange import io_changes, release_for, release_io
from ..analysis.plan import Plan, plan_from_json
from ..calibration.datasets import DEFAULT_BATCH
from ..calibration.statistics import Statistics
from ..edit.compensate import METHODS
from ..edit.maskmode import check_mode, mode_option
from ..edit.surgery import apply_plan
from ..errors import InputError
from ..ir.input_sizes import count_shapes
from ..options import option
from ..planning.allocate import TargetResult, allocate, allocate_to_target
from ..planning.criteria import CRITERIA, score_groups
from ..planning.criteria.data_driven import DATA_CRITERIA
from ..planning.criteria.second_order import DEFAULT_COMPENSATION, GRAM_CRITERIA
from ..planning.headcount import even_heads
from . import PassContext, PassResult, TransformMixin
from .finish import (
    PLAN_METADATA_KEY,
    check_data_options,
    check_labels_option,
    check_round_to,
    check_scope,
    check_sequential,
    finish,
    get_metadata,
    group_report,
    measure,
    round_to_of,
    set_metadata,
)

__all__ = ["FilterPruning", "PLAN_METADATA_KEY", "get_metadata", "set_metadata"]
UNITS = ("heads", "mlp", "channels", "hidden")
DEFAULT_UNITS = ("heads", "mlp", "channels")  # hidden width is inexact: only when asked for
OBJECTIVES = ("flops", "params", "latency")
LATENCY_MODELS = ("layer", "model")  # per-layer curves, or whole-model timings per group
LATENCY_TOLERANCE = 0.05  # a latency target is met when the measured ratio is within 5% of it
LATENCY_TRIES = 4
# A FLOPs/params target keeps conv channels on the channel step when that reaches within this
# (absolute fraction of the original) of the target; else counts are left free (see _to_target)
STEPPED_TARGET_SLACK = 0.01


@dataclass(frozen=True)
class FilterPruning(TransformMixin):
    """Remove the lowest-scoring ``ratio`` of every prunable group (or by one global threshold).

    ``plan`` (a plan's JSON object) replaces scoring and allocation: its removals are
    applied as they are. A target (``target_flops``, ``target_params`` or ``target_latency``:
    the fraction of the original to keep) replaces ``ratio``: allocation prices each group's
    units by the ``objective`` they save (default: the target's own metric); latency comes
    from a per-layer table measured on this machine (cached, ``latency_table`` names the file),
    and a latency target is checked, and corrected, by timing the pruned model.
    The pruned model carries its plan in ``metadata_props`` under ``graphprune.plan``,
    so it can be validated later against the original.
    """

    ratio: float = option(0.5, "fraction of each group to remove (default 0.5)")
    criterion: str = option("l2", f"how entries are ranked: one of {', '.join(sorted(CRITERIA))} (default l2)")
    global_threshold: bool = option(
        False, "one threshold over all groups' normalised scores instead of a uniform ratio", flag="--global"
    )
    round_to: int | None = option(  # None: conv channels on this machine's channel step (finish.round_to_of)
        1,
        "keep channel counts multiples of N (default: this machine's channel step, the onnxruntime kernels'"
        " block, for convolution channels; 1 for mlp and heads; --round-to 1 for exact ratios)",
        cli_default=None,
    )
    min_keep: int = option(1, "keep at least N entries per group")
    ignore: tuple[str, ...] = option((), "protect layers: node or tensor names (glob patterns allowed)", metavar="NAME")
    seed: int = option(0, "seed of the random criterion and inputs")
    plan: dict | None = option(None, "apply this plan (JSON) instead of --ratio/--criterion")
    plan_source: str = option("plan", cli=False)  # names the plan in error messages (its file, usually)
    units: tuple[str, ...] = option(
        (),
        "prune only these units: attention heads, mlp neurons (matrix products), conv channels (default:"
        " these three); 'hidden' also prunes a transformer's residual width through its LayerNorms, which"
        " is not function-preserving: it is reported as inexact and measured by fidelity",
        flag="--unit",
        choices=UNITS,
    )
    compensate: str | None = option(  # None: the criterion's default (obs for obs/dcp, else none)
        None,
        "fold the removed channels' contribution into their consumers: bias (their mean), lstsq (least-squares"
        " refit of the kept weights), obs (the optimal brain surgeon update: the refit damped toward the original"
        " weights); needs --calib (default none; obs for --criterion obs/dcp, lstsq for --pass channel)",
        choices=METHODS,
    )
    sequential: bool = option(
        False,
        "refit the consumers stage by stage in topological order on the pruned model's own inputs, so each"
        " layer repairs the error of those before it (one pass over --calib per stage; any --compensate but none)",
    )  # graphprune.edit.sequential
    labels: str | None = option(
        None,
        "--criterion dcp: the class labels of --calib under KEY (default key: labels); samples the classifier"
        " decides by a small margin weigh more in the selection",
        metavar="KEY",
        const="labels",
    )
    calib: Any = option(
        None,
        "calibration data: an .npz file (keys = the model's input names, samples on axis 0) or a folder of"
        " them; needed by the data criteria, --compensate, --pass channel and the influence block criterion;"
        " fidelity is measured on it",
        metavar="DATA",
    )  # a Dataset, or a path to an .npz file or a folder of them
    calib_samples: int | None = option(None, "use at most N samples of --calib", metavar="N")
    batch_size: int = option(DEFAULT_BATCH, "samples per onnxruntime run on --calib (default 32)", metavar="N")
    target_flops: float | None = option(None, "keep this fraction of the MACs (0<F<1)", metavar="F")
    target_params: float | None = option(None, "keep this fraction of the parameters (0<P<1)", metavar="P")
    target_latency: float | None = option(
        None, "keep this fraction of the onnxruntime latency measured on this machine (0<L<1)", metavar="L"
    )
    target_at_most: bool = option(
        False,
        "with --target-flops/--target-params: the nearest plan that keeps at most the target (a budget that"
        " --round-to steps never carry over); default: the plan nearest the target, above or below",
    )
    objective: str | None = option(
        None,
        "what allocation to a target credits a removed channel with saving (default: the target's metric);"
        " latency keeps channel counts on this machine's channel step (the onnxruntime kernels' block) and,"
        " with a FLOPs/params target, applies the faster of two timed allocations",
        choices=OBJECTIVES,
    )
    latency_table: str | None = option(None, "latency table file (default: ~/.cache/graphprune/)", metavar="PATH")
    latency_model: str = option(
        "layer",
        "latency for --objective/--target-latency: per-layer curves (layer, default) or the whole model"
        " timed with each group pruned alone (model)",
        choices=LATENCY_MODELS,
    )
    threads: int = option(1, "onnxruntime threads for latency tables (default 1)")
    progress: Callable[[str], None] | None = option(None, cli=False, compare=False)
    mode: str = mode_option()  # remove | mask (graphprune.edit.maskmode)
    # measured drops per group (a Sensitivity or its JSON file) price each group's removals for a target
    sensitivity: Any = option(
        None,
        "allocate to the target by the drops `graphprune sensitivity` measured per group (which channels"
        " go within a group still follows --criterion)",
        metavar="SENS.json",
        compare=False,
    )
    allow_io_change: bool = option(
        False,
        "also prune groups whose only obstacle is graph inputs/outputs paired as carried state, such as a"
        " KV cache's past_key_values.* and present.* (both lose the same heads); the report lists every input"
        " and output whose shape changed (io_changes)",
    )  # iochange.py
    uniform_heads: bool = option(
        False,
        "keep the same number of (KV) heads in every layer, so that one num_key_value_heads in a runtime"
        " config stays valid (the report gives it)",
    )  # headcount.py

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.compensate is None:  # frozen: the criterion's default is settled once, here
            object.__setattr__(self, "compensate", DEFAULT_COMPENSATION.get(self.criterion, "none"))
        targets = {k: v for k, v in self.targets.items() if v is not None}
        if len(targets) > 1:
            raise InputError(f"choose one target, not {' and '.join('--target-' + k for k in targets)}")
        for k, v in targets.items():
            if not 0.0 < v < 1.0:
                raise InputError(f"target-{k} must be between 0 and 1 (exclusive), got {v}")
        if targets and self.plan is not None:
            raise InputError("a plan replaces allocation: it cannot be combined with a target")
        if self.latency_model not in LATENCY_MODELS:
            raise InputError(f"unknown latency model {self.latency_model!r}; choose from {', '.join(LATENCY_MODELS)}")
        if self.objective is not None:
            if self.objective not in OBJECTIVES:
                raise InputError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
            if not targets:
                raise InputError("objective needs a target (target-flops, target-params or target-latency)")
        if self.target_at_most and (
            not targets or "latency" in targets or self.objective == "latency" or self.plan is not None
        ):
            raise InputError(
                "target-at-most needs target-flops or target-params, allocated by the cost model"
                " (not target-latency, objective latency or a plan)"
            )
        if self.sensitivity is not None and not targets:
            raise InputError(
                "sensitivity-based allocation needs a target (target-flops, target-params or target-latency)"
            )
        if self.threads < 1:
            raise InputError(f"threads must be a positive integer, got {self.threads}")
        if self.plan is None:
            if not targets and not 0.0 < self.ratio < 1.0:
                raise InputError(f"ratio must be between 0 and 1 (exclusive), got {self.ratio}")
            if self.criterion not in CRITERIA:
                raise InputError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        needs_data = self.plan is None and self.criterion in (*DATA_CRITERIA, *GRAM_CRITERIA)
        what = f"criterion {self.criterion!r}"
        check_data_options(what, self.compensate, self.calib, needs_data, self.batch_size, self.calib_samples)
        check_sequential(self.sequential, self.compensate)
        check_labels_option(self.labels, None if self.plan is not None else self.criterion)
        unknown = set(self.units) - set(UNITS)
        if unknown:
            raise InputError(f"unknown unit {sorted(unknown)[0]!r}; choose from {', '.join(UNITS)}")
        check_round_to(self.round_to)
        if self.min_keep < 1:
            raise InputError(f"min-keep must be a positive integer, got {self.min_keep}")

    @property
    def targets(self) -> dict[str, float | None]:
        return {"flops": self.target_flops, "params": self.target_params, "latency": self.target_latency}

    @property
    def target(self) -> tuple[str, float] | None:
        """The target's metric and fraction, if there is one."""
        return next(((k, v) for k, v in self.targets.items() if v is not None), None)

    def __call__(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
        """Calibrate (if the criterion needs data), plan (to a target, if any), compensate (if
        asked) and cut."""
        context = context or PassContext()
        deps = context.deps if context.deps is not None else analyze(model, inexact=self.inexact)
        if context.sizes is not None and deps.sample_shapes is None:
            deps.sample_shapes = count_shapes(model, context.sizes) or deps.view.shapes
        if self.allow_io_change:
            release_io(deps)
        scope = check_scope(deps, self.ignore, self.units)
        stats = None
        if self.plan is None and self.criterion in (*DATA_CRITERIA, *GRAM_CRITERIA):
            want = {"channels", "gram"} if self.criterion in GRAM_CRITERIA else {"channels"}
            stats = measure(self, model, deps, want)
        if self.measures_candidates:
            plan, notes = self._fastest(model, deps, stats)
        else:
            plan, notes = self.choose(deps, stats)
        if self.target_latency is not None:
            plan, notes = self._settle_latency(model, deps, plan, notes, stats)
        if self.uniform_heads:
            scores = None if self.plan is not None else (lambda: self._scores(deps, stats)[0])
            round_to = round_to_of(self.round_to, deps)[0]
            units = self.units or DEFAULT_UNITS
            plan, heads = even_heads(
                deps, plan, scores, units=units, min_keep=self.min_keep, round_to=round_to, ignore=self.ignore
            )
            notes = {**notes, **heads}
        result, data_notes = finish(self, model, deps, plan, stats, inplace=context.inplace, inexact=self.inexact)
        result.report = {**self.report(deps, plan, notes), **data_notes}
        result.report["io_changes"] = [c.to_json() for c in io_changes(result.deps, result.plan)]
        result.report["notes"] = result.report.get("notes", []) + scope
        return result

    @property
    def inexact(self) -> bool:
        """Whether this pass needs an inexact analysis: hidden width asked for, or a plan
        (which may name such groups)."""
        return "hidden" in self.units or self.plan is not None

    def choose(
        self, deps: DependencyGraph, stats: Statistics | None = None, *, goal: float | None = None
    ) -> tuple[Plan, dict]:
        """The plan this pass would apply to ``deps``, and notes for the report (``stats``:
        calibration statistics for a data criterion; ``goal`` overrides the fraction a target
        asks of its cost model, to correct a latency estimate)."""
        if self.plan is not None:
            release_for(self.plan, deps, self.allow_io_change)
            chosen = plan_from_json(self.plan, deps, source=self.plan_source)
            return chosen, {"source": self.plan_source}
        scores, ctx = self._scores(deps, stats)
        if self.target is not None:
            result, notes = self._to_target(deps, scores, goal)
            return result.plan, {"criterion_fallbacks": dict(ctx.fallbacks), **notes}
        round_to, step = round_to_of(self.round_to, deps)
        plan = allocate(
            deps,
            scores,
            self.ratio,
            global_threshold=self.global_threshold,
            round_to=round_to,
            min_keep=self.min_keep,
            ignore=self.ignore,
        )
        return plan, {"criterion_fallbacks": dict(ctx.fallbacks), **({"channel_step": step} if step else {})}

    def _scores(self, deps: DependencyGraph, stats: Statistics | None) -> tuple[dict, Any]:
        scores, ctx = score_groups(deps, self.criterion, seed=self.seed, stats=stats)
        units = self.units or DEFAULT_UNITS
        return {gid: s for gid, s in scores.items() if deps.groups[gid].unit in units}, ctx

    def _to_target(
        self, deps: DependencyGraph, scores: dict, goal: float | None, cm: Any = None
    ) -> tuple[TargetResult, dict]:
        from ..planning.cost_model import CostModel

        metric, fraction = self.target  # type: ignore[misc]
        objective = self.objective or metric
        cm = cm or CostModel(deps)
        if "flops" in (metric, objective) and cm.flops_before == 0:
            # cost.py counts a node only when every shape it needs is known; symbolic input dims
            # are sized (graphprune.ir.input_sizes), so this is shape inference failing even then
            raise InputError(
                "cannot count this model's MACs: shape inference leaves its ops without shapes, even with its"
                " dynamic dims sized; give other sizes with --input-shape, or use --target-params or --ratio"
            )
        costs = _metric_costs(cm)
        notes: dict = {"target": {"metric": metric, "fraction": fraction}, "objective": objective}
        if self.target_at_most:
            notes["target"]["at_most"] = True
        # By default (round_to None) a FLOPs or parameter target keeps convolution channels on the
        # runtime's channel step, as a ratio does (YOLOv8n at half its MACs: 0.62 of the latency
        # on the step, 0.81 off it), unless whole steps are too coarse to meet it within
        # STEPPED_TARGET_SLACK (small models): then counts are free and the target is met exactly.
        # Latency uses the step below.
        round_to, grids = self.round_to or 1, None
        stepped = None
        if self.round_to is None and "latency" not in (metric, objective):
            stepped, step_note = round_to_of(None, deps)
        if "latency" in (metric, objective):
            lm, notes["latency_table"] = self._latency_model(deps, cm)
            costs["latency"] = lm.fraction
            # latency steps at the runtime's channel block: a count between two multiples
            # costs as much as the next one up, so only multiples are worth keeping
            round_to, notes["channel_step"] = self._latency_round_to()
            if objective == "latency":
                grids = lm.grids(deps)  # and the counts the latency model can speak for
        losses = None
        if self.sensitivity is not None:
            losses, notes["sensitivity"] = self._losses(deps)
            scores = {gid: s for gid, s in scores.items() if gid in losses}  # the others were not measured
        wanted = fraction if goal is None else goal

        def allocation(round_to):
            return allocate_to_target(
                deps,
                scores,
                wanted,
                costs[metric],
                cm.group_ids,
                objective=costs[objective],
                grids=grids,
                round_to=round_to,
                min_keep=self.min_keep,
                ignore=self.ignore,
                losses=losses,
                at_most=self.target_at_most,
            )

        result = None
        if stepped is not None and stepped != 1:
            result = allocation(stepped)
            if abs(result.reached - wanted) <= STEPPED_TARGET_SLACK:
                notes["round_to"], notes["channel_step"] = stepped, step_note
            else:
                notes["channel_step_skipped"] = (
                    f"whole steps of {step_note['step']} channels reach {result.reached:.3f}, not {wanted:.3f}:"
                    " channel counts left free"
                )
                result = None
        if result is None:
            result = allocation(round_to)
        notes["reached"] = round(result.reached, 5)
        if metric == "latency":
            notes["reached_estimate"] = notes["reached"]
        return result, notes

    def _latency_round_to(self) -> tuple[int, dict]:
        """``round_to`` for a latency-aware allocation: a multiple of this machine's channel step."""
        from ..objectives.hardware import channel_step

        step = channel_step()
        return math.lcm(self.round_to or 1, step.step), step.to_json()

    @property
    def measures_candidates(self) -> bool:
        """Whether this pass picks its plan by timing candidates: ``objective="latency"`` with a
        FLOPs or parameter target (a latency target is timed and corrected instead)."""
        return (
            self.plan is None
            and self.objective == "latency"
            and self.target is not None
            and (self.target[0] != "latency")
        )

    def _fastest(self, model: onnx.ModelProto, deps: DependencyGraph, stats: Statistics | None) -> tuple[Plan, dict]:
        """For ``objective="latency"`` under a FLOPs or parameter target: allocate two ways at the
        same target (by the latency table, and one ratio for every group, both on the channel
        step), time each cut against the original in alternation, and keep the one with the
        least latency per unit of the metric kept (they reach the target to within a step); the
        table's wins when within 1% of the other (noise), as it follows the scores more closely.
        The table alone can prefer thin layers that onnxruntime runs slowly per operation
        (measured on resnet50: estimated 0.19 of the original's latency, measured 0.30, against
        0.27 for a uniform cut at the same MACs). Allocating by the target's own metric was
        also tried as a third candidate and measured slowest every time (mobilenet_v2 at 28% of
        its MACs: 0.79-0.82 of the original's latency, against 0.38-0.40), so it is not timed."""
        from ..planning.allocate import uniform_to_target
        from ..planning.cost_model import CostModel
        from ..planning.layer_latency import interleaved_ms, timing_sessions

        metric, fraction = self.target  # type: ignore[misc]
        scores, ctx = self._scores(deps, stats)
        cm = CostModel(deps)
        by_table, notes = self._to_target(deps, scores, None, cm)
        cost = _metric_costs(cm)[metric]
        uniform, uniform_reached = uniform_to_target(
            deps,
            scores,
            fraction,
            lambda removals: float(cost(cm.removed_of(removals)[None, :])[0]),
            round_to=self._latency_round_to()[0],
            min_keep=self.min_keep,
            ignore=self.ignore,
        )
        candidates: list[tuple[str, Plan, float]] = []
        for name, plan, reached in (
            ("latency", by_table.plan, by_table.reached),
            ("uniform", uniform, uniform_reached),
        ):
            if not any(plan.same_removals(other) for _, other, _ in candidates):
                candidates.append((name, plan, reached))
        if self.progress:
            self.progress(f"timing {len(candidates)} allocations against the original")
        repeats = _timing_repeats(notes)
        pruned = [apply_plan(model, deps, plan) for _, plan, _ in candidates]
        times = interleaved_ms(timing_sessions([model, *pruned], self.threads, warmup=3), repeats)
        del pruned
        before = statistics.median(times[0])
        after = [statistics.median(t) for t in times[1:]]
        # latency per unit of the target's metric kept: a candidate that overshoots the target
        # (uniform steps are coarse) is not preferred for being cut deeper
        per_kept = [ms / max(r, 1e-9) for ms, (_, _, r) in zip(after, candidates, strict=True)]
        pick = next(i for i, v in enumerate(per_kept) if v <= min(per_kept) * 1.01)
        name, plan, reached = candidates[pick]
        notes["criterion_fallbacks"] = dict(ctx.fallbacks)
        notes["allocation"] = name
        notes["reached"] = round(reached, 5)
        notes["latency_measured"] = {
            "before_ms": round(before, 3),
            "after_ms": round(after[pick], 3),
            "candidates": [
                {"allocation": n, "reached": round(r, 5), "measured": round(ms / before, 5)}
                for (n, _, r), ms in zip(candidates, after, strict=True)
            ],
        }
        return plan, notes

    def _latency_model(self, deps: DependencyGraph, cm) -> tuple[Any, dict]:
        """The latency model of ``latency_model`` (its table measured or read from the cache)
        and the report's note on its table."""
        if self.latency_model == "model":
            from ..planning.model_latency import ModelLatency, model_table

            mt = model_table(deps, cm, threads=self.threads, path=self.latency_table, progress=self.progress)
            note = {
                "model": "model",
                "plans": len(mt.plans),
                "measured_now": mt.measured,
                "model_ms": round(mt.model_ms, 3),
                "threads": self.threads,
            }
            return ModelLatency(mt, cm), note
        from ..planning.layer_latency import LatencyModel, latency_table

        table = latency_table(deps, cm, threads=self.threads, path=self.latency_table, progress=self.progress)
        note = {
            "model": "layer",
            "layers": len(table.layers),
            "configs": len({ly.config for ly in table.layers}),
            "measured_now": table.measured,
            "model_ms": round(table.model_ms, 3),
            "threads": self.threads,
        }
        return LatencyModel(table, cm), note

    def _losses(self, deps: DependencyGraph) -> tuple[dict, dict]:
        from ..planning.sensitivity import Sensitivity, loss_curves, read_sensitivity

        sens = self.sensitivity
        source = "sensitivity" if isinstance(sens, Sensitivity) else str(sens)
        if not isinstance(sens, Sensitivity):
            sens = read_sensitivity(sens)
        curves, missing = loss_curves(sens, deps)
        if not curves:
            raise InputError(f"{source}: no prunable group of this model is in it (measured on {sens.model})")
        note = {"source": source, "metric": sens.metric, "groups": len(curves), "not_measured": missing}
        return curves, note

    def run(self, model: onnx.ModelProto, deps: DependencyGraph, *, inplace: bool = False):
        """Plan and surgery on an analysed model: ``(pruned, plan, report)``."""
        result = self(model, PassContext(deps=deps, inplace=inplace))
        return result.model, result.plan, result.report

    def _settle_latency(self, model, deps, plan, notes, stats):
        """For a latency target: time the pruned model against the original and, while the
        measured ratio misses the target by more than 5%, move the estimate's goal (secant
        through the tries so far) and allocate again; the try measured nearest the target wins.
        Compensation changes weights only, so the timing of the uncompensated cut stands."""
        from ..planning.layer_latency import compare_latency

        target = float(self.target_latency)  # type: ignore[arg-type]
        goal = target
        repeats = _timing_repeats(notes)
        tries: list[dict] = []
        best = None
        for attempt in range(LATENCY_TRIES):
            pruned = apply_plan(model, deps, plan)
            before, after = compare_latency(model, pruned, threads=self.threads, repeats=repeats)
            del pruned
            ratio = after / before
            tries.append({"goal": round(goal, 5), "estimate": notes["reached_estimate"], "measured": round(ratio, 5)})
            if best is None or abs(ratio - target) < abs(best[2] - target):
                best = (plan, notes, ratio, before, after)
            if abs(ratio / target - 1) <= LATENCY_TOLERANCE or attempt == LATENCY_TRIES - 1:
                break
            goal = _next_goal(tries, target)
            plan, notes = self.choose(deps, stats, goal=goal)
        plan, notes, ratio, before, after = best  # type: ignore[misc]
        notes["reached"] = round(ratio, 5)
        notes["latency_measured"] = {"before_ms": round(before, 3), "after_ms": round(after, 3), "tries": tries}
        return plan, notes

    def report(self, deps: DependencyGraph, plan: Plan, notes: dict) -> dict:
        return {
            "criterion": None if self.plan is not None else self.criterion,
            "ratio": None if self.plan is not None or self.target is not None else self.ratio,
            "global": self.global_threshold,
            # the multiple conv channels were kept at (the channel step when it was the default)
            "round_to": self.round_to if self.round_to is not None else notes.get("channel_step", {}).get("step", 1),
            **group_report(deps, plan, self.ignore, self.units or DEFAULT_UNITS),
            **notes,
        }


def _metric_costs(cm) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Fractions of the original's FLOPs and parameters a cost model's removal rows keep."""
    return {
        "flops": lambda r: cm.flops(r) / max(cm.flops_before, 1),
        "params": lambda r: cm.params(r) / max(cm.params_before, 1),
    }


def _timing_repeats(notes: dict) -> int:
    """Runs per model for timing a cut against the original: about two seconds of them (20 at
    least, 200 at most), which a ratio measured on a shared machine needs."""
    return int(min(max(20, 2000 / max(notes["latency_table"]["model_ms"], 1e-3)), 200))


def _next_goal(tries: list[dict], target: float) -> float:
    """The estimate's next goal: scaled by the miss after one try, then the secant through the
    two tries measured nearest the target."""
    last = tries[-1]
    goal = last["goal"] * target / last["measured"]
    near = sorted(tries, key=lambda t: abs(t["measured"] - target))[:2]
    if len(near) == 2 and near[0]["goal"] != near[1]["goal"]:
        slope = (near[0]["measured"] - near[1]["measured"]) / (near[0]["goal"] - near[1]["goal"])
        if slope > 0:
            goal = near[0]["goal"] + (target - near[0]["measured"]) / slope
    return min(max(goal, 0.01), 0.99)
