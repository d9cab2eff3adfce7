"""Surgery: apply a plan to a model.

Rules:
1. Every member of a group loses the entries its group removes: initializers and Constant
   values are sliced on their axis; activations change only their declared shapes.
2. Attributes and shape constants that slicing cannot fix are rewritten by the op's
   rewriter (Conv ``group``, Split sizes, Slice bounds, Reshape shapes, Resize sizes).
3. Names stay stable: a tensor keeps its name; a rewritten constant shared with another
   node is given a new name so that the other node keeps its value.
4. Surgery never reads criteria and never runs a model.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from .dependency import VIRTUAL, DependencyGraph
from .plan import Plan
from .rules import rewriter_for


def removed_entries(deps: DependencyGraph, plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """Sorted entries removed from each (tensor, axis) by ``plan``."""
    parts: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for group in deps.groups:
        js = plan.removed(group)
        if len(js) == 0:
            continue
        for m in group.members:
            if m.kind != VIRTUAL:
                parts[(m.tensor, m.axis)].append(m.indices[js].ravel())
    return {d: np.unique(np.concatenate(p)) for d, p in parts.items()}


def apply_plan(model: onnx.ModelProto, deps: DependencyGraph, plan: Plan, *, inplace: bool = False) -> onnx.ModelProto:
    """Return ``model`` with the plan's entries removed (a copy unless ``inplace``)."""
    out = model if inplace else _copy(model)
    removed = removed_entries(deps, plan)
    if not removed:
        return out
    by_tensor: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for (tensor, axis), idx in removed.items():
        by_tensor[tensor][axis] = idx
    old_shapes = deps.view.shapes
    new_shapes = dict(old_shapes)
    for tensor, axes in by_tensor.items():
        shape = list(old_shapes[tensor])
        for axis, idx in axes.items():
            shape[axis] -= len(idx)
        new_shapes[tensor] = tuple(shape)

    g = out.graph
    for t in g.initializer:
        if t.name in by_tensor:
            _slice_tensor(t, by_tensor[t.name])
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in by_tensor:
            for a in node.attribute:
                if a.name == "value":
                    _slice_tensor(a.t, by_tensor[node.output[0]])
    for vi in g.value_info:
        if vi.name in by_tensor:
            _set_shape(vi, new_shapes[vi.name])

    ctx = _Surgery(out, deps, removed, old_shapes, new_shapes)
    for node in list(g.node):
        rw = rewriter_for(node)
        if rw is not None:
            rw(node, ctx)
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _slice_tensor(t: onnx.TensorProto, axes: dict[int, np.ndarray]) -> None:
    arr = numpy_helper.to_array(t)
    for axis, idx in axes.items():
        arr = np.delete(arr, idx, axis=axis)
    new = numpy_helper.from_array(np.ascontiguousarray(arr), t.name)
    new.data_type = t.data_type  # keeps bfloat16 and friends as they were
    doc = t.doc_string
    t.Clear()
    t.CopyFrom(new)
    t.doc_string = doc


def _set_shape(vi: onnx.ValueInfoProto, shape: tuple) -> None:
    dims = vi.type.tensor_type.shape.dim
    for d, s in zip(dims, shape):
        if s is not None and d.HasField("dim_value"):
            d.dim_value = s


class _Surgery:
    """The :class:`~graphprune.rules.SurgeryContext` handed to rewriters."""

    def __init__(self, model, deps, removed, old_shapes, new_shapes):
        self.model = model
        self.view = deps.view
        self._removed = removed
        self._old = old_shapes
        self._new = new_shapes
        self._inits = {t.name: t for t in model.graph.initializer}
        self._uses: dict[str, int] = defaultdict(int)
        for node in model.graph.node:
            for i in node.input:
                self._uses[i] += 1

    def removed(self, tensor: str, axis: int) -> np.ndarray:
        return self._removed.get((tensor, axis), np.zeros(0, dtype=np.int64))

    def old_shape(self, tensor: str):
        return self._old.get(tensor)

    def new_shape(self, tensor: str):
        return self._new.get(tensor)

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                break
        node.attribute.append(onnx.helper.make_attribute(name, value))

    def set_constant_input(self, node: onnx.NodeProto, position: int, value: np.ndarray) -> None:
        while len(node.input) <= position:
            node.input.append("")
        name = node.input[position]
        shared = self._uses.get(name, 0) > 1 or name in self.view.graph_outputs
        if name in self._inits and not shared:
            self._inits[name].CopyFrom(numpy_helper.from_array(value, name))
            return
        new_name = _unique_name(self.model, f"{node.name or node.output[0]}/input{position}")
        tensor = numpy_helper.from_array(value, new_name)
        self.model.graph.initializer.append(tensor)
        self._inits[new_name] = self.model.graph.initializer[-1]
        if name:
            self._uses[name] -= 1
        node.input[position] = new_name
        self._uses[new_name] += 1


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        taken.update(node.output)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
