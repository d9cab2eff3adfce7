"""Sizes for a model's symbolic input dims: to count its costs per sample and to feed it.

Real exports leave dims symbolic (batch, sequence, image height and width). Analysis and
surgery keep them symbolic; only costs and feeds need numbers, and they get them here.

Rules:
1. Sources, in order: ``input_shapes`` given by the user (``--input-shape NAME:D1,D2,...``,
   onnxsim's syntax), the shapes of the data's first batch (``--calib``/``--data``), defaults.
   What was chosen for each input, and from where, is reported (``assumed_shapes``).
2. One ``dim_param`` name is one size: a size learnt for ``seq`` on one input is used for
   ``seq`` on every input that declares it.
3. Defaults: the batch (axis 0, and its dim_param wherever it appears) is 1. The height and
   width of an image-like input (rank 4, floating point, axes 2 and 3 symbolic) are the first
   of :data:`SPATIAL_CANDIDATES` (64, then 224, 256, 320, 640, 32) that the original model runs
   on: detectors (YOLO, PP-OCR) only take multiples of 32, and 64 is the smallest that leaves a
   2x2 map after five stride-2 stages. Every other symbolic dim (a sequence) is the first of
   :data:`SEQUENCE_CANDIDATES` (16, 64, 256, 1024) it runs on (an STFT's reflect padding needs
   more than 16 samples), tried in step with the image sizes: one run of the original per try,
   only when there is something to choose and validation will run. A dim declared
   ``-1`` (some exporters write it for "dynamic") is symbolic too.
4. Costs are per sample: for counting, a symbolic batch is 1 whatever the source; feeds keep
   the data's batch.
5. These sizes never reach the analysis (dependency groups, folded shapes, surgery), which must
   stay valid for every size: costs are counted on shapes inferred on a light copy whose inputs
   are fixed (:func:`count_shapes`), and the saved model keeps its symbolic dims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import InputError

DEFAULT_DIM = 16
SPATIAL_CANDIDATES = (64, 224, 256, 320, 640, 32)
SEQUENCE_CANDIDATES = (DEFAULT_DIM, 64, 256, 1024)
FROM_USER, FROM_DATA, FROM_DEFAULT = "--input-shape", "data", "default"


@dataclass
class InputSizes:
    """Concrete dims for each real graph input (tensor inputs with a shape)."""

    dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per input, the dims its feeds take (the data's batch when data gave them)."""
    source: dict[str, str] = field(default_factory=dict)
    """Per input with a symbolic dim: where its sizes came from (user, data, default)."""
    batch_symbolic: set[str] = field(default_factory=set)
    """Inputs whose axis 0 is symbolic (set to 1 for counting per sample)."""
    batch_params: set[str] = field(default_factory=set)
    """The dim_params that are the batch (on axis 0 of some input), wherever they appear."""
    declared: dict[str, list] = field(default_factory=dict)
    """The inputs' declared dims (:func:`declared`)."""
    runs: bool | None = None
    """Whether the original ran on one of the default sizes tried (None: nothing was tried)."""

    def per_sample(self) -> dict[str, tuple[int, ...]]:
        """The dims costs are counted at: a symbolic batch is 1 (on axis 0, and wherever its
        dim_param appears)."""
        out = {}
        for k, d in self.dims.items():
            want = self.declared.get(k, [])
            out[k] = tuple(
                1
                if (axis == 0 and k in self.batch_symbolic)
                or (axis < len(want) and isinstance(want[axis], str) and want[axis] in self.batch_params)
                else size
                for axis, size in enumerate(d)
            )
        return out

    def assumed(self) -> dict[str, list[int]]:
        """The per-sample dims of every input that had a symbolic dim (the report's ``assumed_shapes``)."""
        sample = self.per_sample()
        return {k: list(sample[k]) for k in self.source}

    @property
    def symbolic(self) -> bool:
        return bool(self.source)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D1,D2,...`` (onnxsim's ``--input-shape``) as ``(name, dims)``."""
    name, sep, dims = text.rpartition(":")
    try:
        parsed = tuple(int(d) for d in dims.split(","))
    except ValueError:
        parsed = ()
    if not sep or not name or not parsed or any(d < 1 for d in parsed):
        raise InputError(
            f"--input-shape {text!r}: expected NAME:D1,D2,... with positive sizes, e.g. images:1,3,640,640"
        )
    return name, parsed


def declared(model: onnx.ModelProto) -> dict[str, list]:
    """The real inputs' declared dims: an int, a ``dim_param`` name, or None (unnamed or -1)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims: list = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        out[vi.name] = dims
    return out


def resolve(
    model: onnx.ModelProto,
    input_shapes: dict | None = None,
    data_shapes: dict | None = None,
    *,
    probe=None,
) -> InputSizes:
    """Sizes for every symbolic input dim of ``model`` (rules 1-3).

    ``data_shapes``: the shapes of the data's first batch by input name. ``probe(dims)`` (a
    callable that says whether the original runs with these input dims) picks the default
    image size and sequence length; without it the first candidates are taken.
    """
    decl = declared(model)
    input_shapes = dict(input_shapes or {})
    unknown = [k for k in input_shapes if k not in decl]
    if unknown:
        raise InputError(f"--input-shape {unknown[0]}: the model has no such input (inputs: {', '.join(decl)})")
    named: dict[str, int] = {}  # dim_param -> size
    sizes = InputSizes()
    for source, given in ((FROM_USER, input_shapes), (FROM_DATA, data_shapes or {})):
        for name, dims in given.items():
            if name not in decl:
                continue
            want = decl[name]
            dims = tuple(int(d) for d in dims)
            if len(dims) != len(want):
                raise InputError(
                    f"{source} {name}: {len(dims)} dims given, the input has rank {len(want)} ({_show(want)})"
                )
            for axis, (have, w) in enumerate(zip(dims, want)):
                if isinstance(w, int) and have != w and not (axis == 0 and source == FROM_DATA):
                    raise InputError(
                        f"{source} {name}: dim {axis} is {have}, the model fixes it to {w} ({_show(want)})"
                    )
                if isinstance(w, str):
                    named.setdefault(w, have)
            if name not in sizes.dims:
                sizes.dims[name] = dims
                if any(not isinstance(w, int) for w in want):
                    sizes.source[name] = source
    # a dim_param on axis 0 of some input is the batch, wherever else it appears (an RNN state's axis 1)
    sizes.batch_params = {w[0] for w in decl.values() if w and isinstance(w[0], str)}
    sizes.declared = decl
    sizes.batch_symbolic = {k for k, w in decl.items() if w and not isinstance(w[0], int)}
    defaults = [k for k, w in decl.items() if k not in sizes.dims and not all(isinstance(d, int) for d in w)]
    for name in defaults:
        sizes.source[name] = FROM_DEFAULT
    for name, want in decl.items():
        if name not in sizes.dims and name not in defaults:
            sizes.dims[name] = tuple(want)
    images = [
        k
        for k in defaults
        if len(decl[k]) == 4
        and all(not isinstance(d, int) and d not in named for d in decl[k][2:])
        and _is_float(model, k)
    ]
    n = max(len(SPATIAL_CANDIDATES) if images else 0, len(SEQUENCE_CANDIDATES))
    trials = [
        _fill(decl, defaults, images, named, sizes.batch_params, image, seq)
        for image, seq in zip(_candidates(SPATIAL_CANDIDATES, n), _candidates(SEQUENCE_CANDIDATES, n))
    ]
    if probe is not None and defaults and (images or any(_free(decl[k], named, sizes.batch_params) for k in defaults)):
        # rule 3: the first sizes the original runs on; if none, the first (validation then says so)
        chosen = next((t for t in trials if probe({**sizes.dims, **t})), None)
        sizes.runs = chosen is not None
        chosen = chosen or trials[0]
    else:
        chosen = trials[0]
    sizes.dims.update(chosen)
    return sizes


def _candidates(sizes: tuple[int, ...], n: int) -> list[int]:
    """``n`` sizes to try: ``sizes``, the last repeated (image and sequence sizes go in step)."""
    return [sizes[min(i, len(sizes) - 1)] for i in range(n)]


def _free(want: list, named: dict, batch_params: set) -> bool:
    """Whether an input has a symbolic dim that is neither the batch nor sized already."""
    return any(not isinstance(d, int) and d not in named and d not in batch_params for d in want[1:])


def _fill(decl, defaults, images, named, batch_params, image: int, seq: int) -> dict:
    """Default dims: learnt sizes for named dims, 1 for the batch, ``image`` for an image's
    height and width, ``seq`` for every other symbolic dim (one size per dim_param)."""
    out = {}
    for name in defaults:
        dims = []
        for axis, w in enumerate(decl[name]):
            if isinstance(w, int):
                dims.append(w)
            elif w is not None and w in named:
                dims.append(named[w])
            elif axis == 0 or w in batch_params:
                dims.append(1)
            elif name in images and axis >= 2:
                dims.append(image)
            else:
                dims.append(seq)
        out[name] = tuple(dims)
    return out


def _is_float(model: onnx.ModelProto, name: str) -> bool:
    vi = next(v for v in model.graph.input if v.name == name)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.issubdtype(np.dtype(dtype), np.floating)


def _show(dims) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


def fixed_inputs(model: onnx.ModelProto, dims: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A light copy of ``model`` (large weights as stubs) whose inputs have the given dims; past
    axis 0 (the batch, which data may give at its own size) a fixed dim the model declares
    stands (a pruned model whose cache input lost heads, :mod:`graphprune.analysis.iochange`, is counted
    at its own size with the sizes resolved for the original)."""
    from .graph import light_copy

    light = light_copy(model)
    for vi in light.graph.input:
        if vi.name in dims and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            own = [d.dim_value if d.HasField("dim_value") and a > 0 else None for a, d in enumerate(shape.dim)]
            if len(own) != len(dims[vi.name]):
                own = [None] * len(dims[vi.name])
            del shape.dim[:]
            for d, fixed in zip(dims[vi.name], own):
                shape.dim.add().dim_value = int(fixed if fixed is not None else d)
    del light.graph.value_info[:]  # declared intermediate shapes may carry the symbols
    for vi in light.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    return light


def count_shapes(model: onnx.ModelProto, sizes: InputSizes | None) -> dict | None:
    """Shapes of every tensor at the per-sample sizes (rule 4), for counting costs only; None when
    the model has no symbolic input dim (its own shapes are the ones to count)."""
    if sizes is None or not sizes.symbolic:
        return None
    from .graph import infer_shapes

    return infer_shapes(fixed_inputs(model, sizes.per_sample()))


def describe(feeds: dict) -> str:
    """``x: 1x3x64x64, mask: 1x16`` for an error message."""
    return ", ".join(f"{k}: {'x'.join(str(d) for d in np.shape(v)) or 'scalar'}" for k, v in feeds.items())


__all__ = [
    "DEFAULT_DIM",
    "SPATIAL_CANDIDATES",
    "InputSizes",
    "count_shapes",
    "declared",
    "describe",
    "fixed_inputs",
    "parse_input_shape",
    "resolve",
]
