"""Shapes through onnxruntime's contrib ops, where ONNX shape inference stops.

ONNX shape inference does not know the ``com.microsoft`` ops that onnxruntime's transformer
optimizer writes (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``, ``MatMulNBits``,
...): every tensor after the first fused op is left without a shape, and every dim it
touches blocks. onnxruntime's own symbolic shape inference
(``onnxruntime.tools.symbolic_shape_infer``) knows them.

Rules:
1. The fallback runs only when the graph has nodes of a non-default domain and ONNX
   inference left some of their outputs (or what follows them) without a shape.
2. It runs on the light copy (large weights are stubs without data: symbolic inference
   needs their dims only, and the small integer constants it computes with are kept), in
   which ``FusedConv``, ``FusedGemm`` and ``FusedMatMul``, which it does not know, are
   written as the Conv, Gemm and Einsum of the same shapes (and the QOperator ops ``QGemm``,
   ``QLinearConcat``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
   ``QLinearLeakyRelu``, ``QLinearSigmoid`` as the float op of their data inputs; a
   ``channels_last`` pool is left unknown). An op it does not know either leaves its outputs
   unshaped (no guessed ranks): what depends on them blocks.
3. It only adds: a tensor that ONNX inference shaped keeps its shape; a tensor it left
   unshaped takes the symbolic one (a symbolic dim, e.g. ``batch``, stays unknown).
4. If onnxruntime is missing or symbolic inference fails on the graph, nothing changes; where
   it finishes only part of the graph, the part it finished is used (and no file is written).
"""

from __future__ import annotations

import logging

import onnx

_DEFAULT_DOMAINS = ("", "ai.onnx")


def needs_fallback(inferred: onnx.ModelProto) -> bool:
    """True if the graph has a non-default-domain node and some node output has no shape."""
    g = inferred.graph
    if not any(n.domain not in _DEFAULT_DOMAINS for n in g.node):
        return False
    known = {vi.name for vi in list(g.value_info) + list(g.output) if _has_shape(vi)}
    known |= {t.name for t in g.initializer}
    return any(o and o not in known for n in g.node if n.op_type != "Constant" for o in n.output)


def complete(inferred: onnx.ModelProto, light: onnx.ModelProto) -> onnx.ModelProto:
    """``inferred`` (ONNX's result on ``light``) with the value_info of the tensors it left
    unshaped filled in by onnxruntime's symbolic shape inference, when :func:`needs_fallback`."""
    if not needs_fallback(inferred):
        return inferred
    symbolic = _symbolic(light)
    if symbolic is None:
        return inferred
    g = inferred.graph
    known = {vi.name for vi in list(g.value_info) + list(g.output) if _has_shape(vi)}
    out = onnx.ModelProto()
    out.CopyFrom(inferred)
    for vi in symbolic.graph.value_info:
        if vi.name not in known and _has_shape(vi):
            out.graph.value_info.append(vi)
            known.add(vi.name)
    outputs = {vi.name: vi for vi in symbolic.graph.output}
    for vi in out.graph.output:  # declared outputs without a shape
        if vi.name not in known and vi.name in outputs and _has_shape(outputs[vi.name]):
            vi.CopyFrom(outputs[vi.name])
    return out


# Contrib ops whose output shape is a standard op's: (that op, its inputs (a slice or positions), the
# attributes to drop).
# Symbolic inference does not know FusedConv, FusedGemm, FusedMatMul; ONNX inference knows
# Conv, Gemm and Einsum (a FusedMatMul with transA/transB is the Einsum of _EINSUM).
_STANDARD = {
    "FusedConv": ("Conv", slice(3), ("activation", "activation_params")),
    "FusedGemm": ("Gemm", slice(3), ("activation", "activation_alpha", "activation_beta", "activation_gamma")),
    "FusedMatMul": ("Einsum", slice(2), None),
    "TransposeMatMul": ("Einsum", slice(2), None),
    "QGemm": ("Gemm", (0, 3, 6), ()),
    "QLinearConcat": ("Concat", slice(2, None, 3), ()),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", slice(1), ("channels_last",)),
    "QLinearAveragePool": ("AveragePool", slice(1), ("channels_last",)),
    "QLinearLeakyRelu": ("LeakyRelu", slice(1), ()),
    "QLinearSigmoid": ("Sigmoid", slice(1), ()),
}
_EINSUM = {
    (0, 0): "...ij,...jk->...ik",
    (0, 1): "...ij,...kj->...ik",
    (1, 0): "...ji,...jk->...ik",
    (1, 1): "...ji,...kj->...ik",
}


