"""Validating a model of the sparsity pass later (``graphprune validate ORIGINAL SPARSE``).

The sparse model carries a record of the weights it zeroed (``graphprune.sparsity`` in its
metadata). Its step is rebuilt from it: the reference is the original with the sparse model's
zeros masked on those weights, and the pattern is checked again from the written weights. After
OBS the kept weights were updated from calibration data, which only the pruning run has: then
only the pattern is checked, and the note says so.
"""

from __future__ import annotations

import json

import onnx
from onnx import numpy_helper

from .dependency import analyze
from .passes.finish import SPARSITY_METADATA_KEY, get_metadata
from .passes.sparsity import SparseLayer, check_layers, reference_bytes
from .validation import Reference, Step


def replayed_step(original: onnx.ModelProto, sparse: onnx.ModelProto) -> Step:
    """The checked step from ``original`` to ``sparse``, rebuilt from ``sparse``'s record."""
    record = json.loads(get_metadata(sparse, SPARSITY_METADATA_KEY))
    mine = {t.name: t for t in sparse.graph.initializer}
    deps = analyze(original)
    layers = []
    for entry in record.get("layers", []):
        name = entry["weight"]
        if name not in mine or name not in deps.view.initializers:
            return Step(
                original,
                sparse,
                None,
                note=f"the sparse model's record names {name}, which is not a weight of both models",
            )
        w = numpy_helper.to_array(mine[name])
        if tuple(w.shape) != tuple(deps.view.shapes.get(name) or ()):
            note = (
                f"{name} has another shape in the original: the model was sparsified after other steps;"
                " validate it against the model it was sparsified from"
            )
            return Step(original, sparse, None, note=note)
        readers = list(deps.view.consumers.get(name, []))
        layers.append(SparseLayer("", -1, "", name, readers, tuple(w.shape), int(entry["in_axis"]), 0, "", w == 0))
    check = check_layers(sparse, layers, record.get("pattern", "unstructured"))
    said = f"pattern {check['pattern']} checked on {check['checked']} weights"
    violations = [] if check["passed"] else [f"{said}: fails on {', '.join(check['failed'][:3])}"]
    if record.get("criterion") not in ("magnitude", "wanda"):  # obs, or a record that does not say
        note = (
            f"{said}: {'held' if check['passed'] else 'failed'}; the kept weights were updated by OBS from"
            " calibration data, which only the pruning run has: exactness is checked there"
        )
        return Step(original, sparse, None, note=note, violations=violations)
    note = f"against the original with the sparse model's zeros masked; {said}: held"
    reference = Reference(original, lambda: reference_bytes(original, layers), note=note)
    return Step(original, sparse, reference, violations=violations)
