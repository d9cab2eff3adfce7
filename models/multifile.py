"""Models exported as several files that share weights: test material for graphprune.tie.

* :func:`encoder_decoder`: an encoder ``input_ids [1, S] -> encoder_hidden_states [1, S, H]``
  and a decoder ``(decoder_input_ids [1, T], encoder_hidden_states) -> logits [1, T, V]``. Both
  read the same embedding ``shared.embed_tokens.weight`` and run the same residual MLP
  ``shared.ffn.{up,down}`` (ALBERT-style shared layer), then one MLP of their own
  (``encoder.ffn.*``, ``decoder.ffn.*``). The decoder adds ``cross.proj`` of the mean encoder
  state to every position. ``renamed=True`` gives the decoder's copies of the shared weights
  other names (``decoder.shared_copy.*``), as exporters that rename do: only their values match.
* :func:`decoder_pair`: :func:`models.kv_decoder.kv_decoder` without and with its past
  (optimum's ``decoder_model.onnx`` / ``decoder_with_past_model.onnx``), every weight shared.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.kv_decoder import kv_decoder

OPSET = 17


def _ffn(nodes, inits, rng, x: str, hidden: int, ffn: int, prefix: str, names: dict[str, str] | None = None) -> str:
    """``x + Relu(x @ up + up.bias) @ down``; ``names`` renames the parameters (same values)."""
    names = names or {}
    params = {
        f"{prefix}.up.weight": rng.standard_normal((hidden, ffn)) * hidden**-0.5,
        f"{prefix}.up.bias": 0.1 * rng.standard_normal(ffn),
        f"{prefix}.down.weight": rng.standard_normal((ffn, hidden)) * ffn**-0.5,
    }
    for name, value in params.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), names.get(name, name)))
    up, bias, down = (names.get(n, n) for n in params)
    nodes += [
        helper.make_node("MatMul", [x, up], [f"{prefix}.h0"], name=f"{prefix}/up/MatMul"),
        helper.make_node("Add", [f"{prefix}.h0", bias], [f"{prefix}.h1"], name=f"{prefix}/up/Add"),
        helper.make_node("Relu", [f"{prefix}.h1"], [f"{prefix}.h2"], name=f"{prefix}/act"),
        helper.make_node("MatMul", [f"{prefix}.h2", down], [f"{prefix}.y"], name=f"{prefix}/down/MatMul"),
        helper.make_node("Add", [x, f"{prefix}.y"], [f"{prefix}.out"], name=f"{prefix}/residual"),
    ]
    return f"{prefix}.out"


def encoder_decoder(
    hidden: int = 16, ffn: int = 32, vocab: int = 32, src: int = 6, tgt: int = 5, renamed: bool = False, seed: int = 0
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``(encoder, decoder)`` as described in the module docstring."""
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((vocab, hidden)).astype(np.float32)
    shared_state = rng.bit_generator.state  # both files draw the shared MLP from this state

    def shared(nodes, inits, x, names=None):
        r = np.random.default_rng()
        r.bit_generator.state = shared_state
        return _ffn(nodes, inits, r, x, hidden, ffn, "shared.ffn", names)

    # encoder
    nodes, inits = [], [numpy_helper.from_array(embed, "shared.embed_tokens.weight")]
    nodes.append(helper.make_node("Gather", ["shared.embed_tokens.weight", "input_ids"], ["enc.x"], name="enc/embed"))
    x = shared(nodes, inits, "enc.x")
    own = np.random.default_rng(seed + 1)
    x = _ffn(nodes, inits, own, x, hidden, ffn, "encoder.ffn")
    nodes.append(helper.make_node("Identity", [x], ["encoder_hidden_states"], name="enc/out"))
    encoder = _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, src])],
        [helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [1, src, hidden])],
        "encoder",
    )

    # decoder
    rename = (
        {
            "shared.embed_tokens.weight": "decoder.shared_copy.embed_tokens.weight",
            "shared.ffn.up.weight": "decoder.shared_copy.ffn.up.weight",
            "shared.ffn.up.bias": "decoder.shared_copy.ffn.up.bias",
            "shared.ffn.down.weight": "decoder.shared_copy.ffn.down.weight",
        }
        if renamed
        else {}
    )
    emb = rename.get("shared.embed_tokens.weight", "shared.embed_tokens.weight")
    own = np.random.default_rng(seed + 2)
    nodes, inits = [], [numpy_helper.from_array(embed, emb)]
    inits.append(
        numpy_helper.from_array(
            (own.standard_normal((hidden, hidden)) * hidden**-0.5).astype(np.float32), "cross.proj.weight"
        )
    )
    nodes += [
        helper.make_node("Gather", [emb, "decoder_input_ids"], ["dec.e"], name="dec/embed"),
        helper.make_node("ReduceMean", ["encoder_hidden_states"], ["dec.m"], name="dec/cross/mean", axes=[1]),
        helper.make_node("MatMul", ["dec.m", "cross.proj.weight"], ["dec.c"], name="dec/cross/proj"),
        helper.make_node("Add", ["dec.e", "dec.c"], ["dec.x"], name="dec/cross/add"),
    ]
    x = shared(nodes, inits, "dec.x", rename)
    x = _ffn(nodes, inits, own, x, hidden, ffn, "decoder.ffn")
    inits.append(
        numpy_helper.from_array(
            (own.standard_normal((hidden, vocab)) * hidden**-0.5).astype(np.float32), "lm_head.weight"
        )
    )
    nodes.append(helper.make_node("MatMul", [x, "lm_head.weight"], ["logits"], name="dec/lm_head"))
    decoder = _model(
        nodes,
        inits,
        [
            helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, [1, tgt]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [1, src, hidden]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, tgt, vocab])],
        "decoder",
    )
    return encoder, decoder


def decoder_pair(**kwargs) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``(decoder, decoder_with_past)``: :func:`~models.kv_decoder.kv_decoder` built twice from one seed."""
    return kv_decoder(with_past=False, **kwargs), kv_decoder(with_past=True, **kwargs)


def _model(nodes, inits, inputs, outputs, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    model.producer_name = f"graphprune.models.multifile.{name}"
    return model
