"""User data for calibration and evaluation: ``.npz`` files streamed in batches.

Rules:
1. A dataset is an ``.npz`` file, or a folder of them (read in name order), whose keys are the
   model's input names; each array has the samples on axis 0. Other keys (``labels``) are
   carried along, never fed to the model.
2. Files are opened one at a time and arrays are cut into batches as they are read, so memory
   is bounded by one file, never by the whole dataset.
3. A model whose input declares a fixed batch size (often 1: many exporters fix it) is fed
   batches of exactly that size; a dynamic batch axis takes ``batch_size`` samples at a time.
   A remainder that does not fill a fixed batch is dropped and counted.
4. ``input_map`` ({data key: input name}, the CLI's ``--input-map KEY=INPUT``) feeds an input
   from a key of another name; an input it does not name is read from the key of its own name.
5. Arrays are cast to the input's declared element type (a float64 ``.npz`` feeds a float32
   model); a declared static non-batch dim that disagrees with the data is an error naming
   the file, the key and both shapes.
6. An input declared as a scalar (rank 0: a sample rate, a step count) is fed its 0-d array
   unchanged with every batch; 0-d arrays have no samples and do not count.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import InputError
from ..ir.graph import declared_dim

DEFAULT_BATCH = 32


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, declared shape (None for a dynamic dim) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    @property
    def fixed_batch(self) -> int | None:
        return self.shape[0] if self.shape else None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (old exporters also list initializers as inputs: skipped)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(declared_dim(d) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


@dataclass
class Dataset:
    """An ``.npz`` file or a folder of them, read lazily."""

    path: Path
    files: list[Path]
    counts: list[int] = field(default_factory=list)  # samples per file
    keys: list[set[str]] = field(default_factory=list)
    input_map: dict[str, str] = field(default_factory=dict)  # data key -> model input name (rule 4)

    def key_of(self, input_name: str) -> str:
        """The data key that feeds ``input_name``."""
        return next((k for k, v in self.input_map.items() if v == input_name), input_name)

    @property
    def n_samples(self) -> int:
        return sum(self.counts)

    def batches(
        self,
        specs: list[InputSpec],
        *,
        batch_size: int = DEFAULT_BATCH,
        limit: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for the model, one batch at a time; ``extra`` keys (labels) ride along.

        At most ``limit`` samples are read. Raises ``InputError`` for a missing key or a
        shape the model cannot take.
        """
        if batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size}")
        fixed = {s.fixed_batch for s in specs if s.fixed_batch is not None}
        if len(fixed) > 1:
            raise InputError(f"{self.path}: the model's inputs fix different batch sizes {sorted(fixed)}")
        step = fixed.pop() if fixed else batch_size
        names = {s.name for s in specs}
        for key, name in self.input_map.items():
            if name not in names:
                raise InputError(
                    f"--input-map {key}={name}: the model has no input {name!r} (inputs: {', '.join(sorted(names))})"
                )
        left = self.n_samples if limit is None else min(limit, self.n_samples)
        for file, count, keys in zip(self.files, self.counts, self.keys):
            if left <= 0:
                return
            missing = [s.name for s in specs if self.key_of(s.name) not in keys] + [k for k in extra if k not in keys]
            if missing:
                name = missing[0]
                key = self.key_of(name)
                hint = f" for input {name!r}" if key != name else ""
                if key == name and name in names:
                    hint = "; --input-map KEY=INPUT feeds an input from another key"
                raise InputError(f"{file}: no array {key!r}{hint} (has {', '.join(sorted(keys))})")
            with np.load(file, allow_pickle=False) as npz:
                arrays = {s.name: _checked(npz[self.key_of(s.name)], s, file) for s in specs}
                arrays.update({k: np.asarray(npz[k]) for k in extra})
            n = min(count, left)
            for start in range(0, n, step):
                stop = start + step
                if stop > n and fixed:
                    break  # a fixed batch cannot take a partial one
                # never past the limit; a scalar input (rule 6) is the same for every batch
                yield {k: a if a.ndim == 0 else a[start : min(stop, n)] for k, a in arrays.items()}
            left -= n
            del arrays


