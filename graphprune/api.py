"""The Python API, mirroring the CLI: ``analyze``, ``prune``, ``validate``.

``model`` may be a path or an ``onnx.ModelProto``; nothing is written unless asked.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import io
from .cost import cost_of, latency_ms
from .data import Dataset, input_specs, open_dataset
from .dependency import DependencyGraph
from .dependency import analyze as _analyze
from .errors import InputError
from .graph import find_cycle
from .passes import PruneOutcome
from .passes.filter import PLAN_METADATA_KEY, get_metadata
from .passes.finish import COMPENSATE_METADATA_KEY
from .plan import Plan, plan_from_json, read_plan
from .report import Report
from .validation import Exactness, check_pruned

ModelLike = str | os.PathLike | onnx.ModelProto


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
            proto = io.load(model)  # a file that does not even parse gets that, more precise, error
            io.check_opset(proto, model)
            cycle = find_cycle(proto)
            if cycle:
                shown = cycle if len(cycle) <= 6 else [*cycle[:3], "...", *cycle[-2:]]
                raise InputError(f"{model}: the graph has a cycle: {' -> '.join(shown)}") from None
            raise InputError(f"{model}: fails the ONNX checker: {io.one_line(exc)}") from None
    proto = io.load(model)
    io.check_opset(proto, model)
    return proto


def analyze(model: ModelLike) -> DependencyGraph:
    """The dependency graph and groups of ``model``."""
    return _analyze(load_model(model))


def prune(
    model: ModelLike,
    ratio: float = 0.5,
    criterion: str = "l2",
    *,
    global_threshold: bool = False,
    round_to: int = 1,
    min_keep: int = 1,
    ignore: tuple[str, ...] | list[str] = (),
    plan: dict | str | os.PathLike | None = None,
    seed: int = 0,
    units: tuple[str, ...] | list[str] = (),
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
) -> PruneResult:
    """Prune ``model`` and (by default) validate the result against the whole contract.

    ``plan`` is a plan's JSON object or a path to a plan file; it replaces ``ratio``
    and ``criterion``. ``units`` limits pruning to some kinds of group: ``"heads"``
    (attention heads), ``"mlp"`` (neurons of matrix products) and ``"channels"``
    (convolution channels), all three by default; ``"hidden"`` (a transformer's residual
    width, through its LayerNorms) is inexact and only pruned when asked for.
    ``report.passed`` says whether validation held. ``inplace=True`` (only without
    validation, which needs the original) edits ``model`` itself instead
    of a copy, to save memory on large models.

    Data-driven pruning: ``calib`` (a path to an ``.npz`` file or a folder of them, keys =
    the model's input names, or a :class:`~graphprune.data.Dataset`) feeds the data criteria
    (``activation``, ``apoz``, ``fluctuation``, ``wanda``), ``compensate`` (``"bias"`` or
    ``"lstsq"``) and ``pass_="channel"`` (consumer-side selection with least-squares refit;
    ``selection="greedy"`` or ``"lasso"``). ``calib_samples`` limits the samples used,
    ``batch_size`` the samples per onnxruntime run. Fidelity is then measured on the first
    batch of ``calib`` (unless ``feeds`` are given).
    """
    if inplace and validate:
        raise InputError("inplace pruning cannot be validated: the original is needed for the reference")
    original = load_model(model)
    plan_source = "plan"
    if plan is not None and not isinstance(plan, dict):
        plan_source = str(plan)
        plan = read_plan(plan)
    options = dict(
        ratio=ratio,
        criterion=criterion,
        global_threshold=global_threshold,
        round_to=round_to,
        min_keep=min_keep,
        ignore=tuple(ignore),
        seed=seed,
        plan=plan,
        plan_source=plan_source if plan is not None else None,
        units=tuple(units),
        calib=calib,
        calib_samples=calib_samples,
        batch_size=batch_size,
        compensate=compensate,
        selection=selection,
    )
    pass_ = make_pass(pass_, **options)
    data = getattr(pass_, "calib", None)
    if data is not None and not isinstance(data, Dataset):
        from dataclasses import replace

        data = open_dataset(data)
        pass_ = replace(pass_, calib=data)  # indexed once, read by every step
    deps = _analyze(original, inexact=getattr(pass_, "inexact", False))
    before = cost_of(original, deps.view.shapes)
    if hasattr(pass_, "prune"):
        outcome = pass_.prune(original, deps, inplace=inplace)
    else:  # a pass with only run(): no compensation, the original is the reference
        pruned, chosen, details = pass_.run(original, deps, inplace=inplace)
        outcome = PruneOutcome(pruned, chosen, deps, original, details)
    if validate and feeds is None and data is not None:
        feeds = first_batch(original, data, pass_.batch_size)
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
    )
    return PruneResult(model=outcome.pruned, report=report, plan=outcome.plan, deps=outcome.deps)


def make_pass(name: str, **options):
    """The pass registered as ``name`` (``filter``, ``channel``...), given the options its
    dataclass has fields for; options left as None keep the pass's defaults."""
    from dataclasses import fields

    from .passes import PASSES

    if name not in PASSES:
        raise InputError(f"unknown pass {name!r}; choose from {', '.join(PASSES)}")
    cls = PASSES[name]
    names = {f.name for f in fields(cls)}
    defaults = {k: p.default for k, p in inspect.signature(prune).parameters.items()}
    unsupported = [k for k, v in options.items() if k not in names and v not in (None, False, (), defaults.get(k))]
    if unsupported:
        raise InputError(f"the {name} pass does not take {unsupported[0].replace('_', '-')}")
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})


