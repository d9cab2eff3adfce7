"""``prune(pass_="sparsity")``: the sparsity pass run and validated against the whole contract.

Exactness for sparsity: the sparse model equals, within tolerance, the base model (the
original, or with the OBS-updated dense weights) with a ``Mul`` by each layer's 0/1 mask on
its weight (:func:`graphprune.passes.sparsity.reference_bytes`); an N:M pattern is checked
again from the written weights (:func:`graphprune.passes.sparsity.check_layers`), and a
failed check fails exactness. MACs and parameters are those of the dense model (dense
kernels do not skip zeros); the report adds ``sparsity`` and the zip-compressed sizes
``zip_bytes_before``/``zip_bytes_after``.
"""

from __future__ import annotations

from dataclasses import replace

from . import weights
from .dependency import analyze
from .errors import InputError
from .passes.finish import set_metadata
from .passes.sparsity import SparseLayer, check_layers, model_zeros, reference_bytes, zip_bytes
from .plan import Plan

SPARSITY_METADATA_KEY = "graphprune.sparsity"


def sparsity_pass(options: dict):
    """The sparsity pass of ``options`` (the keywords of :func:`graphprune.prune`); usage errors
    (an option it does not take, ``criterion`` for ``sparsity_criterion``) raise InputError."""
    from .api import make_pass

    if options.get("criterion") is not None:
        raise InputError(
            "the sparsity pass ranks weights by --sparsity-criterion (magnitude, wanda, obs), not --criterion"
        )
    return make_pass("sparsity", **{k: v for k, v in options.items() if k != "criterion"})


def prune_sparsity(model, options: dict, *, validate: bool, latency: bool, feeds, input_shapes, latency_runs):
    """Sparsify ``model`` with the sparsity pass built from ``options`` (the keywords of
    :func:`graphprune.prune`) and validate it; a :class:`graphprune.api.PruneResult` whose plan
    is empty (no channel is removed) and whose ``report.prune`` holds the pass's report."""
    import json

    from . import api
    from .data import Dataset, open_dataset

    pass_ = sparsity_pass(options)
    original = api.load_model(model)
    data = pass_.calib
    if data is not None and not isinstance(data, Dataset):
        data = open_dataset(data)
        pass_ = replace(pass_, calib=data)
    sizes, feeds, inputs_from = api._inputs(original, input_shapes, feeds, data, pass_.batch_size, validate=validate)
    deps = analyze(original)
    result = pass_.run(original, deps)
    details = dict(result.report)
    if not result.layers:
        details["nothing_pruned"] = "no Conv/ConvTranspose/MatMul/Gemm weight could be sparsified" + (
            ": " + "; ".join(sorted({s["reason"] for s in details["sparsity"]["skipped"]}))
            if details["sparsity"]["skipped"]
            else ""
        )
    lazy = weights.has_lazy(original)
    if not lazy:
        zeros_b, size_b = model_zeros(original)
        zeros_a, _ = model_zeros(result.model)
        details["sparsity"]["of_all_weights_before"] = round(zeros_b / max(size_b, 1), 6)
        details["sparsity"]["of_all_weights"] = round(zeros_a / max(size_b, 1), 6)
        details["zip_bytes_before"] = zip_bytes(original)
        details["zip_bytes_after"] = zip_bytes(result.model)
    else:
        details["zip_bytes_before"] = details["zip_bytes_after"] = None
    record = {
        "pattern": pass_.pattern,
        "criterion": pass_.sparsity_criterion,
        "layers": [{"weight": ly.weight, "in_axis": ly.in_axis} for ly in result.layers],
    }
    # earlier steps' plans address the input's ancestors, which do not have these zeros: the
    # sparse model carries its own record only (validate it against its input)
    keep = [(p.key, p.value) for p in result.model.metadata_props if not p.key.startswith("graphprune.")]
    del result.model.metadata_props[:]
    for k, v in keep:
        set_metadata(result.model, k, v)
    set_metadata(result.model, SPARSITY_METADATA_KEY, json.dumps(record, separators=(",", ":")))
    before = api.sample_cost(original, sizes)
    report = api._costs_report(before, api.sample_cost(result.model, sizes), details)
    api._assumed(report, sizes)
    if validate and result.layers:
        from .validation import run_original

        run_original(original, feeds, inputs_from)
        layers = result.layers
        reference = api._Reference(original, lambda: reference_bytes(original, layers))
        exact = api._exactness(original, result.model, reference, [], feeds)
        check = check_layers(result.model, layers, pass_.pattern)
        details["pattern_check"] = check
        if not check["passed"]:
            exact.passed = False
            exact.note = f"pattern check failed on {', '.join(check['failed'][:3])}"
        else:
            exact.note = "against the original with the same zeros masked" + (
                " (OBS: its updated weights, masked)" if any(ly.updated is not None for ly in layers) else ""
            )
        api._end_to_end(report, original, result.model, [exact], feeds, latency, latency_runs, inputs_from)
        if data is not None and report.runtime["passed"]:
            from .evaluate import evaluate

            ev = evaluate(original, result.model, data, batch_size=pass_.batch_size, limit=api.FIDELITY_SAMPLES)
            report.fidelity = ev.fidelity
    return api.PruneResult(model=result.model, report=report, plan=Plan(), deps=deps)


def stored_exactness(original, sparse, feeds):
    """Exactness of a sparsity-pass model against ``original`` from the record in its metadata
    (``graphprune validate``): the zeros it has on each recorded weight are masked on the
    original's, and the pattern is checked again. After OBS the kept weights were updated from
    calibration data, which only the pruning run has: then only the pattern is checked."""
    import json

    from onnx import numpy_helper

    from .passes.finish import get_metadata
    from .validation import Exactness

    record = json.loads(get_metadata(sparse, SPARSITY_METADATA_KEY))
    mine = {t.name: t for t in sparse.graph.initializer}
    deps = analyze(original)
    layers = []
    for entry in record.get("layers", []):
        name = entry["weight"]
        if name not in mine or name not in deps.view.initializers:
            return Exactness(note=f"the sparse model's record names {name}, which is not a weight of both models")
        w = numpy_helper.to_array(mine[name])
        if tuple(w.shape) != tuple(deps.view.shapes.get(name) or ()):
            return Exactness(
                note=f"{name} has another shape in the original: the model was sparsified after other steps;"
                " validate it against the model it was sparsified from"
            )
        readers = list(deps.view.consumers.get(name, []))
        axis = int(entry["in_axis"])
        layers.append(SparseLayer("", -1, "", name, readers, tuple(w.shape), axis, 0, "", w == 0))
    check = check_layers(sparse, layers, record.get("pattern", "unstructured"))
    said = f"pattern {check['pattern']} checked on {check['checked']} weights"
    if not check["passed"]:
        return Exactness(checked=True, passed=False, note=f"{said}: fails on {', '.join(check['failed'][:3])}")
    if record.get("criterion") not in ("magnitude", "wanda"):  # obs, or a record that does not say
        return Exactness(
            note=f"{said}: held; the kept weights were updated by OBS from calibration data, which only the pruning"
            " run has: exactness is checked there"
        )
    from . import api

    reference = api._Reference(original, lambda: reference_bytes(original, layers))
    exact = api._exactness(original, sparse, reference, [], feeds)
    exact.note = f"against the original with the sparse model's zeros masked; {said}: held"
    return exact
