"""Variants of the builder models: the forms real exports take besides the clean opset-17 one.

Each function takes a model from :mod:`models.builders` (or builds a small one) and returns
a new ``onnx.ModelProto``; the input is never modified. Every result passes
``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime.

* :func:`to_opset` - ``onnx.version_converter`` to another opset (with the IR version the
  opset needs); :func:`build_at_opset` builds a builder's model at an older opset, since
  the converter cannot take BatchNormalization below 15; :func:`newest_ort_opset` is the
  newest default-domain opset the installed onnxruntime loads.
* :func:`to_float16` / :func:`to_bfloat16` - weights stored in half precision and Cast
  to float before use (computation stays float32); :func:`rounded_weights` is the float32
  model with the same rounded values, for comparing plans.
* :func:`to_qdq` - QDQ quantization: every Conv weight (optionally MatMul weight too) per
  output channel (int8, ``DequantizeLinear`` with per-channel scale and zero point), a
  per-tensor ``QuantizeLinear``/``DequantizeLinear`` pair on every such node's data input
  (and optionally output); :func:`fold_batchnorm` folds Conv -> BatchNormalization.
* :func:`with_dynamic_dims` - batch and spatial dims of inputs and outputs as ``dim_param``.
* :func:`multi_io` - two inputs, two outputs (one of them also read inside the graph).
* :func:`shared_weight` - one Conv weight initializer read by two Conv nodes.
* :func:`initializers_as_inputs` - every initializer also listed in ``graph.input``.
* :func:`constants_as_nodes` - every initializer turned into a ``Constant`` node.
* :func:`with_if`, :func:`with_loop`, :func:`with_scan` - control flow in the middle of a
  conv chain; :func:`subgraphs` lists the bodies of a model's control-flow nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from unittest import mock

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from models import builders

__all__ = [
    "build_at_opset",
    "constants_as_nodes",
    "fold_batchnorm",
    "initializers_as_inputs",
    "multi_io",
    "newest_ort_opset",
    "rounded_weights",
    "shared_weight",
    "subgraphs",
    "to_bfloat16",
    "to_float16",
    "to_opset",
    "to_qdq",
    "with_dynamic_dims",
    "with_if",
    "with_loop",
    "with_scan",
]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _opset(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


# ------------------------------------------------------------------------------ opsets


def to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` converted to ``opset`` by ``onnx.version_converter``, stamped with the IR
    version that opset needs (the converter leaves the IR version as it was).

    The converter has no down-adapter for BatchNormalization 15, so a builder model (opset
    17) cannot go below 15: use :func:`build_at_opset` for those.
    """
    out = version_converter.convert_version(model, opset)
    needed = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    out.ir_version = max(model.ir_version, needed)
    return out


def build_at_opset(builder: Callable[..., onnx.ModelProto], opset: int, **kwargs) -> onnx.ModelProto:
    """``builder(**kwargs)`` built with opset ``opset`` instead of its own.

    The builders' layers write the same nodes at every opset from 11 on (Split picks its
    attribute or input form by opset), except the few ops that are newer (HardSwish 14,
    Mish 18) or changed form (Squeeze/Unsqueeze axes, Resize's optional roi): the full
    checker rejects those, and then this raises ``onnx.checker.ValidationError``.
    (It swaps ``builders._Builder`` for the duration of the call: not thread-safe.)
    """
    base = builders._Builder

    class _AtOpset(base):
        def __init__(self, seed: int = 0, **kw) -> None:
            kw["opset"] = opset
            super().__init__(seed, **kw)

    with mock.patch.object(builders, "_Builder", _AtOpset):
        model = builder(**kwargs)
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    onnx.checker.check_model(model, full_check=True)
    return model


