"""Random, valid ONNX models composed of blocks: the input of graphprune's property tests and soak runs.

``random_model(seed)`` chains 1..``max_blocks`` blocks drawn from :data:`BLOCKS` on an input
``[1, C, H, W]`` (C in 1..8, H = W in {8, 16, 32}, float32; opset 17, sometimes 18 or 20)
and may end with a head from :data:`HEADS`. Channel counts are drawn from 1..24 (1 and 2
on purpose, as edge cases), blocks nest (a residual body, a concat branch or a split chunk
can be another random block) and every choice comes from one ``numpy`` generator, so a
seed always gives the same model. ``models()`` is the same as a hypothesis strategy.

Blocks (the names recorded in the model, see :func:`blocks_used`):

* ``conv_bn_act``: Conv (k 1/3/5, sometimes dilated, strided or reusing an earlier conv's
  weight) -> BatchNormalization (or a folded Mul/Add, or none) -> activation;
* ``residual_identity`` / ``residual_projection``: a body (conv-bn-act -> conv-bn, or a
  nested random block) added (Add, sometimes Sum) to the input, or to a 1x1 conv(-bn)
  projection of it;
* ``concat``: 2-4 branches of different widths (1x1, 3x3, 1x1 -> 3x3, MaxPool -> 1x1, the
  input itself, a nested block) joined on the channel axis (sometimes written as -3, and
  sometimes with one tensor in two segments);
* ``split``: 2-3 chunks, equal or not: Split with sizes as an input, without sizes (equal,
  opset 17), with ``num_outputs`` (opset >= 18), or Slice nodes; chunks are processed, kept
  or left unread, and re-concatenated, C2f-like;
* ``depthwise``: depthwise conv with multiplier 1 or 2 -> BN -> act (-> pointwise conv);
* ``squeeze_excite``: ReduceMean (or GlobalAveragePool) -> conv -> act -> conv -> gate ->
  Mul, or with Gemm layers and a Reshape/Unsqueeze back to [N, C, 1, 1];
* ``pad``: spatial Pad (constant/reflect/edge, sometimes with an ``axes`` input), then a
  conv or pool that shrinks back; or a Pad of the channel axis (an edge case that blocks);
* ``resize_pool``: Resize x2 (scales, sizes, or sizes with ``axes``; nearest or linear)
  then a 2x2 pool down;
* ``transpose_pair``: Transpose NCHW -> NHWC, optionally a channels-last MatMul by a
  constant (+ bias), an activation or a per-channel Mul, then Transpose back (or a pair
  swapping H and W);
* ``grouped_conv``: Conv with 2 <= group < C_in -> BN -> act;
* ``mystery``: a node ``custom.test.Mystery`` (one input, one output) that no graphprune
  rule knows. Its body is a *model-local function* (``ModelProto.functions``) so that the
  checker and onnxruntime accept the model; the body is Relu, Mul by 2, a channel mix
  (x + mean over channels) or a channel doubling (Concat(x, x)).

Heads: GlobalAveragePool -> Flatten -> Gemm, Flatten -> (Gemm -> act ->) Gemm, a 1x1 conv,
or none; Flatten may be a Reshape, and Gemm a MatMul + Add or a Gemm with ``transB=0``.

Activations (:data:`ACTIVATIONS`): Relu, LeakyRelu, Sigmoid, HardSwish, Clip, PRelu, Tanh,
Mish, Gelu. Mish is an ONNX op from opset 18 and Gelu from opset 20, so most models (opset
17) get them decomposed the way PyTorch exports them (``x * tanh(softplus(x))``,
``0.5 * x * (1 + erf(x / sqrt 2))``); models drawn at opset 18 or 20 use the ops.

Model-level variants, as real exports have them: equal small constants shared by several
nodes, a symbolic batch dimension, extra graph outputs, declared intermediate shapes
(``value_info``), some initializers as Constant nodes (``value`` or ``value_ints``), and
initializers also listed as graph inputs.

Idioms (:data:`IDIOMS`, allowed by ``random_model(idioms=...)``, default
:data:`DEFAULT_IDIOMS`), drawn from a random stream of their own so that a model without
them is byte for byte the model drawn with none allowed:

* ``channel_select``: after a top-level block, constant indices on the channel axis: a
  Gather (indices sorted or not, repeated, negative; axis 1 or -3) or a Slice (a range, a
  step of 2, or reversed by a step of -1);
* ``qdq``: a QDQ model: most convs read QuantizeLinear -> DequantizeLinear of their input
  (per tensor, uint8 or int8) and the DequantizeLinear of an int8 weight (per output
  channel or per tensor, with or without a zero point);
* ``constant_weights``: weights (conv, Gemm, MatMul, rank >= 2) as ``Constant`` nodes placed
  just before their first reader, as torch.onnx writes parameters it folded;
* ``symbolic_dims``: ``dim_param`` on the batch and spatial dims of the input and outputs
  (inputs of size 16 only, the size random feeds give a symbolic dim).

What was used is recorded as JSON in ``model.doc_string`` (:func:`describe`,
:func:`blocks_used`, :func:`features_used`), so coverage can be tested and a failing model
tells its seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.ir.graph import fresh_name
from models.builders import _Builder

__all__ = [
    "ACTIVATIONS",
    "BLOCKS",
    "DEFAULT_IDIOMS",
    "HEADS",
    "IDIOMS",
    "MYSTERY_BODIES",
    "MYSTERY_DOMAIN",
    "MYSTERY_OP",
    "blocks_used",
    "describe",
    "features_used",
    "models",
    "random_model",
]

MYSTERY_DOMAIN = "custom.test"
MYSTERY_OP = "Mystery"
MYSTERY_BODIES = ("relu", "mul2", "mix", "double")

BLOCKS = (
    "conv_bn_act",
    "residual_identity",
    "residual_projection",
    "concat",
    "split",
    "depthwise",
    "squeeze_excite",
    "pad",
    "resize_pool",
    "transpose_pair",
    "grouped_conv",
    "mystery",
)
HEADS = ("gap_gemm", "flatten_gemm", "conv", "none")
# Idioms real exports showed, drawn from a stream of their own (``random_model(idioms=...)``):
# a model drawn with none of them is the model the generator made before they existed.
IDIOMS = ("channel_select", "constant_weights", "qdq", "symbolic_dims")
# qdq is opt-in until exactness allows for requantization: float noise of 1e-7 between the
# pruned model and its reference can move a value across a rounding boundary of a
# QuantizeLinear, one quantization step apart (seed 31011078 with qdq: rel diff 7.8e-3).
DEFAULT_IDIOMS = ("channel_select", "constant_weights", "symbolic_dims", "qdq")
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "hardswish", "clip", "prelu", "tanh", "mish", "gelu")

OPSETS = (17, 17, 17, 17, 17, 18, 20)  # mostly the opset of the brief; 18/20 for native Mish/Gelu
MAX_WIDTH = 24
MAX_SPATIAL = 48
SYMBOLIC_SPATIAL = 16  # symbolic H, W only on inputs this size: what random feeds give a symbolic dim
FLATTEN_LIMIT = 2048  # Flatten -> Gemm heads pool first when C*H*W is larger than this
DOC_PREFIX = "models.random_graphs "


def random_model(
    seed: int | np.random.Generator,
    *,
    max_blocks: int = 6,
    kinds: Sequence[str] | None = None,
    idioms: Sequence[str] = DEFAULT_IDIOMS,
) -> onnx.ModelProto:
    """A random valid model: 1..``max_blocks`` top-level blocks and maybe a head.

    ``seed`` is an int (the same int always gives the same model) or a numpy Generator
    (which is advanced). ``kinds`` restricts the blocks to some of :data:`BLOCKS` (to aim a
    soak run at them); the same seed then gives another model. ``idioms`` (of :data:`IDIOMS`)
    are the idioms that may be drawn; they change only the models they are drawn in. The model passes
    ``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime.
    """
    if max_blocks < 1:
        raise ValueError("max_blocks must be at least 1")
    if kinds is not None and not kinds:
        raise ValueError("kinds must name at least one block")
    unknown = sorted(set(kinds or ()) - set(BLOCKS))
    if unknown:
        raise ValueError(f"unknown block kinds {unknown}; choose from {', '.join(BLOCKS)}")
    unknown = sorted(set(idioms) - set(IDIOMS))
    if unknown:
        raise ValueError(f"unknown idioms {unknown}; choose from {', '.join(IDIOMS)}")
    if isinstance(seed, np.random.Generator):
        rng, idiom_rng = seed, seed.spawn(1)[0]
    else:
        rng, idiom_rng = np.random.default_rng(seed), np.random.default_rng([seed, 0x1D10])
    gen = _Generator(rng, tuple(kinds) if kinds else BLOCKS, idiom_rng=idiom_rng, idioms=tuple(idioms))
    x = gen.b.input
    for i in range(int(rng.integers(1, max_blocks + 1))):
        x = gen.block(x, f"blocks.{i}", depth=0, keep_spatial=False)
        if gen.idiom("channel_select", 0.12):
            x = gen.channel_select(x, f"blocks.{i}.select")
    x = gen.head(x)
    model = gen.build(x)
    gen.finish(model)
    meta = {
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
        "max_blocks": max_blocks,
        "kinds": list(kinds) if kinds else None,
        "idioms": list(idioms),
        "opset": gen.opset,
        "input_shape": list(gen.b.shapes[gen.b.input]),
        "blocks": gen.blocks,
        "features": sorted(gen.features),
    }
    model.doc_string = DOC_PREFIX + json.dumps(meta, separators=(",", ":"))
    return model


def describe(model: onnx.ModelProto) -> dict:
    """The generator's record of ``model`` (seed, opset, blocks, features), or {} if none."""
    if not model.doc_string.startswith(DOC_PREFIX):
        return {}
    return json.loads(model.doc_string[len(DOC_PREFIX) :])


