"""The Python API, mirroring the CLI: ``analyze``, ``prune``, ``validate``.

``model`` may be a path or an ``onnx.ModelProto``; nothing is written unless asked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import io
from .cost import cost_of, latency_ms
from .data import DEFAULT_BATCH, Dataset, open_dataset
from .dependency import DependencyGraph
from .dependency import analyze as _analyze
from .errors import InputError
from .evaluate import check_labels, evaluate
from .graph import find_cycle
from .passes.filter import PLAN_METADATA_KEY, FilterPruning, get_metadata
from .plan import Plan, plan_from_json, read_plan
from .report import Report
from .validation import check_pruned
from .weights import runnable

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
    """
    if inplace and validate:
        raise InputError("inplace pruning cannot be validated: the original is needed for the reference")
    original = load_model(model)
    plan_source = "plan"
    if plan is not None and not isinstance(plan, dict):
        plan_source = str(plan)
        plan = read_plan(plan)
    pass_ = FilterPruning(
        ratio=ratio,
        criterion=criterion,
        global_threshold=global_threshold,
        round_to=round_to,
        min_keep=min_keep,
        ignore=tuple(ignore),
        seed=seed,
        plan=plan,
        plan_source=plan_source,
        units=tuple(units),
    )
    deps = _analyze(original, inexact=pass_.inexact)
    before = cost_of(original, deps.view.shapes)
    pruned, chosen, details = pass_.run(original, deps, inplace=inplace)
    report = _report(
        original, pruned, details, deps, chosen, validate=validate, latency=latency, feeds=feeds, before=before
    )
    return PruneResult(model=pruned, report=report, plan=chosen, deps=deps)


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
) -> Report:
    """Validate ``pruned`` against ``original``.

    Exactness needs the plan: given here, or read from the pruned model's metadata
    (graphprune writes it there). With ``data`` (an ``.npz`` file or folder keyed by input
    names, see :mod:`graphprune.data`), fidelity is measured over all of it instead of on
    random inputs (which still drive exactness and latency); ``labels`` (a key, or True for
    ``"labels"``) adds both models' top-1 accuracy.
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
    deps = _analyze(orig, inexact=True) if plan is not None else None
    chosen = plan_from_json(plan, deps, source=source) if plan is not None else None
    before = cost_of(orig, deps.view.shapes) if deps is not None else None  # shapes already inferred
    key = "labels" if labels is True else (labels or None)
    if data is None and key is not None:
        raise InputError("labels need data: pass data= (the CLI's --data) with the labelled samples")
    dataset = None if data is None else data if isinstance(data, Dataset) else open_dataset(data)
    if dataset is not None and key is not None:
        check_labels(dataset, key)  # before the checks and timings, not after them
    report = _report(orig, new, {}, deps, chosen, validate=True, latency=latency, feeds=feeds, before=before)
    if dataset is not None and report.runtime["passed"]:
        ev = evaluate(orig, new, dataset, labels=key, batch_size=batch_size)
        report.fidelity, report.accuracy = ev.fidelity, ev.accuracy
    return report


def _report(original, pruned, details, deps, plan, *, validate, latency, feeds, before=None) -> Report:
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
    if not validate:
        return report
    with runnable(pruned) as pruned_source:  # a lazy pruned model is written once, for every check
        v = check_pruned(original, pruned, deps, plan, feeds=feeds, pruned_source=pruned_source)
        report.validated = True
        report.checker = {"passed": v.checker_ok, "error": v.checker_error}
        report.runtime = {"passed": v.runtime_ok, "error": v.runtime_error}
        report.exact = v.exact
        report.fidelity = v.fidelity
        if latency and v.runtime_ok:
            with runnable(original) as source:
                report.latency_ms_before = latency_ms(source, feeds=feeds)
            report.latency_ms_after = latency_ms(pruned_source, feeds=feeds)
    return report


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (external data beside it when it is too large)."""
    return io.save(model, path)
