"""The channel step read from onnxruntime: the NCHWc block its CPU Conv kernels pad to."""

from __future__ import annotations

import platform

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphprune.objectives.hardware import DEFAULT_STEP, channel_step


def conv_session(channels: int, tmp_path) -> list[list[int]]:
    """Weight shapes of a Conv with ``channels`` in and out, after onnxruntime optimised it."""
    import onnx

    w = numpy_helper.from_array(np.ones((channels, channels, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 4, 4])],
        [w],
    )
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "o.onnx")
    so.log_severity_level = 3
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [list(t.dims) for t in onnx.load(so.optimized_model_filepath).graph.initializer]


def test_channel_step_is_the_block_onnxruntime_pads_channels_to(tmp_path):
    step = channel_step()
    assert step.step >= 1 and step.step & (step.step - 1) == 0  # a power of two
    if platform.machine() in ("x86_64", "AMD64"):
        # every x86-64 CPU onnxruntime supports has the NCHWc kernels (SSE, AVX2 or AVX-512)
        assert step.source == "onnxruntime NCHWc block" and step.step in (4, 8, 16)
    if step.source == "default":
        assert step.step == DEFAULT_STEP
        return
    # one channel more than a block is padded to two whole blocks
    shapes = conv_session(step.step + 4, tmp_path)
    assert [2 * step.step, 2 * step.step, 1, 1] in shapes
    assert channel_step() is step  # probed once per process