def blocks_used(model: onnx.ModelProto) -> list[str]:
    """The blocks of ``model`` in the order they were built (nested blocks included)."""
    return list(describe(model).get("blocks", []))


def features_used(model: onnx.ModelProto) -> set[str]:
    """Finer tags: ``block:<name>``, ``head:<name>``, ``act:<name>``, ``opset:<n>`` and variants."""
    return set(describe(model).get("features", []))


def models(max_blocks: int = 6):
    """A hypothesis strategy of random models (shrinks toward small seeds and fewer blocks)."""
    from hypothesis import strategies as st  # a test dependency: imported only when asked

    return st.builds(
        lambda seed, blocks: random_model(seed, max_blocks=blocks),
        st.integers(0, 2**32 - 1),
        st.integers(1, max_blocks),
    )


class _SharingBuilder(_Builder):
    """A :class:`_Builder` that, when ``share`` is set, gives equal small constants (shapes,
    sizes, pads, scalars) one initializer, as constant-folding exporters and optimizers do."""

    def __init__(self, *args, share: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.share = share
        self._constants: dict[tuple, str] = {}

    def _shared(self, name: str, value: np.ndarray) -> str:
        if not self.share:
            return self.param(name, value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._constants:
            self._constants[key] = self.param(name, value)
        return self._constants[key]

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self._shared(name, np.asarray(values, dtype=np.int64))

    def floats(self, name: str, values: Sequence[float] | float) -> str:
        return self._shared(name, np.asarray(values, dtype=np.float32))


class _Generator:
    """Draws blocks with one rng and builds them with a :class:`models.builders._Builder`.

    Every block method takes the input tensor and a unique name prefix and returns its
    output; ``keep_spatial`` asks for the input's H and W (nested blocks, whose output meets
    their input again), ``depth`` limits nesting.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        kinds: tuple[str, ...] = BLOCKS,
        *,
        idiom_rng: np.random.Generator | None = None,
        idioms: tuple[str, ...] = (),
    ) -> None:
        self.rng = rng
        self.kinds = kinds
        self.idiom_rng = idiom_rng if idiom_rng is not None else np.random.default_rng(0)
        self.idioms = idioms
        self.quantized = self.idiom("qdq", 0.2)  # a QDQ model: most of its convs are quantized
        self.opset = int(rng.choice(OPSETS))
        c = int(rng.choice([1, 2, 3, 3, 4, 5, 6, 7, 8]))
        hw = int(rng.choice([8, 16, 32]))
        weights_seed = int(rng.integers(2**32))
        share = self.chance(0.3)
        self.b = _SharingBuilder(seed=weights_seed, opset=self.opset, input_shape=(1, c, hw, hw), share=share)
        self.blocks: list[str] = []
        self.features: set[str] = {f"opset:{self.opset}"}
        if self.b.share:
            self.features.add("model:shared_constants")
        self.dynamic = self.chance(0.1)  # a symbolic batch dimension in the declared input and outputs
        if self.dynamic:
            self.features.add("model:dynamic_batch")
        # Symbolic batch and image size: the constants that hold the batch are written for any
        # batch (as with ``dynamic``), since calibration feeds several samples at once.
        self.symbolic = self.idiom("symbolic_dims", 0.15) and hw == SYMBOLIC_SPATIAL
        self.dynamic = self.dynamic or self.symbolic
        self.mystery_body: str | None = None
        self.transposed = False  # a Transpose was made: onnxruntime may push it into a later Pad
        self._names: set[str] = set()
        self._weights: list[tuple[str, tuple[int, ...]]] = []  # (name, shape) of plain 1-group conv weights

    # ------------------------------------------------------------------ draws
    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def idiom(self, name: str, p: float) -> bool:
        """Whether to use idiom ``name`` here (drawn from the idioms' own stream, so that the
        rest of the model does not depend on which idioms are allowed)."""
        return bool(self.idiom_rng.random() < p) and name in self.idioms

    def pick(self, options: Sequence):
        return options[int(self.rng.integers(len(options)))]

    def width(self, lo: int = 1) -> int:
        """A channel count in lo..24; 1 and 2 come up more often than uniform, as edge cases."""
        if lo <= 2 and self.chance(0.15):
            return int(self.rng.integers(lo, 3))
        return int(self.rng.integers(lo, MAX_WIDTH + 1))

    def widths(self, n: int) -> list[int]:
        """``n`` different channel counts (when possible)."""
        pool = list(range(1, MAX_WIDTH + 1))
        self.rng.shuffle(pool)
        out = pool[:n]
        if self.chance(0.2):
            out[0] = int(self.rng.integers(1, 3))
        return [int(w) for w in out]

    def name(self, base: str) -> str:
        return fresh_name(self._names, base)

    # ------------------------------------------------------------------ shapes
    def c(self, x: str) -> int:
        return self.b.shapes[x][1]

    def hw(self, x: str) -> int:
        return self.b.shapes[x][2]

    def stride(self, x: str, keep_spatial: bool, p: float = 0.25) -> int:
        return 2 if not keep_spatial and self.hw(x) >= 8 and self.chance(p) else 1

    # ------------------------------------------------------------------ layers
    def act(self, x: str, name: str, kind: str | None = None, *, channels_last: bool = False) -> str:
        """A random (or the given) activation; ``channels_last``: the channel axis is the last."""
        kind = kind or self.pick(ACTIVATIONS)
        self.features.add(f"act:{kind}")
        b, name = self.b, self.name(name)
        if kind in ("relu", "leaky_relu", "sigmoid", "hardswish", "tanh"):
            return b.act(x, kind, name=name)
        if kind == "clip":
            if self.chance(0.7):
                return b.act(x, "relu6", name=name)
            lo = b.floats(f"{name}.clip_min", float(self.rng.uniform(-1.0, 0.0)))
            return b.node("Clip", [x, lo], name, [b.shapes[x]])[0]  # min only
        if kind == "prelu":
            if self.chance(0.7):
                if len(b.shapes[x]) == 4 and not channels_last:
                    return b.act(x, "prelu", name=name)  # slope [C, 1, 1]
                c = b.shapes[x][-1]  # [N, C] or channels last: slope [C]
                slope = b.param(f"{name}.weight", b.rng.uniform(0.05, 0.3, c).astype(np.float32))
                return b.node("PRelu", [x, slope], name, [b.shapes[x]])[0]
            slope = b.floats(f"{name}.weight", [0.25])  # one shared slope, as nn.PReLU()
            return b.node("PRelu", [x, slope], name, [b.shapes[x]])[0]
        if kind == "mish":
            if self.opset >= 18:
                self.features.add("act:mish:op")
                return b.act(x, "mish", name=name)
            self.features.add("act:mish:decomposed")
            t = b.unary("Tanh", b.unary("Softplus", x, name), name)
            return b.mul(x, t, name=name)
        if kind == "gelu":
            if self.opset >= 20:
                self.features.add("act:gelu:op")
                approx = {"approximate": "tanh"} if self.chance(0.3) else {}
                return b.node("Gelu", [x], name, [b.shapes[x]], **approx)[0]
            self.features.add("act:gelu:decomposed")
            y = b.node("Div", [x, b.floats(f"{name}.sqrt2", np.sqrt(2.0))], name, [b.shapes[x]])[0]
            y = b.unary("Erf", y, name)
            y = b.add(y, b.floats(f"{name}.one", 1.0), name=name)
            y = b.mul(x, y, name=name)
            return b.mul(y, b.floats(f"{name}.half", 0.5), name=name)
        raise ValueError(f"unknown activation {kind!r}")

    def conv(self, x: str, cout: int, k: int = 3, stride: int = 1, group: int = 1, *, name: str, **kw) -> str:
        bias = kw.pop("bias", self.chance(0.3))
        name = self.name(name)
        quantized = self.quantized and bool(self.idiom_rng.random() < 0.7)
        if quantized:
            x = self.qdq(x, f"{name}.input")
        y = self.b.conv(x, cout, k, stride, group, bias, name=name, **kw)
        if quantized:
            self.quantize_weight(y, f"{name}.weight")
        elif group == 1 and kw.get("pad") is None and kw.get("dilation", 1) == 1:
            self._weights.append((f"{name}.weight", (cout, self.c(x), k, k)))
        return y

    def qdq(self, x: str, name: str) -> str:
        """QuantizeLinear -> DequantizeLinear of an activation (per tensor, uint8 or int8), as
        static quantization tools put before every quantized op."""
        self.features.add("idiom:qdq")
        b, r = self.b, self.idiom_rng
        scale = b.floats(f"{name}.scale", float(r.uniform(0.02, 0.08)))
        zero = np.array(128, np.uint8) if r.random() < 0.5 else np.array(0, np.int8)
        zp = b.param(self.name(f"{name}.zero_point"), zero)
        q = b.node("QuantizeLinear", [x, scale, zp], self.name(f"{name}.quantize"), [b.shapes[x]])[0]
        return b.node("DequantizeLinear", [q, scale, zp], self.name(f"{name}.dequantize"), [b.shapes[x]])[0]

    def quantize_weight(self, y: str, weight: str) -> None:
        """Replace the float weight of the conv that made ``y`` by an int8 initializer and a
        DequantizeLinear (per output channel, axis 0, or per tensor) placed before the conv."""
        self.features.add("idiom:qdq_weight")
        b, r = self.b, self.idiom_rng
        conv = b.nodes[-1]
        assert conv.output[0] == y and conv.input[1] == weight
        init = next(t for t in b.inits if t.name == weight)
        b.inits.remove(init)
        w = numpy_helper.to_array(init)
        per_channel = r.random() < 0.7
        if per_channel:
            scale = np.abs(w).reshape(len(w), -1).max(axis=1) / 127
        else:
            scale = np.asarray(np.abs(w).max() / 127)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        wq = np.clip(np.round(w / scale.reshape((-1, 1, 1, 1) if per_channel else ())), -127, 127).astype(np.int8)
        inputs = [b.param(f"{weight}_quantized", wq), b.param(f"{weight}_scale", scale)]
        if r.random() < 0.5:
            inputs.append(b.param(f"{weight}_zero_point", np.zeros(scale.shape, np.int8)))
        attrs = {"axis": 0} if per_channel else {}
        dq = b.node("DequantizeLinear", inputs, self.name(f"{weight}.dequantize"), [w.shape], **attrs)[0]
        b.nodes.insert(len(b.nodes) - 2, b.nodes.pop())  # before the conv that reads it
        conv.input[1] = dq

    def channel_select(self, x: str, name: str) -> str:
        """Constant indices on the channel axis, as exports of ``x[:, idx]`` (Gather, sometimes
        with repeated or negative indices), ``x[:, a:b]``, ``x[:, ::2]`` or ``x.flip(1)`` (Slice)."""
        b, r = self.b, self.idiom_rng
        n, c, h, w = b.shapes[x]
        form = ("gather", "gather", "range", "strided", "reversed")[int(r.integers(5))]
        self.features.add(f"idiom:select:{form}")
        name = self.name(name)
        if form == "gather":
            k = int(r.integers(1, c + 1))
            idx = r.choice(c, size=k, replace=bool(r.random() < 0.2))
            if r.random() < 0.3:
                idx = idx - c  # the same channels, counted from the end
            axis = 1 if r.random() < 0.7 else -3
            return b.node("Gather", [x, b.ints(f"{name}.indices", idx.tolist())], name, [(n, k, h, w)], axis=axis)[0]
        if form == "range":
            start = int(r.integers(0, c))
            end = int(r.integers(start + 1, c + 1))
            starts, ends, steps = [start], [end], [1]
        elif form == "strided":
            start = int(r.integers(0, min(2, c)))
            starts, ends, steps = [start], [c if r.random() < 0.5 else 2**63 - 1], [2]
        else:
            starts, ends, steps = [-1], [-c - 1 if r.random() < 0.5 else -(2**63)], [-1]
        size = len(range(c)[slice(starts[0], max(min(ends[0], c), -c - 1), steps[0])])
        inputs = [x, b.ints(f"{name}.starts", starts), b.ints(f"{name}.ends", ends), b.ints(f"{name}.axes", [1])]
        if form != "range" or r.random() < 0.3:
            inputs.append(b.ints(f"{name}.steps", steps))
        return b.node("Slice", inputs, name, [(n, size, h, w)])[0]

    def tied_conv(self, x: str, name: str, stride: int) -> str | None:
        """A conv that reuses the weight of an earlier conv reading as many channels (weight
        tying, as in siamese branches), or None if there is none."""
        fits = [(w, s) for w, s in self._weights if s[1] == self.c(x)]
        if not fits:
            return None
        weight, (cout, cin, k, _) = fits[int(self.rng.integers(len(fits)))]
        self.features.add("conv:tied_weight")
        n, _, h, w = self.b.shapes[x]
        pad = (k - 1) // 2
        out = (n, cout, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        attrs = {"kernel_shape": [k, k], "pads": [pad] * 4, "strides": [stride, stride]}
        return self.b.node("Conv", [x, weight], self.name(name), [out], **attrs)[0]

    def bn(self, x: str, *, name: str) -> str:
        return self.b.bn(x, name=self.name(name))

    def norm(self, x: str, *, name: str) -> str:
        """Usually BatchNormalization; sometimes a folded one (Mul then Add by per-channel
        constants, [C, 1, 1] or [1, C, 1, 1]) or nothing."""
        r = self.rng.random()
        if r < 0.75:
            return self.bn(x, name=name)
        if r < 0.88:
            return x
        self.features.add("norm:affine")
        b, name, c = self.b, self.name(name), self.c(x)
        shape = (c, 1, 1) if self.chance(0.5) else (1, c, 1, 1)
        y = b.mul(x, b.param(f"{name}.weight", b.rng.uniform(0.5, 1.5, shape).astype(np.float32)), name=name)
        return b.add(y, b.param(f"{name}.bias", b.small(shape)), name=name)

    def cba(self, x: str, cout: int, k: int = 3, stride: int = 1, group: int = 1, *, name: str, act=True) -> str:
        """conv -> BN (usually) -> activation (usually)."""
        y = self.conv(x, cout, k, stride, group, name=f"{name}.conv")
        y = self.norm(y, name=f"{name}.bn")
        if act and self.chance(0.9):
            y = self.act(y, f"{name}.act")
        return y

    def reduce_mean_hw(self, x: str, name: str) -> str:
        if self.opset < 18:
            return self.b.reduce_mean_hw(x, name=name)
        axes = self.b.ints(f"{name}.axes", [2, 3])  # opset 18: axes became an input
        n, c = self.b.shapes[x][:2]
        return self.b.node("ReduceMean", [x, axes], name, [(n, c, 1, 1)], keepdims=1)[0]

    # ------------------------------------------------------------------ blocks
    def block(self, x: str, name: str, *, depth: int, keep_spatial: bool, exclude: Sequence[str] = ()) -> str:
        kinds = [k for k in self.kinds if k not in exclude]
        kind = self.pick(kinds)
        self.blocks.append(kind)
        self.features.add(f"block:{kind}")
        fn = getattr(self, f"_{kind}")
        return fn(x, self.name(f"{name}.{kind}"), depth=depth, keep_spatial=keep_spatial)

    def nested(self, x: str, name: str, depth: int) -> str | None:
        """Sometimes a random block inside a block (spatial size kept), else None."""
        if depth >= 2 or not self.chance(0.3):
            return None
        self.features.add("nested")
        return self.block(x, name, depth=depth + 1, keep_spatial=True)

    def _conv_bn_act(self, x, name, *, depth, keep_spatial):
        k = int(self.pick([1, 3, 3, 5]))
        stride = self.stride(x, keep_spatial)
        dilation = 2 if k == 3 and stride == 1 and self.chance(0.15) else 1
        y = self.tied_conv(x, f"{name}.conv", stride) if self.chance(0.15) else None
        if y is None:
            y = self.conv(x, self.width(), k, stride, name=f"{name}.conv", dilation=dilation)
        y = self.norm(y, name=f"{name}.bn")
        return self.act(y, f"{name}.act") if self.chance(0.9) else y

    def _residual_identity(self, x, name, *, depth, keep_spatial):
        cin = self.c(x)
        y = self.nested(x, f"{name}.body", depth) or self.cba(x, self.width(), 3, name=f"{name}.conv1")
        y = self.conv(y, cin, int(self.pick([1, 3])), name=f"{name}.conv2")
        if self.chance(0.8):
            y = self.bn(y, name=f"{name}.bn2")
        a, c = (x, y) if self.chance(0.5) else (y, x)
        if self.chance(0.15):
            self.features.add("residual:sum")
            out = self.b.node("Sum", [a, c], self.name(name), [self.b.shapes[x]])[0]
        else:
            out = self.b.add(a, c, name=self.name(name))
        return self.act(out, f"{name}.act") if self.chance(0.7) else out

    def _residual_projection(self, x, name, *, depth, keep_spatial):
        cout = self.width()
        stride = self.stride(x, keep_spatial, 0.5)
        body = self.nested(x, f"{name}.body", depth) if stride == 1 else None
        if body is None:
            body = self.cba(x, self.width(), 3, stride, name=f"{name}.conv1")
        y = self.conv(body, cout, 3, name=f"{name}.conv2")
        y = self.bn(y, name=f"{name}.bn2")
        s = self.conv(x, cout, 1, stride, name=f"{name}.downsample.0")
        if self.chance(0.7):
            s = self.bn(s, name=f"{name}.downsample.1")
        out = self.b.add(y, s, name=self.name(name))
        return self.act(out, f"{name}.act") if self.chance(0.8) else out

    def _concat(self, x, name, *, depth, keep_spatial):
        n = int(self.rng.integers(2, 5))
        self.features.add(f"concat:{n}")
        kinds = ["conv1", "conv3", "chain", "pool", "identity", "nested"]
        outs = []
        for i, w in enumerate(self.widths(n)):
            kind = self.pick(kinds)
            bname = f"{name}.branch{i}"
            if kind == "identity":
                kinds.remove("identity")  # the input itself, at most once
                y = x
            elif kind == "conv1":
                y = self.cba(x, w, 1, name=bname)
            elif kind == "conv3":
                y = self.cba(x, w, 3, name=bname)
            elif kind == "chain":
                y = self.cba(self.cba(x, w, 1, name=f"{bname}.0"), self.width(), 3, name=f"{bname}.1")
            elif kind == "pool":
                y = self.b.maxpool(x, 3, 1, 1, name=self.name(f"{bname}.pool"))
                y = self.cba(y, w, 1, name=bname)
            else:
                y = self.nested(x, bname, depth) or self.cba(x, w, 3, name=bname)
            self.features.add(f"concat_branch:{kind}")
            outs.append(y)
        if self.chance(0.08):  # one tensor in two segments of the Concat: valid, and an edge case
            self.features.add("concat_repeat")
            outs.insert(int(self.rng.integers(len(outs) + 1)), outs[int(self.rng.integers(len(outs)))])
        if self.chance(0.2):
            self.features.add("concat:negative_axis")
            return self.b.concat(outs, axis=-3, name=self.name(name))
        return self.b.concat(outs, name=self.name(name))

    def _split(self, x, name, *, depth, keep_spatial):
        n = int(self.rng.integers(2, 4))
        if self.c(x) < n or self.chance(0.3):
            x = self.cba(x, self.width(lo=n), 1, name=f"{name}.cv1")
        c = self.c(x)
        equal = c % n == 0 and self.chance(0.5)
        if equal:
            sizes = [c // n] * n
        else:
            cuts = np.sort(self.rng.choice(np.arange(1, c), size=n - 1, replace=False))
            sizes = [int(s) for s in np.diff(np.concatenate([[0], cuts, [c]]))]
        self.features.add(f"split:{n}:{'equal' if equal else 'unequal'}")
        sname = self.name(f"{name}.chunk")
        if self.chance(0.25):
            ys = self._slice_chunks(x, sizes, sname)
        elif equal and self.opset >= 18 and self.chance(0.5):
            self.features.add("split:num_outputs")
            n_, _, h, w = self.b.shapes[x]
            ys = self.b.node("Split", [x], sname, [(n_, s, h, w) for s in sizes], axis=1, num_outputs=n)
        elif equal and self.opset < 18 and self.chance(0.3):
            self.features.add("split:implicit_equal")  # no sizes: equal parts, one per output
            n_, _, h, w = self.b.shapes[x]
            ys = self.b.node("Split", [x], sname, [(n_, s, h, w) for s in sizes], axis=1)
        elif self.chance(0.2):
            self.features.add("split:negative_axis")
            ys = self.b.split(x, sizes, axis=-3, name=sname)
        else:
            ys = self.b.split(x, sizes, name=sname)
        outs = []
        for i, y in enumerate(ys):
            kind = self.pick(["keep", "keep", "conv", "residual", "nested", "drop"])
            if kind == "drop" and (i < len(ys) - 1 or outs):
                self.features.add("split:unused_chunk")  # a Split output nobody reads
                continue
            cname = f"{name}.m{i}"
            if kind == "conv":
                y = self.cba(y, self.width(), int(self.pick([1, 3])), name=cname)
            elif kind == "residual":
                z = self.cba(y, self.c(y), 3, name=f"{cname}.cv1")
                y = self.b.add(y, self.cba(z, self.c(y), 3, name=f"{cname}.cv2"), name=self.name(cname))
            elif kind == "nested":
                y = self.nested(y, cname, depth) or y
            outs.append(y)
        if self.chance(0.4):  # C2f: one more bottleneck on the last output, every result kept
            outs.append(self.cba(outs[-1], self.width(), 3, name=f"{name}.extra"))
        if self.chance(0.3):
            self.rng.shuffle(outs)
        if len(outs) == 1:
            return outs[0]
        return self.b.concat(outs, name=self.name(f"{name}.cat"))

    def _slice_chunks(self, x: str, sizes: list[int], name: str) -> list[str]:
        """Chunks as Slice nodes (as older exports of torch.chunk): constant starts/ends/axes,
        sometimes negative starts, INT64_MAX ends, a negative axis or explicit steps."""
        self.features.add("split:slice")
        b = self.b
        n, c, h, w = b.shapes[x]
        outs, offset = [], 0
        for i, size in enumerate(sizes):
            start, end = offset, offset + size
            if self.chance(0.3):
                start -= c  # the same position, counted from the end
            if end == c and self.chance(0.5):
                end = 2**63 - 1
            axis = -3 if self.chance(0.3) else 1
            inputs = [x, b.ints(f"{name}.{i}.starts", [start]), b.ints(f"{name}.{i}.ends", [end])]
            inputs.append(b.ints(f"{name}.{i}.axes", [axis]))
            if self.chance(0.3):
                inputs.append(b.ints(f"{name}.{i}.steps", [1]))
            outs.append(b.node("Slice", inputs, f"{name}.{i}", [(n, size, h, w)])[0])
            offset += size
        return outs

    def _depthwise(self, x, name, *, depth, keep_spatial):
        c = self.c(x)
        mult = int(self.pick([1, 2]))
        self.features.add(f"depthwise:x{mult}")
        y = self.conv(x, c * mult, 3, self.stride(x, keep_spatial), group=c, name=f"{name}.dw")
        y = self.bn(y, name=f"{name}.dw.bn")
        y = self.act(y, f"{name}.dw.act")
        if self.chance(0.6):
            y = self.cba(y, self.width(), 1, name=f"{name}.pw")
        return y

    def _squeeze_excite(self, x, name, *, depth, keep_spatial):
        c = self.c(x)
        if self.chance(0.3):
            return self._squeeze_excite_dense(x, name)
        if self.chance(0.7):
            s = self.reduce_mean_hw(x, self.name(f"{name}.avgpool"))
        else:
            s = self.b.global_pool(x, name=self.name(f"{name}.avgpool"))
        s = self.conv(s, max(1, c // int(self.pick([1, 2, 4, 8]))), 1, name=f"{name}.fc1", bias=True)
        s = self.act(s, f"{name}.relu", "relu" if self.chance(0.7) else None)
        s = self.conv(s, c, 1, name=f"{name}.fc2", bias=True)
        gate = self.pick(["sigmoid", "sigmoid", "hardsigmoid"])
        s = self.b.act(s, gate, name=self.name(f"{name}.gate"))
        a, g = (x, s) if self.chance(0.7) else (s, x)
        return self.b.mul(a, g, name=self.name(name))

    def _squeeze_excite_dense(self, x: str, name: str) -> str:
        """SE with Linear layers (Keras style): GAP -> Flatten -> Gemm -> act -> Gemm -> gate,
        back to [N, C, 1, 1] by Reshape (shape [1, C, 1, 1] or [0, -1, 1, 1]) or Unsqueeze."""
        b, c = self.b, self.c(x)
        n = b.shapes[x][0]
        if self.chance(0.3):
            self.features.add("se:dense:keepdims0")
            rname = self.name(f"{name}.avgpool")
            if self.opset < 18:
                s = b.node("ReduceMean", [x], rname, [(n, c)], axes=[2, 3], keepdims=0)[0]
            else:
                s = b.node("ReduceMean", [x, b.ints(f"{rname}.axes", [2, 3])], rname, [(n, c)], keepdims=0)[0]
        else:
            s = b.global_pool(x, name=self.name(f"{name}.avgpool"))
            s = b.flatten(s, name=self.name(f"{name}.flatten"))
        s = b.gemm(s, max(1, c // int(self.pick([1, 2, 4]))), name=self.name(f"{name}.fc1"))
        s = self.act(s, f"{name}.act", "relu" if self.chance(0.6) else None)
        s = b.gemm(s, c, name=self.name(f"{name}.fc2"))
        s = b.act(s, "sigmoid", name=self.name(f"{name}.gate"))
        back = self.pick(["reshape", "reshape0", "unsqueeze"])
        self.features.add(f"se:dense:{back}")
        if back == "unsqueeze":
            axes = b.ints(self.name(f"{name}.unsqueeze.axes"), [2, 3])
            s = b.node("Unsqueeze", [s, axes], self.name(f"{name}.unsqueeze"), [(n, c, 1, 1)])[0]
        else:
            target = [0, -1, 1, 1] if back == "reshape0" or self.dynamic else [n, c, 1, 1]
            s = self.reshape(s, target, (n, c, 1, 1), f"{name}.view")
        return b.mul(x, s, name=self.name(name))

    def _pad(self, x, name, *, depth, keep_spatial):
        b = self.b
        n, c, h, w = b.shapes[x]
        pname = self.name(f"{name}.pad")
        if self.chance(0.1):  # pad the channel axis: no channel coupling, its groups block
            self.features.add("pad:channels")
            before, after = int(self.rng.integers(0, 2)), int(self.rng.integers(1, 3))
            pads = b.ints(f"{pname}.pads", [0, before, 0, 0, 0, after, 0, 0])
            y = b.node("Pad", [x, pads], pname, [(n, c + before + after, h, w)], mode="constant")[0]
            return self.cba(y, self.width(), 1, name=f"{name}.conv")
        t = int(self.rng.integers(1, 3))  # total padding per spatial axis
        top, left = int(self.rng.integers(0, t + 1)), int(self.rng.integers(0, t + 1))
        mode = self.pick(["constant", "reflect", "edge"])
        self.features.add(f"pad:{mode}")
        inputs = [x]
        # onnxruntime (1.32) pushes a Transpose through a Pad that has an ``axes`` input
        # by permuting ``pads`` as if it covered every axis: a Gather out of bounds. A Pad
        # after a Transpose gets full-rank pads, which onnxruntime permutes correctly.
        if self.opset >= 18 and self.chance(0.4) and not self.transposed:
            self.features.add("pad:axes")
            inputs += [b.ints(f"{pname}.pads", [top, left, t - top, t - left])]
            inputs += ["", b.ints(f"{pname}.axes", [2, 3])]
        else:
            inputs += [b.ints(f"{pname}.pads", [0, 0, top, left, 0, 0, t - top, t - left])]
            if mode == "constant" and self.chance(0.5):
                inputs.append(b.floats(f"{pname}.value", float(self.rng.uniform(-1, 1))))
        y = b.node("Pad", inputs, pname, [(n, c, h + t, w + t)], mode=mode)[0]
        if not keep_spatial and h + t <= MAX_SPATIAL and self.chance(0.3):
            return y  # let it grow
        if self.chance(0.5):  # a conv without padding brings the size back
            y = self.conv(y, self.width(), t + 1, name=f"{name}.conv", pad=0)
            return self.act(self.bn(y, name=f"{name}.bn"), f"{name}.act") if self.chance(0.8) else y
        op = self.pick(["MaxPool", "AveragePool"])
        return b._pool(op, y, t + 1, 1, 0, self.name(f"{name}.pool"))

    def _resize_pool(self, x, name, *, depth, keep_spatial):
        b = self.b
        n, c, h, w = b.shapes[x]
        rname = self.name(f"{name}.upsample")
        forms = (["scales"] if self.dynamic else ["scales", "sizes"]) + (["sizes_axes"] if self.opset >= 18 else [])
        form = self.pick(forms)
        self.features.add(f"resize:{form}")
        if self.chance(0.5):
            attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        else:
            attrs = {"mode": "linear", "coordinate_transformation_mode": self.pick(["half_pixel", "align_corners"])}
        if form == "scales":
            inputs = [x, "", b.floats(f"{rname}.scales", [1.0, 1.0, 2.0, 2.0])]
        elif form == "sizes":
            inputs = [x, "", "", b.ints(f"{rname}.sizes", [n, c, 2 * h, 2 * w])]
        else:  # opset 18: sizes of the listed axes only
            inputs = [x, "", "", b.ints(f"{rname}.sizes", [2 * h, 2 * w])]
            attrs["axes"] = [2, 3]
        y = b.node("Resize", inputs, rname, [(n, c, 2 * h, 2 * w)], **attrs)[0]
        if self.chance(0.5):
            y = self.act(y, f"{name}.act")
        op = self.pick(["MaxPool", "MaxPool", "AveragePool"])
        return b._pool(op, y, 2, 2, 0, self.name(f"{name}.pool"))

    def _transpose_pair(self, x, name, *, depth, keep_spatial):
        b = self.b
        self.transposed = True
        n, c, h, w = b.shapes[x]
        if self.chance(0.2):  # swap H and W and back: channels untouched
            self.features.add("transpose:hw")
            y = b.node("Transpose", [x], self.name(f"{name}.t1"), [(n, c, w, h)], perm=[0, 1, 3, 2])[0]
            y = self.act(y, f"{name}.act")
            return b.node("Transpose", [y], self.name(f"{name}.t2"), [(n, c, h, w)], perm=[0, 1, 3, 2])[0]
        y = b.node("Transpose", [x], self.name(f"{name}.to_nhwc"), [(n, h, w, c)], perm=[0, 2, 3, 1])[0]
        middle = self.pick(["matmul", "matmul", "act", "scale", "none"])
        self.features.add(f"transpose:{middle}")
        if middle == "matmul":  # a channels-last linear layer, as in ConvNeXt
            cout = self.width()
            mname = self.name(f"{name}.linear")
            weight = b.param(f"{mname}.weight", b.he((c, cout), c))
            y = b.node("MatMul", [y, weight], mname, [(n, h, w, cout)])[0]
            if self.chance(0.7):
                shape = (cout,) if self.chance(0.6) else (1, 1, 1, cout)
                y = b.add(y, b.param(f"{mname}.bias", b.small(shape)), name=mname)
            if self.chance(0.5):
                y = self.act(y, f"{name}.act", channels_last=True)
        elif middle == "act":
            y = self.act(y, f"{name}.act", channels_last=True)
        elif middle == "scale":  # a per-channel layer scale on the last axis
            sname = self.name(f"{name}.gamma")
            y = b.mul(y, b.param(f"{sname}.weight", b.rng.uniform(0.5, 1.5, c).astype(np.float32)), name=sname)
        c2 = b.shapes[y][3]
        return b.node("Transpose", [y], self.name(f"{name}.to_nchw"), [(n, c2, h, w)], perm=[0, 3, 1, 2])[0]

    def _grouped_conv(self, x, name, *, depth, keep_spatial):
        g = int(self.pick([2, 2, 3, 4, 6, 8]))
        self.features.add(f"grouped_conv:{g}")
        if self.c(x) % g or self.c(x) == g:
            x = self.cba(x, g * int(self.rng.integers(2, 4)), 1, name=f"{name}.pre")
        y = self.conv(x, g * int(self.rng.integers(1, 5)), 3, self.stride(x, keep_spatial), g, name=f"{name}.conv")
        if self.chance(0.85):
            y = self.bn(y, name=f"{name}.bn")
        return self.act(y, f"{name}.act")

    def _mystery(self, x, name, *, depth, keep_spatial):
        if self.mystery_body is None:
            self.mystery_body = self.pick(MYSTERY_BODIES)
            self.features.add(f"mystery:{self.mystery_body}")
        n, c, h, w = self.b.shapes[x]
        c_out = 2 * c if self.mystery_body == "double" else c
        y = self.b.node(MYSTERY_OP, [x], self.name(name), [(n, c_out, h, w)], domain=MYSTERY_DOMAIN)[0]
        if self.chance(0.5):
            y = self.cba(y, self.width(), int(self.pick([1, 3])), name=f"{name}.after")
        return y

    # ------------------------------------------------------------------ head and model
    def head(self, x: str) -> str:
        kind = self.pick(HEADS)
        self.features.add(f"head:{kind}")
        b = self.b
        if kind == "none":
            return x
        if kind == "conv":
            return self.conv(x, self.width(), 1, name="head.conv", bias=True)
        if kind == "gap_gemm":
            y = b.global_pool(x, name=self.name("head.avgpool"))
        else:
            y = x
            while int(np.prod(b.shapes[y][1:])) > FLATTEN_LIMIT and self.hw(y) >= 2:
                y = b.maxpool(y, 2, name=self.name("head.pool"))
        if self.chance(0.25):
            self.features.add("head:reshape")
            target = [0, -1] if self.dynamic else self.pick([[1, -1], [0, -1]])
            y = self.reshape(y, target, (1, int(np.prod(b.shapes[y][1:]))), "head.flatten")
        else:
            y = b.flatten(y, name=self.name("head.flatten"))
        if kind == "flatten_gemm" and self.chance(0.5):
            y = self.act(self.gemm(y, self.width(), "head.fc0"), "head.act")
        if self.chance(0.25):
            self.features.add("head:matmul")
            return b.matmul_add(y, int(self.rng.integers(1, 13)), name=self.name("head.fc"))
        return self.gemm(y, int(self.rng.integers(1, 13)), "head.fc")

    def reshape(self, x: str, target: list[int], out_shape: tuple, name: str) -> str:
        """Reshape by a constant ``target`` (0 and -1 allowed) to the known ``out_shape``."""
        name = self.name(name)
        return self.b.node("Reshape", [x, self.b.ints(f"{name}.shape", target)], name, [out_shape])[0]

    def gemm(self, x: str, nout: int, name: str) -> str:
        """nn.Linear as Gemm(transB=1), or Gemm(transB=0) with a [in, out] weight; the bias is
        [out] or [1, out]; sometimes alpha and beta are not 1."""
        b, name = self.b, self.name(name)
        if self.chance(0.6):
            return b.gemm(x, nout, name=name)
        self.features.add("gemm:variant")
        n, nin = b.shapes[x]
        trans_b = int(self.chance(0.5))
        wshape = (nout, nin) if trans_b else (nin, nout)
        weight = b.param(f"{name}.weight", b.he(wshape, nin))
        bias = b.param(f"{name}.bias", b.small((nout,) if self.chance(0.5) else (1, nout)))
        alpha, beta = (1.0, 1.0) if self.chance(0.5) else (0.5, 2.0)
        return b.node("Gemm", [x, weight, bias], name, [(n, nout)], alpha=alpha, beta=beta, transB=trans_b)[0]

    def finish(self, model: onnx.ModelProto) -> None:
        """Model-level variants: a symbolic batch dimension, extra graph outputs, declared
        intermediate shapes, Constant nodes, initializers that are also graph inputs."""
        if self.chance(0.1):
            self.features.add("model:extra_outputs")
            float_outputs = (n for n in model.graph.node if n.op_type != "QuantizeLinear")  # int8/uint8
            produced = [o for n in float_outputs for o in n.output if o != "output"]
            for t in self.rng.choice(produced, size=min(len(produced), int(self.rng.integers(1, 3))), replace=False):
                model.graph.output.append(helper.make_tensor_value_info(str(t), TensorProto.FLOAT, self.b.shapes[t]))
        if self.dynamic:
            for vi in list(model.graph.input) + list(model.graph.output):
                vi.type.tensor_type.shape.dim[0].dim_param = "batch"
        if self.symbolic:  # dynamic image size, as exports with dynamic_axes: the outputs get names of their own
            self.features.add("idiom:symbolic_dims")
            for vi in list(model.graph.input) + list(model.graph.output):
                dims = vi.type.tensor_type.shape.dim
                if len(dims) == 4:
                    prefix = "" if vi.name == self.b.input else f"{vi.name}_"
                    dims[2].dim_param, dims[3].dim_param = f"{prefix}height", f"{prefix}width"
        if self.chance(0.3):
            self.features.add("model:value_info")
            _with_value_info(model)
        if self.chance(0.15):
            self.features.add("model:constant_nodes")
            _to_constant_nodes(model, self.rng, float(self.rng.uniform(0.2, 1.0)))
        if self.idiom("constant_weights", 0.15):
            self.features.add("idiom:constant_weights")
            _weights_to_local_constants(model, self.idiom_rng)
        if self.chance(0.1):
            self.features.add("model:initializers_as_inputs")
            _initializers_as_inputs(model)

    def build(self, output: str) -> onnx.ModelProto:
        if output == self.b.input:  # cannot happen (every block adds a node), but keep it valid
            output = self.b.unary("Identity", output, "identity")
        model = self.b.build(output, "random_graph")
        if self.mystery_body is not None:
            model.opset_import.append(helper.make_opsetid(MYSTERY_DOMAIN, 1))
            model.functions.append(_mystery_function(self.mystery_body, self.opset))
        return model


def _with_value_info(model: onnx.ModelProto) -> None:
    """Declare every intermediate shape (``graph.value_info``), as exports after shape inference do."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.value_info.extend(inferred.graph.value_info)


def _to_constant_nodes(model: onnx.ModelProto, rng: np.random.Generator, p: float) -> None:
    """Move a random part of the initializers into Constant nodes at the top of the graph."""
    g = model.graph
    keep, moved = [], []
    for t in g.initializer:
        (moved if rng.random() < p else keep).append(t)
    if not moved:
        return
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = []
    for i, t in enumerate(moved):
        if t.data_type == TensorProto.INT64 and len(t.dims) == 1 and rng.random() < 0.3:
            # value_ints, as some exporters write shape constants
            ints = [int(v) for v in numpy_helper.to_array(t)]
            nodes.append(helper.make_node("Constant", [], [t.name], name=f"/Constant_{i}", value_ints=ints))
        else:
            nodes.append(helper.make_node("Constant", [], [t.name], name=f"/Constant_{i}", value=t))
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)


def _weights_to_local_constants(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Turn some float weights of rank >= 2 into Constant nodes just before their first reader."""
    g = model.graph
    first_reader: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for t in node.input:
            first_reader.setdefault(t, i)
    moved = {
        t.name: t
        for t in g.initializer
        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2 and t.name in first_reader and rng.random() < 0.7
    }
    if not moved:
        return
    keep = [t for t in g.initializer if t.name not in moved]
    del g.initializer[:]
    g.initializer.extend(keep)
    before: dict[int, list[onnx.NodeProto]] = {}
    for name, t in moved.items():
        node = helper.make_node("Constant", [], [name], name=f"{name}/Constant", value=t)
        before.setdefault(first_reader[name], []).append(node)
    nodes = [n for i, node in enumerate(g.node) for n in [*before.get(i, []), node]]
    del g.node[:]
    g.node.extend(nodes)


def _initializers_as_inputs(model: onnx.ModelProto) -> None:
    """List every initializer among the graph inputs too (IR < 4 style, or torch.onnx's
    ``keep_initializers_as_inputs=True``): a default value that a caller may override."""
    g = model.graph
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer)


def _mystery_function(body: str, opset: int) -> onnx.FunctionProto:
    """``custom.test.Mystery(X) -> Y`` as a model-local function, so that runtimes can run it."""
    if body == "relu":
        nodes = [helper.make_node("Relu", ["X"], ["Y"])]
    elif body == "mul2":
        two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
        nodes = [helper.make_node("Constant", [], ["two"], value=two), helper.make_node("Mul", ["X", "two"], ["Y"])]
    elif body == "mix":  # Y = X + mean over channels: every output channel reads every input channel
        if opset >= 18:
            axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
            nodes = [
                helper.make_node("Constant", [], ["axes"], value=axes),
                helper.make_node("ReduceMean", ["X", "axes"], ["M"], keepdims=1),
            ]
        else:
            nodes = [helper.make_node("ReduceMean", ["X"], ["M"], axes=[1], keepdims=1)]
        nodes.append(helper.make_node("Add", ["X", "M"], ["Y"]))
    elif body == "double":
        nodes = [helper.make_node("Concat", ["X", "X"], ["Y"], axis=1)]
    else:
        raise ValueError(f"unknown Mystery body {body!r}")
    return helper.make_function(
        MYSTERY_DOMAIN,
        MYSTERY_OP,
        ["X"],
        ["Y"],
        nodes,
        [helper.make_opsetid("", opset)],
        doc_string=f"graphprune test op: {body}",
    )
