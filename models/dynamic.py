"""Models with symbolic input dims, as real exports have them (test material for graphprune.ir.input_sizes).

* :func:`fpn_detector` - a detector-like CNN with dynamic batch, height and width that only runs
  on image sizes that are multiples of 32: five stride-2 stages, then the deepest map is
  upsampled 2x and added to the stride-16 one (a feature pyramid's top-down path), which only
  lines up when the stride-16 size is even.
* :func:`token_mlp` - a transformer MLP sub-block on ``[batch, sequence, hidden]`` with both
  batch and sequence symbolic: ``x + W2·relu(W1·x + b1) + b2``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models import variants
from models.builders import DEFAULT_OPSET, IR_VERSION, _Builder

__all__ = ["fpn_detector", "token_mlp"]


def fpn_detector(width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Stem and five stride-2 conv-bn-relu stages (``width`` x 1, 2, 2, 4, 4 channels), a 1x1
    lateral conv on the stride-16 map, the stride-32 map upsampled 2x and added to it, and a 1x1
    head to 6 channels; inputs and outputs ``[batch, 3, height, width]``."""
    b = _Builder(seed, input_shape=(1, 3, 64, 64))
    x = b.input
    feats = []
    for i, mult in enumerate((1, 2, 2, 4, 4)):
        x = b.conv(x, width * mult, 3, 2, name=f"stage{i}.conv")
        x = b.act(b.bn(x, name=f"stage{i}.bn"), "relu", name=f"stage{i}.relu")
        feats.append(x)
    lateral = b.conv(feats[3], width * 4, 1, bias=True, name="lateral")
    top = b.resize2x(feats[4], name="up")
    y = b.act(b.add(lateral, top, name="fpn"), "relu", name="fpn.relu")
    y = b.conv(y, 6, 1, bias=True, name="head")
    return variants.with_dynamic_dims(b.build(y, "fpn_detector"))


def token_mlp(hidden: int = 32, inner: int = 64, seed: int = 0) -> onnx.ModelProto:
    """``y = x + (relu(x @ W1 + b1) @ W2 + b2)`` on ``x: [batch, sequence, hidden]`` (symbolic
    ``batch`` and ``sequence``): ``inner`` neurons are prunable, MACs grow with the sequence."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [
        w("fc1.weight", hidden, inner),
        w("fc1.bias", inner),
        w("fc2.weight", inner, hidden),
        w("fc2.bias", hidden),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "fc1.bias"], ["h1"], name="fc1.add"),
        helper.make_node("Relu", ["h1"], ["h2"], name="act"),
        helper.make_node("MatMul", ["h2", "fc2.weight"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "fc2.bias"], ["h4"], name="fc2.add"),
        helper.make_node("Add", ["x", "h4"], ["y"], name="residual"),
    ]
    dims = ["batch", "sequence", hidden]
    graph = helper.make_graph(
        nodes,
        "token_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)], ir_version=IR_VERSION)
