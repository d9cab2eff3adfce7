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


def _step_in_child(cache) -> tuple[str, bool]:
    """The channel step a fresh process finds, and whether it imported onnxruntime for it."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from graphprune.objectives.hardware import channel_step\n"
        "s = channel_step()\n"
        "print(json.dumps([s.to_json(), 'onnxruntime' in sys.modules]))\n"
    )
    env = {**os.environ, "GRAPHPRUNE_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    step, imported = json.loads(out.stdout.strip().splitlines()[-1])
    return step, imported


def test_the_channel_step_is_probed_once_per_runtime_and_cpu_then_read_from_the_cache(tmp_path):
    first, imported = _step_in_child(tmp_path)
    assert imported  # probed: onnxruntime optimised the tiny Conv
    again, imported = _step_in_child(tmp_path)
    assert again == first and not imported  # the cache answers without importing onnxruntime
    assert again == channel_step().to_json()


def test_another_runtime_or_cpu_probes_again_and_a_failed_probe_is_not_kept(tmp_path, monkeypatch):
    from graphprune.objectives import hardware

    monkeypatch.setenv("GRAPHPRUNE_CACHE_DIR", str(tmp_path))
    key = hardware._probe_key()
    assert key is not None
    hardware._write_cached(key, hardware.ChannelStep(16, "onnxruntime NCHWc block"))
    assert hardware._read_cached(key) == hardware.ChannelStep(16, "onnxruntime NCHWc block")
    assert hardware._read_cached({**key, "cpu": "another"}) is None
    assert hardware._read_cached({**key, "onnxruntime": [["elsewhere", 1, 2]]}) is None

    monkeypatch.setattr(hardware, "_probe", lambda: (hardware.ChannelStep(DEFAULT_STEP, "default"), False))
    monkeypatch.setattr(hardware, "_probe_key", lambda: {**key, "cpu": "failing"})
    hardware.channel_step.cache_clear()
    try:
        assert hardware.channel_step() == hardware.ChannelStep(DEFAULT_STEP, "default")
        assert hardware._read_cached({**key, "cpu": "failing"}) is None
    finally:
        hardware.channel_step.cache_clear()
