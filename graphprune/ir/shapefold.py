"""Shape arithmetic folded to values, for graphs that compute their shapes at run time.

The classic exporter writes ``x.view(x.size(0), 3, -1)`` as Shape -> Gather -> Concat ->
Reshape, and ``chunk`` as Slice bounds computed from Shape. When the input shapes are
static, every such value is known before the model runs: this module evaluates those small
integer computations with numpy, so that shape inference can see through them and rules can
read them like constants. Surgery then writes the new value as a constant, which is
equivalent because the shapes it came from were static. Values that depend on a dynamic
dim stay unknown, and the ops that read them keep blocking.

Rules:
1. Only small tensors (up to 64 elements) of integer (or float, for Cast chains) type are
   evaluated, from constants, static shapes (Shape, Size) and other folded values.
2. A node is evaluated only if every input it needs is known; anything else is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

_MAX_ELEMENTS = 64

Shapes = dict[str, tuple]
Values = dict[str, np.ndarray]
# Each evaluator: (node, input values, attributes, shapes, value lookup) -> output value or None.


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _axis_list(node, value, attrs, pos=1):
    """The axes of a node: its attribute, or its (known) ``axes`` input; None if unknown."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(node.input) > pos and node.input[pos]:
        v = value(node.input[pos])
        return None if v is None else [int(a) for a in np.ravel(v)]
    return []


def _shape(node, ins, attrs, shapes, value):
    s = shapes.get(node.input[0])
    if s is None:
        return None
    start, end = attrs.get("start", 0), attrs.get("end", None)
    part = s[start:end]
    if any(d is None for d in part):
        return None
    return np.array(part, dtype=np.int64)


def _size(node, ins, attrs, shapes, value):
    s = shapes.get(node.input[0])
    if s is None or any(d is None for d in s):
        return None
    return np.array(int(np.prod(s, dtype=np.int64)), dtype=np.int64)


def _gather(node, ins, attrs, shapes, value):
    return np.take(ins[0], ins[1].astype(np.int64), axis=attrs.get("axis", 0))


def _slice(node, ins, attrs, shapes, value):
    data = ins[0]
    if "starts" in attrs:
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = list(np.ravel(ins[1])), list(np.ravel(ins[2]))
        axes = list(np.ravel(ins[3])) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = list(np.ravel(ins[4])) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


def _concat(node, ins, attrs, shapes, value):
    return np.concatenate([np.atleast_1d(i) for i in ins], axis=attrs.get("axis", 0))


def _unsqueeze(node, ins, attrs, shapes, value):
    axes = _axis_list(node, value, attrs)
    if axes is None:
        return None
    out = ins[0]
    for a in sorted(a + out.ndim + len(axes) if a < 0 else a for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node, ins, attrs, shapes, value):
    axes = _axis_list(node, value, attrs)
    if axes is None:
        return None
    return np.squeeze(ins[0], axis=tuple(axes)) if axes else np.squeeze(ins[0])


def _reshape(node, ins, attrs, shapes, value):
    target = [int(t) for t in np.ravel(ins[1])]
    target = [ins[0].shape[i] if t == 0 else t for i, t in enumerate(target)]
    return ins[0].reshape(target)


def _cast(node, ins, attrs, shapes, value):
    return ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _div(node, ins, attrs, shapes, value):
    a, b = ins
    if np.issubdtype(a.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)  # ONNX integer division truncates
    return a / b


def _binary(fn: Callable) -> Callable:
    return lambda node, ins, attrs, shapes, value: fn(ins[0], ins[1]).astype(np.result_type(ins[0], ins[1]))


def _unary(fn: Callable) -> Callable:
    return lambda node, ins, attrs, shapes, value: fn(ins[0])


def _constant_of_shape(node, ins, attrs, shapes, value):
    fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return np.full([int(d) for d in np.ravel(ins[0])], fill.ravel()[0], dtype=fill.dtype)


def _range(node, ins, attrs, shapes, value):
    return np.arange(ins[0].item(), ins[1].item(), ins[2].item()).astype(ins[0].dtype)


def _where(node, ins, attrs, shapes, value):
    return np.where(ins[0], ins[1], ins[2])


