"""Models with onnxruntime's fused ``com.microsoft`` ops: test material for rules/contrib.py.

* :func:`bert_block_for_optimizer`: :func:`models.transformers.encoder_block` with its score
  scale written as BERT exports it (``Div`` by sqrt(D) instead of ``Mul`` by 1/sqrt(D)), which
  is the form onnxruntime's transformer optimizer fuses into ``Attention``;
  :func:`optimizer_fused_bert` runs that optimizer on it (``model_type="bert"``, opt_level 0,
  offline) and gives ``Attention``, ``SkipLayerNormalization`` and ``BiasGelu``; :func:`optimize`
  runs it on any model (``"gpt2"`` on a Llama-style decoder gives
  ``SkipSimplifiedLayerNormalization``, ``"vit"`` on a ViT ``SkipLayerNormalization`` and
  ``BiasGelu``).
* :func:`mha_block`: q/k/v projections -> (``RotaryEmbedding`` on q and k) ->
  ``MultiHeadAttention`` -> out projection, built directly.
* :func:`fused_matmul_mlp`, :func:`bias_split_gelu_mlp`, :func:`activation_mlp`: an MLP
  through ``FusedMatMul`` (transB), ``BiasSplitGelu`` or a fused activation (``Gelu``,
  ``QuickGelu``, ``FastGelu``, ``BiasGelu``); :func:`fused_conv_gemm`: ``FusedConv`` ->
  Flatten -> ``FusedGemm`` -> Gemm.
* :func:`nbits_mlp`: up -> Relu -> down quantized to 4 bits by onnxruntime's
  ``MatMulNBitsQuantizer`` (``quantize`` names the layers to quantize).

Every builder is seeded; inputs are ``"input"`` ``[1, seq, hidden]``, outputs ``"output"``.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.transformers import encoder_block

MS = "com.microsoft"
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]


def bert_block_for_optimizer(
    embed: int = 32, heads: int = 4, mlp: int = 64, seq: int = 8, norm: str = "post", seed: int = 0
) -> onnx.ModelProto:
    """One encoder block (separate q/k/v, fused LayerNorm, Erf GELU) with ``Div`` score scaling."""
    model = encoder_block(embed=embed, heads=heads, mlp=mlp, seq=seq, norm=norm, qkv="separate", seed=seed)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Mul" and node.input[1].endswith(".scale"):
            t = inits[node.input[1]]
            t.CopyFrom(numpy_helper.from_array(np.float32(1.0) / numpy_helper.to_array(t), t.name))
            node.op_type = "Div"
    return model


def optimizer_fused_bert(
    embed: int = 32, heads: int = 4, mlp: int = 64, seq: int = 8, norm: str = "post", seed: int = 0
) -> onnx.ModelProto:
    """:func:`bert_block_for_optimizer` after ``onnxruntime.transformers.optimizer.optimize_model``."""
    return optimize(bert_block_for_optimizer(embed, heads, mlp, seq, norm, seed), "bert", heads, embed)


def optimize(model: onnx.ModelProto, model_type: str, num_heads: int, hidden_size: int) -> onnx.ModelProto:
    """``model`` after onnxruntime's transformer optimizer (``opt_level=0``: its fusions only,
    no onnxruntime graph optimizations), e.g. ``model_type="bert"``, ``"gpt2"``, ``"vit"``."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        opt = optimize_model(path, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
        # written and read back as users do: saving adds the com.microsoft opset import
        opt.save_model_to_file(path)
        return onnx.load(path)


def _model(nodes, inits, shape_in, shape_out, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape_out)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSETS, producer_name="graphprune.models.fused")
    model.ir_version = 8
    return model


def _w(rng, name: str, shape, std: float | None = None) -> onnx.TensorProto:
    std = std if std is not None else 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name)