def first_batch(model: onnx.ModelProto, dataset: Dataset, batch_size: int) -> dict[str, np.ndarray] | None:
    """The first batch of ``dataset`` as feeds for ``model`` (None if it is empty)."""
    return next(iter(dataset.batches(input_specs(model), batch_size=batch_size, limit=batch_size)), None)


def validate(
    original: ModelLike,
    pruned: ModelLike,
    *,
    plan: dict | str | os.PathLike | None = None,
    latency: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
) -> Report:
    """Validate ``pruned`` against ``original``.

    Exactness needs the plan: given here, or read from the pruned model's metadata
    (graphprune writes it there).
    """
    orig = load_model(original)
    new = load_model(pruned, check=False)
    source = "plan"
    if plan is not None and not isinstance(plan, dict):
        source = str(plan)
        plan = read_plan(plan)
    if plan is None:
        text = get_metadata(new, PLAN_METADATA_KEY)
        plan = json.loads(text) if text else None
        source = f"{pruned} (plan stored in its metadata)" if not isinstance(pruned, onnx.ModelProto) else "stored plan"
    compensated = get_metadata(new, COMPENSATE_METADATA_KEY)
    if compensated:
        plan = None  # the exact reference is the original with compensated weights: not at hand here
    deps = _analyze(orig, inexact=True) if plan is not None else None
    chosen = plan_from_json(plan, deps, source=source) if plan is not None else None
    before = cost_of(orig, deps.view.shapes) if deps is not None else None  # shapes already inferred
    report = _report(orig, new, {}, deps, chosen, validate=True, latency=latency, feeds=feeds, before=before)
    if compensated:
        report.exact = Exactness(
            note=f"weights were compensated ({compensated}) from calibration data: the exact reference is the"
            " compensated original, which only the pruning run has; fidelity measures the pruned model"
        )
    return report


def _report(original, pruned, details, deps, plan, *, validate, latency, feeds, before=None, reference=None) -> Report:
    # File sizes are filled in by whoever knows the files: measuring an in-memory model
    # would serialize it (a copy of every weight) just for a number.
    before = before or cost_of(original)
    after = cost_of(pruned)
    report = Report(
        params_before=before.params,
        params_after=after.params,
        flops_before=before.flops,
        flops_after=after.flops,
        prune=details,
    )
    if validate:
        v = check_pruned(original, pruned, deps, plan, feeds=feeds, reference=reference)
        report.validated = True
        report.checker = {"passed": v.checker_ok, "error": v.checker_error}
        report.runtime = {"passed": v.runtime_ok, "error": v.runtime_error}
        report.exact = v.exact
        report.fidelity = v.fidelity
        if latency and v.runtime_ok:
            report.latency_ms_before = latency_ms(original, feeds=feeds)
            report.latency_ms_after = latency_ms(pruned, feeds=feeds)
    return report


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (external data beside it when it is too large)."""
    return io.save(model, path)