def _reduce_prod(node, ins, attrs, shapes, value):
    keep = attrs.get("keepdims", 1)
    axes = _axis_list(node, value, attrs)
    if axes is None:
        return None
    return np.prod(ins[0], axis=tuple(axes) if axes else None, keepdims=bool(keep))


def _transpose(node, ins, attrs, shapes, value):
    return np.transpose(ins[0], attrs.get("perm"))


def _expand(node, ins, attrs, shapes, value):
    target = [int(d) for d in np.ravel(ins[1])]
    return ins[0] * np.ones(target, dtype=ins[0].dtype)  # ONNX Expand broadcasts both ways


def _tile(node, ins, attrs, shapes, value):
    return np.tile(ins[0], [int(r) for r in np.ravel(ins[1])])


_OPS: dict[str, Callable] = {
    "Transpose": _transpose,
    "Expand": _expand,
    "Tile": _tile,
    "Less": lambda node, ins, attrs, shapes, value: np.less(ins[0], ins[1]),
    "Greater": lambda node, ins, attrs, shapes, value: np.greater(ins[0], ins[1]),
    "Not": _unary(np.logical_not),
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Identity": _unary(lambda x: x),
    "Cast": _cast,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Mod": _binary(np.mod),
    "Min": _binary(np.minimum),
    "Max": _binary(np.maximum),
    "Equal": lambda node, ins, attrs, shapes, value: np.equal(ins[0], ins[1]),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Sqrt": _unary(np.sqrt),
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Where": _where,
    "ReduceProd": _reduce_prod,
}

# Inputs an op reads only for their shape, not their values.
_SHAPE_ONLY = {"Shape": (0,), "Size": (0,)}
# Optional inputs that may be absent.
_OPTIONAL_FROM = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "ReduceProd": 1}


def fold(model: onnx.ModelProto, shapes: Shapes, constants: Callable[[str], np.ndarray | None]) -> Values:
    """Values of the small computed tensors of ``model``'s main graph that static shapes decide.

    ``constants(name)`` gives the value of a constant tensor (or None).
    """
    values: Values = {}

    def value(name: str) -> np.ndarray | None:
        if name in values:
            return values[name]
        v = constants(name)
        return v if v is not None and v.size <= _MAX_ELEMENTS else None

    for node in model.graph.node:
        fn = _OPS.get(node.op_type)
        if fn is None or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        if constants(node.output[0]) is not None:
            continue  # Constant nodes are constants already
        shape_only = _SHAPE_ONLY.get(node.op_type, ())
        optional_from = _OPTIONAL_FROM.get(node.op_type, len(node.input))
        ins, ok = [], True
        for pos, name in enumerate(node.input):
            if pos in shape_only:
                ins.append(None)
                continue
            v = value(name) if name else None
            if v is None and (pos < optional_from or name):
                ok = False
                break
            ins.append(v)
        if not ok:
            continue
        try:
            with np.errstate(all="ignore"):
                out = fn(node, ins, _attrs(node), shapes, value)
        except Exception:  # anything odd: leave it unknown
            continue
        if out is not None and np.asarray(out).size <= _MAX_ELEMENTS:
            values[node.output[0]] = np.asarray(out)
    return values


@dataclass(frozen=True)
class ShapeElement:
    """One element of a shape vector computed at run time (``Concat(Shape(x)[0:2], [12, 64])``).

    ``value`` is its integer value where known before the model runs (a constant, or a static
    dim); ``source`` is ``(tensor, axis)`` when it is read from a tensor's shape by Shape at run
    time (its value then follows that tensor's size, pruned or not); ``where`` is
    ``(node index, input position, flat index)`` of the constant that holds it, when surgery
    can rewrite it there without changing any other tensor (None if not).
    """

    value: int | None
    source: tuple[str, int] | None = None
    where: tuple[int, int, int] | None = None


_SHAPE_PASS = frozenset({"Identity", "Cast", "Unsqueeze", "Squeeze"})


def shape_elements(mv, name: str, consumer: tuple[int, int]) -> list[ShapeElement] | None:
    """The elements of the 1-D (or scalar) integer tensor ``name`` read by input ``consumer``,
    see :func:`_elements`. An entry of a constant that two elements share (a Gather picking it
    twice) has no ``where``: rewriting it for one would change the other."""
    out = _elements(mv, name, consumer, 0)
    if out is not None:
        wheres = [e.where for e in out if e.where is not None]
        twice = {w for w in wheres if wheres.count(w) > 1}
        out = [ShapeElement(e.value, e.source, None) if e.where in twice else e for e in out]
    return out