@lru_cache(maxsize=1)
def newest_ort_opset() -> int:
    """The newest default-domain opset (at most the newest the installed onnx knows) for
    which onnxruntime loads and runs a model (``Relu`` of a float tensor)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    for opset in range(onnx.defs.onnx_opset_version(), 10, -1):
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        )
        ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
        try:
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            sess.run(None, {"x": np.ones(2, np.float32)})
        except Exception:
            continue
        return opset
    raise RuntimeError("onnxruntime runs no opset from 11 on")


# ------------------------------------------------------------------------------ low precision

# Initializers read at these (op, input position) are weights: stored in low precision and
# Cast to float. Shape-like float inputs (Resize scales, Clip bounds, Pad values) stay.
_WEIGHT_INPUTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2, 3, 4),
    "InstanceNormalization": (1, 2),
    "PRelu": (1,),
    "Add": (0, 1),
    "Mul": (0, 1),
}


def _weight_names(model: onnx.ModelProto) -> list[str]:
    floats = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 1}
    names: dict[str, None] = {}
    other: set[str] = set()
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            if name not in floats:
                continue
            if pos in _WEIGHT_INPUTS.get(node.op_type, ()):
                names[name] = None
            else:
                other.add(name)
    return [n for n in names if n not in other]


def _low_precision(model: onnx.ModelProto, np_dtype) -> onnx.ModelProto:
    out = _copy(model)
    g = out.graph
    weights = set(_weight_names(model))
    casts = []
    for t in g.initializer:
        if t.name not in weights:
            continue
        arr = numpy_helper.to_array(t).astype(np_dtype)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        casts.append(
            helper.make_node("Cast", [t.name], [f"{t.name}/float"], name=f"/{t.name}/Cast", to=TensorProto.FLOAT)
        )
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in weights:
                node.input[i] = f"{name}/float"
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return out


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights (Conv/Gemm/MatMul/BatchNormalization/... parameters) stored as float16 under
    their own names, each read through ``Cast(to=FLOAT)``; inputs, outputs and arithmetic
    stay float32 (what onnxruntime's CPU provider runs for every op)."""
    return _low_precision(model, np.float16)


def to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """As :func:`to_float16` with bfloat16 weights (TensorProto.BFLOAT16)."""
    return _low_precision(model, ml_dtypes.bfloat16)


def rounded_weights(model: onnx.ModelProto, np_dtype) -> onnx.ModelProto:
    """The float32 ``model`` whose weights (those :func:`to_float16` would convert) hold
    the values they have after rounding to ``np_dtype`` (np.float16 or ml_dtypes.bfloat16)."""
    out = _copy(model)
    weights = set(_weight_names(model))
    for t in out.graph.initializer:
        if t.name in weights:
            arr = numpy_helper.to_array(t).astype(np_dtype).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


# ------------------------------------------------------------------------------ QDQ

ACT_SCALE = 0.05  # per-tensor activation scale (uint8, zero point 128: range about +-6.4)


