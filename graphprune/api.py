"""The Python API, mirroring the CLI: ``analyze``, ``prune``, ``validate``.

``model`` may be a path or an ``onnx.ModelProto``; nothing is written unless asked.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .analysis.dependency import DependencyGraph
from .analysis.dependency import analyze as _analyze
from .analysis.iochange import io_changes, io_map, release_for
from .analysis.plan import IO_CHANGES_KEY, Plan, compose, plan_from_json, read_plan
from .calibration.datasets import DEFAULT_BATCH, Dataset, input_specs, open_dataset
from .edit.surgery import pruned_shapes
from .errors import InputError
from .ir import files as io
from .ir import weights
from .ir.graph import find_cycle
from .ir.input_sizes import InputSizes, count_shapes, resolve
from .ir.weights import runnable
from .objectives.cost import Cost, TimedSession, cost_of, latency_ms, random_feeds
from .passes import PassContext, PassResult
from .passes.filter import PLAN_METADATA_KEY, get_metadata
from .passes.finish import COMPENSATE_METADATA_KEY, HISTORY_METADATA_KEY, SPARSITY_METADATA_KEY, fingerprint, history_of
from .present.report import Report
from .validation.contract import Exactness, Step, check_steps
from .validation.evaluate import check_labels, evaluate

ModelLike = str | os.PathLike | onnx.ModelProto
PIPELINE_METADATA_KEY = "graphprune.pipeline"
FIDELITY_SAMPLES = 256  # calibration samples prune's fidelity is measured on


@dataclass
class PruneResult:
    """The pruned model and its report; ``steps`` holds each pass's own report and ``plans`` each
    pass's plan (``{"pass", "plan"}``, addressing that step's input). For a single group pass,
    ``plan`` is its plan and ``deps`` the analysis it applies to (an empty plan and None for the
    layer pass and for pipelines)."""

    model: onnx.ModelProto
    report: Report
    plan: Plan = field(default_factory=Plan)
    deps: DependencyGraph | None = None
    steps: list[dict] = field(default_factory=list)
    plans: list[dict] = field(default_factory=list)
    removed: bool = True  # whether any step changed the model

    @property
    def nothing_pruned(self) -> str | None:
        """Why nothing was removed (the report says it), or None when something was."""
        if self.removed:
            return None
        whys = [s["nothing_pruned"] for s in self.steps if "nothing_pruned" in s]
        return "; ".join(whys) or "no step removed anything"


PipelineResult = PruneResult  # the name run_passes' result had; one result type for one pass or several


def load_model(model: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """A ModelProto from a path (with a clear error if it is not a usable ONNX file) or as given."""
    if isinstance(model, onnx.ModelProto):
        return model
    if check:
        # The checker runs first, by path: the C++ checker reads the file itself, so its
        # copy of the model is gone before Python loads its own (peak memory stays ~2x the
        # file, as for a plain load), and external data and >2 GB models work.
        io.check_readable(model)
        try:
            onnx.checker.check_model(os.fspath(model))
        except Exception as exc:  # onnx raises ValidationError (and others for odd files)
            proto = io.load(model, lazy=True)  # a file that does not even parse gets that, more precise, error
            io.check_opset(proto, model)
            cycle = find_cycle(proto)
            if cycle:
                shown = cycle if len(cycle) <= 6 else [*cycle[:3], "...", *cycle[-2:]]
                raise InputError(f"{model}: the graph has a cycle: {' -> '.join(shown)}") from None
            raise InputError(f"{model}: fails the ONNX checker: {io.one_line(exc)}") from None
    # External data stays on disk: weights are memory-mapped when needed (graphprune.ir.weights)
    proto = io.load(model, lazy=True)
    io.check_opset(proto, model)
    return proto


def analyze(model: ModelLike, *, input_shapes: dict | None = None) -> DependencyGraph:
    """The dependency graph and groups of ``model``; ``input_shapes`` ({input: dims}) sizes its
    symbolic input dims for counting costs (``deps.sample_shapes``), never for the analysis."""
    proto = load_model(model)
    deps = _analyze(proto)
    if input_shapes:
        deps.sample_shapes = count_shapes(proto, resolve(proto, input_shapes)) or deps.view.shapes
    return deps


def sample_sizes(
    model: onnx.ModelProto,
    input_shapes: dict | None = None,
    feeds: dict | None = None,
    *,
    probe: bool = True,
) -> InputSizes:
    """Sizes of ``model``'s symbolic input dims (:mod:`graphprune.ir.input_sizes`): from ``input_shapes``,
    then the shapes of ``feeds`` (given, or the data's first batch), then defaults, the image
    size being the first candidate the original runs on (``probe``)."""
    from .validation.contract import run

    def runs(dims: dict) -> bool:
        try:
            run(model, random_feeds(model, shapes=dims))
        except Exception:
            return False
        return True

    data_shapes = {k: np.shape(v) for k, v in (feeds or {}).items() if isinstance(v, np.ndarray)}
    return resolve(model, input_shapes, data_shapes, probe=runs if probe else None)


def _inputs(original, input_shapes, feeds, data, batch_size, *, validate: bool, check: bool = True):
    """``(sizes, feeds, what the feeds are)`` for a prune or a validation: the feeds given, else
    the data's first batch, else seeded random inputs at the resolved sizes. ``check``: when no
    default size runs the original, raise its error now (see :func:`_check_inputs`)."""
    inputs_from = "given feeds"
    if feeds is None and data is not None:
        feeds, inputs_from = first_batch(original, data, batch_size), "data's first batch"
    sizes = sample_sizes(original, input_shapes, feeds, probe=validate)
    if feeds is None and validate:
        feeds, inputs_from = random_feeds(original, shapes=sizes.dims), "generated inputs"
        if check:
            _check_inputs(original, sizes, feeds, inputs_from)
    return sizes, feeds, inputs_from


def _runs(original, feeds) -> bool:
    """Whether ``original`` runs on ``feeds``."""
    from .validation.contract import run_original

    try:
        run_original(original, feeds)
    except InputError:
        return False
    return True


def _check_inputs(original, sizes: InputSizes, feeds, inputs_from: str) -> None:
    """When no default size runs the original, say so before pruning, not after it."""
    if sizes.runs is False:
        from .validation.contract import run_original

        run_original(original, feeds, inputs_from)


def sample_cost(model: onnx.ModelProto, sizes: InputSizes | None = None, shapes: dict | None = None) -> Cost:
    """``cost_of(model)`` per sample: at ``sizes`` (default: :func:`graphprune.ir.input_sizes.resolve`'s
    defaults) when its inputs have symbolic dims, else at ``shapes`` or its own."""
    counted = count_shapes(model, sizes if sizes is not None else resolve(model))
    return cost_of(model, counted if counted is not None else shapes)


def prune(
    model: ModelLike,
    ratio: float | None = None,
    criterion: str | None = None,
    *,
    pass_: str = "filter",
    validate: bool = True,
    latency: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    inplace: bool = False,
    input_shapes: dict | None = None,
    latency_runs: int | None = None,
    **options,
) -> PruneResult:
    """Prune ``model`` and (by default) validate the result against the whole contract.

    ``options`` are the options of the ``pass_`` pass (``filter``, ``channel`` or ``layer``): the
    fields of :class:`~graphprune.passes.FilterPruning`, :class:`~graphprune.passes.ChannelPruning`
    or :class:`~graphprune.passes.LayerPruning`, the same declarations the CLI's flags come from;
    an option the pass does not take, or that no pass has, is an ``InputError``. This is a
    pipeline of one pass (:func:`run_passes`).

    ``plan`` is a plan's JSON object or a path to a plan file; it replaces ``ratio``
    and ``criterion``. ``units`` limits pruning to some kinds of group: ``"heads"``
    (attention heads), ``"mlp"`` (neurons of matrix products) and ``"channels"``
    (convolution channels), all three by default; ``"hidden"`` (a transformer's residual
    width, through its LayerNorms) is inexact and only pruned when asked for.
    ``target_flops``/``target_params``/``target_latency`` (fraction of the original kept)
    replace ``ratio`` with global allocation to that target; ``objective`` (``"flops"``,
    ``"params"``, ``"latency"``) is what a removed unit is credited with saving (default: the
    target's metric). Latency is measured with onnxruntime on this machine (``threads``), per
    layer into a cached table (``latency_table`` names its file), or with ``latency_model="model"``
    as the whole model timed with each group pruned alone; channel counts then stay on the
    machine's channel step (:func:`graphprune.objectives.hardware.channel_step`), and ``objective="latency"``
    with a FLOPs or parameter target times two allocations and keeps the faster; ``progress`` receives
    one-line messages while it is measured. ``sensitivity`` (a
    :class:`~graphprune.planning.sensitivity.Sensitivity` or its JSON file, from ``graphprune
    sensitivity``) prices each group's removals for a target by the drop measured when that
    group alone was pruned, instead of by its scores.
    Latency is the median of ``latency_runs`` timed runs of each model, or when None of 20 runs,
    fewer (at least three) once they took two seconds; ``report.latency_batch`` is the batch it ran at.
    ``report.passed`` says whether validation held. ``inplace=True`` (only without
    validation, which needs the original) edits ``model`` itself instead
    of a copy, to save memory on large models.

    Data-driven pruning: ``calib`` (a path to an ``.npz`` file or a folder of them, keys =
    the model's input names, or a :class:`~graphprune.calibration.datasets.Dataset`) feeds the data criteria
    (``activation``, ``apoz``, ``fluctuation``, ``wanda``), ``compensate`` (``"bias"`` or
    ``"lstsq"``) and ``pass_="channel"`` (consumer-side selection with least-squares refit;
    ``selection="greedy"`` or ``"lasso"``). ``calib_samples`` limits the samples used,
    ``batch_size`` the samples per onnxruntime run. Fidelity is then measured on up to 256
    samples of ``calib``; exactness and latency on its first batch (unless ``feeds`` are given).
    ``criterion="obs"`` selects by structured OBS and compensates by the OBS update by default
    (``compensate="obs"``); ``criterion="dcp"`` does the same on samples weighted by the
    classifier's margin, from the class labels under key ``labels`` of ``calib``.
    ``sequential=True`` refits stage by stage on the pruned model's own inputs
    (:mod:`graphprune.edit.sequential`; any compensation but none).

    Symbolic input dims: costs are per sample (batch 1) with the other symbolic dims from
    ``input_shapes`` ({input name: dims}, the CLI's ``--input-shape``), the data, or defaults
    (:mod:`graphprune.ir.input_sizes`); ``report.assumed_shapes`` says which. The pruned model keeps its
    symbolic dims. Validation feeds: ``feeds``, else ``calib``'s first batch, else random inputs
    at those sizes; if the original does not run on them, ``InputError``.

    ``criterion`` None is the pass's default (``l2`` for the filter and channel passes).
    ``allow_io_change=True`` lets groups whose only obstacle is paired graph inputs/outputs (a
    KV cache's past and present: :mod:`graphprune.analysis.iochange`) be pruned; ``report.prune["io_changes"]``
    lists every graph input/output whose shape changed. ``uniform_heads=True`` keeps the same
    head count in every layer (:mod:`graphprune.planning.headcount`; ``report.prune["num_key_value_heads"]``).
    ``round_to`` keeps channel counts multiples of it; None (the CLI's default) keeps convolution
    channels on this machine's channel step (:func:`graphprune.objectives.hardware.channel_step`, where
    onnxruntime's Conv kernels step in latency) and mlp neurons and heads free; the API's default
    stays 1, the ratio as asked, so that results do not depend on the machine.
    ``pass_="layer"`` removes ``remove_blocks`` (default 1) whole residual blocks ranked by
    ``criterion`` (``influence``, needing ``calib``, or ``weight-norm``; by default influence with
    ``calib`` and weight-norm without), validated as :func:`prune_layers` does; its ``plan`` is
    empty (no channel group loses entries) and the removed blocks are in
    ``report.prune["blocks_removed"]``.
    ``pass_="sparsity"`` writes zeros into the weights instead (``pattern`` ``"unstructured"``,
    ``"2:4"``, ``"4:8"`` or ``"kernel"``; ``sparsity`` the fraction zeroed; ``sparsity_criterion``
    ``"magnitude"``, ``"wanda"`` or ``"obs"``): :mod:`graphprune.passes.sparsity`. ``mode="mask"`` makes a
    structured pass write zeros where it would remove (shapes kept): :mod:`graphprune.edit.maskmode`.
    """
    options = {"ratio": ratio, "criterion": criterion, **options}
    plan = options.get("plan")
    if plan is not None and not isinstance(plan, dict) and pass_ != "layer":
        options["plan_source"] = str(plan)
        options["plan"] = read_plan(plan)
    if options.get("latency_table") is not None:
        options["latency_table"] = os.fspath(options["latency_table"])
    step = make_pass(pass_, **options)
    return run_passes(
        model,
        [step],
        validate=validate,
        latency=latency,
        feeds=feeds,
        input_shapes=input_shapes,
        latency_runs=latency_runs,
        inplace=inplace,
    )


def nothing_pruned(deps: DependencyGraph, *, from_plan: bool = False, channel_step: dict | None = None) -> str:
    """Why a prune removed nothing: what blocks every group, or what kept the prunable ones whole
    (``channel_step``: the report's note when convolution channels were kept on it by default)."""
    why = deps.why_nothing()
    if not why:
        n = len(deps.prunable_groups())
        what = "the plan" if from_plan else "the ratio, round-to, min-keep, ignore or unit"
        why = f"{what} leaves every one of the {n} prunable group{'s' if n > 1 else ''} whole"
        if channel_step and not from_plan:
            step = channel_step["step"]
            why += (
                f" (convolution channels are kept in whole channel steps of {step} by default; --round-to 1 prunes"
                " them as the ratio asks)"
            )
    return why


def make_pass(name: str, **options):
    """The pass registered as ``name`` (``filter``, ``channel``, ``layer``), given ``options`` (its
    dataclass's fields; None keeps the pass's default): :func:`graphprune.options.make_pass`."""
    from .options import make_pass as _make
    from .passes import PASSES

    return _make(name, PASSES, **options)


def first_batch(model: onnx.ModelProto, dataset: Dataset, batch_size: int) -> dict[str, np.ndarray] | None:
    """The first batch of ``dataset`` as feeds for ``model`` (None if it is empty)."""
    return next(iter(dataset.batches(input_specs(model), batch_size=batch_size, limit=batch_size)), None)


def prune_layers(
    model: ModelLike,
    remove_blocks: int = 1,
    criterion: str | None = None,
    *,
    calib: str | os.PathLike | None = None,
    validate: bool = True,
    latency: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    latency_runs: int | None = None,
) -> PruneResult:
    """Remove the ``remove_blocks`` least important residual blocks ``y = x + f(x)`` of ``model``.

    ``criterion`` is ``"influence"`` (needs ``calib``) or ``"weight-norm"``; by default
    influence when calibration data is given, weight-norm otherwise.
    """
    from .passes.layer import LayerPruning

    step = LayerPruning(remove_blocks=remove_blocks, criterion=criterion, calib=calib)
    return run_passes(model, [step], validate=validate, latency=latency, feeds=feeds, latency_runs=latency_runs)


def run_passes(
    model: ModelLike,
    passes,
    *,
    validate: bool = True,
    latency: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    input_shapes: dict | None = None,
    latency_runs: int | None = None,
    inplace: bool = False,
) -> PruneResult:
    """Run ``passes`` (FilterPruning, LayerPruning, ...) in order and validate: the one path of
    every prune (:func:`prune` is a pipeline of one pass).

    Exactness is checked per step: each step's output against the reference that step returned,
    built from its own input (the masked reference for a plan over groups, the zeroed-f(x) one for
    layer pruning), so it keeps meaning "the surgery did what the step's plan says". Checker,
    runtime and fidelity are end to end, against the original; with calibration data (a pass's
    ``calib``), fidelity is measured over up to 256 of its samples, and its first batch drives
    exactness and latency unless ``feeds`` are given. ``inplace=True`` (only without validation,
    which needs the original) lets the passes edit ``model`` instead of a copy.
    """
    if inplace and validate:
        raise InputError("inplace pruning cannot be validated: the original is needed for the reference")
    if len(passes) > 1 and any(getattr(p, "allow_io_change", False) for p in passes):
        raise InputError("allow-io-change works with one filter pass (prune), not in a pipeline of passes")
    original = load_model(model)
    passes = [_with_dataset(p) for p in passes]
    data = next((p.calib for p in passes if isinstance(getattr(p, "calib", None), Dataset)), None)
    batch = next((getattr(p, "batch_size", None) for p in passes if data is not None and p.calib is data), None)
    batch = batch or DEFAULT_BATCH
    sizes, feeds, inputs_from = _inputs(original, input_shapes, feeds, data, batch, validate=validate, check=False)
    if validate and sizes.runs is False and _worth_checking(original, passes):
        _check_inputs(original, sizes, feeds, inputs_from)  # before pruning, not after it
    costs: dict = {}
    current = original
    done: list[tuple[onnx.ModelProto, PassResult]] = []
    steps: list[dict] = []
    for p in passes:
        if len(passes) > 1:  # one pass: its target is a fraction of its own input already
            p, note = _relative_target(
                p, original_cost=lambda: _before(costs, original, done, sizes), current=current, sizes=sizes
            )
        else:
            note = {}
        if p is None:  # the earlier steps already met the target
            steps.append({"pass": note["pass"], "skipped": note["why"]})
            continue
        result = p(current, PassContext(sizes=sizes, inplace=inplace))
        result.name = result.name or type(p).__name__
        if not result.removed_anything and result.plan is not None:
            step = result.report.get("channel_step")
            why = nothing_pruned(result.deps, from_plan=getattr(p, "plan", None) is not None, channel_step=step)
            result.report = {**result.report, "nothing_pruned": why}
        steps.append({"pass": result.name, **result.report, **note})
        done.append((current, result))
        current = result.model
    plans = [{"pass": r.name, "plan": r.record} for _, r in done]
    if len(done) > 1:
        # Each step's plan addresses that step's input, not the original: they are kept
        # together, in order, under one key, so that `validate` applies none to the original.
        _pipeline_metadata(current, plans)
    single = done[0][1] if len(passes) == 1 and done else None
    # one pass: its report's keys at top level too (as a prune's report always had them)
    prune_section = {**{k: v for k, v in steps[0].items() if k != "pass"}, **_merge(steps)} if single else _merge(steps)
    # one step over groups (not masked): the pruned shapes follow from the analysis and the plan
    masked = single is not None and getattr(passes[0], "mode", "remove") == "mask"
    derived = pruned_shapes(single.deps, single.plan) if single and single.plan and not masked else None
    report = _costs_report(_before(costs, original, done, sizes), sample_cost(current, sizes, derived), prune_section)
    _assumed(report, sizes)
    removed = any(r.removed_anything for _, r in done)
    # a model left unchanged is validated only on inputs its original takes: else "nothing to prune" says more
    if validate and (removed or (sizes.runs is not False and _runs(original, feeds))):
        exacts = _validated(report, original, done, feeds, inputs_from, latency, latency_runs)
        if len(done) > 1:
            for entry, ex in zip([s for s in steps if "skipped" not in s], exacts):
                entry["exact"] = {"checked": ex.checked, "passed": ex.passed, "max_rel_diff": ex.max_rel_diff}
        if data is not None and report.runtime["passed"] and not weights.has_lazy(current):
            # Fidelity over the calibration data rather than its first batch (one sample for a
            # model fixed to batch 1); exactness and latency keep the first batch.
            cut = _cut(done) or None  # a changed KV cache: the data's kept entries (iochange)
            report.fidelity = evaluate(
                original, current, data, batch_size=batch, limit=FIDELITY_SAMPLES, cut=cut
            ).fidelity
    return PruneResult(
        model=current,
        report=report,
        plan=single.plan if single is not None and single.plan is not None else Plan(),
        deps=single.deps if single is not None else None,
        steps=steps,
        plans=plans,
        removed=removed,
    )


@dataclass(frozen=True)
class Pipeline:
    """Passes run in order as one validated step (:func:`run_passes`): ``pipeline(model)`` gives
    the :class:`PruneResult`, ``pipeline.apply(model)`` the model alone, refusing one that failed
    validation (for ``ModelProto -> ModelProto`` transform chains, next to onnxsim or onnxslim)."""

    passes: tuple
    validate: bool = True
    latency: bool = False

    def __call__(self, model: ModelLike) -> PruneResult:
        return run_passes(model, list(self.passes), validate=self.validate, latency=self.latency)

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        from .errors import ValidationFailed

        result = self(model)
        if result.report.validated and not result.report.passed:
            raise ValidationFailed("the pipeline's result failed validation; see its report")
        return result.model


def _worth_checking(original: onnx.ModelProto, passes) -> bool:
    """Whether inputs no default size runs are worth an error before pruning: not when nothing
    could be pruned (then "nothing to prune" says more than the inputs' error)."""
    if any(getattr(p, "plan", None) is not None for p in passes):
        return True
    return bool(_analyze(original, inexact=True).prunable_groups())


def _with_dataset(p):
    """``p`` with its calibration data (``calib``, a path) opened once as a Dataset, read by every step."""
    data = getattr(p, "calib", None)
    if data is None or isinstance(data, Dataset):
        return p
    return replace(p, calib=open_dataset(data))


def _before(costs: dict, original: onnx.ModelProto, done: list, sizes: InputSizes | None) -> Cost:
    """The original's cost per sample, counted once, at the shapes the first step's analysis
    inferred when it has them (shape inference is not repeated)."""
    if "before" not in costs:
        deps = done[0][1].deps if done else None
        shapes = deps.sample_shapes if deps is not None else None
        costs["before"] = cost_of(original, shapes) if shapes is not None else sample_cost(original, sizes)
    return costs["before"]


def _validated(report: Report, original, done: list, feeds, inputs_from: str, latency: bool, runs: int | None):
    """The report's validation (:func:`graphprune.validation.contract.check_steps`) and latencies; each
    step's exactness."""
    final = done[-1][1].model if done else original
    # a lazy pruned model is written once (its sliced weights spilled to a file, which saving
    # then renames into the output), for every check
    weights.spill(final)
    steps = [
        Step(before, r.model, r.reference, r.skipped_groups, cut=io_map(r.deps, r.plan), violations=r.violations)
        for before, r in done
    ]
    cut = _cut(done)
    with runnable(final) as source, _timed(original, feeds, latency) as timed:
        v = check_steps(
            original, steps, feeds=feeds, final_source=source, inputs_from=inputs_from, timed_original=timed
        )
        _fill(report, v)
        if latency and v.runtime_ok:
            _time_both(report, timed, source, feeds, runs, cut.feeds(feeds) if cut else None)
    return v.steps


@contextlib.contextmanager
def _timed(original: onnx.ModelProto, feeds: dict, latency: bool):
    """The original's latency session on ``feeds`` when latency is timed (validation's run of the
    original is then latency's first run too), else None; a lazy original runs from a file beside
    its data for the block's length."""
    if not latency:
        yield None
        return
    with runnable(original) as source:
        yield TimedSession(source, feeds)


def _cut(done: list):
    """The graph input/output entries the run's one step removed (iochange; empty when none did,
    and a pipeline never changes graph IO)."""
    r = done[0][1] if len(done) == 1 else None
    return io_map(r.deps, r.plan) if r is not None else io_map(None, None)


def _fill(report: Report, v) -> None:
    """A :class:`~graphprune.validation.contract.Validation` into the report's contract keys."""
    report.validated = True
    report.checker = {"passed": v.checker_ok, "error": v.checker_error}
    report.runtime = {"passed": v.runtime_ok, "error": v.runtime_error}
    report.exact = v.exact
    report.fidelity = v.fidelity


def _relative_target(p, *, original_cost, current: onnx.ModelProto, sizes: InputSizes | None = None):
    """A step with a FLOPs or parameters target, which in a pipeline is a fraction of the
    *original*, gets the fraction of its own input that reaches it (removing blocks first
    leaves less for the channels to give); ``(None, note)`` if the target is already met."""
    from dataclasses import replace

    target = getattr(p, "target", None)
    if target is None:
        return p, {}
    metric, fraction = target
    if metric not in ("flops", "params"):
        raise InputError(f"a {metric} target cannot be split over several passes; use it with one filter pass")
    now, then = sample_cost(current, sizes), original_cost()
    kept = (now.flops / max(then.flops, 1)) if metric == "flops" else now.params / max(then.params, 1)
    step = fraction / kept if kept > 0 else 1.0
    if step >= 1.0:
        return None, {"pass": type(p).__name__, "why": f"the target ({fraction} of the {metric}) was met before it"}
    return replace(p, **{f"target_{metric}": step}), {"target_of_original": {"metric": metric, "fraction": fraction}}


def _merge(steps: list[dict]) -> dict:
    """The report's prune section: every step, and the block and group counts at top level."""
    merged: dict = {"passes": steps}
    for s in steps:
        if "blocks_found" in s:
            merged.setdefault("blocks_found", s["blocks_found"])
            merged.setdefault("blocks_removed", []).extend(s["blocks_removed"])
        if "groups_pruned" in s:
            merged["groups_pruned"] = merged.get("groups_pruned", 0) + s["groups_pruned"]
            for key in ("groups_prunable", "groups_blocked", "channels_removed"):
                merged[key] = merged.get(key, 0) + s.get(key, 0)
    return merged


def _pipeline_metadata(model: onnx.ModelProto, plans: list[dict]) -> None:
    from .passes.filter import set_metadata
    from .passes.layer import LAYER_PLAN_KEY

    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in (PLAN_METADATA_KEY, LAYER_PLAN_KEY)]
    del model.metadata_props[:]
    for k, v in keep:
        set_metadata(model, k, v)
    set_metadata(model, PIPELINE_METADATA_KEY, json.dumps({"steps": plans}, separators=(",", ":")))


def validate(
    original: ModelLike,
    pruned: ModelLike,
    *,
    plan: dict | str | os.PathLike | None = None,
    latency: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    data: str | os.PathLike | Dataset | None = None,
    labels: str | bool | None = None,
    batch_size: int = DEFAULT_BATCH,
    input_shapes: dict | None = None,
    latency_runs: int | None = None,
) -> Report:
    """Validate ``pruned`` against ``original``.

    Exactness needs the plan: given here, or read from the pruned model's metadata
    (graphprune writes it there). With ``data`` (an ``.npz`` file or folder keyed by input
    names, see :mod:`graphprune.calibration.datasets`), fidelity is measured over all of it instead of on
    random inputs, and its first batch drives exactness and latency; ``labels`` (a key, or True
    for ``"labels"``) adds both models' top-1 accuracy. ``input_shapes`` ({input: dims}) sizes
    symbolic input dims for the costs (per sample) and the random inputs, as for :func:`prune`.
    The checks are those of a prune (:func:`graphprune.validation.contract.check_steps`), the step being
    rebuilt from the plan.
    """
    orig = load_model(original)
    new = load_model(pruned, check=False)
    if plan is None:
        _check_origin(orig, new, original, pruned)
    key = "labels" if labels is True else (labels or None)
    if data is None and key is not None:
        raise InputError("labels need data: pass data= (the CLI's --data) with the labelled samples")
    dataset = None if data is None else data if isinstance(data, Dataset) else open_dataset(data)
    if dataset is not None and key is not None:
        check_labels(dataset, key)  # before the checks and timings, not after them
    sizes, feeds, inputs_from = _inputs(orig, input_shapes, feeds, dataset, batch_size, validate=True)
    step, through, shapes, changed = _replayed_step(orig, new, pruned, plan)
    before = cost_of(orig, shapes) if shapes is not None else sample_cost(orig, sizes)  # shapes already inferred
    report = _costs_report(before, sample_cost(new, sizes), {"io_changes": changed} if changed else {})
    _assumed(report, sizes)
    weights.spill(new)
    with runnable(new) as source, _timed(orig, feeds, latency) as timed:
        v = check_steps(orig, [step], feeds=feeds, final_source=source, inputs_from=inputs_from, timed_original=timed)
        _fill(report, v)
        if latency and v.runtime_ok:
            _time_both(report, timed, source, feeds, latency_runs, step.cut.feeds(feeds) if step.cut else None)
    if through:  # unchecked: the reason is the history's, not a missing plan
        report.exact.note = (
            through if not report.exact.note or not report.exact.checked else f"{report.exact.note}; {through}"
        )
    if isinstance(report.exact, Exactness) and step.note.startswith("weights were compensated"):
        report.exact = Exactness(note=step.note)
    if dataset is not None and report.runtime["passed"]:
        ev = evaluate(orig, new, dataset, labels=key, batch_size=batch_size, cut=step.cut or None)
        report.fidelity, report.accuracy = ev.fidelity, ev.accuracy
    return report


def _check_origin(orig: onnx.ModelProto, new: onnx.ModelProto, original: ModelLike, pruned: ModelLike) -> None:
    """An ``InputError`` when ``new``'s history records the models it was pruned from (their
    initializers' names, shapes and types: :func:`~graphprune.passes.finish.fingerprint`) and
    ``orig`` is none of them: checking against another model would blame the pruning (a run
    failing on inputs it rejects, a plan naming weights it lacks) for a mix-up of files."""
    steps = history_of(new)
    if not steps or fingerprint(orig) in {s.get("input") for s in steps}:
        return
    what = "the pruned model" if isinstance(pruned, onnx.ModelProto) else str(pruned)
    source = "the original given" if isinstance(original, onnx.ModelProto) else str(original)
    hint = "; pass the model it was pruned from (or its plan with --plan)"
    if all(s.get("input") for s in steps):
        raise InputError(
            f"{what} was not pruned from {source}: its history records the weights (names, shapes, types)"
            f" of the models it was pruned from, and these are not among them{hint}"
        )
    # the first step's input is not recorded (a single prune records its plan only): its plan must fit
    first = steps[0].get("plan")
    if isinstance(first, dict) and isinstance(first.get("groups"), list):  # a plan without its input's fingerprint
        shapes = {t.name: list(t.dims) for t in orig.graph.initializer}
        constants = {o for n in orig.graph.node if n.op_type == "Constant" for o in n.output}
        for g in first["groups"]:
            # (a group's "size" counts its units, heads for instance, not the anchor's axis)
            anchor, axis = (g.get("anchor"), g.get("axis")) if isinstance(g, dict) else (None, None)
            dims = shapes.get(anchor) if isinstance(anchor, str) else None
            if not (anchor in constants or (dims is not None and isinstance(axis, int) and 0 <= axis < len(dims))):
                have = "no weight named" if dims is None and anchor not in constants else f"no axis {axis} in"
                raise InputError(
                    f"{what} was not pruned from {source}: its plan prunes axis {axis} of {anchor!r},"
                    f" and {source} has {have} it{hint}"
                )


def _replayed_step(orig: onnx.ModelProto, new: onnx.ModelProto, pruned: ModelLike, plan):
    """The step that made ``new`` from ``orig``, rebuilt from ``plan`` (given, or stored in
    ``new``'s metadata: a plan, a layer plan, or a history of steps composed into the original's
    indices): ``(step, a note on how it was rebuilt, the shapes the analysis inferred, the graph
    inputs/outputs its plan changed)``."""
    from .analysis.blocks import find_blocks
    from .edit.masking import zeroed_reference_bytes
    from .passes.layer import blocks_of_plan
    from .validation.contract import INEXACT_NOTE, Reference, plan_reference

    named = not isinstance(new, onnx.ModelProto) and not isinstance(pruned, onnx.ModelProto)
    source = "plan"
    if plan is not None and not isinstance(plan, dict):
        source = str(plan)
        plan = read_plan(plan)
    steps, through, deps, layer = None, "", None, None
    if plan is None and get_metadata(new, HISTORY_METADATA_KEY):
        steps = _steps_since(orig, history_of(new))
        if len(steps) == 1 and "blocks" in (steps[0]["plan"] or {}):
            layer, steps = steps[0]["plan"], None
        elif len(steps) == 1:
            plan, steps = steps[0]["plan"], None
            source = f"{pruned} (last plan of its history)" if named else "history"
    if layer is None and plan is None and steps is None and get_metadata(new, PLAN_METADATA_KEY) is None:
        layer = _layer_plan(new)
    if layer is not None:
        where = f"{pruned} (layer plan stored in its metadata)" if named else "layer plan"
        chosen = blocks_of_plan(layer, find_blocks(orig), source=where)
        return Step(orig, new, Reference(orig, lambda: zeroed_reference_bytes(orig, chosen))), "", None, []
    if steps is not None:
        # pruned several times since the original: one plan in the original's indices
        source = f"{pruned} (history in its metadata)" if named else "history"
        if any(s.get("mode") == "mask" for s in steps[:-1]):
            through = f"a step before the last of the {len(steps)} since the original wrote masks (--mode mask): the"
            through += " later plans address its unpruned shapes, so the plans do not compose"
        elif all(isinstance(s["plan"], dict) and "groups" in s["plan"] for s in steps):
            deps = _analyze(orig, inexact=True)
            release_for([s["plan"] for s in steps], deps)
            plan = compose([s["plan"] for s in steps], deps, source=source)
            through = f"through {len(steps)} pruning steps, their plans composed into the original's indices"
        else:
            through = f"the {len(steps)} steps since the original include a layer pass, whose plans do not compose"
    elif plan is None:
        text = get_metadata(new, PLAN_METADATA_KEY)
        plan = json.loads(text) if text else None
        source = f"{pruned} (plan stored in its metadata)" if named else "stored plan"
    compensated = get_metadata(new, COMPENSATE_METADATA_KEY)
    # a plan that changed graph inputs/outputs still says how to feed the pruned model (iochange)
    io_plan = plan if isinstance(plan, dict) and plan.get(IO_CHANGES_KEY) else None
    if io_plan is not None:
        deps = deps if deps is not None else _analyze(orig, inexact=True)
        release_for(io_plan, deps)
    io_chosen = plan_from_json(io_plan, deps, source=source) if io_plan is not None else None
    cut = io_map(deps, io_chosen) if io_chosen is not None else None
    changed = [c.to_json() for c in io_changes(deps, io_chosen)] if io_chosen is not None else []
    if compensated:
        note = (
            f"weights were compensated ({compensated}) from calibration data: the exact reference is the"
            " compensated original, which only the pruning run has; fidelity measures the pruned model"
        )
        return Step(orig, new, None, note=note, cut=cut), through, None, changed
    if plan is None and not through and get_metadata(new, SPARSITY_METADATA_KEY):
        from .passes.sparsity import replayed_step  # a model of the sparsity pass: its zeros are its plan

        return replayed_step(orig, new), "", None, []
    if plan is None:
        return (
            Step(orig, new, None, note=through or "no plan: exactness needs the plan the model was pruned with"),
            "",
            None,
            [],
        )
    deps = deps if deps is not None else _analyze(orig, inexact=True)
    release_for(plan, deps)
    chosen = plan_from_json(plan, deps, source=source)
    inexact = [g.label for g in deps.groups if "inexact" in g.facts and len(chosen.removed(g))]
    if inexact:
        return Step(orig, new, None, inexact, INEXACT_NOTE, cut=cut), through, deps.view.shapes, changed
    return Step(orig, new, plan_reference(orig, deps, chosen), cut=cut), through, deps.view.shapes, changed


def _steps_since(original: onnx.ModelProto, history: list[dict]) -> list[dict]:
    """The steps of ``history`` that lead from ``original`` (the last step whose input it is,
    by fingerprint; the first step if none says so) to the model that carries the history."""
    key = fingerprint(original)
    start = max((k for k, s in enumerate(history) if s.get("input") == key), default=0)
    return history[start:]


def _layer_plan(model: onnx.ModelProto) -> dict | None:
    from .passes.layer import LAYER_PLAN_KEY

    text = get_metadata(model, LAYER_PLAN_KEY)
    return json.loads(text) if text else None


def _assumed(report: Report, sizes: InputSizes | None) -> None:
    """The report's ``assumed_shapes`` (per-sample dims costs were counted at, for the inputs with
    symbolic dims) and ``assumed_shapes_from`` (``--input-shape``, ``data`` or ``default``)."""
    if sizes is not None and sizes.symbolic:
        report.assumed_shapes = sizes.assumed()
        report.assumed_shapes_from = dict(sizes.source)


def _costs_report(before, after, prune: dict) -> Report:
    return Report(
        params_before=before.params,
        params_after=after.params,
        flops_before=before.flops,
        flops_after=after.flops,
        prune=prune,
    )


def _time_both(
    report: Report, original: TimedSession, pruned_source, feeds: dict, runs: int | None, pruned_feeds=None
) -> None:
    """The report's latencies of the original (its latency session, which validation may have
    run already) and the pruned model (as runnable) on ``feeds`` (``pruned_feeds`` for the pruned
    model when its inputs changed: iochange): ``runs`` timed runs each, or up to 20 within about
    two seconds; the batch they ran at."""
    batch = next((int(v.shape[0]) for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim), None)
    at = f" (batch {batch})" if batch is not None else ""
    report.latency_ms_before = latency_ms(original, repeats=runs, label=f"timing the original{at}")
    report.latency_ms_after = latency_ms(
        pruned_source, feeds=pruned_feeds or feeds, repeats=runs, label=f"timing the pruned model{at}"
    )
    report.latency_batch = batch


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (external data beside it when it is too large)."""
    return io.save(model, path)


def _with_pass_options() -> None:
    """:func:`prune`'s signature lists every pass option (declared once, on the passes)."""
    from .options import with_options
    from .passes import PASSES

    with_options(prune, PASSES)


_with_pass_options()
