"""The last steps every pruning pass shares: compensation (optional), surgery, metadata.

The pruned model carries its plan (``graphprune.plan``) and, when weights were compensated,
the method (``graphprune.compensate``): a later ``graphprune validate`` against the plain
original then knows that exactness cannot be checked without the calibration data.

A pruned model pruned again keeps every step (``graphprune.history``: ``{"steps": [{"pass",
"plan", "input"}, ...]}``, oldest first, each plan addressing its own step's input, ``input``
a fingerprint of that input's weights: :func:`fingerprint`), so ``validate ORIGINAL LATEST``
can compose the plans into the original's indices; ``graphprune.plan`` stays the last step's
plan (``validate PREVIOUS LATEST`` reads it as before). A model pruned once has no history:
its plan is its history.
"""

from __future__ import annotations

import hashlib
import json

import onnx

from ..analysis.dependency import DependencyGraph
from ..analysis.plan import Plan, removed_entries
from ..calibration.statistics import DEFAULT_MAX_ROWS, Statistics, as_dataset, calibrate
from ..edit.compensate import DEFAULT_RIDGE, METHODS, compensated_plan, with_plan
from ..edit.surgery import apply_plan
from ..errors import InputError
from ..ir.weights import set_entry
from ..validation.contract import plan_reference
from . import PassResult

PLAN_METADATA_KEY = "graphprune.plan"
COMPENSATE_METADATA_KEY = "graphprune.compensate"
HISTORY_METADATA_KEY = "graphprune.history"
SPARSITY_METADATA_KEY = "graphprune.sparsity"  # the sparsity pass's record (its zeros are its plan)
MASKED_METADATA_KEY = "graphprune.masked"  # set by mask mode: see mark_masked
_EARLIER_KEYS = frozenset({"graphprune.pipeline", "graphprune.layer_plan"})  # what a history takes in


def round_to_of(round_to: int | None, deps=None) -> tuple[int | dict[str, int], dict | None]:
    """A pass's ``round_to`` for allocation, and the report's ``channel_step`` note: None (the
    default) keeps convolution channels on this machine's channel step (a count between two of
    onnxruntime's NCHWc blocks runs as the next whole block, and off its fast kernels: the digits
    CNN at ratio 0.3 timed 1.2-1.6x slower than unpruned at batch 32) and leaves mlp neurons and
    heads free; an int applies to every group (``1``: the ratio as asked). A FLOPs or parameter
    target reads None as 1 (its precision is the contract); a latency one as the step. Given
    ``deps``, a model without prunable convolution channels reads None as 1."""
    if round_to is not None:
        return round_to, None
    if deps is not None and not any(g.unit == "channels" for g in deps.prunable_groups()):
        # no convolution channels to keep on the step: no need to ask onnxruntime for it (the
        # probe imports onnxruntime, ~20 MB that a --no-validate prune of an LLM stack never needs)
        return 1, None
    from ..objectives.hardware import channel_step

    step = channel_step()
    return {"channels": step.step}, step.to_json()


def check_scope(deps, ignore, units) -> list[str]:
    """Before any work: ``ignore`` patterns that match no node or tensor, and ``units`` of which
    the model has no prunable group, are errors (the flag would be silently ignored); notes for
    the report when only some of the units asked for exist."""
    import fnmatch

    mv = deps.view
    names = set(mv.node_names) | set(mv.producer) | set(mv.consumers)
    for pattern in ignore:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise InputError(f"--ignore {pattern}: matches no node or tensor of the model")
    if not units:
        return []
    have: dict[str, int] = {}
    for g in deps.prunable_groups():
        have[g.unit] = have.get(g.unit, 0) + 1
    missing = [u for u in units if u not in have]
    if len(missing) == len(units):
        found = ", ".join(f"{u} {n}" for u, n in sorted(have.items())) or "none"
        which = "that unit" if len(units) == 1 else "these units"
        raise InputError(
            f"--unit {' '.join(units)}: the model has no prunable group of {which} (prunable groups by unit: {found})"
        )
    return [f"--unit {u}: the model has no prunable group of that unit" for u in missing]


def check_round_to(round_to: int | None) -> None:
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise InputError(f"round-to must be a positive integer, got {round_to}")