def mha_block(embed: int = 32, heads: int = 4, seq: int = 8, rope: bool = False, seed: int = 0) -> onnx.ModelProto:
    """``input`` -> q/k/v_proj (MatMul + Add) -> [RotaryEmbedding(num_heads) on q, k] ->
    MultiHeadAttention(num_heads) -> out_proj -> ``output``."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    proj = {}
    for p in "qkv":
        inits += [_w(rng, f"{p}_proj.weight", (embed, embed)), _w(rng, f"{p}_proj.bias", (embed,), 0.1)]
        nodes += [
            helper.make_node("MatMul", ["input", f"{p}_proj.weight"], [f"{p}_mm"], name=f"{p}_proj/MatMul"),
            helper.make_node("Add", [f"{p}_mm", f"{p}_proj.bias"], [f"{p}"], name=f"{p}_proj/Add"),
        ]
        proj[p] = p
    if rope:
        d = embed // heads
        inv = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
        freqs = np.outer(np.arange(seq), inv)
        inits += [
            numpy_helper.from_array(np.cos(freqs).astype(np.float32), "rope.cos"),
            numpy_helper.from_array(np.sin(freqs).astype(np.float32), "rope.sin"),
            numpy_helper.from_array(np.arange(seq, dtype=np.int64)[None], "rope.position_ids"),
        ]
        for p in "qk":
            nodes.append(
                helper.make_node(
                    "RotaryEmbedding",
                    [p, "rope.position_ids", "rope.cos", "rope.sin"],
                    [f"{p}_rot"],
                    name=f"{p}_rope",
                    domain=MS,
                    num_heads=heads,
                )
            )
            proj[p] = f"{p}_rot"
    inits += [_w(rng, "out_proj.weight", (embed, embed)), _w(rng, "out_proj.bias", (embed,), 0.1)]
    nodes += [
        helper.make_node(
            "MultiHeadAttention", [proj["q"], proj["k"], proj["v"]], ["ctx"], name="mha", domain=MS, num_heads=heads
        ),
        helper.make_node("MatMul", ["ctx", "out_proj.weight"], ["o_mm"], name="out_proj/MatMul"),
        helper.make_node("Add", ["o_mm", "out_proj.bias"], ["output"], name="out_proj/Add"),
    ]
    return _model(nodes, inits, [1, seq, embed], [1, seq, embed], "mha_rope" if rope else "mha")


def fused_matmul_mlp(hidden: int = 16, ffn: int = 32, seq: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``input`` -> FusedMatMul(up [ffn, hidden], transB=1, alpha=0.5) -> Relu -> MatMul(down) -> ``output``."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "up.weight", (ffn, hidden), hidden**-0.5), _w(rng, "down.weight", (ffn, hidden))]
    nodes = [
        helper.make_node("FusedMatMul", ["input", "up.weight"], ["h"], name="up", domain=MS, transB=1, alpha=0.5),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "down.weight"], ["output"], name="down"),
    ]
    return _model(nodes, inits, [1, seq, hidden], [1, seq, hidden], "fused_matmul_mlp")


def bias_split_gelu_mlp(hidden: int = 16, ffn: int = 32, seq: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``input`` -> MatMul(up [hidden, 2*ffn]) -> BiasSplitGelu(bias [2*ffn]) -> MatMul(down [ffn, hidden])."""
    rng = np.random.default_rng(seed)
    inits = [
        _w(rng, "up.weight", (hidden, 2 * ffn)),
        _w(rng, "up.bias", (2 * ffn,), 0.1),
        _w(rng, "down.weight", (ffn, hidden)),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "up.weight"], ["h"], name="up"),
        helper.make_node("BiasSplitGelu", ["h", "up.bias"], ["a"], name="geglu", domain=MS),
        helper.make_node("MatMul", ["a", "down.weight"], ["output"], name="down"),
    ]
    return _model(nodes, inits, [1, seq, hidden], [1, seq, hidden], "bias_split_gelu_mlp")


def nbits_mlp(
    hidden: int = 64, ffn: int = 256, seq: int = 4, block_size: int = 32, symmetric: bool = False,
    quantize: tuple[str, ...] = ("up", "down"), seed: int = 0,
) -> onnx.ModelProto:  # fmt: skip
    """``input`` -> up [hidden, ffn] -> Relu -> down [ffn, hidden] -> ``output``, the layers named
    in ``quantize`` turned into 4-bit ``MatMulNBits`` by onnxruntime's quantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(seed)
    inits = [_w(rng, "up", (hidden, ffn)), _w(rng, "down", (ffn, hidden))]
    nodes = [
        helper.make_node("MatMul", ["input", "up"], ["h"], name="up"),
        helper.make_node("Relu", ["h"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "down"], ["output"], name="down"),
    ]
    model = _model(nodes, inits, [1, seq, hidden], [1, seq, hidden], "nbits_mlp")
    del model.opset_import[1:]
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    exclude = [n for n in ("up", "down") if n not in quantize]
    q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=symmetric, nodes_to_exclude=exclude)
    q.process()
    return q.model.model


def activation_mlp(op: str, hidden: int = 16, ffn: int = 32, seq: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``input`` -> MatMul(up) -> com.microsoft ``op`` (with the bias ``up.bias`` for
    ``FastGelu``/``BiasGelu``) -> MatMul(down) -> ``output``."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "up.weight", (hidden, ffn)), _w(rng, "down.weight", (ffn, hidden))]
    inputs = ["h"]
    if op in ("FastGelu", "BiasGelu"):
        inits.append(_w(rng, "up.bias", (ffn,), 0.1))
        inputs.append("up.bias")
    nodes = [
        helper.make_node("MatMul", ["input", "up.weight"], ["h"], name="up"),
        helper.make_node(op, inputs, ["a"], name="act", domain=MS),
        helper.make_node("MatMul", ["a", "down.weight"], ["output"], name="down"),
    ]
    return _model(nodes, inits, [1, seq, hidden], [1, seq, hidden], f"{op}_mlp")


def fused_conv_gemm(channels: int = 8, size: int = 6, features: int = 16, seed: int = 0) -> onnx.ModelProto:
    """``input`` [1, 3, size, size] -> FusedConv(conv1, Relu) -> FusedConv(conv2, Relu, + Z = its
    input) -> Flatten -> FusedGemm(fc1, transB=1, Relu) -> Gemm(fc2) -> ``output`` [1, 4]."""
    rng = np.random.default_rng(seed)
    flat = channels * size * size
    inits = [
        _w(rng, "conv1.weight", (channels, 3, 3, 3), 0.3),
        _w(rng, "conv1.bias", (channels,), 0.1),
        _w(rng, "conv2.weight", (channels, channels, 3, 3), 0.2),
        _w(rng, "fc1.weight", (features, flat), flat**-0.5),
        _w(rng, "fc1.bias", (features,), 0.1),
        _w(rng, "fc2.weight", (features, 4)),
    ]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "activation": "Relu"}
    nodes = [
        helper.make_node("FusedConv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", domain=MS, **conv),
        helper.make_node("FusedConv", ["c1", "conv2.weight", "", "c1"], ["c2"], name="conv2", domain=MS, **conv),
        helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
        helper.make_node(
            "FusedGemm", ["f", "fc1.weight", "fc1.bias"], ["g"], name="fc1", domain=MS, transB=1, activation="Relu"
        ),
        helper.make_node("Gemm", ["g", "fc2.weight"], ["output"], name="fc2"),
    ]
    return _model(nodes, inits, [1, 3, size, size], [1, 4], "fused_conv_gemm")
