"""Surgery writes a sliced weight as the very TensorProto onnx's from_array would make of the
sliced array (same bytes serialized), whether it slices into a new tensor or in place, named
or not (a Constant's value has no name), for the element types weights come in."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.edit.surgery import _write_sliced

DTYPES = [np.float32, np.float16, np.float64, ml_dtypes.bfloat16, np.int8, np.int32, np.int64, np.bool_]


def _reference(src: onnx.TensorProto, kept: np.ndarray) -> bytes:
    ref = numpy_helper.from_array(np.ascontiguousarray(kept), src.name)
    ref.data_type = src.data_type
    ref.doc_string = src.doc_string
    return ref.SerializeToString()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["w", ""])
def test_sliced_weight_is_what_from_array_writes(dtype, name):
    a = (np.random.default_rng(0).standard_normal((6, 5, 3)) * 3).astype(dtype)
    src = numpy_helper.from_array(a, name)
    src.doc_string = "kept" if name else ""
    removed = {0: np.array([1, 4]), 1: np.array([0])}
    want = _reference(src, a[[0, 2, 3, 5]][:, [1, 2, 3, 4]])
    dst = onnx.TensorProto()
    _write_sliced(dst, src, removed)
    assert dst.SerializeToString() == want
    _write_sliced(src, src, removed)  # in place
    assert src.SerializeToString() == want
