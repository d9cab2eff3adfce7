"""Small models written the way real exporters write them, not the way a person would.

* :func:`dynamic_attention`: a BERT-style self-attention block with dynamic batch and
  sequence, whose head split is ``Reshape(q, Concat(Shape(q)[0], Shape(q)[1], [H], [D]))``
  (Gather/Unsqueeze of Shape, as torch's classic exporter writes ``x.size()[:-1] + (H, D)``)
  and whose merge is ``Reshape(c, Concat(Shape(c)[0:2], [H*D]))`` (Slice of Shape).
* :func:`constant_cnn`: a small CNN whose weights are ``Constant`` nodes (paddle2onnx,
  tf2onnx), some read through ``Identity`` or ``Cast``; :func:`initializers_of` turns it into
  the same model with initializers, for comparisons.
* :func:`unknown_shapes`: Slice, Reshape and Expand on a tensor of unknown shape, next to a
  prunable conv chain.
* :func:`conv_in_if`: a model whose Conv weights sit inside the branches of an ``If``.

* :func:`flatten_to_sequence`: paddle2onnx's ``flatten(x, 2)`` in opset 12, whose output
  shape ONNX inference does not find.

All use opset 17 (unless noted) and IR version 8; float32 tensors; seeded weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits=(), name="graph", opset=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}/Constant", value=numpy_helper.from_array(value, name))


def dynamic_attention(hidden: int = 32, heads: int = 4, seed: int = 0, style: str = "classic") -> onnx.ModelProto:
    """Self-attention ``[batch, sequence, hidden] -> [batch, sequence, hidden]`` with run-time
    head-split and merge shapes (see the module docstring). ``style="hf"`` writes them as
    recent transformers do instead: one ``Concat(Shape(input)[0:2], [-1, D])`` shared by q, k
    and v, and ``Concat(Shape(input)[0:2], [-1])`` for the merge (sizes read from another
    tensor, the head count left to -1)."""
    rng = np.random.default_rng(seed)
    d = hidden // heads
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def w(name, shape, scale=0.2):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    inits += [
        numpy_helper.from_array(np.array(0, np.int64), "idx0"),
        numpy_helper.from_array(np.array(1, np.int64), "idx1"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([d], np.int64), "head_dim"),
        numpy_helper.from_array(np.array([0], np.int64), "start0"),
        numpy_helper.from_array(np.array([2], np.int64), "end2"),
        numpy_helper.from_array(np.array([hidden], np.int64), "all_head_size"),
        numpy_helper.from_array(np.array(np.sqrt(d), np.float32), "scale"),
    ]
    nodes.append(_const("num_heads", np.array([heads], np.int64)))  # one as a Constant node, as exporters mix

    def split_heads(x: str, p: str, perm: list[int]) -> str:
        nodes.extend(
            [
                helper.make_node("Shape", [x], [f"{p}/shape"], name=f"/{p}/Shape"),
                helper.make_node("Gather", [f"{p}/shape", "idx0"], [f"{p}/b"], name=f"/{p}/Gather", axis=0),
                helper.make_node("Gather", [f"{p}/shape", "idx1"], [f"{p}/s"], name=f"/{p}/Gather_1", axis=0),
                helper.make_node("Unsqueeze", [f"{p}/b", "axes0"], [f"{p}/b1"], name=f"/{p}/Unsqueeze"),
                helper.make_node("Unsqueeze", [f"{p}/s", "axes0"], [f"{p}/s1"], name=f"/{p}/Unsqueeze_1"),
                helper.make_node(
                    "Concat",
                    [f"{p}/b1", f"{p}/s1", "num_heads", "head_dim"],
                    [f"{p}/new_shape"],
                    name=f"/{p}/Concat",
                    axis=0,
                ),
                helper.make_node("Reshape", [x, f"{p}/new_shape"], [f"{p}/heads"], name=f"/{p}/Reshape"),
                helper.make_node("Transpose", [f"{p}/heads"], [f"{p}/t"], name=f"/{p}/Transpose", perm=perm),
            ]
        )
        return f"{p}/t"

    proj = {}
    for p in ("query", "key", "value"):
        nodes.append(
            helper.make_node("MatMul", ["input", w(f"{p}.weight", (hidden, hidden))], [f"{p}/mm"], name=f"/{p}/MatMul")
        )
        nodes.append(helper.make_node("Add", [f"{p}/mm", w(f"{p}.bias", (hidden,))], [f"{p}/out"], name=f"/{p}/Add"))
        proj[p] = split_heads(f"{p}/out", p, [0, 2, 3, 1] if p == "key" else [0, 2, 1, 3])
    nodes += [
        helper.make_node("MatMul", [proj["query"], proj["key"]], ["scores"], name="/MatMul"),
        helper.make_node("Div", ["scores", "scale"], ["scaled"], name="/Div"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="/Softmax", axis=-1),
        helper.make_node("MatMul", ["probs", proj["value"]], ["context"], name="/MatMul_1"),
        helper.make_node("Transpose", ["context"], ["context_t"], name="/Transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["context_t"], ["ctx_shape"], name="/Shape"),
        helper.make_node("Slice", ["ctx_shape", "start0", "end2"], ["ctx_bs"], name="/Slice"),
        helper.make_node("Concat", ["ctx_bs", "all_head_size"], ["merge_shape"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["context_t", "merge_shape"], ["merged"], name="/Reshape"),
        helper.make_node("MatMul", ["merged", w("output.weight", (hidden, hidden))], ["o_mm"], name="/output/MatMul"),
        helper.make_node("Add", ["o_mm", w("output.bias", (hidden,))], ["output"], name="/output/Add"),
    ]
    if style == "hf":
        inits.append(numpy_helper.from_array(np.array([-1, d], np.int64), "heads_and_dim"))
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus_one"))
        nodes[:0] = [
            helper.make_node("Shape", ["input"], ["input_shape"], name="/hf/Shape"),
            helper.make_node("Slice", ["input_shape", "start0", "end2"], ["input_bs"], name="/hf/Slice"),
            helper.make_node("Concat", ["input_bs", "heads_and_dim"], ["hidden_shape"], name="/hf/Concat", axis=0),
            helper.make_node("Concat", ["input_bs", "minus_one"], ["out_shape"], name="/hf/Concat_1", axis=0),
        ]
        for node in nodes:
            if node.op_type == "Reshape":
                node.input[1] = "out_shape" if node.name == "/Reshape" else "hidden_shape"
        used = {i for n in nodes for i in n.input} | {"output"}
        while any(not set(n.output) & used for n in nodes):  # drop the classic shape arithmetic
            nodes = [n for n in nodes if set(n.output) & used]
            used = {i for n in nodes for i in n.input} | {"output"}
        inits = [t for t in inits if t.name in used]
    io = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", hidden]) for n in ("input", "output")
    ]
    return _model(nodes, io[:1], io[1:], inits, "dynamic_attention")


def constant_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> Conv ``[1, 3, 16, 16] -> [1, 8, 16, 16]`` with every
    weight a Constant node; the second conv reads its weight through Identity, the third
    through Cast (from float16)."""
    rng = np.random.default_rng(seed)
    nodes = []

    def conv(x, cin, cout, name, via=None):
        weight = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        bias = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        wname = f"{name}.weight"
        if via == "Cast":
            nodes.append(_const(f"{wname}_fp16", weight.astype(np.float16)))
            nodes.append(
                helper.make_node("Cast", [f"{wname}_fp16"], [wname], name=f"/{name}/Cast", to=TensorProto.FLOAT)
            )
        elif via == "Identity":
            nodes.append(_const(f"{wname}_const", weight))
            nodes.append(helper.make_node("Identity", [f"{wname}_const"], [wname], name=f"/{name}/Identity"))
        else:
            nodes.append(_const(wname, weight))
        nodes.append(_const(f"{name}.bias", bias))
        out = f"/{name}/Conv_output_0"
        nodes.append(
            helper.make_node("Conv", [x, wname, f"{name}.bias"], [out], name=f"/{name}/Conv", pads=[1, 1, 1, 1])
        )
        return out

    x = conv("input", 3, 16, "conv1")
    nodes.append(helper.make_node("Relu", [x], ["relu1"], name="/relu1/Relu"))
    x = conv("relu1", 16, 16, "conv2", via="Identity")
    nodes.append(helper.make_node("Relu", [x], ["relu2"], name="/relu2/Relu"))
    x = conv("relu2", 16, 8, "conv3", via="Cast")
    nodes.append(helper.make_node("Identity", [x], ["output"], name="/output/Identity"))
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 16, 16])],
        name="constant_cnn",
    )