def check_data_options(name: str, compensate: str, calib, needs_data: bool, batch_size: int, calib_samples) -> None:
    """Usage errors of the data options, before any work is done."""
    if compensate not in METHODS:
        raise InputError(f"unknown compensation {compensate!r}; choose from {', '.join(METHODS)}")
    if calib is None and (needs_data or compensate != "none"):
        what = f"compensation {compensate!r}" if compensate != "none" and not needs_data else name
        raise InputError(f"{what} needs calibration data: give --calib DATA (an .npz file or a folder of them)")
    if batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size}")
    if calib_samples is not None and calib_samples < 1:
        raise InputError(f"calib-samples must be a positive integer, got {calib_samples}")


def check_sequential(sequential: bool, compensate: str) -> None:
    if sequential and compensate == "none":
        raise InputError("--sequential refits weights: give --compensate bias, lstsq or obs")


def check_labels_option(labels: str | None, criterion: str | None) -> None:
    """``dcp`` needs labels; labels weigh calibration samples for ``dcp`` only."""
    if criterion == "dcp" and labels is None:
        raise InputError(
            "criterion 'dcp' needs labelled calibration data: give --labels [KEY] (class labels in --calib)"
        )
    if labels is not None and criterion != "dcp":
        raise InputError("--labels weights calibration samples by the classifier's margin: only --criterion dcp")


def measure(pass_, model: onnx.ModelProto, deps: DependencyGraph, want, nodes=None) -> Statistics:
    """Calibrate ``model`` on the pass's data (``calib``, ``calib_samples``, ``batch_size``;
    ``labels``: margin-weighted Gram matrices)."""
    labels = getattr(pass_, "labels", None)
    if labels is not None:
        from ..validation.evaluate import check_labels

        check_labels(as_dataset(pass_.calib), labels)
    return calibrate(
        model,
        deps,
        as_dataset(pass_.calib),
        want=want,
        nodes=nodes,
        batch_size=pass_.batch_size,
        limit=pass_.calib_samples,
        seed=pass_.seed,
        max_rows=getattr(pass_, "max_rows", DEFAULT_MAX_ROWS),
        labels=labels,
    )


def consumers_losing(deps: DependencyGraph, plan: Plan) -> set[int]:
    """Node indices of the consumers whose input loses entries under ``plan``."""
    removed = removed_entries(deps, plan)
    return {i for i, dim in deps.contractions if len(removed.get(dim, ())) > 0}


def finish(
    pass_,
    model: onnx.ModelProto,
    deps: DependencyGraph,
    plan: Plan,
    stats: Statistics | None,
    *,
    inplace: bool = False,
    inexact: bool = False,
) -> tuple[PassResult, dict]:
    """Compensate (as ``pass_.compensate`` says, measuring what is still missing), apply the
    plan and record it; returns the pass's result (its reference: the masked one over the
    compensated input, or none when a pruned group is not function-preserving) and the report's
    data notes."""
    method = getattr(pass_, "compensate", "none")
    ridge = getattr(pass_, "ridge", DEFAULT_RIDGE)
    notes: dict = {"compensate": {"method": method}, "calibration": None}
    reference, ref_deps, ref_plan = model, deps, plan
    if method != "none" and plan.removals and getattr(pass_, "sequential", False):
        from ..edit.sequential import sequential_compensate

        comp = sequential_compensate(
            model,
            deps,
            plan,
            as_dataset(pass_.calib),
            method,
            ridge=ridge,
            max_rows=getattr(pass_, "max_rows", DEFAULT_MAX_ROWS),
            batch_size=pass_.batch_size,
            limit=pass_.calib_samples,
            seed=pass_.seed,
            labels=getattr(pass_, "labels", None),
        )
        comp, ref_deps, ref_plan = with_plan(comp, deps, plan, inexact=inexact)
        reference = comp.model
        notes["compensate"] = comp.summary()
    elif method != "none" and plan.removals:
        nodes = consumers_losing(deps, plan)
        want = {"channels"} | ({"gram"} if method in ("lstsq", "obs") else set())
        have_grams = stats is not None and all(i in stats.grams or i in stats.skipped for i in nodes)
        have_channels = stats is not None and all(
            (c.data, c.axis) in stats.channels for i, c in stats.consumers.items() if i in nodes
        )
        if stats is None or not have_channels or ("gram" in want and not have_grams):
            more = measure(pass_, model, deps, want, nodes=nodes)
            stats = more if stats is None else stats.merged(more)
        comp, ref_deps, ref_plan = compensated_plan(model, deps, plan, stats, method, ridge=ridge, inexact=inexact)
        reference = comp.model
        notes["compensate"] = comp.summary()
    if stats is not None:
        notes["calibration"] = stats.summary()
    earlier, key = history_of(model), fingerprint(model)  # before an in-place surgery changes the model
    masked = getattr(pass_, "mode", "remove") == "mask"
    if masked:  # zeros written where removal would cut, shapes kept
        from ..edit.maskmode import mask_plan

        pruned = mask_plan(reference, ref_deps, ref_plan)
        notes["mode"] = "mask"
    else:
        pruned = apply_plan(reference, ref_deps, ref_plan, inplace=inplace)
    plan_json = ref_plan.to_json(ref_deps)
    set_metadata(pruned, PLAN_METADATA_KEY, json.dumps(plan_json, separators=(",", ":")))
    if masked:
        mark_masked(pruned, plan_json)
    if earlier or masked:
        this = {"pass": type(pass_).__name__, "plan": plan_json, "input": key, **({"mode": "mask"} if masked else {})}
        steps = [*earlier, this]
        keep = [(p.key, p.value) for p in pruned.metadata_props if p.key not in _EARLIER_KEYS]
        del pruned.metadata_props[:]  # the earlier steps' own keys now live in the history
        for k, v in keep:
            set_metadata(pruned, k, v)
        set_metadata(pruned, HISTORY_METADATA_KEY, json.dumps({"steps": steps}, separators=(",", ":")))
    if reference is not model:
        set_metadata(pruned, COMPENSATE_METADATA_KEY, method)
    inexact = [g.label for g in ref_deps.groups if "inexact" in g.facts and len(ref_plan.removed(g))]
    return (
        PassResult(
            pruned,
            plan=ref_plan,
            deps=ref_deps,
            reference=None if inexact else plan_reference(reference, ref_deps, ref_plan),
            skipped_groups=inexact,
            record=plan_json,
            name=type(pass_).__name__,
        ),
        notes,
    )