def _as_standard(light: onnx.ModelProto) -> onnx.ModelProto:
    """``light`` with the ops of ``_STANDARD`` written as the standard op of the same shape."""
    if not any(n.domain == "com.microsoft" and n.op_type in _STANDARD for n in light.graph.node):
        return light
    out = onnx.ModelProto()
    out.CopyFrom(light)
    for node in out.graph.node:
        if node.domain != "com.microsoft" or node.op_type not in _STANDARD:
            continue
        op, inputs, drop = _STANDARD[node.op_type]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("channels_last", 0):
            continue  # a channels-last pool: left unknown
        if op == "Einsum":
            if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
                continue  # left unknown: its rule blocks it
            kept = [onnx.helper.make_attribute("equation", _EINSUM[attrs.get("transA", 0), attrs.get("transB", 0)])]
        else:
            kept = [a for a in node.attribute if a.name not in drop]
        if isinstance(inputs, slice):
            inputs = list(node.input[inputs])
        else:
            inputs = [node.input[i] for i in inputs if i < len(node.input) and node.input[i]]
        del node.attribute[:], node.input[:]
        node.attribute.extend(kept)
        node.input.extend(inputs)
        node.op_type, node.domain = op, ""
    return out


def _symbolic(light: onnx.ModelProto) -> onnx.ModelProto | None:
    light = _as_standard(light)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception:  # onnxruntime without its tools: nothing more to learn
        return None
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.ERROR)  # it warns about every op it guesses; the rules report what stays unknown
    try:
        # SymbolicShapeInference.infer_shapes(light, auto_merge=True), step by step: on a graph
        # it cannot finish, infer_shapes writes the partial model to "sym_shape_infer_temp.onnx"
        # in the working directory and raises; here the partial result is kept (what it did
        # find is still true) and nothing is written. guess_output_rank stays off: it would
        # give an op it does not know the rank of its first input, which may be wrong, and the
        # tensors after it shapes computed from that guess.
        sym = SymbolicShapeInference(2**31 - 1, True, False, 0)
        sym._preprocess(_stubs_as_inputs(light))
        while sym.run_:
            sym._infer_impl()
        sym._update_output_from_vi()
        return sym.out_mp_
    except Exception:  # a graph it cannot follow: keep what ONNX inference found
        return None
    finally:
        log.setLevel(level)


def _stubs_as_inputs(light: onnx.ModelProto) -> onnx.ModelProto:
    """``light`` with its stubs (large float weights without data) as graph inputs of their
    shape: symbolic inference reads the values of an ``Add``'s constant inputs, and a stub has
    none (a causal mask or a bias of more than 1,024 entries stopped it); an input has a shape only."""
    stubs = [t for t in light.graph.initializer if _is_stub(t)]
    if not stubs:
        return light
    out = onnx.ModelProto()
    out.CopyFrom(light)
    names = {t.name for t in stubs}
    kept = [t for t in out.graph.initializer if t.name not in names]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    declared = {i.name for i in out.graph.input}
    out.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in stubs if t.name not in declared
    )
    return out


def _is_stub(t: onnx.TensorProto) -> bool:
    """A tensor with dims and no data (the light copy's stand-in for a large weight)."""
    has_data = t.raw_data or t.float_data or t.double_data or t.int32_data or t.int64_data or t.uint64_data
    return (
        not has_data and t.data_location != onnx.TensorProto.EXTERNAL and all(d > 0 for d in t.dims) and len(t.dims) > 0
    )


def _has_shape(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