def to_qdq(
    model: onnx.ModelProto,
    act_scale: float = ACT_SCALE,
    ops: Sequence[str] = ("Conv",),
    outputs: bool = False,
) -> onnx.ModelProto:
    """QDQ form, as ``onnxruntime.quantization`` writes it (opset >= 13).

    Every constant weight of a node in ``ops`` ("Conv", "MatMul") becomes ``W_quantized``
    (int8, symmetric, zero points 0) with one scale per output channel: a Conv weight
    ``[C_out, ...]`` is read by ``DequantizeLinear(axis=0)`` with ``W_scale [C_out]`` and
    ``W_zero_point [C_out]``, a MatMul weight ``[K, N]`` by ``DequantizeLinear(axis=1)``
    with ``[N]`` ones. Every data input of those nodes passes through a per-tensor
    ``QuantizeLinear -> DequantizeLinear`` pair (uint8, scalar scale and zero point
    shared by all the pairs); a tensor read by several such nodes gets one pair.

    ``outputs=True`` also puts a pair on every output of those nodes that is not a graph
    output, as ``quantize_static`` does: onnxruntime then fuses ``DQ -> Conv -> Q`` into
    ``QLinearConv`` (integer arithmetic). Use it on a model without BatchNormalization
    between Conv and activation (see :func:`fold_batchnorm`), as quantizers see them.
    """
    if _opset(model) < 13:
        raise ValueError("per-channel DequantizeLinear needs opset 13")
    out = _copy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    new_inits: list[TensorProto] = [
        numpy_helper.from_array(np.array(act_scale, np.float32), "act_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "act_zero_point"),
    ]
    new_nodes: list[onnx.NodeProto] = []
    pairs: dict[str, str] = {}
    dequantized: dict[str, str] = {}
    graph_outputs = {o.name for o in g.output}
    for node in g.node:
        if node.op_type in ops and node.op_type in ("Conv", "MatMul"):
            w = node.input[1]
            axis = 0 if node.op_type == "Conv" else 1
            if w in inits and w not in dequantized:
                arr = numpy_helper.to_array(inits[w]).astype(np.float32)
                amax = np.abs(np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)).max(axis=1)
                scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
                shape = [1] * arr.ndim
                shape[axis] = -1
                q = np.clip(np.round(arr / scale.reshape(shape)), -127, 127).astype(np.int8)
                new_inits += [
                    numpy_helper.from_array(q, f"{w}_quantized"),
                    numpy_helper.from_array(scale, f"{w}_scale"),
                    numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{w}_zero_point"),
                ]
                dequantized[w] = f"{w}_DequantizeLinear_Output"
                new_nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"],
                        [dequantized[w]],
                        name=f"{w}_DequantizeLinear",
                        axis=axis,
                    )
                )
            x = node.input[0]
            if x not in pairs:
                pairs[x] = f"{x}_DequantizeLinear_Output"
                new_nodes += [
                    helper.make_node(
                        "QuantizeLinear",
                        [x, "act_scale", "act_zero_point"],
                        [f"{x}_QuantizeLinear_Output"],
                        name=f"{x}_QuantizeLinear",
                    ),
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{x}_QuantizeLinear_Output", "act_scale", "act_zero_point"],
                        [pairs[x]],
                        name=f"{x}_DequantizeLinear",
                    ),
                ]
            node.input[0] = pairs[x]
            if w in dequantized:
                node.input[1] = dequantized[w]
            y = node.output[0]
            if outputs and y not in graph_outputs:
                node.output[0] = f"{y}_QuantizeLinear_Input"
                new_nodes += [
                    node,
                    helper.make_node(
                        "QuantizeLinear",
                        [node.output[0], "act_scale", "act_zero_point"],
                        [f"{y}_QuantizeLinear_Output"],
                        name=f"{y}_QuantizeLinear",
                    ),
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{y}_QuantizeLinear_Output", "act_scale", "act_zero_point"],
                        [y],
                        name=f"{y}_DequantizeLinear",
                    ),
                ]
                pairs[y] = y  # already quantized: a reader does not get a second pair
                continue
        new_nodes.append(node)
    keep = [t for t in g.initializer if t.name not in dequantized]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    return out


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every BatchNormalization that directly follows a Conv with a constant weight folded
    into that Conv's weight and bias (the Conv takes over the BatchNormalization's output
    name), as exporters in eval mode and quantizers do. Unused initializers are dropped."""
    out = _copy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    folded = []
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in inits or readers[bn.input[0]] != 1:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        w_name = conv.input[1]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float64)
        w = w * k.reshape((-1,) + (1,) * (w.ndim - 1))
        has_bias = len(conv.input) > 2 and conv.input[2]
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else np.zeros_like(k)
        bias = (bias - mean) * k + beta
        inits[w_name].CopyFrom(numpy_helper.from_array(w.astype(np.float32), w_name))
        b_name = conv.input[2] if has_bias else _fresh_name(inits, w_name.rsplit(".", 1)[0] + ".bias")
        if has_bias:
            inits[b_name].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), b_name))
        else:
            g.initializer.append(numpy_helper.from_array(bias.astype(np.float32), b_name))
            inits[b_name] = g.initializer[-1]
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        g.node.remove(bn)
    read = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def _fresh_name(taken, base: str) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


# ------------------------------------------------------------------------------ dynamic dims


def with_dynamic_dims(model: onnx.ModelProto, batch: bool = True, spatial: bool = True) -> onnx.ModelProto:
    """Inputs and outputs with ``dim_param`` instead of sizes: axis 0 ``"batch"`` and, for
    4-D tensors, axes 2 and 3 (``"height"``/``"width"`` on inputs, ``"<output>_height"``/
    ``"<output>_width"`` on outputs, whose sizes differ after strided layers). Declared
    intermediate shapes (``value_info``) are dropped, as they would pin the sizes."""
    out = _copy(model)
    g = out.graph
    init_names = {t.name for t in g.initializer}

    def relax(vi: onnx.ValueInfoProto, names: tuple[str, str]) -> None:
        dims = vi.type.tensor_type.shape.dim
        params = {}
        if batch:
            params[0] = "batch"
        if spatial and len(dims) == 4:
            params[2], params[3] = names
        for ax, p in params.items():
            dims[ax].Clear()
            dims[ax].dim_param = p

    for vi in g.input:
        if vi.name not in init_names:
            relax(vi, ("height", "width"))
    for vi in g.output:
        relax(vi, (f"{vi.name}_height", f"{vi.name}_width"))
    del g.value_info[:]
    return out


# ------------------------------------------------------------------------------ graph forms


def initializers_as_inputs(model: onnx.ModelProto, ir_version: int | None = None) -> onnx.ModelProto:
    """Every initializer also listed in ``graph.input`` (after the real inputs), as
    exporters did before IR version 4, where an input with an initializer is a default a
    caller may override. ``ir_version`` optionally stamps an older IR version."""
    out = _copy(model)
    g = out.graph
    listed = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    if ir_version is not None:
        out.ir_version = ir_version
    return out


def constants_as_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer replaced by a ``Constant`` node of the same output name (placed
    first, in initializer order), as some exporters and optimisers write them."""
    out = _copy(model)
    g = out.graph
    consts = [helper.make_node("Constant", [], [t.name], name=f"/Constant/{t.name}", value=t) for t in g.initializer]
    nodes = consts + list(g.node)
    del g.initializer[:]
    del g.node[:]
    g.node.extend(nodes)
    return out


