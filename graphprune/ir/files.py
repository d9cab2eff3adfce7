"""Loading and saving ONNX files.

Rules:
1. Every load failure is an ``InputError`` naming the file and the problem in one line.
2. Saving is atomic: the model is written to a temporary file in the target folder and
   renamed over the target, so a crash or an interrupt never leaves a half-written file.
3. Models whose serialized size would pass protobuf's 2 GB limit, and models that came
   with external data, are saved with external data beside the output, named after it.
4. ``load(path, lazy=True)`` leaves external data on disk (see :mod:`graphprune.ir.weights`);
   saving such a model streams its tensors into the output's data file one by one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from ..errors import InputError
from . import weights

_PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1024  # bytes; tensors smaller than this stay inside the .onnx file


_EXTERNAL_SOURCES: dict[str, bool] = {}  # file -> it kept its weights in external data


def had_external_data(path: str | os.PathLike) -> bool:
    """Whether the file, as last loaded by :func:`load`, kept its weights in external data
    (its pruned output then does too: a user who split the weights out wants them split)."""
    return _EXTERNAL_SOURCES.get(str(Path(path).resolve()), False)


def load(path: str | os.PathLike, *, load_external_data: bool = True, lazy: bool = False) -> onnx.ModelProto:
    """Read an ONNX file, or raise ``InputError`` saying what is wrong with it.

    ``lazy=True``: external data stays in its files (checked, not read); weights are
    memory-mapped when a criterion or the surgery asks for them (:mod:`graphprune.ir.weights`).
    """
    p = check_readable(path)
    try:
        # format="protobuf": onnx would otherwise pick a text reader from a .json/.txtpb suffix
        model = onnx.load(str(p), format="protobuf", load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a valid ONNX model (cannot parse protobuf: {one_line(exc)})") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and not model.opset_import):
        raise InputError(f"{p}: not an ONNX model (no graph in the protobuf message)")
    _EXTERNAL_SOURCES[str(p.resolve())] = _uses_external_data(model)
    if (load_external_data or lazy) and _uses_external_data(model):
        base = p.resolve().parent
        sizes: dict[Path, int] = {}
        for tensor in weights.external_tensors(model):
            info = {e.key: e.value for e in tensor.external_data}
            location = info.get("location", "")
            target = (base / location).resolve()
            if base not in target.parents:
                raise InputError(f"{p}: external data location {location!r} escapes the model's folder")
            if not target.exists():
                raise InputError(f"{p}: missing external data file {location!r}")
            if lazy:  # what a full load would find out by reading, a lazy one checks now
                size = sizes.setdefault(target, target.stat().st_size)
                length = max(_int(info.get("length", "0"), p, tensor), weights.nbytes(tensor) or 0)
                if _int(info.get("offset", "0"), p, tensor) + length > size:
                    raise InputError(f"{p}: tensor {tensor.name!r} runs past the end of {location!r}")
        if lazy:
            weights.mark_lazy(model, base)
            return model
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: cannot read external data ({one_line(exc)})") from None
    return model


def _int(text: str, path: Path, tensor: onnx.TensorProto) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{path}: tensor {tensor.name!r} has a bad external data offset or length {text!r}") from None


def check_opset(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """``InputError`` if the model needs a newer ONNX opset than the installed onnx knows."""
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > newest:
            raise InputError(
                f"{path}: uses ONNX opset {imp.version}, newer than the installed onnx {onnx.__version__}"
                f" supports ({newest}); upgrade onnx or convert the model to an older opset"
            )


def check_readable(path: str | os.PathLike) -> Path:
    """The path, if it names a non-empty regular file; else ``InputError`` saying why not."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not an ONNX file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")
    return p


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; returns the final path.

    ``external_data=None`` chooses: external data when the model would not fit in one
    protobuf (2 GB) or already holds tensors that point to external files.
    """
    p = Path(path)
    folder = p.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = _uses_external_data(model) or not _fits_one_protobuf(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    data_name = p.name + ".data"
    tmp_data = None
    moved = None  # a spill renamed to tmp_data
    try:
        if weights.has_lazy(model) and not external_data:
            model = weights.materialize(model)  # asked for one file: the weights must be read in
        if external_data and weights.has_lazy(model):
            spill = weights.movable_spill(model, folder)
            # the files the weights come from (a spill's: the input's it was cut from)
            sources = weights.spill_origins(spill) if spill is not None else weights.lazy_sources(model)
            if (folder / data_name).resolve() in sources:
                raise InputError(f"{p}: its data file {data_name} holds the input's weights; choose another -o")
            tmp_data = folder / f".{data_name}.tmp"
            if spill is not None:  # written once already (to validate them): renamed, not copied
                weights.write_pointing(model, Path(tmp), data_name)
                os.replace(spill, tmp_data)
                moved = spill
            else:
                weights.write_model(model, Path(tmp), tmp_data, data_name)
        elif external_data:
            tmp_data = folder / f".{data_name}.tmp"
            onnx.save_model(
                model,
                tmp,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=tmp_data.name,
                size_threshold=_EXTERNAL_THRESHOLD,
            )
            # The location recorded in the model must be the final name, not the temp one.
            _rename_location(tmp, tmp_data.name, data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
        with _interrupts_held():  # both renames happen, or neither
            if tmp_data is not None:
                _publish(tmp_data, folder / data_name)
                tmp_data = None
            _publish(tmp, p)
            _COMMITTED.append(p.resolve())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if moved is not None and tmp_data is not None:  # give the spill back: the model still reads it
            with contextlib.suppress(OSError):
                os.replace(tmp_data, moved)
                tmp_data = None
        if tmp_data is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_data)
        raise
    if moved is not None:
        weights.moved_spill(moved)
        weights.repoint(model, moved, folder / data_name)  # the model in memory reads the output now
    return p


_COMMITTED: list[Path] = []  # outputs this process has renamed into place, oldest first


def committed() -> list[Path]:
    """Files this process has written completely (renamed into place), oldest first."""
    return list(_COMMITTED)


@contextlib.contextmanager
def _interrupts_held():
    """Hold Ctrl-C (SIGINT) back for a few system calls: an interrupt then arrives after
    them, never between two renames that must both happen."""
    held = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if held else None
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _publish(tmp: str | os.PathLike, final: Path) -> None:
    """Rename ``tmp`` over ``final`` with the mode a new file would get (mkstemp makes 0600)."""
    if final.exists():
        mode = final.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    os.replace(tmp, final)


def _rename_location(model_path: str, old: str, new: str) -> None:
    model = onnx.load(model_path, load_external_data=False)
    for tensor in weights.external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(True for _ in weights.external_tensors(model))


def _fits_one_protobuf(model: onnx.ModelProto) -> bool:
    """Whether ``model`` serialises within protobuf's 2 GB.

    ``ByteSize()`` encodes the whole message (upb): as long as writing it, which then encodes it
    again (15 ms each for densenet121). So it is asked only when the tensors' data, bounded from
    their fields' lengths (raw bytes exactly, at most 10 bytes an element in typed fields), comes
    within a quarter of the limit: the rest of a model (nodes, names, attributes) is far smaller."""
    bound = 0
    for t in external_data_helper._get_all_tensors(model):
        if t.HasField("raw_data"):
            bound += len(t.raw_data)
        else:
            bound += 4 * len(t.float_data) + 8 * len(t.double_data)
            bound += 10 * (len(t.int32_data) + len(t.int64_data) + len(t.uint64_data))
            bound += sum(len(x) + 10 for x in t.string_data)
    if bound < _PROTOBUF_LIMIT // 4:
        return True
    return _byte_size(model) <= _PROTOBUF_LIMIT


def _byte_size(model: onnx.ModelProto) -> int:
    return model.ByteSize()


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line (for one-line errors)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cache_dir() -> Path:
    """Where measurements of this machine are kept (latency tables, the channel step):
    ``$GRAPHPRUNE_CACHE_DIR``, else ``~/.cache/graphprune``."""
    return Path(os.environ.get("GRAPHPRUNE_CACHE_DIR") or Path.home() / ".cache" / "graphprune")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (report, plan) atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block ends
    without error, removed otherwise (for writers that want a file name, such as matplotlib)."""
    p = Path(path)
    p.resolve().parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.resolve().parent)
    os.close(fd)
    try:
        yield tmp
        with _interrupts_held():
            _publish(tmp, p)
            _COMMITTED.append(p.resolve())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_all(models: list[tuple[onnx.ModelProto, Path, bool | None]]) -> list[Path]:
    """Write several models ``(model, path, external_data)`` all or none: each is saved into a
    staging folder beside its output (as :func:`save` does), then all are renamed into place
    together; a failure before the renames leaves no output written or changed."""
    import shutil

    stages: dict[Path, Path] = {}
    staged: list[tuple[Path, Path]] = []
    try:
        for model, path, external_data in models:
            path = Path(path)
            folder = path.resolve().parent
            folder.mkdir(parents=True, exist_ok=True)
            if folder not in stages:
                stages[folder] = Path(tempfile.mkdtemp(prefix=".graphprune-stage-", dir=folder))
            written = save(model, stages[folder] / path.name, external_data=external_data)
            _COMMITTED.remove(written.resolve())  # committed once renamed into place
            staged.append((written, path))
        with _interrupts_held():  # every rename happens, or none
            for written, path in staged:
                data = written.with_name(written.name + ".data")
                if data.exists():
                    _publish(data, path.with_name(path.name + ".data"))
                _publish(written, path)
                _COMMITTED.append(path.resolve())
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)
    return [path for _, path in staged]
