"""onnxruntime, quiet and fed every element type it takes.

Rules:
1. :func:`ort` imports onnxruntime (slow: only when a model runs) and, once, raises its default
   logger's threshold to fatal: its warnings and ``[E:onnxruntime:...]`` lines never reach the
   user's terminal (a failed run still raises, and the tool reports that in one line). Every
   session is built by :func:`session`, which logs at the same level; every module that imports
   onnxruntime does it through :func:`ort`.
2. onnxruntime's Python binding has no numpy type for bfloat16, float8 and int4/uint4:
   :func:`run` hands such feeds over as raw bits (:class:`OrtValue` of the ONNX type) and reads
   such outputs back from raw bits into :mod:`ml_dtypes` arrays.
3. Outputs are copies (an onnxruntime array keeps the session's memory alive); sequences stay
   lists and maps dicts (ZipMap), compared structurally by :mod:`graphprune.validation.contract`.
"""

from __future__ import annotations

import ctypes
import math
import time

import numpy as np
import onnx

_QUIET = 4  # FATAL only: a failed run still raises in Python, with the message the tool reports
_configured = False
# ONNX types onnxruntime's numpy bridge does not know: fed and read as raw bits
_RAW = {
    "bfloat16": onnx.TensorProto.BFLOAT16,
    "float8_e4m3fn": onnx.TensorProto.FLOAT8E4M3FN,
    "float8_e4m3fnuz": onnx.TensorProto.FLOAT8E4M3FNUZ,
    "float8_e5m2": onnx.TensorProto.FLOAT8E5M2,
    "float8_e5m2fnuz": onnx.TensorProto.FLOAT8E5M2FNUZ,
    "int4": onnx.TensorProto.INT4,
    "uint4": onnx.TensorProto.UINT4,
}
for _name, _onnx_name in (
    ("float8_e8m0fnu", "FLOAT8E8M0"),
    ("float4_e2m1fn", "FLOAT4E2M1"),
    ("int2", "INT2"),
    ("uint2", "UINT2"),
):  # newer ONNX types, when the installed onnx has them
    if hasattr(onnx.TensorProto, _onnx_name):
        _RAW[_name] = getattr(onnx.TensorProto, _onnx_name)
# sub-byte types: bits per element, packed into bytes lowest bits first (ONNX's layout)
_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}


def ort():
    """The onnxruntime module, its default logger set to errors only (rule 1)."""
    global _configured
    import onnxruntime

    if not _configured:
        onnxruntime.set_default_logger_severity(_QUIET)
        _configured = True
    return onnxruntime


def options(*, threads: int = 1):
    """Session options: ``threads`` intra-op threads, one inter-op thread, errors-only logging."""
    so = ort().SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = _QUIET
    return so


_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session(
    source,
    *,
    threads: int = 1,
    optimization: str | None = None,
    qdq_fusion: bool = True,
    profile_prefix: str | None = None,
    optimized_path: str | None = None,
):
    """The one place an onnxruntime CPU session is built: ``source`` is a ModelProto, its bytes or
    a path; ``threads`` intra-op threads (one inter-op), errors-only logging (rule 1);
    ``optimization`` ``"basic"``, ``"extended"`` or ``"all"`` (None: onnxruntime's default);
    ``qdq_fusion=False`` keeps DequantizeLinear->op->QuantizeLinear unfused; ``profile_prefix``
    turns profiling on; ``optimized_path`` writes the optimized graph there."""
    so = options(threads=threads)
    if optimization is not None:
        so.graph_optimization_level = getattr(ort().GraphOptimizationLevel, _LEVELS[optimization])
    if not qdq_fusion:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    data = source.SerializeToString() if isinstance(source, onnx.ModelProto) else source
    return ort().InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _feed(value):
    """A feed onnxruntime takes: raw-bit OrtValues for the types of rule 2."""
    if isinstance(value, np.ndarray) and value.dtype.name in _RAW:
        et = _RAW[value.dtype.name]
        bits = _BITS.get(value.dtype.name)
        if bits:
            v = ort().OrtValue.ortvalue_from_shape_and_type(list(value.shape), et)
            packed = _pack(np.ascontiguousarray(value).reshape(-1).view(np.uint8), bits)
            ctypes.memmove(v.data_ptr(), packed.ctypes.data, packed.nbytes)
            return v
        raw = np.ascontiguousarray(value).view(np.uint16 if value.dtype.itemsize == 2 else np.uint8)
        return ort().OrtValue.ortvalue_from_numpy_with_onnx_type(raw, et)
    return value