def _assemble(
    b: builders._Builder,
    inputs: Sequence[str],
    outputs: dict[str, str],
    name: str,
    *,
    extra_inputs: Sequence[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    """A model of ``b``'s nodes; ``outputs`` maps each graph output name to the tensor it is."""
    rename = {tensor: out for out, tensor in outputs.items()}
    for node in b.nodes:
        for i, t in enumerate(node.input):
            node.input[i] = rename.get(t, t)
        for i, t in enumerate(node.output):
            node.output[i] = rename.get(t, t)
    graph = helper.make_graph(
        b.nodes,
        name,
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, b.shapes[x]) for x in inputs] + list(extra_inputs),
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, b.shapes[t]) for out, t in outputs.items()],
        initializer=b.inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", b.opset)],
        ir_version=builders.IR_VERSION,
        producer_name="graphprune.models.variants",
    )


def multi_io(seed: int = 0) -> onnx.ModelProto:
    """Two inputs, two outputs: an RGB-D segmenter.

    ``image [1,3,32,32]`` -> rgb.0, rgb.1 (conv-bn-relu, 16); ``depth [1,1,32,32]`` ->
    depth.0 (conv-bn-relu, 8); Concat -> fuse.0 (conv-bn-relu, 24) = graph output
    ``embedding``, which seg.0 (conv-bn-relu, 16) also reads -> seg.1 (1x1 conv with bias,
    5) = graph output ``segmentation``.
    """
    b = builders._Builder(seed, input_name="image")
    b.shapes["depth"] = (1, 1, 32, 32)
    x = b.conv_bn_act("image", 16, 3, name="rgb.0")
    x = b.conv_bn_act(x, 16, 3, name="rgb.1")
    d = b.conv_bn_act("depth", 8, 3, name="depth.0")
    f = b.conv_bn_act(b.concat([x, d], name="fuse.cat"), 24, 3, name="fuse.0")
    s = b.conv_bn_act(f, 16, 3, name="seg.0")
    s = b.conv(s, 5, 1, bias=True, name="seg.1")
    return _assemble(b, ["image", "depth"], {"embedding": f, "segmentation": s}, "multi_io")


