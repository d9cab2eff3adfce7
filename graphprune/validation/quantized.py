"""Exactness on quantized graphs (QDQ, QOperator): what "equal" means after requantization.

A pruned convolution sums fewer terms than the masked reference, in another order: the two
float sums differ by a rounding error, and a ``QuantizeLinear`` that meets a value on a
rounding boundary turns that error into a whole quantization step, which the layers after it
carry to the output. The surgery is right and the outputs still differ by a step. So, on a
graph with a ``QuantizeLinear`` on an activation:

1. the outputs are compared in their quantization steps: an output made by a
   ``DequantizeLinear`` (or a ``QuantizeLinear``: integer, step 1), followed back through ops
   that never enlarge a difference (reshapes, ReLU, max/average pooling, ...), may differ by
   ``QUANT_STEPS`` of its step (per-channel scales: the largest). Measured on
   ``quantize_static`` (QDQ, per-channel) ResNet-18, ResNet-50 and MobileNetV2 with ratios
   0.1-0.7 and 4 seeds each (96 comparisons): never more than 1 step; 2 leaves room for two
   upstream flips meeting in one output. An output whose step is not known (a float op after
   the last quantizer) is held to this only through rule 2;
2. one step is also what a wrong plan can cost (swapping two input channels of one ResNet-18
   layer moves its output by 1-4 steps), so the same comparison is made with the activations'
   fake quantization bypassed (``DequantizeLinear(QuantizeLinear(x))`` read as ``x``, in both
   models; quantized weights stay): a float model, held to the float tolerance, where a wrong
   plan shows at once;
3. QOperator graphs (``QLinearConv``, ``QGemm``, ``MatMulInteger``...; rules in
   :mod:`graphprune.rules.qoperator`) have no fake quantization to bypass. Their sums are of
   integers, in which order does not matter: where every node that sums over a removed
   channel is one of :data:`INTEGER_SUMS`, the pruned model and the masked reference (which
   zeroes a channel through the weight's zero point) agree exactly (measured: a max
   difference of 0 on every QOperator and quantize_dynamic model of tests/test_qoperator.py
   and on a QOperator ResNet-18), so there is no rounding for rule 1's steps to allow, and
   the outputs are held to the float tolerance. Rule 1 would let a wrong plan pass: one
   QLinearConv weight cut at the wrong input channels moved a ResNet's output by 1 step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import onnx.numpy_helper

QUANT_STEPS = 2
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
# Single-data-input ops that never make |a - b| larger elementwise (1-Lipschitz in the max
# norm): a one-step difference at their input is at most one step at their output.
_NON_EXPANSIVE = frozenset(
    {
        "Identity",
        "Dropout",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Slice",
        "Gather",
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "MaxPool",
        "GlobalMaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMax",
        "ReduceMin",
        "ReduceMean",
    }
)


# Ops whose sum over a channel is of integers (DynamicQuantizeLinear: a min and a max, which
# the masked reference reaches exactly by zeroing its float input): rule 3.
INTEGER_SUMS = frozenset(
    {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
)


def integer_sums(summing: list[onnx.NodeProto]) -> bool:
    """Whether ``summing`` (the nodes that sum over removed channels) is not empty and only
    sums integers (rule 3)."""
    return bool(summing) and all(n.op_type in INTEGER_SUMS and n.domain in _QDQ_DOMAINS for n in summing)


def _is(node: onnx.NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in _QDQ_DOMAINS


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether ``model`` requantizes activations: a ``QuantizeLinear`` that reads a computed
    tensor, or an integer op (``QLinear*``, ``*Integer``, ``DynamicQuantizeLinear``)."""
    g = model.graph
    constants = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    for n in g.node:
        if _is(n, "QuantizeLinear") and n.input[0] not in constants:
            return True
        if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer") or n.op_type == "DynamicQuantizeLinear":
            return True
    return False


def constant_values(model: onnx.ModelProto) -> Callable[[str], np.ndarray | None]:
    """The value of a constant of ``model`` by name (initializers held in memory, Constant
    nodes), or None: enough for quantization scales without an analysis of the model."""
    tensors = {t.name: t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    for n in model.graph.node:
        for a in n.attribute if n.op_type == "Constant" else ():
            if a.name == "value":
                tensors[n.output[0]] = a.t
    return lambda name: onnx.numpy_helper.to_array(tensors[name]) if name in tensors else None


def output_steps(model: onnx.ModelProto, value: Callable[[str], np.ndarray | None] | None = None) -> list[float | None]:
    """The quantization step of each graph output (None where it is not known).

    Follows the output back through non-expansive ops to the quantizer that made it: a
    ``DequantizeLinear``'s step is its scale (the largest, per channel), a ``QuantizeLinear``'s
    output is an integer (step 1). ``value`` gives a constant's value (None if not constant;
    default :func:`constant_values`).
    """
    value = value or constant_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    steps: list[float | None] = []
    for out in model.graph.output:
        name, step = out.name, None
        for _ in range(len(model.graph.node)):
            node = producer.get(name)
            if node is None:
                break
            if _is(node, "DequantizeLinear"):
                scale = value(node.input[1])
                step = float(np.max(np.abs(scale))) if scale is not None and np.size(scale) else None
                break
            if _is(node, "QuantizeLinear"):
                step = 1.0
                break
            if node.op_type not in _NON_EXPANSIVE or node.domain not in ("", "ai.onnx"):
                break
            name = node.input[0]
        steps.append(step)
    return steps


@contextlib.contextmanager
def fake_quant_bypassed(model: onnx.ModelProto) -> Iterator[int]:
    """``model`` with every ``DequantizeLinear(QuantizeLinear(x))`` of a computed ``x`` read as
    ``x`` (the DequantizeLinear becomes an ``Identity`` of ``x``; the QuantizeLinear is left,
    unread or read by others); yields how many were bypassed.

    Nodes are edited in place, none added or removed (node indices, which an analysis of the
    model refers to, stay valid), and restored on exit: no weight is copied.
    """
    g = model.graph
    constants = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    quantizers = {n.output[0]: n for n in g.node if _is(n, "QuantizeLinear") and n.input[0] not in constants}
    saved: list[tuple[onnx.NodeProto, bytes]] = []
    try:
        for node in g.node:
            q = quantizers.get(node.input[0]) if _is(node, "DequantizeLinear") else None
            if q is None:
                continue
            saved.append((node, node.SerializeToString()))
            x = q.input[0]
            del node.input[:]
            del node.attribute[:]
            node.input.append(x)
            node.op_type, node.domain = "Identity", ""
        yield len(saved)
    finally:
        for node, data in saved:
            node.Clear()
            node.ParseFromString(data)


def step_diffs(a: list[np.ndarray], b: list[np.ndarray], steps: list[float | None]) -> list[float | None]:
    """Largest |a - b| of each output in its quantization steps (None where the step is unknown)."""
    out: list[float | None] = []
    for x, y, step in zip(a, b, steps):
        if step is None or step <= 0 or not np.asarray(y).size:
            out.append(None)
            continue
        diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
        out.append(float(np.max(diff)) / step)
    return out