def _raw_output(v) -> np.ndarray:
    """An OrtValue tensor of a rule-2 type as an ml_dtypes array."""
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.element_type()))
    shape = tuple(v.shape())
    n = math.prod(shape)
    nbytes = v.tensor_size_in_bytes()
    buf = np.frombuffer(ctypes.string_at(v.data_ptr(), nbytes), np.uint8)
    bits = _BITS.get(dtype.name)
    if bits:
        return _unpack(buf, bits, n).view(dtype).reshape(shape).copy()
    return buf.view(dtype).reshape(shape).copy()


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Element codes (one per byte) packed ``8 // bits`` to a byte, the first in the lowest bits."""
    per = 8 // bits
    codes = codes & ((1 << bits) - 1)
    codes = np.concatenate([codes, np.zeros(-len(codes) % per, np.uint8)]).reshape(-1, per)
    return np.bitwise_or.reduce(codes << (bits * np.arange(per, dtype=np.uint8)), axis=1).astype(np.uint8)


def _unpack(buf: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The inverse of :func:`_pack`: ``n`` codes, one per byte, sign-extended for signed types by
    the ml_dtypes view (which reads the low bits of each byte)."""
    per = 8 // bits
    codes = (buf[:, None] >> (bits * np.arange(per, dtype=np.uint8))) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].astype(np.uint8)


def copy(value):
    """A deep copy of an onnxruntime output: arrays, lists (sequences) and dicts (maps)."""
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    if isinstance(value, list):
        return [copy(v) for v in value]
    if isinstance(value, dict):
        return {k: copy(v) for k, v in value.items()}
    return value


def feedable(sess, feeds: dict) -> dict:
    """The feeds ``sess`` has inputs for, in forms onnxruntime takes (rule 2)."""
    names = {i.name for i in sess.get_inputs()}
    return {k: _feed(v) for k, v in feeds.items() if k in names}


def run(sess, feeds: dict, durations: list[float] | None = None) -> list:
    """``sess``'s outputs on ``feeds`` (only the inputs it has), with rule 2's conversions;
    ``durations`` gets the seconds onnxruntime's run took (conversions and copies left out)."""
    fed = feedable(sess, feeds)
    start = time.perf_counter()
    if not any(_is_raw(o.type) for o in sess.get_outputs()):
        outputs = sess.run(None, fed)
        if durations is not None:
            durations.append(time.perf_counter() - start)
        return [copy(o) for o in outputs]
    values = sess.run_with_ort_values(None, _ortvalues(fed))
    if durations is not None:
        durations.append(time.perf_counter() - start)
    out = []
    for v in values:
        if v.is_tensor() and v.element_type() in _RAW.values():
            out.append(_raw_output(v))
        else:
            out.append(copy(v.numpy()))
    return out


_SUBBYTE_INTS = ("tensor(int4)", "tensor(uint4)", "tensor(int2)", "tensor(uint2)")


def _is_raw(ort_type: str) -> bool:
    """Whether onnxruntime's type string (``tensor(bfloat16)``...) is one of rule 2's."""
    return any(k in ort_type for k in ("bfloat16", "float8", "float4")) or ort_type in _SUBBYTE_INTS


def _ortvalues(fed: dict) -> dict:
    return {k: ort().OrtValue.ortvalue_from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in fed.items()}


__all__ = ["copy", "feedable", "options", "ort", "run", "session"]
