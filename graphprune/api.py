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
from .dependency import DependencyGraph
from .dependency import analyze as _analyze
from .errors import InputError
from .graph import find_cycle
from .passes.filter import PLAN_METADATA_KEY, FilterPruning, get_metadata
from .plan import Plan, plan_from_json, read_plan
from .report import Report
from .validation import check_pruned

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
    target_flops: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    objective: str | None = None,
    latency_table: str | os.PathLike | None = None,
    threads: int = 1,
    progress=None,
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
        target_flops=target_flops,
        target_params=target_params,
        target_latency=target_latency,
        objective=objective,
        latency_table=None if latency_table is None else os.fspath(latency_table),
        threads=threads,
        progress=progress,
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
    deps = _analyze(orig, inexact=True) if plan is not None else None
    chosen = plan_from_json(plan, deps, source=source) if plan is not None else None
    before = cost_of(orig, deps.view.shapes) if deps is not None else None  # shapes already inferred
    return _report(orig, new, {}, deps, chosen, validate=True, latency=latency, feeds=feeds, before=before)


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
    if validate:
        v = check_pruned(original, pruned, deps, plan, feeds=feeds)
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
