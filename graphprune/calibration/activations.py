"""Intermediate activations of a model on user data, one batch at a time.

Rules:
1. The tensors asked for are exposed as extra graph outputs on the caller's model itself,
   serialized, and taken out again (in ``finally``): no copy of the weights is made and the
   caller's model ends as it began.
2. onnxruntime runs with basic optimisations only, so every exposed tensor is computed as the
   graph states it (no fusion swallows it), on the CPU provider.
3. Batches are streamed: the caller reduces each batch's activations to the statistics it
   needs, so memory is bounded by one batch whatever the dataset's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx
from onnx import helper

from ..ir import weights
from ..progress import progress
from .datasets import DEFAULT_BATCH, Dataset, input_specs


def session_with_outputs(model: onnx.ModelProto, tensors: Iterable[str], dtypes: dict[str, int] | None = None):
    """An onnxruntime session of ``model`` whose outputs are its own followed by ``tensors``."""

    g = model.graph
    have = {o.name for o in g.output}
    extra = [t for t in dict.fromkeys(tensors) if t not in have]
    dtypes = dtypes or {}
    n = len(g.output)
    try:
        for t in extra:
            g.output.append(helper.make_tensor_value_info(t, dtypes.get(t, onnx.TensorProto.FLOAT), None))
        data = model.SerializeToString()
    finally:
        del g.output[n:]
    # threads=0: onnxruntime's own intra-op threads (all cores), as calibration always had
    lazy = weights.has_lazy(model)  # lazy: weights read from their files
    sess = weights.session(data, lazy, threads=0, optimization="basic", qdq_fusion=False)
    del data
    return sess


def stream_activations(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Iterable[str],
    *,
    dtypes: dict[str, int] | None = None,
    batch_size: int = DEFAULT_BATCH,
    limit: int | None = None,
    label: str = "calibrating",
    extra: tuple[str, ...] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """For each batch of ``dataset``: the model's outputs and the named ``tensors`` by name
    (and the ``extra`` dataset keys, such as labels, as they were read)."""
    tensors = list(dict.fromkeys(tensors))
    sess = session_with_outputs(model, tensors, dtypes)
    names = [o.name for o in sess.get_outputs()]
    specs = input_specs(model)
    n = dataset.n_samples if limit is None else min(limit, dataset.n_samples)
    fixed = next((s.fixed_batch for s in specs if s.fixed_batch), None)
    step = fixed or batch_size
    total = n // step if fixed else -(-n // step)
    batches = dataset.batches(specs, batch_size=batch_size, limit=limit, extra=extra)
    for feeds in progress(batches, label, total=total):
        outs = sess.run(names, {s.name: feeds[s.name] for s in specs})
        result = dict(zip(names, outs))
        result.update({k: feeds[k] for k in extra})
        yield result
