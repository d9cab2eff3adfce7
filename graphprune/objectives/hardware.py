"""What this machine's onnxruntime kernels prefer: the channel step where their latency steps.

onnxruntime's CPU provider runs a float Conv in the blocked NCHWc layout (its NchwcTransformer),
padding channel counts up to a multiple of the block: 16 floats with AVX-512, 8 with AVX2. A
count between two multiples costs as much as the next multiple up, and a count the transformer
refuses (not a multiple of 4 input channels, measured with onnxruntime 1.32) falls back to a
slower NCHW kernel and adds layout changes around it. The block is read from the runtime itself,
not guessed from CPU flags: a tiny Conv is optimised and the output channels of its reordered
weight are the block (one channel padded up to a whole block).

The answer is kept in the cache folder (:func:`graphprune.ir.files.cache_dir`), keyed by the
installed onnxruntime's files (path, size, modification time) and the CPU (model and flags):
importing onnxruntime and probing costs ~25 ms of CPU, most of a ``prune --no-validate`` of a
small model that never needs onnxruntime otherwise. A probe that fails is not kept.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NCHWC_DOMAIN = "com.microsoft.nchwc"
DEFAULT_STEP = 8  # a SIMD register of floats on most CPUs (AVX2, two NEON registers)


@dataclass(frozen=True)
class ChannelStep:
    """The channel count multiple latency steps at, and where that number comes from."""

    step: int
    source: str  # "onnxruntime NCHWc block" | "default"

    def to_json(self) -> dict:
        return {"step": self.step, "source": self.source}


def _probe_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((1, 4, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


CACHE_FORMAT = "graphprune-channel-step-v1"


@functools.cache
def channel_step() -> ChannelStep:
    """The NCHWc block of this machine's onnxruntime, or :data:`DEFAULT_STEP` when its
    optimiser does not block a Conv here (another CPU, another version)."""
    key = _probe_key()
    cached = _read_cached(key) if key is not None else None
    if cached is not None:
        return cached
    step, definite = _probe()
    if key is not None and definite:
        _write_cached(key, step)
    return step


def _probe() -> tuple[ChannelStep, bool]:
    """The step onnxruntime's optimiser shows, and whether that is its answer (False: the
    probe failed, which another run may not)."""
    from ..ir.runtime import session

    with tempfile.TemporaryDirectory(prefix="graphprune-probe-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        try:
            # errors-only logging: it warns that the optimised file is machine-specific, we know
            session(_probe_model(), optimization="all", optimized_path=path)
            optimized = onnx.load(path)
        except Exception:  # noqa: BLE001 - a runtime that cannot do this has no block to read
            return ChannelStep(DEFAULT_STEP, "default"), False
    weights = {t.name: t for t in optimized.graph.initializer}
    for node in optimized.graph.node:
        if node.domain == NCHWC_DOMAIN and node.op_type == "Conv" and len(node.input) > 1:
            w = weights.get(node.input[1])
            if w is not None and len(w.dims) == 4 and w.dims[0] > 1:
                return ChannelStep(int(w.dims[0]), "onnxruntime NCHWc block"), True
    return ChannelStep(DEFAULT_STEP, "default"), True


def _probe_key() -> dict | None:
    """What the probe's answer depends on, told without importing onnxruntime: its package's
    files and the CPU. None if onnxruntime cannot be found (the probe then says why not)."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    package = Path(spec.origin).parent
    files = [Path(spec.origin), *sorted((package / "capi").glob("onnxruntime_pybind11_state*"))]
    try:
        runtime = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    except OSError:
        return None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        cpu = hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()
    except OSError:
        pass
    return {"format": CACHE_FORMAT, "onnxruntime": runtime, "machine": platform.machine(), "cpu": cpu}


def _cache_file() -> Path | None:
    """The cache file, or None where there is no home to keep it in (``~`` not expanded)."""
    from ..ir.files import cache_dir

    folder = cache_dir()
    return folder / "channel-step.json" if folder.is_absolute() else None


def _read_cached(key: dict) -> ChannelStep | None:
    path = _cache_file()
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") == key and isinstance(data.get("step"), int) and data["step"] >= 1:
            return ChannelStep(data["step"], str(data["source"]))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    return None


def _write_cached(key: dict, step: ChannelStep) -> None:
    from ..ir.files import write_text_atomic

    path = _cache_file()
    if path is None:
        return
    try:
        write_text_atomic(path, json.dumps({"key": key, **step.to_json()}, indent=1) + "\n")
    except OSError:  # a read-only home: probe again next time
        pass
