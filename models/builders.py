"""Small, seeded synthetic ONNX models for tests.

Every builder returns an ``onnx.ModelProto`` (float32, IR version 8, opset 17 unless noted)
with one graph input ``"input"`` (default shape ``[1, 3, 32, 32]``) and one graph output
``"output"``. Models pass ``onnx.checker.check_model(m, full_check=True)`` and run in
onnxruntime in a few milliseconds.

Conventions, chosen to look like real PyTorch exports:

* initializers are named like PyTorch parameters (``layer1.0.conv1.weight``,
  ``layer1.0.bn1.running_var``), nodes like ``/layer1/0/conv1/Conv`` and node outputs like
  ``/layer1/0/conv1/Conv_output_0``;
* weights use He (Kaiming normal) initialisation from ``np.random.default_rng(seed)``;
* BatchNormalization stays a separate node (not folded), with random gamma/beta/mean and a
  random positive variance, so BN statistics are meaningful;
* some convolutions have a bias, others do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.objectives.cost import random_feeds

__all__ = [
    "BUILDERS",
    "conv_chain",
    "convtranspose_decoder",
    "dense_block",
    "depthwise_separable",
    "flatten_gemm",
    "grouped_conv",
    "inception_block",
    "pad_and_pool",
    "random_input",
    "residual_net",
    "split_chunk",
    "squeeze_excite",
    "unet",
]

IR_VERSION = 8
DEFAULT_OPSET = 17
DEFAULT_INPUT_SHAPE = (1, 3, 32, 32)

Shape = tuple[int, ...]


def _conv_out(size: int, k: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


class _Builder:
    """Accumulates nodes and initializers and tracks the static shape of every tensor.

    Each op method takes the input tensor name(s) and a ``name`` (a dotted module path such
    as ``"layer1.0.conv1"``) and returns the output tensor name. Parameters are stored as
    ``f"{name}.weight"`` etc., the node is called ``f"/{name with / for .}/{OpType}"``.
    """

    def __init__(
        self,
        seed: int = 0,
        opset: int = DEFAULT_OPSET,
        input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
        input_name: str = "input",
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.shapes: dict[str, Shape] = {}
        self._node_names: set[str] = set()
        self.input = input_name
        self.shapes[input_name] = tuple(int(d) for d in input_shape)

    # ------------------------------------------------------------------ plumbing
    def channels(self, x: str) -> int:
        return self.shapes[x][1]

    def param(self, name: str, value: np.ndarray) -> str:
        """Add an initializer (kept in its numpy dtype) and return its name."""
        if name in self.shapes:
            raise ValueError(f"duplicate tensor name {name!r}")
        value = np.asarray(value)
        # np.ascontiguousarray would turn a 0-d scalar into shape [1]; keep scalars scalar.
        self.inits.append(numpy_helper.from_array(value.copy(order="C"), name))
        self.shapes[name] = tuple(value.shape)
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.param(name, np.asarray(values, dtype=np.int64))

    def floats(self, name: str, values: Sequence[float] | float) -> str:
        return self.param(name, np.asarray(values, dtype=np.float32))

    def he(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        std = np.sqrt(2.0 / fan_in)
        return (self.rng.standard_normal(tuple(shape)) * std).astype(np.float32)

    def small(self, shape: Sequence[int], scale: float = 0.1) -> np.ndarray:
        return (self.rng.standard_normal(tuple(shape)) * scale).astype(np.float32)

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        name: str,
        out_shapes: Sequence[Shape],
        **attrs,
    ) -> list[str]:
        """Append a node named like PyTorch's exporter does and register output shapes."""
        base = self.node_base(name, op)
        node_name, i = base, 0
        while node_name in self._node_names:
            i += 1
            node_name = f"{base}_{i}"
        self._node_names.add(node_name)
        outputs = [f"{node_name}_output_{j}" for j in range(len(out_shapes))]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=node_name, **attrs))
        for out, shape in zip(outputs, out_shapes, strict=True):
            self.shapes[out] = tuple(int(d) for d in shape)
        return outputs

    def node_base(self, name: str, op: str) -> str:
        """The node name for module ``name`` (``layer1.0.conv1`` -> ``/layer1/0/conv1/Conv``)."""
        return "/" + name.replace(".", "/") + "/" + op if name else "/" + op

    def unary(self, op: str, x: str, name: str, **attrs) -> str:
        return self.node(op, [x], name, [self.shapes[x]], **attrs)[0]

    # ------------------------------------------------------------------ layers
    def conv(
        self,
        x: str,
        cout: int,
        k: int = 3,
        stride: int = 1,
        group: int = 1,
        bias: bool = False,
        *,
        name: str,
        pad: int | None = None,
        dilation: int = 1,
    ) -> str:
        n, cin, h, w = self.shapes[x]
        if cin % group or cout % group:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by group {group}")
        pad = dilation * (k - 1) // 2 if pad is None else pad
        fan_in = cin // group * k * k
        weight = self.param(f"{name}.weight", self.he((cout, cin // group, k, k), fan_in))
        inputs = [x, weight]
        if bias:
            inputs.append(self.param(f"{name}.bias", self.small((cout,))))
        out_shape = (
            n,
            cout,
            _conv_out(h, k, stride, pad, dilation),
            _conv_out(w, k, stride, pad, dilation),
        )
        return self.node(
            "Conv",
            inputs,
            name,
            [out_shape],
            dilations=[dilation, dilation],
            group=group,
            kernel_shape=[k, k],
            pads=[pad, pad, pad, pad],
            strides=[stride, stride],
        )[0]

    def conv_transpose(
        self,
        x: str,
        cout: int,
        k: int = 4,
        stride: int = 2,
        group: int = 1,
        bias: bool = False,
        *,
        name: str,
        pad: int = 1,
        output_padding: int = 0,
    ) -> str:
        n, cin, h, w = self.shapes[x]
        if cin % group or cout % group:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by group {group}")
        # ConvTranspose weight layout is [C_in, C_out / group, k, k].
        fan_in = cin // group * k * k
        weight = self.param(f"{name}.weight", self.he((cin, cout // group, k, k), fan_in))
        inputs = [x, weight]
        if bias:
            inputs.append(self.param(f"{name}.bias", self.small((cout,))))

        def size(s: int) -> int:
            return (s - 1) * stride - 2 * pad + k + output_padding

        attrs = {}
        if output_padding:
            attrs["output_padding"] = [output_padding, output_padding]
        return self.node(
            "ConvTranspose",
            inputs,
            name,
            [(n, cout, size(h), size(w))],
            dilations=[1, 1],
            group=group,
            kernel_shape=[k, k],
            pads=[pad, pad, pad, pad],
            strides=[stride, stride],
            **attrs,
        )[0]

    def bn(self, x: str, *, name: str, eps: float = 1e-5) -> str:
        c = self.channels(x)
        rng = self.rng
        inputs = [
            x,
            self.param(f"{name}.weight", rng.uniform(0.5, 1.5, c).astype(np.float32)),
            self.param(f"{name}.bias", self.small((c,))),
            self.param(f"{name}.running_mean", self.small((c,))),
            self.param(f"{name}.running_var", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        ]
        return self.node("BatchNormalization", inputs, name, [self.shapes[x]], epsilon=eps, momentum=0.9)[0]

    def instance_norm(self, x: str, *, name: str, eps: float = 1e-5) -> str:
        c = self.channels(x)
        scale = self.param(f"{name}.weight", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        bias = self.param(f"{name}.bias", self.small((c,)))
        return self.node("InstanceNormalization", [x, scale, bias], name, [self.shapes[x]], epsilon=eps)[0]

    def act(self, x: str, kind: str, *, name: str) -> str:
        """Elementwise activation by name (see ``ACTIVATIONS``)."""
        if kind == "relu":
            return self.unary("Relu", x, name)
        if kind == "leaky_relu":
            return self.unary("LeakyRelu", x, name, alpha=0.1)
        if kind == "sigmoid":
            return self.unary("Sigmoid", x, name)
        if kind == "hardsigmoid":
            return self.unary("HardSigmoid", x, name, alpha=1.0 / 6.0, beta=0.5)
        if kind == "hardswish":
            return self.unary("HardSwish", x, name)
        if kind == "tanh":
            return self.unary("Tanh", x, name)
        if kind == "softplus":
            return self.unary("Softplus", x, name)
        if kind == "mish":
            return self.unary("Mish", x, name)
        if kind == "silu":  # x * sigmoid(x), as PyTorch exports nn.SiLU at opset 17
            return self.mul(x, self.unary("Sigmoid", x, name), name=name)
        if kind == "relu6":  # nn.ReLU6 is Clip with min/max inputs
            lo = self.floats(f"{name}.clip_min", 0.0)
            hi = self.floats(f"{name}.clip_max", 6.0)
            return self.node("Clip", [x, lo, hi], name, [self.shapes[x]])[0]
        if kind == "prelu":  # per-channel slope [C, 1, 1]
            c = self.channels(x)
            slope = self.param(f"{name}.weight", self.rng.uniform(0.05, 0.3, (c, 1, 1)).astype(np.float32))
            return self.node("PRelu", [x, slope], name, [self.shapes[x]])[0]
        raise ValueError(f"unknown activation {kind!r}")

    def conv_bn_act(
        self,
        x: str,
        cout: int,
        k: int = 3,
        stride: int = 1,
        group: int = 1,
        act: str | None = "relu",
        *,
        name: str,
        conv: str = "conv",
        norm: str = "bn",
        bias: bool = False,
    ) -> str:
        """``{name}.{conv}`` -> ``{name}.{norm}`` -> activation ``{name}.act``."""
        y = self.conv(x, cout, k, stride, group, bias, name=f"{name}.{conv}")
        y = self.bn(y, name=f"{name}.{norm}")
        return self.act(y, act, name=f"{name}.act") if act else y

    def add(self, a: str, b: str, *, name: str) -> str:
        return self.node("Add", [a, b], name, [self._broadcast(a, b)])[0]

    def mul(self, a: str, b: str, *, name: str) -> str:
        return self.node("Mul", [a, b], name, [self._broadcast(a, b)])[0]

    def _broadcast(self, a: str, b: str) -> Shape:
        return tuple(np.broadcast_shapes(self.shapes[a], self.shapes[b]))

    def concat(self, xs: Sequence[str], axis: int = 1, *, name: str) -> str:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        return self.node("Concat", list(xs), name, [tuple(shape)], axis=axis)[0]

    def split(self, x: str, sizes: Sequence[int], axis: int = 1, *, name: str) -> list[str]:
        """Split with sizes as an int64 input (opset >= 13) or attribute (opset < 13)."""
        if sum(sizes) != self.shapes[x][axis]:
            raise ValueError(f"{name}: split sizes {sizes} do not add up")
        shapes = []
        for s in sizes:
            shape = list(self.shapes[x])
            shape[axis] = s
            shapes.append(tuple(shape))
        if self.opset >= 13:
            split = self.ints(f"{name}.split_sizes", sizes)
            return self.node("Split", [x, split], name, shapes, axis=axis)
        return self.node("Split", [x], name, shapes, axis=axis, split=list(sizes))

    def _pool(self, op: str, x: str, k: int, stride: int, pad: int, name: str) -> str:
        n, c, h, w = self.shapes[x]
        out = (n, c, _conv_out(h, k, stride, pad), _conv_out(w, k, stride, pad))
        return self.node(op, [x], name, [out], kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])[0]

    def maxpool(self, x: str, k: int = 2, stride: int | None = None, pad: int = 0, *, name: str):
        return self._pool("MaxPool", x, k, stride or k, pad, name)

    def avgpool(self, x: str, k: int = 2, stride: int | None = None, pad: int = 0, *, name: str):
        return self._pool("AveragePool", x, k, stride or k, pad, name)

    def global_pool(self, x: str, op: str = "GlobalAveragePool", *, name: str) -> str:
        n, c = self.shapes[x][:2]
        return self.node(op, [x], name, [(n, c, 1, 1)])[0]

    def reduce_mean_hw(self, x: str, *, name: str) -> str:
        """ReduceMean over H, W with keepdims=1 (axes attribute: opset <= 17)."""
        n, c = self.shapes[x][:2]
        return self.node("ReduceMean", [x], name, [(n, c, 1, 1)], axes=[2, 3], keepdims=1)[0]

    def flatten(self, x: str, *, name: str) -> str:
        shape = self.shapes[x]
        return self.node("Flatten", [x], name, [(shape[0], int(np.prod(shape[1:])))], axis=1)[0]

    def reshape(self, x: str, shape: Sequence[int], *, name: str) -> str:
        total = int(np.prod(self.shapes[x]))
        known = int(np.prod([d for d in shape if d != -1]))
        out = tuple(total // known if d == -1 else d for d in shape)
        target = self.ints(f"{name}.shape", shape)
        return self.node("Reshape", [x, target], name, [out])[0]

    def gemm(self, x: str, nout: int, *, name: str) -> str:
        """``nn.Linear``: Gemm(transB=1) with weight [out, in] and bias [out]."""
        n, nin = self.shapes[x]
        weight = self.param(f"{name}.weight", self.he((nout, nin), nin))
        bias = self.param(f"{name}.bias", self.small((nout,)))
        return self.node("Gemm", [x, weight, bias], name, [(n, nout)], alpha=1.0, beta=1.0, transB=1)[0]

    def matmul_add(self, x: str, nout: int, *, name: str) -> str:
        """A linear layer as MatMul with a constant [in, out] weight, then Add of the bias."""
        n, nin = self.shapes[x]
        weight = self.param(f"{name}.weight", self.he((nin, nout), nin))
        bias = self.param(f"{name}.bias", self.small((nout,)))
        y = self.node("MatMul", [x, weight], name, [(n, nout)])[0]
        return self.add(y, bias, name=name)

    def head(self, x: str, num_classes: int, *, name: str = "fc") -> str:
        """GlobalAveragePool -> Flatten -> Gemm(transB=1)."""
        y = self.global_pool(x, name="avgpool")
        y = self.flatten(y, name="")
        return self.gemm(y, num_classes, name=name)

    def resize2x(self, x: str, *, name: str) -> str:
        """Nearest-neighbour upsampling by 2 with a scales input (roi left empty)."""
        n, c, h, w = self.shapes[x]
        scales = self.floats(f"{name}.scales", [1.0, 1.0, 2.0, 2.0])
        return self.node(
            "Resize",
            [x, "", scales],
            name,
            [(n, c, 2 * h, 2 * w)],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )[0]

    # ------------------------------------------------------------------ output
    def build(self, output: str, graph_name: str) -> onnx.ModelProto:
        """Rename ``output`` to ``"output"`` and assemble the model."""
        producer = next(n for n in self.nodes if output in n.output)
        producer.output[list(producer.output).index(output)] = "output"
        for n in self.nodes:
            for i, name in enumerate(n.input):
                if name == output:
                    n.input[i] = "output"
        self.shapes["output"] = self.shapes[output]
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(self.input, TensorProto.FLOAT, self.shapes[self.input])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, self.shapes["output"])],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            ir_version=IR_VERSION,
            producer_name="graphprune.models.builders",
        )
        return model


# ---------------------------------------------------------------------------- builders

#: Activations used by :func:`conv_chain` when ``activations`` is not given.
CHAIN_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "hardswish", "relu6", "prelu")


def conv_chain(
    channels: Sequence[int] = (8, 16, 16, 8),
    out_channels: int = 4,
    activations: Sequence[str] | None = None,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """Conv -> BN -> activation(s) per entry of ``channels``, then a 1x1 conv to the output.

    ``activations`` gives one activation per layer. By default all of
    ``CHAIN_ACTIVATIONS`` are used: activation ``j`` goes after layer ``j % len(channels)``,
    so with fewer than six layers some layers get two activations in a row (with the
    default four layers: Relu+Clip, LeakyRelu+PRelu, Sigmoid, HardSwish). Odd layers'
    convs have a bias, even layers' do not.
    """
    layers = len(channels)
    if activations is None:
        per_layer = [[] for _ in range(layers)]
        for j in range(max(layers, len(CHAIN_ACTIVATIONS))):
            per_layer[j % layers].append(CHAIN_ACTIVATIONS[j % len(CHAIN_ACTIVATIONS)])
    else:
        if len(activations) != layers:
            raise ValueError("need one activation per layer")
        per_layer = [[a] for a in activations]

    b = _Builder(seed, input_shape=input_shape)
    x = b.input
    for i, (c, acts) in enumerate(zip(channels, per_layer, strict=True)):
        x = b.conv(x, c, 3, bias=i % 2 == 1, name=f"layers.{i}.conv")
        x = b.bn(x, name=f"layers.{i}.bn")
        for j, a in enumerate(acts):
            x = b.act(x, a, name=f"layers.{i}.act{j}" if len(acts) > 1 else f"layers.{i}.act")
    x = b.conv(x, out_channels, 1, bias=True, name="head")
    return b.build(x, "conv_chain")


def _basic_block(b: _Builder, x: str, cout: int, stride: int, name: str) -> str:
    """torchvision BasicBlock: relu(x + bn2(conv2(relu(bn1(conv1(x)))))), projection if needed."""
    cin = b.channels(x)
    y = b.conv(x, cout, 3, stride, name=f"{name}.conv1")
    y = b.act(b.bn(y, name=f"{name}.bn1"), "relu", name=f"{name}.relu")
    y = b.conv(y, cout, 3, name=f"{name}.conv2")
    y = b.bn(y, name=f"{name}.bn2")
    if stride != 1 or cin != cout:
        x = b.conv(x, cout, 1, stride, name=f"{name}.downsample.0")
        x = b.bn(x, name=f"{name}.downsample.1")
    return b.act(b.add(y, x, name=name), "relu", name=f"{name}.relu_out")


def residual_net(
    width: int = 16,
    blocks: int = 3,
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """ResNet-like: stem conv-bn-relu, ``blocks`` basic blocks, GAP -> Flatten -> Gemm.

    Block 0 has an identity shortcut; every odd block downsamples (stride 2, channels x2)
    with a 1x1 conv + BN projection shortcut (``layerN.0.downsample.{0,1}``); other blocks
    are identity. Blocks are named torchvision-style ``layer{stage}.{index}``.
    """
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv(b.input, width, 3, bias=True, name="conv1")
    x = b.act(b.bn(x, name="bn1"), "relu", name="relu")
    stage, index, c = 1, 0, width
    for i in range(blocks):
        stride = 1
        if i % 2 == 1:
            stage, index, c, stride = stage + 1, 0, c * 2, 2
        x = _basic_block(b, x, c, stride, f"layer{stage}.{index}")
        index += 1
    return b.build(b.head(x, num_classes), "residual_net")


def dense_block(
    channels: int = 24,
    growth: int = 8,
    layers: int = 4,
    bn_size: int = 4,
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """DenseNet-like: stem, one dense block, a transition, norm5-relu and a Gemm head.

    Each dense layer is BN -> Relu -> Conv1x1(bn_size*growth) -> BN -> Relu -> Conv3x3(growth)
    applied to the Concat (axis 1) of the block input and all previous layer outputs.
    The transition is BN -> Relu -> Conv1x1(C/2) -> AveragePool(2).
    """
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv(b.input, channels, 3, name="features.conv0")
    x = b.act(b.bn(x, name="features.norm0"), "relu", name="features.relu0")
    features = [x]
    for i in range(1, layers + 1):
        name = f"features.denseblock1.denselayer{i}"
        y = b.concat(features, name=f"{name}.cat") if len(features) > 1 else features[0]
        y = b.act(b.bn(y, name=f"{name}.norm1"), "relu", name=f"{name}.relu1")
        y = b.conv(y, bn_size * growth, 1, name=f"{name}.conv1")
        y = b.act(b.bn(y, name=f"{name}.norm2"), "relu", name=f"{name}.relu2")
        features.append(b.conv(y, growth, 3, name=f"{name}.conv2"))
    x = b.concat(features, name="features.denseblock1")
    t = "features.transition1"
    x = b.act(b.bn(x, name=f"{t}.norm"), "relu", name=f"{t}.relu")
    x = b.conv(x, b.channels(x) // 2, 1, name=f"{t}.conv")
    x = b.avgpool(x, 2, name=f"{t}.pool")
    x = b.act(b.bn(x, name="features.norm5"), "relu", name="features.relu5")
    return b.build(b.head(x, num_classes, name="classifier"), "dense_block")


def inception_block(
    stem: int = 16,
    branch1: int = 8,
    branch2: tuple[int, int] = (8, 12),
    branch3: tuple[int, int] = (4, 6),
    branch4: int = 6,
    out_conv: int = 24,
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """GoogLeNet-like: stem, one 4-branch inception block, a conv, a Gemm head.

    Branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; MaxPool(3, stride 1, pad 1) -> 1x1; joined by a
    Concat on axis 1. Every conv is BasicConv2d (conv without bias, BN, Relu).
    """
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv_bn_act(b.input, stem, 3, name="conv1")
    n = "inception3a"
    y1 = b.conv_bn_act(x, branch1, 1, name=f"{n}.branch1")
    y2 = b.conv_bn_act(x, branch2[0], 1, name=f"{n}.branch2.0")
    y2 = b.conv_bn_act(y2, branch2[1], 3, name=f"{n}.branch2.1")
    y3 = b.conv_bn_act(x, branch3[0], 1, name=f"{n}.branch3.0")
    y3 = b.conv_bn_act(y3, branch3[1], 5, name=f"{n}.branch3.1")
    y4 = b.maxpool(x, 3, 1, 1, name=f"{n}.branch4.0")
    y4 = b.conv_bn_act(y4, branch4, 1, name=f"{n}.branch4.1")
    x = b.concat([y1, y2, y3, y4], name=n)
    x = b.conv_bn_act(x, out_conv, 3, name="conv2")
    return b.build(b.head(x, num_classes), "inception_block")


def split_chunk(
    channels: int = 16,
    n: int = 2,
    out_channels: int = 8,
    split_form: str = "input",
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """YOLOv8 C2f-like block between a stem and a 1x1 output conv.

    ``cv1`` (1x1) -> Split(axis=1) into two equal halves -> ``n`` bottlenecks chained on the
    second half, every result kept -> Concat(halves + bottleneck outputs) -> ``cv2`` (1x1).
    Conv blocks are conv-bn-SiLU (Sigmoid + Mul); bottlenecks have residual Adds.

    ``split_form="input"`` gives Split with an int64 ``split`` input (opset 17);
    ``split_form="attribute"`` builds the whole model at opset 11, where ``split`` is an
    attribute.
    """
    if split_form not in ("input", "attribute"):
        raise ValueError("split_form must be 'input' or 'attribute'")
    if channels % 2:
        raise ValueError("channels must be even")
    b = _Builder(seed, opset=17 if split_form == "input" else 11, input_shape=input_shape)
    x = b.conv_bn_act(b.input, channels, 3, 2, act="silu", name="model.0")
    h = channels // 2
    m = "model.1"
    x = b.conv_bn_act(x, channels, 1, act="silu", name=f"{m}.cv1")
    ys = b.split(x, [h, h], name=f"{m}.chunk")
    for i in range(n):
        z = b.conv_bn_act(ys[-1], h, 3, act="silu", name=f"{m}.m.{i}.cv1")
        z = b.conv_bn_act(z, h, 3, act="silu", name=f"{m}.m.{i}.cv2")
        ys.append(b.add(ys[-1], z, name=f"{m}.m.{i}"))
    x = b.concat(ys, name=f"{m}.cat")
    x = b.conv_bn_act(x, channels, 1, act="silu", name=f"{m}.cv2")
    x = b.conv(x, out_channels, 1, bias=True, name="model.2")
    return b.build(x, f"split_chunk_{split_form}")


def squeeze_excite(
    channels: int = 16,
    reduction: int = 4,
    gate: str = "sigmoid",
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """conv-bn-relu, a squeeze-and-excitation block, conv-bn-relu, Gemm head.

    SE: ReduceMean(axes=[2,3], keepdims=1) -> Conv1x1 (reduce, bias) -> Relu ->
    Conv1x1 (expand, bias) -> ``gate`` ("sigmoid" or "hardsigmoid") -> Mul with the features.
    """
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv_bn_act(b.input, channels, 3, name="features.0")
    s = b.reduce_mean_hw(x, name="features.1.se.avgpool")
    s = b.conv(s, max(1, channels // reduction), 1, bias=True, name="features.1.se.fc1")
    s = b.act(s, "relu", name="features.1.se.relu")
    s = b.conv(s, channels, 1, bias=True, name="features.1.se.fc2")
    s = b.act(s, gate, name="features.1.se.gate")
    x = b.mul(x, s, name="features.1.se")
    x = b.conv_bn_act(x, 2 * channels, 3, 2, name="features.2")
    return b.build(b.head(x, num_classes, name="classifier"), "squeeze_excite")


def _inverted_residual(b: _Builder, x: str, cout: int, stride: int, expand: int, name: str):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual Add."""
    cin = b.channels(x)
    hidden = cin * expand
    y = b.conv_bn_act(x, hidden, 1, act="relu6", name=f"{name}.expand")
    y = b.conv_bn_act(y, hidden, 3, stride, group=hidden, act="relu6", name=f"{name}.dw")
    y = b.conv_bn_act(y, cout, 1, act=None, name=f"{name}.project")
    if stride == 1 and cin == cout:
        y = b.add(x, y, name=name)
    return y


def depthwise_separable(
    width: int = 16,
    expand: int = 4,
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """MobileNetV2-like inverted residuals plus a depthwise-multiplier-2 block.

    features.1: width -> width, residual; features.2: stride 2, width -> 1.5*width, no
    residual; features.3: residual; features.4: 3x3 conv with group=C_in and C_out=2*C_in
    (depthwise multiplier 2) -> BN -> Relu6 -> 1x1 conv-bn-relu6; then a 1x1 conv with bias
    and a Gemm head.
    """
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv_bn_act(b.input, width, 3, act="relu6", name="features.0")
    x = _inverted_residual(b, x, width, 1, expand, "features.1")
    c2 = width * 3 // 2
    x = _inverted_residual(b, x, c2, 2, expand, "features.2")
    x = _inverted_residual(b, x, c2, 1, expand, "features.3")
    x = b.conv_bn_act(x, 2 * c2, 3, group=c2, act="relu6", name="features.4.dw")
    x = b.conv_bn_act(x, 2 * width, 1, act="relu6", name="features.4.pw")
    x = b.conv(x, 4 * width, 1, bias=True, name="features.5")
    x = b.act(x, "relu6", name="features.5.act")
    return b.build(b.head(x, num_classes, name="classifier"), "depthwise_separable")


def flatten_gemm(
    channels: Sequence[int] = (8, 16, 16),
    hidden: int = 32,
    num_classes: int = 10,
    head: str = "gemm",
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """conv-bn-relu-MaxPool(2) per entry of ``channels`` (32x32 -> [1, 16, 4, 4]), then an MLP.

    ``head="gemm"``: Flatten(axis=1) -> Gemm(transB=1) -> Relu -> Gemm.
    ``head="matmul"``: Reshape to [1, -1] (shape initializer) -> MatMul([in, out]) -> Add(bias)
    -> Relu -> MatMul -> Add.
    """
    if head not in ("gemm", "matmul"):
        raise ValueError("head must be 'gemm' or 'matmul'")
    b = _Builder(seed, input_shape=input_shape)
    x = b.input
    for i, c in enumerate(channels):
        x = b.conv_bn_act(x, c, 3, bias=i == 0, name=f"features.{i}")
        x = b.maxpool(x, 2, name=f"features.{i}.pool")
    if head == "gemm":
        x = b.flatten(x, name="")
        x = b.act(b.gemm(x, hidden, name="classifier.0"), "relu", name="classifier.1")
        x = b.gemm(x, num_classes, name="classifier.2")
    else:
        x = b.reshape(x, [b.shapes[x][0], -1], name="flatten")
        x = b.act(b.matmul_add(x, hidden, name="classifier.0"), "relu", name="classifier.1")
        x = b.matmul_add(x, num_classes, name="classifier.2")
    return b.build(x, f"flatten_gemm_{head}")


def unet(
    base: int = 8,
    depth: int = 2,
    num_classes: int = 3,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """Small U-Net: double-conv encoder stages with MaxPool(2), a bottleneck, and decoder stages
    with Resize(nearest, scales [1,1,2,2]) -> Concat(encoder skip, upsampled) -> double conv;
    a final 1x1 conv (bias) gives ``[1, num_classes, H, W]``. H and W must be divisible by
    ``2**depth``.
    """
    b = _Builder(seed, input_shape=input_shape)

    def double_conv(x: str, c: int, name: str) -> str:
        x = b.conv_bn_act(x, c, 3, name=f"{name}.0", bias=True)
        return b.conv_bn_act(x, c, 3, name=f"{name}.1")

    skips = []
    x = b.input
    for i in range(depth):
        x = double_conv(x, base * 2**i, f"down{i}")
        skips.append(x)
        x = b.maxpool(x, 2, name=f"down{i}.pool")
    x = double_conv(x, base * 2**depth, "bottleneck")
    for i in reversed(range(depth)):
        x = b.resize2x(x, name=f"up{i}.upsample")
        x = b.concat([skips[i], x], name=f"up{i}.cat")
        x = double_conv(x, base * 2**i, f"up{i}")
    x = b.conv(x, num_classes, 1, bias=True, name="outc")
    return b.build(x, "unet")


def convtranspose_decoder(
    channels: tuple[int, int] = (16, 32),
    groups: tuple[int, int] = (1, 2),
    out_channels: int = 3,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """Two stride-2 conv-bn-relu down, two ConvTranspose(k4, s2, p1) -> BN -> Relu up, 1x1 conv.

    The first ConvTranspose has no bias, the second has a bias and ``group=groups[1]``
    (weight layout [C_in, C_out/group, k, k]). Output ``[1, out_channels, H, W]``.
    """
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv_bn_act(b.input, channels[0], 3, 2, name="encoder.0")
    x = b.conv_bn_act(x, channels[1], 3, 2, name="encoder.1")
    x = b.conv_transpose(x, channels[0], 4, 2, groups[0], bias=False, name="decoder.0.deconv")
    x = b.act(b.bn(x, name="decoder.0.bn"), "relu", name="decoder.0.act")
    x = b.conv_transpose(x, channels[0] // 2, 4, 2, groups[1], bias=True, name="decoder.1.deconv")
    x = b.act(b.bn(x, name="decoder.1.bn"), "relu", name="decoder.1.act")
    x = b.conv(x, out_channels, 1, bias=True, name="head")
    return b.build(x, "convtranspose_decoder")


def grouped_conv(
    groups: int = 4,
    width: int = 32,
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """ResNeXt-like: stem, one bottleneck 1x1 -> grouped 3x3 (group=groups) -> 1x1 with an
    identity residual, Gemm head."""
    b = _Builder(seed, input_shape=input_shape)
    x = b.conv_bn_act(b.input, width, 3, name="stem", conv="conv1", norm="bn1")
    n = "layer1.0"
    y = b.conv(x, width, 1, name=f"{n}.conv1")
    y = b.act(b.bn(y, name=f"{n}.bn1"), "relu", name=f"{n}.relu1")
    y = b.conv(y, width, 3, group=groups, name=f"{n}.conv2")
    y = b.act(b.bn(y, name=f"{n}.bn2"), "relu", name=f"{n}.relu2")
    y = b.conv(y, width, 1, name=f"{n}.conv3")
    y = b.bn(y, name=f"{n}.bn3")
    x = b.act(b.add(y, x, name=n), "relu", name=f"{n}.relu")
    return b.build(b.head(x, num_classes), "grouped_conv")


def pad_and_pool(
    channels: int = 8,
    num_classes: int = 10,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    seed: int = 0,
) -> onnx.ModelProto:
    """Opset 18 (for Mish): a chain of less common channel-preserving ops.

    conv-bn-relu -> Pad(constant, spatial only, pads/value as inputs) -> Conv(no pad) ->
    InstanceNormalization -> Tanh -> AveragePool(2) -> Conv -> Softplus -> Mish -> Dropout ->
    Identity -> Cast(float->float) -> Unsqueeze(axis 2) -> Squeeze(axis 2) ->
    Transpose(swap H,W) -> Relu -> Transpose(back) -> Conv -> GlobalMaxPool -> Flatten -> Gemm.
    """
    b = _Builder(seed, opset=18, input_shape=input_shape)
    x = b.conv_bn_act(b.input, channels, 3, name="stem")
    n_, c, h, w = b.shapes[x]
    pads = b.ints("pad.pads", [0, 0, 1, 1, 0, 0, 1, 1])
    value = b.floats("pad.value", 0.0)
    x = b.node("Pad", [x, pads, value], "pad", [(n_, c, h + 2, w + 2)], mode="constant")[0]
    x = b.conv(x, channels, 3, pad=0, bias=True, name="conv1")
    x = b.instance_norm(x, name="norm1")
    x = b.act(x, "tanh", name="act1")
    x = b.avgpool(x, 2, name="pool1")
    x = b.conv(x, 2 * channels, 3, name="conv2")
    x = b.act(x, "softplus", name="act2")
    x = b.act(x, "mish", name="act3")
    x = b.unary("Dropout", x, "dropout")
    x = b.unary("Identity", x, "identity")
    x = b.unary("Cast", x, "cast", to=TensorProto.FLOAT)
    n_, c, h, w = b.shapes[x]
    axes = b.ints("unsqueeze.axes", [2])
    x = b.node("Unsqueeze", [x, axes], "unsqueeze", [(n_, c, 1, h, w)])[0]
    x = b.node("Squeeze", [x, axes], "squeeze", [(n_, c, h, w)])[0]
    x = b.node("Transpose", [x], "transpose1", [(n_, c, w, h)], perm=[0, 1, 3, 2])[0]
    x = b.act(x, "relu", name="act4")
    x = b.node("Transpose", [x], "transpose2", [(n_, c, h, w)], perm=[0, 1, 3, 2])[0]
    x = b.conv(x, 2 * channels, 3, name="conv3")
    x = b.global_pool(x, "GlobalMaxPool", name="globalpool")
    x = b.flatten(x, name="")
    x = b.gemm(x, num_classes, name="fc")
    return b.build(x, "pad_and_pool")


BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "conv_chain": conv_chain,
    "residual_net": residual_net,
    "dense_block": dense_block,
    "inception_block": inception_block,
    "split_chunk": split_chunk,
    "squeeze_excite": squeeze_excite,
    "depthwise_separable": depthwise_separable,
    "flatten_gemm": flatten_gemm,
    "unet": unet,
    "convtranspose_decoder": convtranspose_decoder,
    "grouped_conv": grouped_conv,
    "pad_and_pool": pad_and_pool,
}


def random_input(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded feed for every graph input that is not an initializer (see
    :func:`graphprune.objectives.cost.random_feeds`, which it is)."""
    return random_feeds(model, seed=seed)
