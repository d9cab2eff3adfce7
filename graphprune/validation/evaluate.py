"""Evaluation on user data: fidelity of the pruned model to the original, and top-1 accuracy.

Rules:
1. Both models run on the same batches of one pass over the dataset (``data.Dataset``), so
   memory is bounded by one batch; fidelity (cosine, relative L2 over all outputs, top-1
   agreement of the first) is accumulated as sums, never by keeping outputs.
2. Accuracy needs labels: an integer array of class indices ``[N]`` (or one-hot / scores
   ``[N, classes]``, read by argmax) under a key of the dataset, ``labels`` unless named, and a
   first model output of shape ``[N, classes]``. Anything else is an ``InputError`` naming the
   file and the problem, raised before a result is reported.
3. A fixed batch size that does not divide the dataset drops the remainder (``data`` rule 3):
   ``samples`` counts what was evaluated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from ..calibration.activations import session_with_outputs
from ..calibration.datasets import DEFAULT_BATCH, Dataset, class_indices, input_specs, open_dataset
from ..errors import InputError
from ..ir.runtime import run as run_session
from ..progress import progress
from .contract import Fidelity, cosine_and_rel_l2, fidelity_sums, leaves, numeric


@dataclass
class Accuracy:
    """Top-1 accuracy of both models on labelled data."""

    original: float
    pruned: float
    samples: int
    labels: str = "labels"


@dataclass
class Evaluation:
    """What one pass over the data measured."""

    fidelity: Fidelity
    accuracy: Accuracy | None
    samples: int
    data: str


def evaluate(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: str | os.PathLike | Dataset,
    *,
    labels: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    limit: int | None = None,
    cut=None,
) -> Evaluation:
    """Run ``original`` and ``pruned`` over ``data``; top-1 accuracy of both if ``labels`` names a key.
    ``cut`` (a :class:`graphprune.analysis.iochange.IoMap`): the pruned model's graph inputs/outputs lost
    entries; it runs on the kept entries of each batch and is compared with the original's kept outputs."""
    ds = data if isinstance(data, Dataset) else open_dataset(data)
    if labels is not None:
        check_labels(ds, labels)
    specs = input_specs(original)
    extra = (labels,) if labels is not None else ()
    sessions = [session_with_outputs(m, []) for m in (original, pruned)]
    names = [[o.name for o in s.get_outputs()] for s in sessions]
    if len(names[0]) != len(names[1]):
        raise InputError(f"the pruned model has {len(names[1])} outputs, the original {len(names[0])}")
    n = ds.n_samples if limit is None else min(limit, ds.n_samples)
    fixed = next((s.fixed_batch for s in specs if s.fixed_batch), None)
    step = fixed or batch_size
    total = n // step if fixed else -(-n // step)
    dot = pp = oo = dd = 0.0
    agree = correct_o = correct_p = seen = 0
    top1 = True
    for feeds in progress(ds.batches(specs, batch_size=batch_size, limit=limit, extra=extra), "evaluating", total):
        inputs = {s.name: feeds[s.name] for s in specs}
        # runtime.run: bfloat16, float8 and 4-bit inputs and outputs as onnxruntime takes them
        out_o = run_session(sessions[0], inputs)
        out_p = run_session(sessions[1], inputs if cut is None else cut.feeds(inputs))
        if cut is not None:
            out_o = cut.outputs(names[0], out_o)
        lo, lp = leaves(out_o), leaves(out_p)  # sequence and map outputs (ZipMap) element by element
        if [k for k, _ in lo] != [k for k, _ in lp]:
            raise InputError(f"{ds.path}: the pruned model's outputs differ in structure from the original's")
        for (path, o), (_, p) in zip(lo, lp):
            o64, p64 = numeric(o), numeric(p)
            if o64 is None or p64 is None or path.endswith("#len"):
                continue  # strings; sequence lengths (equal: the paths are)
            o64, p64 = o64.ravel(), p64.ravel()
            if o64.shape != p64.shape:
                raise InputError(
                    f"{ds.path}: the pruned model's output has shape {list(np.shape(p))}, the original's"
                    f" {list(np.shape(o))}"
                )
            sums = fidelity_sums(p64, o64)
            dot, pp, oo, dd = dot + sums[0], pp + sums[1], oo + sums[2], dd + sums[3]
        first_o, first_p = _first(out_o), _first(out_p)
        batch = len(inputs[specs[0].name]) if specs else len(first_o)
        classifier = first_o.ndim == 2 and first_o.shape[0] == batch and first_o.shape[1] > 1
        top1 = top1 and classifier
        if top1:
            pred_o, pred_p = first_o.argmax(axis=1), first_p.argmax(axis=1)
            agree += int(np.sum(pred_o == pred_p))
        if labels is not None:
            if not classifier:
                raise InputError(
                    f"{ds.path}: top-1 accuracy needs a first output of shape [N, classes]; the model's"
                    f" {names[0][0]!r} has shape {list(first_o.shape)} for a batch of {batch}"
                )
            truth = class_indices(feeds[labels], first_o.shape[1], ds.path, labels)
            correct_o += int(np.sum(pred_o == truth))
            correct_p += int(np.sum(pred_p == truth))
        seen += batch
    if seen == 0:
        raise InputError(f"{ds.path}: no samples to evaluate (the model takes batches of {step})")
    cosine, rel_l2 = cosine_and_rel_l2(dot, pp, oo, dd)  # the definition validation uses too
    fid = Fidelity(
        cosine=cosine,
        rel_l2=rel_l2,
        top1_agreement=agree / seen if top1 else None,
        data=str(ds.path),
        samples=seen,
    )
    acc = Accuracy(correct_o / seen, correct_p / seen, seen, labels) if labels is not None else None
    return Evaluation(fidelity=fid, accuracy=acc, samples=seen, data=str(ds.path))


def _first(outputs: list) -> np.ndarray:
    """The first output as an array (an empty one for a sequence or map output: not a classifier's)."""
    return outputs[0] if isinstance(outputs[0], np.ndarray) else np.zeros(0)


def check_labels(ds: Dataset, key: str) -> None:
    """Every file of ``ds`` has the labels array ``key`` (found from the index, no data read)."""
    for file, keys in zip(ds.files, ds.keys):
        if key not in keys:
            raise InputError(
                f"{file}: no labels array {key!r} (has {', '.join(sorted(keys))}); --labels KEY names another"
            )
