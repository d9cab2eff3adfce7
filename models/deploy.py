"""Deployment-form graphs for the latency benchmark, at sizes where kernels, not overhead, dominate.

* :data:`GRAPHS`: ``bert_fused`` (a 2-layer BERT encoder through onnxruntime's transformer
  optimizer: ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``), ``gpt2_fused`` (Llama-style
  decoder layers through the ``gpt2`` optimizer: ``SkipSimplifiedLayerNormalization``),
  ``vit_fused`` (a ViT-Tiny-shaped model through the ``vit`` optimizer) and ``resnet18_qop`` (the zoo's resnet18
  quantized by ``quantize_static`` in QOperator format: ``QLinearConv``, ``QLinearAdd``, ``QGemm``).
* :func:`qoperator`: any float model through ``quantize_static`` (QOperator, per channel, uint8
  activations, int8 weights), calibrated on four seeded random batches.

Weights are seeded random (the zoo's from its statistics): only the graphs are realistic.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import numpy as np
import onnx

from models import fused, transformers, zoo


def qoperator(model: onnx.ModelProto, batches: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``model`` quantized by ``quantize_static`` in QOperator format, per channel."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(seed)
            self.items = iter([{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "qop.onnx")
        onnx.save(model, src)
        quantize_static(
            src,
            dst,
            Reader(),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(dst)


def bert_fused(layers: int = 2, embed: int = 256, heads: int = 4, mlp: int = 1024, seq: int = 128):
    """``layers`` post-norm BERT blocks (Div-scaled scores, as BERT exports them), fused by the
    optimizer (``model_type="bert"``)."""
    blocks = [
        fused.bert_block_for_optimizer(embed=embed, heads=heads, mlp=mlp, seq=seq, norm="post", seed=i)
        for i in range(layers)
    ]
    return fused.optimize(_chain(blocks), "bert", heads, embed)


def gpt2_fused(layers: int = 2, embed: int = 512, heads: int = 8, mlp: int = 1536, seq: int = 128):
    """``layers`` Llama-style decoder layers (RMSNorm, SwiGLU) fused by the ``gpt2`` optimizer."""
    blocks = [
        transformers.decoder_block(embed=embed, heads=heads, kv_heads=heads, mlp=mlp, seq=seq, seed=i)
        for i in range(layers)
    ]
    return fused.optimize(_chain(blocks), "gpt2", heads, embed)


def vit_fused(layers: int = 4, embed: int = 192, heads: int = 3, mlp: int = 768, image: int = 224, patch: int = 16):
    """A ViT-Tiny-shaped classifier (197 tokens of 192) fused by the ``vit`` optimizer."""
    model = transformers.tiny_vit(layers=layers, embed=embed, heads=heads, mlp=mlp, patch=patch, image=image)
    return fused.optimize(model, "vit", heads, embed)


def resnet18_qop() -> onnx.ModelProto:
    return qoperator(zoo.load("resnet18"))


def _chain(blocks: list[onnx.ModelProto]) -> onnx.ModelProto:
    """Blocks ``"input" -> "output"`` of one shape, chained: block i's tensors prefixed ``b{i}.``."""
    from onnx import compose

    model = compose.add_prefix(blocks[0], "b0.")
    for i, block in enumerate(blocks[1:], start=1):
        nxt = compose.add_prefix(block, f"b{i}.")
        model = compose.merge_models(model, nxt, io_map=[(model.graph.output[0].name, nxt.graph.input[0].name)])
    return model  # its input is "b0.input", its output "b{n-1}.output"


GRAPHS: dict[str, Callable[[], onnx.ModelProto]] = {
    "bert_fused": bert_fused,
    "gpt2_fused": gpt2_fused,
    "vit_fused": vit_fused,
    "resnet18_qop": resnet18_qop,
}