def initializers_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every Constant node's value moved to an initializer of its output's name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for node in out.graph.node:
        if node.op_type == "Constant":
            out.graph.initializer.append(
                numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0])
            )
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def unknown_shapes(seed: int = 0) -> onnx.ModelProto:
    """A prunable Conv -> Relu -> Conv chain whose middle also feeds a third conv and a
    Reshape to a shape given at run time (input ``target``), plus a second input ``aux``
    reshaped to ``target`` (a tensor of unknown rank) and then sliced and expanded. Run it
    with ``target = [2, -1]`` and ``aux`` of 6 elements: ``flat`` is ``[2, 64]``, ``aux_out`` ``[2, 3]``."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "conv1.weight"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32), "conv2.weight"),
        numpy_helper.from_array((rng.standard_normal((2, 8, 1, 1)) * 0.3).astype(np.float32), "conv3.weight"),
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([2], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 1], np.int64), "expand_to"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight"], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["output"], name="/conv2/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r1", "conv3.weight"], ["c3"], name="/conv3/Conv"),
        helper.make_node("Reshape", ["c3", "target"], ["flat"], name="/flat/Reshape"),
        helper.make_node("Reshape", ["aux", "target"], ["aux_r"], name="/aux/Reshape"),
        helper.make_node("Slice", ["aux_r", "starts", "ends"], ["aux_s"], name="/aux/Slice"),
        helper.make_node("Expand", ["aux_s", "expand_to"], ["aux_out"], name="/aux/Expand"),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("target", TensorProto.INT64, ["k"]),  # of unknown length: unknown rank
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["p", "q"]),
            helper.make_tensor_value_info("aux_out", TensorProto.FLOAT, ["p", "r"]),
        ],
        inits,
        "unknown_shapes",
    )


def conv_in_if(seed: int = 0) -> onnx.ModelProto:
    """``If(flag)`` choosing between two Conv -> Relu -> Conv branches (weights inside the
    branches: 2 x (8*3*9 + 8 + 3*8*9)), after a conv of the main graph."""
    rng = np.random.default_rng(seed)

    def branch(name: str) -> onnx.GraphProto:
        w1 = numpy_helper.from_array(
            (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), f"{name}.conv1.weight"
        )
        b1 = numpy_helper.from_array(np.zeros(8, np.float32), f"{name}.conv1.bias")
        w2 = (rng.standard_normal((3, 8, 3, 3)) * 0.3).astype(np.float32)
        nodes = [
            helper.make_node("Conv", ["x0", w1.name, b1.name], [f"{name}_c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"{name}_c1"], [f"{name}_r1"]),
            _const(f"{name}.conv2.weight", w2),  # one weight a Constant node inside the body
            helper.make_node("Conv", [f"{name}_r1", f"{name}.conv2.weight"], [f"{name}_out"], pads=[1, 1, 1, 1]),
        ]
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 3, 8, 8])
        return helper.make_graph(nodes, name, [], [out], [w1, b1])

    stem = numpy_helper.from_array((rng.standard_normal((3, 3, 1, 1)) * 0.3).astype(np.float32), "stem.weight")
    nodes = [
        helper.make_node("Conv", ["input", "stem.weight"], ["x0"], name="/stem/Conv"),
        helper.make_node(
            "If", ["flag"], ["output"], name="/branches/If", then_branch=branch("then"), else_branch=branch("else")
        ),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
        [stem],
        "conv_in_if",
    )


def flatten_to_sequence(channels: int = 8, hidden: int = 6, seed: int = 0) -> onnx.ModelProto:
    """paddle2onnx's ``flatten(x, 2)`` before a transformer neck: Conv ``[N, C, H, W]`` (H and
    W dynamic) -> ``Reshape(c, Concat(Slice(Shape(c), 0, 2), [-1]))`` -> Transpose -> MatMul ->
    Relu -> MatMul ``[N, H*W, 4]``, with every index a Constant node, in opset 12, as
    paddle2onnx writes them. ONNX shape inference gives up at the Reshape (it propagates no
    values through Slice before opset 13)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32), "conv.weight"),
        numpy_helper.from_array((rng.standard_normal((channels, hidden)) * 0.3).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array((rng.standard_normal((hidden, 4)) * 0.3).astype(np.float32), "fc2.weight"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["shape"], name="/Shape"),
        _const("zero", np.array([0], np.int64)),
        _const("two", np.array([2], np.int64)),
        _const("axis0", np.array([0], np.int64)),
        _const("minus_one", np.array([-1], np.int64)),
        helper.make_node("Slice", ["shape", "zero", "two", "axis0"], ["nc"], name="/Slice"),
        helper.make_node("Concat", ["nc", "minus_one"], ["flat_shape"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["c", "flat_shape"], ["flat"], name="/Reshape"),
        helper.make_node("Transpose", ["flat"], ["seq"], name="/Transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["seq", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="/Relu"),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["output"], name="/fc2/MatMul"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "L", 4])],
        inits,
        "flatten_to_sequence",
        opset=12,
    )


def expanded_token(hidden: int = 8, seed: int = 0, op: str = "Expand") -> onnx.ModelProto:
    """A learned token expanded to the batch and prepended to a sequence (ViT's class token):
    ``Expand(token[1, 1, C], Concat(Shape(x)[0], [1], [C]))`` with a dynamic batch, then
    ``Concat`` with ``Relu(x @ W1)`` and ``@ W2``: ``[B, 4, 8] -> [B, 5, 4]``. With
    ``op="Tile"`` the token is ``Tile(token, Concat(Shape(x)[0], [1], [1]))`` and the sequence
    is ``Relu(x @ W1) + ConstantOfShape(Shape(Relu(...)))`` (a zero of the run-time shape)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, hidden)) * 0.3).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array((rng.standard_normal((1, 1, hidden)) * 0.3).astype(np.float32), "token"),
        numpy_helper.from_array((rng.standard_normal((hidden, 4)) * 0.3).astype(np.float32), "fc2.weight"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([hidden], np.int64), "width"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="/Relu"),
        helper.make_node("Shape", ["input"], ["shape"], name="/Shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="/Gather", axis=0),
        helper.make_node("Concat", ["batch", "one", "width"], ["token_shape"], name="/Concat", axis=0),
        helper.make_node("Expand", ["token", "token_shape"], ["tokens"], name="/Expand"),
        helper.make_node("Concat", ["tokens", "r"], ["seq"], name="/Concat_1", axis=1),
    ]
    if op == "Tile":
        nodes[4:6] = [
            helper.make_node("Concat", ["batch", "one", "one"], ["repeats"], name="/Concat", axis=0),
            helper.make_node("Tile", ["token", "repeats"], ["tokens"], name="/Tile"),
        ]
        nodes[6:6] = [
            helper.make_node("Shape", ["r"], ["r_shape"], name="/Shape_1"),
            helper.make_node("ConstantOfShape", ["r_shape"], ["zeros"], name="/ConstantOfShape"),
            helper.make_node("Add", ["r", "zeros"], ["r0"], name="/Add"),
        ]
        nodes[-1].input[1] = "r0"
    nodes += [
        helper.make_node("MatMul", ["seq", "fc2.weight"], ["output"], name="/fc2/MatMul"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5, 4])],
        inits,
        "expanded_token",
    )


def resize_to_skip(channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A U-Net step with dynamic H and W: ``Resize(conv2(x), sizes=Concat(Shape(c2)[0:2],
    Shape(c1)[2:4]))`` (``F.interpolate(x, size=skip.shape[2:])``), concatenated with the skip
    ``c1`` and read by a last conv: ``[N, 3, H, W] -> [N, 4, H, W]``."""
    rng = np.random.default_rng(seed)

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [
        w("conv1.weight", (channels, 3, 3, 3)),
        w("conv2.weight", (channels, channels, 3, 3)),
        w("conv3.weight", (4, 2 * channels, 3, 3)),
        numpy_helper.from_array(np.array([0], np.int64), "start0"),
        numpy_helper.from_array(np.array([2], np.int64), "end2"),
        numpy_helper.from_array(np.array([4], np.int64), "end4"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight"], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["c2"], name="/conv2/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Shape", ["c2"], ["s2"], name="/Shape"),
        helper.make_node("Slice", ["s2", "start0", "end2"], ["nc"], name="/Slice"),
        helper.make_node("Shape", ["r1"], ["s1"], name="/Shape_1"),
        helper.make_node("Slice", ["s1", "end2", "end4"], ["hw"], name="/Slice_1"),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], name="/Concat", axis=0),
        helper.make_node("Resize", ["c2", "", "", "sizes"], ["up"], name="/Resize", mode="nearest"),
        helper.make_node("Concat", ["up", "r1"], ["cat"], name="/Concat_1", axis=1),
        helper.make_node("Conv", ["cat", "conv3.weight"], ["output"], name="/conv3/Conv", pads=[1, 1, 1, 1]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        inits,
        "resize_to_skip",
    )