def fingerprint(model: onnx.ModelProto) -> str:
    """A short hash of the names, shapes and types of ``model``'s initializers: which step of
    a history a given model is the input of (weights are not read)."""
    h = hashlib.sha256()
    for t in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(f"{t.name}:{list(t.dims)}:{t.data_type};".encode())
    masked = get_metadata(model, MASKED_METADATA_KEY)
    if masked:  # a masked model has its original's shapes: its mask steps tell them apart
        h.update(masked.encode())
    return h.hexdigest()[:16]


def mark_masked(model: onnx.ModelProto, plan_json) -> None:
    """Record a mask step (``--mode mask``) on ``model``: a hash chained over its mask steps'
    plans, which :func:`fingerprint` reads."""
    before = get_metadata(model, MASKED_METADATA_KEY) or ""
    text = before + json.dumps(plan_json, sort_keys=True, separators=(",", ":"))
    set_metadata(model, MASKED_METADATA_KEY, hashlib.sha256(text.encode()).hexdigest()[:16])


def history_of(model: onnx.ModelProto) -> list[dict]:
    """The pruning steps that made ``model`` (oldest first; [] for a model graphprune did not
    prune): its history, or the single plan, pipeline or layer plan older files carry (their
    ``input`` fingerprint is then unknown: None)."""
    text = get_metadata(model, HISTORY_METADATA_KEY)
    if text:
        return list(json.loads(text)["steps"])
    text = get_metadata(model, "graphprune.pipeline")
    if text:
        return [{"pass": s.get("pass"), "plan": s.get("plan"), "input": None} for s in json.loads(text)["steps"]]
    mode = {"mode": "mask"} if get_metadata(model, MASKED_METADATA_KEY) else {}
    for key, name in ((PLAN_METADATA_KEY, None), ("graphprune.layer_plan", "LayerPruning")):
        text = get_metadata(model, key)
        if text:
            return [{"pass": name, "plan": json.loads(text), "input": None, **mode}]
    return []


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    set_entry(model.metadata_props, key, value)


def get_metadata(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)


def group_report(deps, plan, ignore, units) -> dict:
    """The report keys every group-pruning pass gives: what was pruned, blocked and why."""
    from ..planning.allocate import protected

    blocked = deps.blocked_groups()
    return {
        "units": list(units),
        "groups_total": len(deps.groups),
        "groups_prunable": len(deps.prunable_groups()),
        "groups_pruned": len(plan.removals),
        "groups_blocked": len(blocked),
        "groups_ignored": len(protected(deps, ignore)),
        "channels_removed": plan.total_removed,
        "blocked": [{"group": g.label, "size": g.size, "reasons": g.reasons} for g in blocked],
        "blocked_reasons": deps.blocked_counts(),
        "unanalysed_reasons": deps.unanalysed_counts(),  # weights outside any group, by reason
        "notes": list(deps.notes),  # where analysis could not follow the model
    }
