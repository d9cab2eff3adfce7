"""The Python API, mirroring the CLI: ``analyze``, ``prune``, ``validate``.

``model`` may be a path or an ``onnx.ModelProto``; nothing is written unless asked.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import io, weights
from .cost import Cost, cost_of, latency_ms, random_feeds
from .data import DEFAULT_BATCH, Dataset, input_specs, open_dataset
from .dependency import DependencyGraph
from .dependency import analyze as _analyze
from .errors import InputError
from .evaluate import check_labels, evaluate
from .graph import find_cycle
from .inputs import InputSizes, count_shapes, resolve
from .passes import PruneOutcome
from .passes.filter import PLAN_METADATA_KEY, get_metadata
from .passes.finish import COMPENSATE_METADATA_KEY, HISTORY_METADATA_KEY, fingerprint, history_of
from .plan import Plan, compose, plan_from_json, read_plan
from .report import Report
from .validation import Exactness, check_pruned
from .weights import runnable

ModelLike = str | os.PathLike | onnx.ModelProto
PIPELINE_METADATA_KEY = "graphprune.pipeline"
FIDELITY_SAMPLES = 256  # calibration samples prune's fidelity is measured on


@dataclass
class PruneResult:
    """The pruned model, its report, the plan applied and the analysis it came from."""

    model: onnx.ModelProto
    report: Report
    plan: Plan
    deps: DependencyGraph


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
    # External data stays on disk: weights are memory-mapped when needed (graphprune.weights)
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
    """Sizes of ``model``'s symbolic input dims (:mod:`graphprune.inputs`): from ``input_shapes``,
    then the shapes of ``feeds`` (given, or the data's first batch), then defaults, the image
    size being the first candidate the original runs on (``probe``)."""
    from .validation import run

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
    from .validation import run_original

    try:
        run_original(original, feeds)
    except InputError:
        return False
    return True


def _check_inputs(original, sizes: InputSizes, feeds, inputs_from: str) -> None:
    """When no default size runs the original, say so before pruning, not after it."""
    if sizes.runs is False:
        from .validation import run_original

        run_original(original, feeds, inputs_from)


def sample_cost(model: onnx.ModelProto, sizes: InputSizes | None = None, shapes: dict | None = None) -> Cost:
    """``cost_of(model)`` per sample: at ``sizes`` (default: :func:`graphprune.inputs.resolve`'s
    defaults) when its inputs have symbolic dims, else at ``shapes`` or its own."""
    counted = count_shapes(model, sizes if sizes is not None else resolve(model))
    return cost_of(model, counted if counted is not None else shapes)


def prune(
    model: ModelLike,
    ratio: float = 0.5,
    criterion: str | None = None,
    *,
    global_threshold: bool = False,
    round_to: int | None = 1,
    min_keep: int = 1,
    ignore: tuple[str, ...] | list[str] = (),
    plan: dict | str | os.PathLike | None = None,
    seed: int = 0,
    units: tuple[str, ...] | list[str] = (),
    target_flops: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    objective: str | None = None,
    latency_table: str | os.PathLike | None = None,
    latency_model: str | None = None,
    threads: int = 1,
    progress=None,
    sensitivity=None,
    validate: bool = True,
    latency: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    inplace: bool = False,
    pass_: str = "filter",
    calib=None,
    calib_samples: int | None = None,
    batch_size: int | None = None,
    compensate: str | None = None,
    selection: str | None = None,
    input_shapes: dict | None = None,
    remove_blocks: int | None = None,
    latency_runs: int | None = None,
    sequential: bool = False,
    labels: str | None = None,
) -> PruneResult:
    """Prune ``model`` and (by default) validate the result against the whole contract.

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
    machine's channel step (:func:`graphprune.hardware.channel_step`), and ``objective="latency"``
    with a FLOPs or parameter target times two allocations and keeps the faster; ``progress`` receives
    one-line messages while it is measured. ``sensitivity`` (a
    :class:`~graphprune.sensitivity.Sensitivity` or its JSON file, from ``graphprune
    sensitivity``) prices each group's removals for a target by the drop measured when that
    group alone was pruned, instead of by its scores.
    Latency is the median of ``latency_runs`` timed runs of each model, or when None of 20 runs,
    fewer (at least three) once they took two seconds; ``report.latency_batch`` is the batch it ran at.
    ``report.passed`` says whether validation held. ``inplace=True`` (only without
    validation, which needs the original) edits ``model`` itself instead
    of a copy, to save memory on large models.

    Data-driven pruning: ``calib`` (a path to an ``.npz`` file or a folder of them, keys =
    the model's input names, or a :class:`~graphprune.data.Dataset`) feeds the data criteria
    (``activation``, ``apoz``, ``fluctuation``, ``wanda``), ``compensate`` (``"bias"`` or
    ``"lstsq"``) and ``pass_="channel"`` (consumer-side selection with least-squares refit;
    ``selection="greedy"`` or ``"lasso"``). ``calib_samples`` limits the samples used,
    ``batch_size`` the samples per onnxruntime run. Fidelity is then measured on up to 256
    samples of ``calib``; exactness and latency on its first batch (unless ``feeds`` are given).
    ``criterion="obs"`` selects by structured OBS and compensates by the OBS update by default
    (``compensate="obs"``); ``criterion="dcp"`` does the same on samples weighted by the
    classifier's margin, from the class labels under key ``labels`` of ``calib``.
    ``sequential=True`` refits stage by stage on the pruned model's own inputs
    (:mod:`graphprune.sequential`; any compensation but none).

    Symbolic input dims: costs are per sample (batch 1) with the other symbolic dims from
    ``input_shapes`` ({input name: dims}, the CLI's ``--input-shape``), the data, or defaults
    (:mod:`graphprune.inputs`); ``report.assumed_shapes`` says which. The pruned model keeps its
    symbolic dims. Validation feeds: ``feeds``, else ``calib``'s first batch, else random inputs
    at those sizes; if the original does not run on them, ``InputError``.

    ``criterion`` None is the pass's default (``l2`` for the filter and channel passes).
    ``round_to`` keeps channel counts multiples of it; None (the CLI's default) keeps convolution
    channels on this machine's channel step (:func:`graphprune.hardware.channel_step`, where
    onnxruntime's Conv kernels step in latency) and mlp neurons and heads free; the API's default
    stays 1, the ratio as asked, so that results do not depend on the machine.
    ``pass_="layer"`` removes ``remove_blocks`` (default 1) whole residual blocks ranked by
    ``criterion`` (``influence``, needing ``calib``, or ``weight-norm``; by default influence with
    ``calib`` and weight-norm without), validated as :func:`prune_layers` does; its ``plan`` is
    empty (no channel group loses entries) and the removed blocks are in
    ``report.prune["blocks_removed"]``.
    """
    options = dict(
        ratio=ratio,
        criterion=criterion,
        global_threshold=global_threshold,
        round_to=round_to,
        min_keep=min_keep,
        ignore=tuple(ignore),
        seed=seed,
        plan=plan,
        plan_source=None if plan is None else "plan",
        units=tuple(units),
        calib=calib,
        calib_samples=calib_samples,
        batch_size=batch_size,
        compensate=compensate,
        selection=selection,
        target_flops=target_flops,
        target_params=target_params,
        target_latency=target_latency,
        objective=objective,
        latency_table=None if latency_table is None else os.fspath(latency_table),
        latency_model=latency_model,
        threads=threads,
        progress=progress,
        sensitivity=sensitivity,
        sequential=sequential,
        labels=labels,
    )
    if pass_ == "layer":
        # what the layer pass takes is passed by name; any other option given is an error there
        taken = ("criterion", "calib", "plan_source", "threads", "progress")
        return _prune_blocks(
            model,
            criterion=criterion,
            remove_blocks=remove_blocks,
            calib=calib,
            validate=validate,
            latency=latency,
            latency_runs=latency_runs,
            feeds=feeds,
            input_shapes=input_shapes,
            others={k: v for k, v in options.items() if k not in taken},
        )
    if remove_blocks is not None:
        raise InputError(f"remove-blocks is an option of the layer pass, not of the {pass_} pass")
    if inplace and validate:
        raise InputError("inplace pruning cannot be validated: the original is needed for the reference")
    original = load_model(model)
    if plan is not None and not isinstance(plan, dict):
        options["plan_source"] = str(plan)
        plan = options["plan"] = read_plan(plan)
    pass_ = make_pass(pass_, **options)
    data = getattr(pass_, "calib", None)
    if data is not None and not isinstance(data, Dataset):
        from dataclasses import replace

        data = open_dataset(data)
        pass_ = replace(pass_, calib=data)  # indexed once, read by every step
    batch = getattr(pass_, "batch_size", None) or DEFAULT_BATCH
    sizes, feeds, inputs_from = _inputs(original, input_shapes, feeds, data, batch, validate=validate, check=False)
    deps = _analyze(original, inexact=getattr(pass_, "inexact", False))
    if validate and (deps.prunable_groups() or plan is not None):  # else "nothing to prune" says more
        _check_inputs(original, sizes, feeds, inputs_from)
    deps.sample_shapes = count_shapes(original, sizes) or deps.view.shapes
    before = cost_of(original, deps.sample_shapes)
    if hasattr(pass_, "prune"):
        outcome = pass_.prune(original, deps, inplace=inplace)
    else:  # a pass with only run(): no compensation, the original is the reference
        pruned, chosen, details = pass_.run(original, deps, inplace=inplace)
        outcome = PruneOutcome(pruned, chosen, deps, original, details)
    if outcome.plan.total_removed == 0:  # said, not pretended: the CLI writes nothing then
        why = nothing_pruned(outcome.deps, from_plan=plan is not None, channel_step=outcome.report.get("channel_step"))
        outcome.report = {**outcome.report, "nothing_pruned": why}
        # the model is unchanged: inputs its original rejects leave it unvalidated, not an error
        validate = validate and sizes.runs is not False and _runs(original, feeds)
    report = _report(
        original,
        outcome.pruned,
        outcome.report,
        outcome.deps,
        outcome.plan,
        validate=validate,
        latency=latency,
        feeds=feeds,
        before=before,
        reference=outcome.reference,
        sizes=sizes,
        inputs_from=inputs_from,
        latency_runs=latency_runs,
    )
    if validate and data is not None and report.runtime["passed"] and not weights.has_lazy(outcome.pruned):
        # Fidelity over the calibration data rather than its first batch (one sample for a
        # model fixed to batch 1); exactness and latency keep the first batch.
        ev = evaluate(original, outcome.pruned, data, batch_size=pass_.batch_size, limit=FIDELITY_SAMPLES)
        report.fidelity = ev.fidelity
    return PruneResult(model=outcome.pruned, report=report, plan=outcome.plan, deps=outcome.deps)


def _prune_blocks(
    model, *, criterion, remove_blocks, calib, validate, latency, latency_runs, feeds, input_shapes, others
):
    """``prune(pass_="layer")``: the layer pass through :func:`run_passes`, the same validation as
    :func:`prune_layers`, as a :class:`PruneResult`."""
    from .passes.layer import LayerPruning

    _refuse_untaken("layer", others, takes=())
    original = load_model(model)
    criterion = criterion or ("influence" if calib is not None else "weight-norm")
    step = LayerPruning(remove_blocks=1 if remove_blocks is None else remove_blocks, criterion=criterion, calib=calib)
    result = run_passes(
        original,
        [step],
        validate=validate,
        latency=latency,
        latency_runs=latency_runs,
        feeds=feeds,
        input_shapes=input_shapes,
    )
    return PruneResult(model=result.model, report=result.report, plan=Plan(), deps=_analyze(original))


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


def _prune_defaults() -> dict:
    """:func:`prune`'s keyword defaults: an option left at its default was not given."""
    return {k: p.default for k, p in inspect.signature(prune).parameters.items()}


def _refuse_untaken(name: str, options: dict, takes) -> None:
    """An ``InputError`` for the first option given (not None, False, empty or :func:`prune`'s
    default) that the ``name`` pass does not take."""
    defaults = _prune_defaults()
    given = [k for k, v in options.items() if k not in takes and v not in (None, False, (), defaults.get(k))]
    if given:
        raise InputError(f"the {name} pass does not take {given[0].replace('_', '-')}")


def make_pass(name: str, **options):
    """The pass registered as ``name`` (``filter``, ``channel``...), given the options its
    dataclass has fields for; options left as None keep the pass's defaults."""
    from dataclasses import fields

    from .passes import PASSES

    if name not in PASSES:
        raise InputError(f"unknown pass {name!r}; choose from {', '.join(PASSES)}")
    cls = PASSES[name]
    names = {f.name for f in fields(cls)}
    _refuse_untaken(name, options, takes=names)
    # round_to None is a value: conv channels on the channel step (the CLI's default)
    return cls(**{k: v for k, v in options.items() if k in names and (v is not None or k == "round_to")})


def first_batch(model: onnx.ModelProto, dataset: Dataset, batch_size: int) -> dict[str, np.ndarray] | None:
    """The first batch of ``dataset`` as feeds for ``model`` (None if it is empty)."""
    return next(iter(dataset.batches(input_specs(model), batch_size=batch_size, limit=batch_size)), None)


@dataclass
class PipelineResult:
    """The model after every pass, the report (exactness per step, fidelity end to end) and
    each step's own report."""

    model: onnx.ModelProto
    report: Report
    steps: list[dict]
    plans: list[dict]  # per step: {"pass": name, "plan": the plan's JSON, addressing that step's input}


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
) -> PipelineResult:
    """Remove the ``remove_blocks`` least important residual blocks ``y = x + f(x)`` of ``model``.

    ``criterion`` is ``"influence"`` (needs ``calib``) or ``"weight-norm"``; by default
    influence when calibration data is given, weight-norm otherwise.
    """
    from .passes.layer import LayerPruning

    criterion = criterion or ("influence" if calib is not None else "weight-norm")
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
) -> PipelineResult:
    """Run ``passes`` (FilterPruning, LayerPruning, ...) in order and validate.

    Exactness is checked per step: each step's output against a reference built from that
    step's input (the masked reference for filter pruning, the zeroed-f(x) one for layer
    pruning), so it keeps meaning "the surgery did what the step's plan says". Checker,
    runtime and fidelity are end to end, against the original.
    """
    from .validation import run_original

    original = load_model(model)
    sizes, feeds, inputs_from = _inputs(original, input_shapes, feeds, None, DEFAULT_BATCH, validate=validate)
    before = sample_cost(original, sizes)
    if validate:
        run_original(original, feeds, inputs_from)
    current = original
    steps: list[dict] = []
    exacts: list[Exactness] = []
    plans: list[dict] = []
    for p in passes:
        p, note = _relative_target(p, original_cost=before, current=current, sizes=sizes)
        if p is None:  # the earlier steps already met the target
            steps.append({"pass": note["pass"], "skipped": note["why"]})
            continue
        pruned, details, reference, skipped = _step(p, current, sizes)
        entry = {"pass": type(p).__name__, **details, **note}
        if validate:
            ex = _exactness(current, pruned, reference, skipped, feeds)
            exacts.append(ex)
            entry["exact"] = {"checked": ex.checked, "passed": ex.passed, "max_rel_diff": ex.max_rel_diff}
        steps.append(entry)
        plans.append({"pass": entry["pass"], "plan": _plan_of(pruned, p)})
        current = pruned
    if len(steps) > 1:
        # Each step's plan addresses that step's input, not the original: they are kept
        # together, in order, under one key, so that `validate` applies none to the original.
        _pipeline_metadata(current, plans)
    after = sample_cost(current, sizes)
    report = _costs_report(before, after, _merge(steps))
    _assumed(report, sizes)
    if validate:
        _end_to_end(report, original, current, exacts, feeds, latency, latency_runs, inputs_from)
    return PipelineResult(model=current, report=report, steps=steps, plans=plans)


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
    now = sample_cost(current, sizes)
    kept = (now.flops / max(original_cost.flops, 1)) if metric == "flops" else now.params / max(original_cost.params, 1)
    step = fraction / kept if kept > 0 else 1.0
    if step >= 1.0:
        return None, {"pass": type(p).__name__, "why": f"the target ({fraction} of the {metric}) was met before it"}
    return replace(p, **{f"target_{metric}": step}), {"target_of_original": {"metric": metric, "fraction": fraction}}


@dataclass
class _Reference:
    """How a step's exact reference is made: ``build()`` gives its bytes, from ``base`` as it
    is at the call (a quantized graph's is built again with its fake quantization bypassed)."""

    base: onnx.ModelProto
    build: Callable[[], bytes]

    def __call__(self) -> bytes:
        return self.build()


def _exactness(before: onnx.ModelProto, after: onnx.ModelProto, reference, skipped: list[str], feeds):
    """One step's exactness: ``after`` against the reference built from ``before``."""
    from .quantized import is_quantized
    from .validation import Exactness, exact_tolerance, quantized_exactness, rel_diff, run

    if reference is None:
        return Exactness(checked=False, skipped_groups=skipped, note="not function-preserving: see fidelity")
    try:
        out = run(after, feeds)
    except Exception:  # the runtime failure is reported end to end
        return Exactness(checked=False, note="the pruned model does not run")
    ref_out, before_out = run(reference(), feeds), run(before, feeds)
    base = getattr(reference, "base", before)
    if is_quantized(base):
        return quantized_exactness(base, after, reference, feeds, out, ref_out, before_out)
    diff = rel_diff(out, ref_out, scale_of=before_out)
    tol = exact_tolerance(out)
    return Exactness(checked=True, passed=diff <= tol, max_rel_diff=diff, tolerance=tol)


def _end_to_end(
    report: Report,
    original,
    final,
    exacts: list,
    feeds,
    latency: bool,
    latency_runs: int | None = None,
    inputs_from: str = "generated inputs",
) -> None:
    """Checker, runtime, fidelity and latency of ``final`` against ``original``; exactness of the steps."""
    from .validation import Exactness, check, fidelity, on_inputs, run

    weights.spill(final)  # a lazy model's sliced weights written once for every check, and for saving
    error = check(final)
    report.validated = True
    report.checker = {"passed": not error, "error": error}
    try:
        out = run(final, feeds)
        report.runtime = {"passed": True, "error": ""}
    except Exception as exc:
        out = None
        report.runtime = {"passed": False, "error": io.one_line(exc)}
    if out is not None:
        report.fidelity = on_inputs(fidelity(out, run(original, feeds)), inputs_from)
        if latency:
            with runnable(final) as source:  # a lazy model: a file beside its data
                _time_both(report, original, source, feeds, latency_runs)
    # the step nearest its bound speaks for the tolerance (quantized steps have their own)
    worst = max(
        (e for e in exacts if e.max_rel_diff is not None), key=lambda e: e.max_rel_diff / e.tolerance, default=None
    )
    report.exact = Exactness(
        checked=all(e.checked for e in exacts),
        passed=all(e.passed or not e.checked for e in exacts),
        max_rel_diff=None if worst is None else worst.max_rel_diff,  # the largest, where tolerances agree
        skipped_groups=[g for e in exacts for g in e.skipped_groups],
        note="per step, each against a reference from its own input" if len(exacts) > 1 else exacts[0].note,
        **(
            {}
            if worst is None
            else {
                "tolerance": worst.tolerance,
                "tolerance_steps": worst.tolerance_steps,
                "quant_step": worst.quant_step,
                "max_step_diff": worst.max_step_diff,
                "float_max_rel_diff": max(
                    (e.float_max_rel_diff for e in exacts if e.float_max_rel_diff is not None), default=None
                ),
            }
        ),
    )


def _step(p, model: onnx.ModelProto, sizes: InputSizes | None = None):
    """One pass on ``model``: ``(pruned, details, reference bytes maker or None, skipped groups)``."""
    from .blocks import zeroed_reference_bytes
    from .passes.layer import LayerPruning
    from .validation import masked_reference_bytes

    if isinstance(p, LayerPruning):
        pruned, chosen, details = p.run(model)
        return pruned, details, _Reference(model, lambda: zeroed_reference_bytes(model, chosen)), []
    if hasattr(p, "prune"):  # filter and channel passes: a plan over groups, maybe compensated weights
        deps = _analyze(model, inexact=getattr(p, "inexact", False))
        deps.sample_shapes = count_shapes(model, sizes) if sizes is not None else None
        outcome = p.prune(model, deps)
        plan = outcome.plan
        if plan.total_removed == 0:
            step = outcome.report.get("channel_step")
            why = nothing_pruned(outcome.deps, from_plan=getattr(p, "plan", None) is not None, channel_step=step)
            outcome.report = {**outcome.report, "nothing_pruned": why}
        inexact = [g.label for g in outcome.deps.groups if "inexact" in g.facts and len(plan.removed(g))]
        base = outcome.reference
        reference = None if inexact else _Reference(base, lambda: masked_reference_bytes(base, outcome.deps, plan))
        return outcome.pruned, outcome.report, reference, inexact
    result = p(model)
    return result.model, result.report, None, []


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


def _plan_of(model: onnx.ModelProto, p) -> dict | None:
    from .passes.layer import LAYER_PLAN_KEY, LayerPruning

    text = get_metadata(model, LAYER_PLAN_KEY if isinstance(p, LayerPruning) else PLAN_METADATA_KEY)
    return json.loads(text) if text else None


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
    names, see :mod:`graphprune.data`), fidelity is measured over all of it instead of on
    random inputs, and its first batch drives exactness and latency; ``labels`` (a key, or True
    for ``"labels"``) adds both models' top-1 accuracy. ``input_shapes`` ({input: dims}) sizes
    symbolic input dims for the costs (per sample) and the random inputs, as for :func:`prune`.
    """
    orig = load_model(original)
    new = load_model(pruned, check=False)
    source = "plan"
    if plan is not None and not isinstance(plan, dict):
        source = str(plan)
        plan = read_plan(plan)
    key = "labels" if labels is True else (labels or None)
    if data is None and key is not None:
        raise InputError("labels need data: pass data= (the CLI's --data) with the labelled samples")
    dataset = None if data is None else data if isinstance(data, Dataset) else open_dataset(data)
    if dataset is not None and key is not None:
        check_labels(dataset, key)  # before the checks and timings, not after them
    sizes, feeds, inputs_from = _inputs(orig, input_shapes, feeds, dataset, batch_size, validate=True)
    layers = dict(latency=latency, feeds=feeds, sizes=sizes, inputs_from=inputs_from, latency_runs=latency_runs)
    steps, through, deps = None, "", None
    if plan is None and get_metadata(new, HISTORY_METADATA_KEY):
        steps = _steps_since(orig, history_of(new))
        if len(steps) == 1 and "blocks" in (steps[0]["plan"] or {}):
            return _validate_layers(orig, new, steps[0]["plan"], pruned, **layers)
        if len(steps) == 1:
            plan, steps = steps[0]["plan"], None
            source = f"{pruned} (last plan of its history)" if not isinstance(pruned, onnx.ModelProto) else "history"
    if plan is None and steps is None and get_metadata(new, PLAN_METADATA_KEY) is None and _layer_plan(new) is not None:
        return _validate_layers(orig, new, _layer_plan(new), pruned, **layers)
    if steps is not None:
        # pruned several times since the original: one plan in the original's indices
        source = f"{pruned} (history in its metadata)" if not isinstance(pruned, onnx.ModelProto) else "history"
        if all(isinstance(s["plan"], dict) and "groups" in s["plan"] for s in steps):
            deps = _analyze(orig, inexact=True)
            plan = compose([s["plan"] for s in steps], deps, source=source)
            through = f"through {len(steps)} pruning steps, their plans composed into the original's indices"
        else:
            through = f"the {len(steps)} steps since the original include a layer pass, whose plans do not compose"
    elif plan is None:
        text = get_metadata(new, PLAN_METADATA_KEY)
        plan = json.loads(text) if text else None
        source = f"{pruned} (plan stored in its metadata)" if not isinstance(pruned, onnx.ModelProto) else "stored plan"
    compensated = get_metadata(new, COMPENSATE_METADATA_KEY)
    if compensated:
        plan = None  # the exact reference is the original with compensated weights: not at hand here
    if deps is None and plan is not None:
        deps = _analyze(orig, inexact=True)
    chosen = plan_from_json(plan, deps, source=source) if plan is not None else None
    before = sample_cost(orig, sizes, deps.view.shapes if deps is not None else None)  # shapes already inferred
    report = _report(
        orig,
        new,
        {},
        deps,
        chosen,
        validate=True,
        latency=latency,
        feeds=feeds,
        before=before,
        sizes=sizes,
        inputs_from=inputs_from,
        latency_runs=latency_runs,
    )
    if through:  # unchecked: the reason is the history's, not a missing plan
        report.exact.note = (
            through if not report.exact.note or not report.exact.checked else f"{report.exact.note}; {through}"
        )
    if compensated:
        report.exact = Exactness(
            note=f"weights were compensated ({compensated}) from calibration data: the exact reference is the"
            " compensated original, which only the pruning run has; fidelity measures the pruned model"
        )
    if dataset is not None and report.runtime["passed"]:
        ev = evaluate(orig, new, dataset, labels=key, batch_size=batch_size)
        report.fidelity, report.accuracy = ev.fidelity, ev.accuracy
    return report


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


def _validate_layers(
    orig,
    new,
    plan: dict,
    pruned: ModelLike,
    *,
    latency: bool,
    feeds,
    sizes=None,
    inputs_from="generated inputs",
    latency_runs: int | None = None,
) -> Report:
    """Validation of a layer-pruned model from the layer plan stored in it."""
    from .blocks import find_blocks, zeroed_reference_bytes
    from .passes.layer import blocks_of_plan
    from .validation import run_original

    source = (
        f"{pruned} (layer plan stored in its metadata)" if not isinstance(pruned, onnx.ModelProto) else "layer plan"
    )
    chosen = blocks_of_plan(plan, find_blocks(orig), source=source)
    feeds = feeds if feeds is not None else random_feeds(orig)
    before, after = sample_cost(orig, sizes), sample_cost(new, sizes)
    report = _costs_report(before, after, {})
    _assumed(report, sizes)
    run_original(orig, feeds, inputs_from)
    exact = _exactness(orig, new, _Reference(orig, lambda: zeroed_reference_bytes(orig, chosen)), [], feeds)
    _end_to_end(report, orig, new, [exact], feeds, latency, latency_runs, inputs_from)
    return report


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


def _report(
    original,
    pruned,
    details,
    deps,
    plan,
    *,
    validate,
    latency,
    feeds,
    before=None,
    reference=None,
    sizes: InputSizes | None = None,
    inputs_from: str = "generated inputs",
    latency_runs: int | None = None,
) -> Report:
    # File sizes are filled in by whoever knows the files: measuring an in-memory model
    # would serialize it (a copy of every weight) just for a number.
    before = before or sample_cost(original, sizes)
    after = sample_cost(pruned, sizes)
    report = _costs_report(before, after, details)
    _assumed(report, sizes)
    if not validate:
        return report
    # a lazy pruned model is written once (its sliced weights spilled to a file, which saving
    # then renames into the output), for every check
    weights.spill(pruned)
    with runnable(pruned) as pruned_source:
        v = check_pruned(
            original,
            pruned,
            deps,
            plan,
            feeds=feeds,
            pruned_source=pruned_source,
            reference=reference,
            inputs_from=inputs_from,
        )
        report.validated = True
        report.checker = {"passed": v.checker_ok, "error": v.checker_error}
        report.runtime = {"passed": v.runtime_ok, "error": v.runtime_error}
        report.exact = v.exact
        report.fidelity = v.fidelity
        if latency and v.runtime_ok:
            _time_both(report, original, pruned_source, feeds, latency_runs)
    return report


def _time_both(report: Report, original, pruned_source, feeds: dict, runs: int | None) -> None:
    """The report's latencies of ``original`` and the pruned model (as runnable) on ``feeds``:
    ``runs`` timed runs each, or up to 20 within about two seconds; the batch they ran at."""
    batch = next((int(v.shape[0]) for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim), None)
    at = f" (batch {batch})" if batch is not None else ""
    with runnable(original) as source:
        report.latency_ms_before = latency_ms(source, feeds=feeds, repeats=runs, label=f"timing the original{at}")
    report.latency_ms_after = latency_ms(pruned_source, feeds=feeds, repeats=runs, label=f"timing the pruned model{at}")
    report.latency_batch = batch


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (external data beside it when it is too large)."""
    return io.save(model, path)