def open_dataset(path: str | os.PathLike, input_map: dict[str, str] | None = None) -> Dataset:
    """Index an ``.npz`` file or a folder of them (keys and sample counts, no data read);
    ``input_map`` ({data key: input name}) as in rule 4."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".npz" and f.is_file())
        if not files:
            raise InputError(f"{p}: folder has no .npz files")
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"{p}: no such data file or folder")
    ds = Dataset(p, files, input_map=dict(input_map or {}))
    for f in files:
        if f.suffix != ".npz" and not zipfile.is_zipfile(f):  # numpy would speak of pickled data
            kind = {".onnx": "an ONNX model, ", ".npy": "a single .npy array (it has no input names), "}.get(
                f.suffix, ""
            )
            raise InputError(
                f"{f}: {kind}not an .npz archive; data is an .npz of arrays keyed by the model's input names"
                " (numpy.savez), or a folder of them"
            )
        try:
            with np.load(f, allow_pickle=False) as npz:
                if not hasattr(npz, "files"):
                    raise InputError(f"{f}: not an .npz archive (a single .npy array has no input names)")
                names = list(npz.files)
                if not names:
                    raise InputError(f"{f}: empty .npz archive")
                counts = {k: _leading(f, npz, k) for k in names}
        except InputError:
            raise
        except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError...
            raise InputError(f"{f}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
        counts = {k: n for k, n in counts.items() if n is not None}  # scalars: no samples (rule 6)
        if not counts:
            raise InputError(f"{f}: every array is a scalar; samples must be on axis 0")
        sizes = set(counts.values())
        if len(sizes) > 1:
            detail = ", ".join(f"{k}: {n}" for k, n in counts.items())
            raise InputError(f"{f}: arrays have different numbers of samples ({detail})")
        ds.counts.append(sizes.pop())
        ds.keys.append(set(names))
    return ds


def _leading(file: Path, npz, key: str) -> int | None:
    """Samples in array ``key``, read from its header only (the data stays on disk); None for
    a scalar (rule 6)."""
    with npz.zip.open(key + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(fh)
    return int(shape[0]) if len(shape) else None


def _checked(arr: np.ndarray, spec: InputSpec, file: Path) -> np.ndarray:
    if arr.ndim == 0 and spec.shape:
        raise InputError(f"{file}: array {spec.name!r} is a scalar; samples must be on axis 0")
    if arr.ndim != len(spec.shape):
        raise InputError(
            f"{file}: array {spec.name!r} has shape {list(arr.shape)}, the model's input has rank {len(spec.shape)}"
        )
    for axis, (have, want) in enumerate(zip(arr.shape, spec.shape)):
        if axis > 0 and want is not None and have != want:
            shown = ["?" if d is None else d for d in spec.shape]
            raise InputError(f"{file}: array {spec.name!r} has shape {list(arr.shape)}, the model expects {shown}")
    if arr.dtype != spec.dtype:
        if arr.dtype.kind not in "fiub" or (spec.dtype.kind in "iub" and arr.dtype.kind == "f"):
            raise InputError(f"{file}: array {spec.name!r} is {arr.dtype}, the model expects {spec.dtype}")
        arr = arr.astype(spec.dtype)
    return arr


def class_indices(y: np.ndarray, classes: int, path, key: str) -> np.ndarray:
    """Class indices from integer labels ``[N]`` or per-class scores ``[N, classes]``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == classes:
        return y.argmax(axis=1)
    if y.ndim != 1:
        raise InputError(
            f"{path}: labels {key!r} have shape {list(y.shape)}; expected class indices [N] or [N, {classes}]"
        )
    if y.dtype.kind == "f":
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError(f"{path}: labels {key!r} are not whole numbers (class indices)")
    elif y.dtype.kind not in "iub":
        raise InputError(f"{path}: labels {key!r} are {y.dtype}, not class indices")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise InputError(
            f"{path}: labels {key!r} range over {int(y.min())}..{int(y.max())}, the model has {classes} classes"
        )
    return y.astype(np.int64)
