"""Lazy weights: the tensors of an external-data model stay on disk until something needs them.

Rules:
1. A model opened lazily (``io.load(path, lazy=True)``) keeps its external tensors external;
   each one records the absolute folder its location is relative to (external_data key
   ``graphprune.dir``), so it can be read whatever the working directory.
2. :func:`array` gives a read-only ``np.memmap`` of a tensor's bytes (dtype from
   ``data_type``: float16 and bfloat16 included): nothing is read until the caller computes.
3. Slicing a lazy tensor (the surgery) only records the source entries each axis keeps
   (``graphprune.keep``) and the source dims (``graphprune.shape``), and sets the new dims.
4. Writing streams each tensor from its source file into the output's data file in blocks
   of its leading axis, sliced as recorded: memory holds one block, never the weights.
5. ``graphprune.*`` keys never reach a file: files get plain location/offset/length entries.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper

DIR_KEY = "graphprune.dir"
KEEP_KEY = "graphprune.keep"
SHAPE_KEY = "graphprune.shape"
BLOCK_BYTES = 4 << 20  # bytes read at a time when streaming a tensor
ALIGN = 64 << 10  # large tensors start at multiples of this in written data files (mappable by onnxruntime)
ALIGN_THRESHOLD = 1 << 20
INLINE_LIMIT = 1024  # bytes; smaller in-memory tensors stay inside the .onnx file


@dataclass(frozen=True)
class Source:
    """Where a lazy tensor's bytes are, and which of its entries survive slicing."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]  # dims in the file
    keep: dict[int, np.ndarray]  # axis -> kept entries (sorted), for sliced axes only

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of a tensor's data as its dims and type say (None for types that cannot be mapped)."""
    dtype = storage_dtype(tensor.data_type)
    return None if dtype is None else int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize


def storage_dtype(data_type: int) -> np.dtype | None:
    """The numpy dtype whose items are this ONNX type's elements byte for byte, or None
    (sub-byte types such as int4 pack two elements per byte and cannot be memory-mapped)."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(data_type))
    except Exception:  # unknown or string type
        return None
    width = {onnx.TensorProto.BFLOAT16: 2}.get(data_type)
    if width is not None and dtype.itemsize != width:  # an onnx without ml_dtypes: raw storage
        return np.dtype(np.uint16)
    if dtype.kind in "OSU" or data_type in _PACKED:
        return None
    return dtype


_PACKED = {
    getattr(onnx.TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
}


FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)  # the element types weights are counted and ranked in


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The tensors of ``model``'s main graph that hold constant values, by name: its initializers
    and the ``value`` of its Constant nodes (the protos themselves: writing into them edits the model)."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


def set_field(dst, field, value) -> None:
    """Copy one protobuf field's ``value`` into ``dst`` (repeated fields extended, messages copied)."""
    # protobuf >= 5 has is_repeated; older releases only the (now deprecated) label
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    if repeated:
        getattr(dst, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(dst, field.name).CopyFrom(value)
    else:
        setattr(dst, field.name, value)


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model (initializers and attributes, subgraphs too) whose data is external."""
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def mark_lazy(model: onnx.ModelProto, base: Path) -> None:
    """Make the external tensors of ``model`` (loaded without data from a file in ``base``) lazy.

    Tensors that cannot be memory-mapped element by element (sub-byte types) are loaded now.
    """
    base = base.resolve()
    for tensor in external_tensors(model):
        if storage_dtype(tensor.data_type) is None:
            external_data_helper.load_external_data_for_tensor(tensor, str(base))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
            continue
        _set(tensor, DIR_KEY, str(base))


def is_lazy(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(e.key == DIR_KEY for e in tensor.external_data)


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in external_tensors(model))


def lazy_sources(model: onnx.ModelProto) -> set[Path]:
    """The (resolved) files the model's lazy tensors are read from."""
    return {source(t).path.resolve() for t in external_tensors(model) if is_lazy(t)}


def is_sliced(tensor: onnx.TensorProto) -> bool:
    return any(e.key == KEEP_KEY for e in tensor.external_data)


def source(tensor: onnx.TensorProto) -> Source:
    """Where a lazy tensor's bytes are (see :class:`Source`)."""
    info = {e.key: e.value for e in tensor.external_data}
    shape = tuple(json.loads(info[SHAPE_KEY])) if SHAPE_KEY in info else tuple(int(d) for d in tensor.dims)
    keep = {int(a): np.asarray(k, dtype=np.int64) for a, k in json.loads(info.get(KEEP_KEY, "{}")).items()}
    dtype = storage_dtype(tensor.data_type)
    assert dtype is not None, "mark_lazy loads what cannot be mapped"
    return Source(Path(info[DIR_KEY]) / info["location"], int(info.get("offset", 0)), dtype, shape, keep)


def array(tensor: onnx.TensorProto) -> np.ndarray:
    """The value of a lazy tensor: a read-only memory map of its file (a copy if it was sliced)."""
    src = source(tensor)
    if src.nbytes == 0:
        return np.zeros(src.shape, dtype=src.dtype)
    mapped = np.memmap(src.path, dtype=src.dtype, mode="r", offset=src.offset, shape=src.shape)
    if not src.keep:
        return mapped
    return np.concatenate(list(_blocks(src)), axis=0)


def drop_pages(arr: np.ndarray) -> None:
    """Let go of the pages of a memory map that have been read (they stay in the page cache):
    a map read block by block then costs one block of memory, not the whole tensor."""
    mapped = getattr(arr, "_mmap", None)  # np.memmap and its views keep the mmap object here
    if mapped is not None and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(mmap.MADV_DONTNEED)


def slice_lazy(tensor: onnx.TensorProto, removed: dict[int, np.ndarray]) -> None:
    """Remove entries (indices into the tensor's current dims) from a lazy tensor, reading nothing."""
    src = source(tensor)
    keep = dict(src.keep)
    for axis, idx in removed.items():
        current = keep.get(axis, np.arange(src.shape[axis]))
        keep[axis] = np.delete(current, np.asarray(idx, dtype=np.int64))
    _set(tensor, SHAPE_KEY, json.dumps(list(src.shape)))
    _set(tensor, KEEP_KEY, json.dumps({str(a): k.tolist() for a, k in sorted(keep.items())}, separators=(",", ":")))
    del tensor.dims[:]
    tensor.dims.extend(len(keep[a]) if a in keep else n for a, n in enumerate(src.shape))


def _blocks(src: Source, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """The sliced tensor as consecutive blocks of its leading axis, each read on its own
    (plain reads into a buffer of at most ``block_bytes``: nothing stays mapped)."""
    if not src.shape:
        with open(src.path, "rb") as f:
            f.seek(src.offset)
            yield np.fromfile(f, dtype=src.dtype, count=1).reshape(())
        return
    rows = src.shape[0]
    row_items = int(np.prod(src.shape[1:], dtype=np.int64))
    step = max(1, block_bytes // max(1, row_items * src.dtype.itemsize))
    kept_rows = src.keep.get(0)
    others = [(a, k) for a, k in sorted(src.keep.items()) if a != 0]
    with open(src.path, "rb") as f:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            if kept_rows is not None:
                local = kept_rows[(kept_rows >= start) & (kept_rows < stop)] - start
                if len(local) == 0:
                    continue
                start, stop, local = start + int(local[0]), start + int(local[-1]) + 1, local - local[0]
            f.seek(src.offset + start * row_items * src.dtype.itemsize)
            block = np.fromfile(f, dtype=src.dtype, count=(stop - start) * row_items)
            block = block.reshape((stop - start, *src.shape[1:]))
            if kept_rows is not None and len(local) != stop - start:
                block = block[local]
            for axis, k in others:
                block = np.take(block, k, axis=axis)
            yield block


def write_data(tensor: onnx.TensorProto, out) -> int:
    """Append a lazy tensor's (sliced) bytes to the open binary file ``out``; returns the byte count."""
    src = source(tensor)
    written = 0
    if not src.keep:  # a plain copy, block by block
        with open(src.path, "rb") as f:
            f.seek(src.offset)
            left = src.nbytes
            while left:
                chunk = f.read(min(left, BLOCK_BYTES))
                if not chunk:
                    raise OSError(f"{src.path}: ends inside tensor {tensor.name!r}")
                out.write(chunk)
                left -= len(chunk)
                written += len(chunk)
        return written
    for block in _blocks(src):
        data = np.ascontiguousarray(block).reshape(-1).view(np.uint8)  # bytes of any dtype (bfloat16 too)
        out.write(data.data)
        written += data.nbytes
    return written


def write_model(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Write ``model`` to ``model_path`` with its large tensors in ``data_path`` (recorded as
    ``location``): lazy tensors are streamed from their files, sliced as recorded. ``model``
    itself is not changed."""
    out = write_weights(model, data_path, location)
    with open(model_path, "wb") as f:
        f.write(out.SerializeToString())


def write_weights(model: onnx.ModelProto, data_path: Path, location: str) -> onnx.ModelProto:
    """Write the large tensors of ``model`` to ``data_path`` (see :func:`write_model`); returns
    a copy of ``model`` whose tensors point there (as ``location``, plain entries)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)  # lazy tensors carry no data: this copies the graph, not the weights
    with open(data_path, "wb") as f:
        for tensor in external_data_helper._get_all_tensors(out):
            lazy = is_lazy(tensor)
            if lazy and _small(tensor):
                _read_in(tensor)
                continue
            if not lazy and not (tensor.HasField("raw_data") and len(tensor.raw_data) >= INLINE_LIMIT):
                continue
            size = source(tensor).nbytes if lazy else len(tensor.raw_data)
            if size >= ALIGN_THRESHOLD and f.tell() % ALIGN:
                f.write(b"\0" * (ALIGN - f.tell() % ALIGN))
            offset = f.tell()
            if lazy:
                length = write_data(tensor, f)
            else:
                f.write(tensor.raw_data)
                length = len(tensor.raw_data)
                tensor.ClearField("raw_data")
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                _set(tensor, key, value)
    return out


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every lazy tensor read into memory (sliced as recorded)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in external_tensors(out):
        if is_lazy(tensor):
            _read_in(tensor)
    return out


def _read_in(tensor: onnx.TensorProto) -> None:
    """Turn a lazy tensor into one that holds its (sliced) bytes."""
    value = np.ascontiguousarray(array(tensor))
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = value.reshape(-1).view(np.uint8).tobytes()


def _small(tensor: onnx.TensorProto) -> bool:
    """Small enough to live inside the .onnx file (onnxruntime's shape inference cannot read a
    Reshape shape or a Split size from external data)."""
    size = nbytes(tensor)
    return size is not None and size < INLINE_LIMIT


@contextlib.contextmanager
def runnable(model: onnx.ModelProto) -> Iterator[onnx.ModelProto | str]:
    """``model`` in a form onnxruntime and the checker can open: the model itself when it holds
    its weights, else the path of a model file whose external data onnxruntime reads itself.

    onnxruntime only reads external data inside the model file's folder, so an unsliced lazy
    model is written (without weights) under a hidden temporary name into the folder of the
    file it was loaded from, next to the original; a sliced one (a pruned model not saved yet),
    or one whose folder is read-only, is written whole to a temporary folder (``TMPDIR``).
    Either is removed on exit, however the block ends.
    """
    lazy = [t for t in external_tensors(model) if is_lazy(t)]
    if not lazy:
        yield model
        return
    folders = {_base(t) for t in lazy}
    sliced = any(is_sliced(t) for t in lazy)
    if not sliced and len(folders) == 1:
        folder = folders.pop()
        try:
            fd, name = tempfile.mkstemp(prefix=".graphprune-", suffix=".onnx", dir=folder)
        except OSError:  # a read-only folder: fall back to a copy in a temporary folder
            fd = None
        if fd is not None:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_beside_data(model, folder).SerializeToString())
                yield name
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(name)
            return
    with tempfile.TemporaryDirectory(prefix="graphprune-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_model(model, path, Path(tmp) / "model.onnx.data", "model.onnx.data")
        yield str(path)


def session(data: bytes, lazy: bool, **options):
    """An onnxruntime CPU session (:func:`graphprune.ir.runtime.session`, ``options`` its keywords) of
    a serialized model; ``lazy``: it was serialized from a lazy model (its weights are in files),
    so onnxruntime is given a file beside them (:func:`runnable`), which it no longer needs once
    the session exists."""
    from .runtime import session as _session

    if not lazy:
        return _session(data, **options)
    with runnable(onnx.load_from_string(data)) as path:
        return _session(path, **options)


def _beside_data(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """A copy whose lazy tensors have plain entries with locations relative to ``folder``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in external_tensors(out):
        if is_lazy(tensor) and _small(tensor):
            _read_in(tensor)
        elif is_lazy(tensor):
            src = source(tensor)
            length = next((e.value for e in tensor.external_data if e.key == "length"), None)
            del tensor.external_data[:]
            _set(tensor, "location", os.path.relpath(src.path, folder))
            _set(tensor, "offset", str(src.offset))
            if length is not None:
                _set(tensor, "length", length)
    return out


def _base(tensor: onnx.TensorProto) -> Path:
    """The folder a lazy tensor's location is relative to (its model's folder)."""
    return Path(next(e.value for e in tensor.external_data if e.key == DIR_KEY))


def _set(tensor: onnx.TensorProto, key: str, value: str) -> None:
    set_entry(tensor.external_data, key, value)


def set_entry(entries, key: str, value: str) -> None:
    """Set ``key`` in a repeated ``StringStringEntryProto`` field (a tensor's ``external_data``,
    a model's ``metadata_props``): its entry replaced if there is one, else added."""
    for entry in entries:
        if entry.key == key:
            entry.value = value
            return
    entry = entries.add()
    entry.key, entry.value = key, value


# ------------------------------------------------------------------ spilling a pruned model
# Validating a pruned lazy model needs its sliced weights in a file onnxruntime can read, and
# saving it needs them in the output's data file. Written once (a *spill*) and pointed at,
# the same bytes serve both: :func:`graphprune.ir.files.save` renames a spill into place instead of
# copying it when it is on the output's file system.

SPILL_PREFIX = ".graphprune-spill-"
_SPILLS: dict[Path, set[Path]] = {}  # spill files not moved or removed yet -> the files they were read from
_SPILL_FOLDER: list[Path] = []  # where spills go (innermost :func:`spill_folder`), else TMPDIR


@contextlib.contextmanager
def spill_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Spills made inside this block go to ``folder`` (the CLI passes the output's folder, so
    saving renames the spill instead of copying it). Spills left when the block ends are removed."""
    _SPILL_FOLDER.append(Path(folder))
    before = set(_SPILLS)
    try:
        yield
    finally:
        _SPILL_FOLDER.pop()
        for path in set(_SPILLS) - before:
            discard_spill(path)


def spill(model: onnx.ModelProto) -> Path | None:
    """Write the sliced lazy tensors of ``model`` (with its other large external ones) to one
    new data file and point ``model`` at it, unsliced; returns the file, or None when nothing
    is sliced. The file is removed at exit unless :func:`graphprune.ir.files.save` moves it."""
    if not any(is_lazy(t) and is_sliced(t) for t in external_tensors(model)):
        return None
    folder = _SPILL_FOLDER[-1] if _SPILL_FOLDER else Path(tempfile.gettempdir())
    while not folder.exists() and folder.parent != folder:  # an output folder not made yet: its
        folder = folder.parent  # nearest existing ancestor is on the same file system
    try:
        fd, name = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".data", dir=folder)
    except OSError:  # not there yet, or read-only: the temporary folder then
        folder = Path(tempfile.gettempdir())
        fd, name = tempfile.mkstemp(prefix=SPILL_PREFIX, suffix=".data", dir=folder)
    os.close(fd)
    data = Path(name).resolve()
    _SPILLS[data] = lazy_sources(model)
    try:
        written = write_weights(model, data, data.name)
    except BaseException:
        discard_spill(data)
        raise
    mark_lazy(written, data.parent)
    model.CopyFrom(written)  # the graph and small tensors only: the weights stay in the file
    return data


def is_spill(path: Path) -> bool:
    return path.resolve() in _SPILLS


def spill_origins(path: Path) -> set[Path]:
    """The files a spill's tensors were read from (an output must not overwrite them)."""
    return set(_SPILLS.get(path.resolve(), set()))


def moved_spill(path: Path) -> None:
    """``path`` (a spill) was renamed into an output: it is no longer ours to remove."""
    _SPILLS.pop(path.resolve(), None)


def discard_spill(path: Path) -> None:
    _SPILLS.pop(path.resolve(), None)
    with contextlib.suppress(OSError):
        os.unlink(path)


def movable_spill(model: onnx.ModelProto, folder: Path) -> Path | None:
    """The spill ``model`` reads all its external weights from, unsliced, if it can be renamed
    into ``folder`` (same file system), else None."""
    tensors = list(external_data_helper._get_all_tensors(model))
    external = [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external or not all(is_lazy(t) and not is_sliced(t) for t in external):
        return None
    if any(t.HasField("raw_data") and len(t.raw_data) >= INLINE_LIMIT for t in tensors):
        return None  # in-memory weights would need writing to the data file as well
    paths = {source(t).path.resolve() for t in external}
    if len(paths) != 1:
        return None
    (path,) = paths
    try:
        same_disk = path.stat().st_dev == folder.stat().st_dev
    except OSError:
        return None
    return path if same_disk and is_spill(path) else None


def write_pointing(model: onnx.ModelProto, model_path: Path, location: str) -> None:
    """Write ``model`` (every external tensor lazy and unsliced, all in one file) to
    ``model_path`` with its tensors pointing at ``location``, the same offsets: for a data file
    renamed, not rewritten."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in external_tensors(out):
        src = source(tensor)
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(src.offset)), ("length", str(src.nbytes))):
            _set(tensor, key, value)
    with open(model_path, "wb") as f:
        f.write(out.SerializeToString())


def repoint(model: onnx.ModelProto, old: Path, new: Path) -> None:
    """Point ``model``'s lazy tensors read from file ``old`` at file ``new`` (same bytes)."""
    old = old.resolve()
    for tensor in external_tensors(model):
        if is_lazy(tensor) and source(tensor).path.resolve() == old:
            _set(tensor, DIR_KEY, str(new.parent.resolve()))
            _set(tensor, "location", new.name)


@atexit.register
def _remove_spills() -> None:
    for path in list(_SPILLS):
        discard_spill(path)