def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """One Conv weight initializer, ``shared.weight [16, 8, 3, 3]``, read by two Conv nodes.

    stem (conv-bn-relu, 8) feeds branch a (``/branch_a/Conv``) directly and branch b
    (``/branch_b/Conv``) after a MaxPool(3, stride 1, pad 1); each branch has its own BN
    and Relu; Concat(a, b) -> 1x1 conv-bn-relu (16) -> GAP -> Flatten -> Gemm (10).
    """
    b = builders._Builder(seed)
    x = b.conv_bn_act(b.input, 8, 3, name="stem")
    w = b.param("shared.weight", b.he((16, 8, 3, 3), 8 * 9))
    conv_attrs = dict(dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    n, _, h, wd = b.shapes[x]
    a = b.node("Conv", [x, w], "branch_a", [(n, 16, h, wd)], **conv_attrs)[0]
    a = b.act(b.bn(a, name="branch_a.bn"), "relu", name="branch_a.act")
    p = b.maxpool(x, 3, 1, 1, name="branch_b.pool")
    c = b.node("Conv", [p, w], "branch_b", [(n, 16, h, wd)], **conv_attrs)[0]
    c = b.act(b.bn(c, name="branch_b.bn"), "relu", name="branch_b.act")
    y = b.conv_bn_act(b.concat([a, c], name="cat"), 16, 1, name="mix")
    return b.build(b.head(y, 10), "shared_weight")


# ------------------------------------------------------------------------------ control flow


def subgraphs(model: onnx.ModelProto) -> Iterator[tuple[str, str, onnx.GraphProto]]:
    """``(node name, attribute name, graph)`` for every subgraph attribute of the main graph."""
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield node.name, attr.name, attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for k, sub in enumerate(attr.graphs):
                    yield node.name, f"{attr.name}[{k}]", sub


def _vi(name: str, shape: Sequence[int] | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _chain_with(kind: str, seed: int, outer_weight: bool = False) -> onnx.ModelProto:
    """stem (conv-bn-relu, 8) -> mid (conv-bn-relu, 16) = ``t`` -> ``kind`` -> after
    (conv-bn-relu, 16) -> GAP -> Flatten -> Gemm. The control-flow node is ``/cf/<Kind>``.
    The control-flow output has a ``value_info`` (ONNX shape inference cannot tell the
    shape of a Loop's loop-carried output; exporters record it)."""
    b = builders._Builder(seed)
    x = b.conv_bn_act(b.input, 8, 3, name="stem")
    t = b.conv_bn_act(x, 16, 3, name="mid")
    shape = b.shapes[t]
    extra: list[onnx.ValueInfoProto] = []
    if kind == "If":
        # then: Relu(t); else: Conv(t * gate) with gate an outer initializer [16,1,1] used
        # nowhere else and the 1x1 conv weight in the branch itself, or (outer_weight) the
        # 3x3 weight of the main graph's "after" conv.
        gate = b.param("cf.gate", b.rng.uniform(0.5, 1.5, (shape[1], 1, 1)).astype(np.float32))
        then_g = helper.make_graph(
            [helper.make_node("Relu", [t], ["then_out"], name="then_relu")], "then_branch", [], [_vi("then_out", shape)]
        )
        if outer_weight:
            inits, conv_w, attrs = [], "after.conv.weight", {"pads": [1, 1, 1, 1]}
        else:
            inits = [numpy_helper.from_array(b.he((shape[1], shape[1], 1, 1), shape[1]), "else_conv.weight")]
            conv_w, attrs = "else_conv.weight", {}
        else_g = helper.make_graph(
            [
                helper.make_node("Mul", [t, gate], ["else_gated"], name="else_mul"),
                helper.make_node("Conv", ["else_gated", conv_w], ["else_out"], name="else_conv", **attrs),
            ],
            "else_branch",
            [],
            [_vi("else_out", shape)],
            initializer=inits,
        )
        extra.append(_vi("use_relu", [], TensorProto.BOOL))
        y = b.node("If", ["use_relu"], "cf", [shape], then_branch=then_g, else_branch=else_g)[0]
    elif kind == "Loop":
        # Two iterations of v <- Relu(v) + outer bias [16,1,1]; the loop-carried value
        # starts as t (an input of the Loop node).
        bias = b.param("cf.bias", b.small((shape[1], 1, 1)))
        trip = b.param("cf.trip_count", np.array(2, np.int64))
        cond = b.param("cf.cond", np.array(True))
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
                helper.make_node("Relu", ["v_in"], ["v_relu"], name="body_relu"),
                helper.make_node("Add", ["v_relu", bias], ["v_out"], name="body_add"),
            ],
            "loop_body",
            [_vi("iter", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("v_in", shape)],
            [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", shape)],
        )
        y = b.node("Loop", [trip, cond, t], "cf", [shape], body=body)[0]
    elif kind == "Scan":
        # Scan over the batch axis: each [C, H, W] slice -> Sigmoid -> stacked again.
        body = helper.make_graph(
            [helper.make_node("Sigmoid", ["s_in"], ["s_out"], name="body_sigmoid")],
            "scan_body",
            [_vi("s_in", shape[1:])],
            [_vi("s_out", shape[1:])],
        )
        y = b.node("Scan", [t], "cf", [shape], body=body, num_scan_inputs=1)[0]
    else:
        raise ValueError(f"unknown control flow {kind!r}")
    z = b.conv_bn_act(y, 16, 3, name="after")
    model = b.build(b.head(z, 10), f"chain_with_{kind.lower()}")
    model.graph.input.extend(extra)
    model.graph.value_info.append(_vi(y, shape))
    return model


def with_if(seed: int = 0, outer_weight: bool = False) -> onnx.ModelProto:
    """An ``If`` (condition: bool graph input ``use_relu``) between two conv blocks; both
    branches read the outer 16-channel tensor, the else branch also an outer per-channel
    initializer and a Conv weight: its own, or with ``outer_weight`` the weight
    ``after.conv.weight`` that the main graph's next Conv reads too."""
    return _chain_with("If", seed, outer_weight)


def with_loop(seed: int = 0) -> onnx.ModelProto:
    """A ``Loop`` (2 iterations) whose loop-carried value starts as the outer 16-channel
    tensor; its body reads an outer per-channel bias."""
    return _chain_with("Loop", seed)


def with_scan(seed: int = 0) -> onnx.ModelProto:
    """A ``Scan`` over the batch axis of the outer 16-channel tensor (Sigmoid per slice)."""
    return _chain_with("Scan", seed)
