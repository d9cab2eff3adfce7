"""What this machine's onnxruntime kernels prefer: the channel step where their latency steps.

onnxruntime's CPU provider runs a float Conv in the blocked NCHWc layout (its NchwcTransformer),
padding channel counts up to a multiple of the block: 16 floats with AVX-512, 8 with AVX2. A
count between two multiples costs as much as the next multiple up, and a count the transformer
refuses (not a multiple of 4 input channels, measured with onnxruntime 1.32) falls back to a
slower NCHW kernel and adds layout changes around it. The block is read from the runtime itself,
not guessed from CPU flags: a tiny Conv is optimised and the output channels of its reordered
weight are the block (one channel padded up to a whole block).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass

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


@functools.cache
def channel_step() -> ChannelStep:
    """The NCHWc block of this machine's onnxruntime, or :data:`DEFAULT_STEP` when its
    optimiser does not block a Conv here (another CPU, another version)."""
    from ..ir.runtime import session

    with tempfile.TemporaryDirectory(prefix="graphprune-probe-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        try:
            # errors-only logging: it warns that the optimised file is machine-specific, we know
            session(_probe_model(), optimization="all", optimized_path=path)
            optimized = onnx.load(path)
        except Exception:  # noqa: BLE001 - a runtime that cannot do this has no block to read
            return ChannelStep(DEFAULT_STEP, "default")
    weights = {t.name: t for t in optimized.graph.initializer}
    for node in optimized.graph.node:
        if node.domain == NCHWC_DOMAIN and node.op_type == "Conv" and len(node.input) > 1:
            w = weights.get(node.input[1])
            if w is not None and len(w.dims) == 4 and w.dims[0] > 1:
                return ChannelStep(int(w.dims[0]), "onnxruntime NCHWc block")
    return ChannelStep(DEFAULT_STEP, "default")