def _elements(mv, name: str, consumer: tuple[int, int], depth: int) -> list[ShapeElement] | None:
    """The elements of the 1-D (or scalar) integer tensor ``name``, read by input ``consumer``
    = (node index, position), traced through Shape, Gather, Slice, Concat, Unsqueeze, Squeeze,
    Cast and Identity; None if it is not such a tensor. Elements of anything else are unknown.

    A constant element gets a ``where`` only if every tensor between it and the consumer has
    no other reader: rewriting it then changes nothing else.
    """
    if depth > 16:
        return None
    if mv.is_constant(name):
        arr = mv.value(name)
        if arr is None or arr.ndim > 1 or arr.size > _MAX_ELEMENTS or not np.issubdtype(arr.dtype, np.number):
            return None
        return [ShapeElement(int(v), None, (consumer[0], consumer[1], k)) for k, v in enumerate(arr.ravel())]
    i = mv.producer.get(name)
    node = None if i is None else mv.nodes[i]
    shape = mv.shapes.get(name)
    if node is None or node.domain not in ("", "ai.onnx") or (shape is not None and len(shape) > 1):
        return None
    exclusive = len(mv.consumers.get(name, [])) == 1 and name not in mv.graph_outputs

    def inner(pos: int) -> list[ShapeElement] | None:
        if pos >= len(node.input) or not node.input[pos]:
            return None
        out = _elements(mv, node.input[pos], (i, pos), depth + 1)
        if out is not None and not exclusive:
            out = [ShapeElement(e.value, e.source, None) for e in out]
        return out

    attrs = _attrs(node)
    out: list[ShapeElement] | None = None
    if node.op_type == "Shape":
        s = mv.shapes.get(node.input[0])
        if s is not None:
            axes = list(range(len(s)))[attrs.get("start", 0) : attrs.get("end", None)]
            out = [ShapeElement(s[a], (node.input[0], a)) for a in axes]
    elif node.op_type in _SHAPE_PASS:
        out = inner(0)
    elif node.op_type == "Concat":
        parts = [inner(p) for p in range(len(node.input))]
        out = None if any(p is None for p in parts) else [e for p in parts for e in p]
    elif node.op_type == "Gather" and attrs.get("axis", 0) == 0:
        data, idx = inner(0), mv.value(node.input[1])
        if data is not None and idx is not None and idx.ndim <= 1:
            out = [data[int(k)] for k in idx.ravel()] if all(-len(data) <= k < len(data) for k in idx.ravel()) else None
    elif node.op_type == "Slice":
        data = inner(0)
        bounds = [mv.value(node.input[p]) if p < len(node.input) and node.input[p] else None for p in range(1, 5)]
        if data is not None and bounds[0] is not None and bounds[1] is not None:
            axes, steps = bounds[2], bounds[3]
            if (axes is None or list(axes.ravel()) in ([0], [-1])) and (steps is None or int(steps.ravel()[0]) == 1):
                out = data[int(bounds[0].ravel()[0]) : _end(int(bounds[1].ravel()[0]))]
    if out is None:
        folded = mv.folded.get(name)
        if folded is not None and folded.ndim <= 1:
            return [ShapeElement(int(v)) for v in folded.ravel()]
    return out


def _end(e: int) -> int | None:
    """A Slice end as a Python slice end (INT64_MAX-style ends mean 'to the end')."""
    return None if e >= 2**31 else e


def monomial_mul(a, b):
    """The product of two sizes as monomials ``(integer, sorted symbols)``."""
    return (a[0] * b[0], tuple(sorted(a[1] + b[1])))


def monomial_product(ms):
    """The product of sizes as monomials."""
    out = (1, ())
    for m in ms:
        out = monomial_mul(out, m)
    return out


def monomial_quotient(a, b):
    """``a / b`` as a monomial, or None if ``b`` does not divide ``a``."""
    if b[0] == 0 or a[0] % b[0]:
        return None
    rest = list(a[1])
    for s in b[1]:
        if s not in rest:
            return None
        rest.remove(s)
    return (a[0] // b[0], tuple(rest))
