"""A read-only view of an ONNX graph for analysis: producers, consumers, constants, shapes.

Shapes come from ONNX shape inference run on a *light* copy of the model, in which large
float initializers keep their dims and type but no data: inference needs only the small
integer tensors (shapes, axes, pads), so the weights are never copied. Weights of a model
opened lazily are memory-mapped from their files when asked for (:mod:`graphprune.ir.weights`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from . import ortshapes, weights

_WEIGHT_PASSTHROUGH = frozenset({"Cast", "Identity", "DequantizeLinear"})
_CACHE_LIMIT = 4096  # elements; constants up to this size are cached by ModelView.value
_LIGHT_THRESHOLD = 1024  # elements; larger float tensors lose their data in the light copy

Shape = tuple  # tuple[int | None, ...]


@dataclass
class ModelView:
    """Indexes of one ONNX model's main graph. Build with :func:`view`."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    node_names: list[str]
    producer: dict[str, int]
    consumers: dict[str, list[tuple[int, int]]]
    initializers: dict[str, onnx.TensorProto]
    constant_nodes: dict[str, int]  # output name -> index of its Constant node
    graph_inputs: list[str]
    graph_outputs: list[str]
    shapes: dict[str, Shape]
    dtypes: dict[str, int]  # element types (TensorProto data types) where known
    folded: dict[str, np.ndarray]  # shape arithmetic that static shapes decide (see shapefold)
    opset: int
    dim_params: dict[str, tuple] = field(default_factory=dict)  # symbolic dim names (None where unnamed)
    _values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def is_constant(self, name: str) -> bool:
        """True for initializers and outputs of Constant nodes (not graph inputs)."""
        return (name in self.initializers and name not in self._input_set) or name in self.constant_nodes

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (or of shape arithmetic that static shapes decide,
        see :mod:`graphprune.ir.shapefold`), or None.

        Small tensors (shapes, axes, scalars) are cached; weights are read afresh each time
        so that analysis never holds a second copy of them (a lazy weight is a read-only
        memory map of its file).
        """
        if not self.is_constant(name):
            return self.folded.get(name)
        if name in self._values:
            return self._values[name]
        arr = _to_array(self.constant_tensor(name))
        if arr.size <= _CACHE_LIMIT:
            self._values[name] = arr
        return arr

    def weight_source(self, name: str) -> str | None:
        """The constant a tensor is computed from by per-element ops that keep every axis
        (Cast, Identity, DequantizeLinear: half-precision and quantized weights), or None.
        A constant is its own source."""
        seen = 0
        while not self.is_constant(name):
            i = self.producer.get(name)
            if i is None or seen > 8:
                return None
            node = self.nodes[i]
            if node.op_type not in _WEIGHT_PASSTHROUGH or node.domain not in ("", "ai.onnx") or not node.input:
                return None
            name, seen = node.input[0], seen + 1
        return name

    def weight_readers(self, name: str) -> list[tuple[int, int]]:
        """The (node index, input position) of the nodes that read a weight, past the Cast,
        Identity and DequantizeLinear nodes that only convert it (the Conv, not its Cast)."""
        out: list[tuple[int, int]] = []
        todo, seen = [name], set()
        while todo:
            t = todo.pop()
            for i, pos in self.consumers.get(t, []):
                node = self.nodes[i]
                if pos == 0 and node.op_type in _WEIGHT_PASSTHROUGH and node.domain in ("", "ai.onnx"):
                    if node.output[0] not in seen and len(seen) < 16:
                        seen.add(node.output[0])
                        todo.append(node.output[0])
                elif (i, pos) not in out:
                    out.append((i, pos))
        return out

    def is_weight(self, name: str) -> bool:
        """A constant, or computed from one as :meth:`weight_source` says."""
        return self.weight_source(name) is not None

    def constant_tensor(self, name: str) -> onnx.TensorProto:
        if name in self.initializers:
            return self.initializers[name]
        node = self.nodes[self.constant_nodes[name]]
        for attr in node.attribute:
            if attr.name == "value":
                return attr.t
        raise KeyError(f"Constant node for {name} has no tensor value")

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    @cached_property
    def _input_set(self) -> frozenset[str]:
        return frozenset(self.graph_inputs)


def view(model: onnx.ModelProto) -> ModelView:
    """Index ``model``'s main graph (subgraphs of If/Loop/Scan are opaque nodes)."""
    g = model.graph
    nodes = list(g.node)
    producer: dict[str, int] = {}
    consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    constant_nodes: dict[str, int] = {}
    names = []
    for i, node in enumerate(nodes):
        names.append(node.name or f"{node.op_type}_{i}")
        for out in node.output:
            if out:
                producer[out] = i
        for pos, inp in enumerate(node.input):
            if inp:
                consumers[inp].append((i, pos))
        for name in _subgraph_inputs(node):
            consumers[name].append((i, -1))
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            if any(a.name == "value" for a in node.attribute):
                constant_nodes[node.output[0]] = i
    initializers = {t.name: t for t in g.initializer}
    init_names = set(initializers)
    shapes, dtypes, folded, params = infer_with_folding(model)
    graph_inputs = [v.name for v in g.input if v.name not in init_names]
    mv = ModelView(
        model=model,
        nodes=nodes,
        node_names=names,
        producer=producer,
        consumers=dict(consumers),
        initializers=initializers,
        constant_nodes=constant_nodes,
        graph_inputs=graph_inputs,
        graph_outputs=[v.name for v in g.output],
        shapes=shapes,
        dtypes=dtypes,
        folded=folded,
        opset=opset_of(model),
        dim_params=params,
    )
    hints: dict = {}
    for _ in range(16):  # inference gave up at a Reshape whose shape is computed: tell it, infer again
        new = {**_reshape_hints(mv), **_ml_hints(mv)}
        if not new:
            break
        hints.update(new)
        mv.shapes, mv.dtypes, mv.folded, mv.dim_params = infer_with_folding(model, hints=hints)
        mv._values.clear()
    return mv


# ai.onnx.ml ops that keep their input's shape (ONNX has no shape inference for them, so an
# skl2onnx pipeline's Scaler hides every shape after it): op -> output element type (None: the input's)
_ML_SAME_SHAPE = {
    "Scaler": onnx.TensorProto.FLOAT,
    "Normalizer": onnx.TensorProto.FLOAT,
    "Imputer": None,
    "Binarizer": None,
}


def _ml_hints(mv: ModelView) -> dict[str, tuple[int, tuple]]:
    """Output types of the shape-keeping ``ai.onnx.ml`` ops that inference left without a shape."""
    hints = {}
    for node in mv.nodes:
        if node.domain != "ai.onnx.ml" or node.op_type not in _ML_SAME_SHAPE or not node.input or not node.output:
            continue
        x, y = node.input[0], node.output[0]
        xs, elem = mv.shapes.get(x), _ML_SAME_SHAPE[node.op_type] or mv.dtypes.get(x)
        if xs is None or elem is None or mv.shapes.get(y) is not None:
            continue
        names = mv.dim_params.get(x) or ()
        hints[y] = (
            elem,
            tuple(
                d if d is not None else names[k] if k < len(names) and names[k] and names[k] != "?" else f"{x}[{k}]"
                for k, d in enumerate(xs)
            ),
        )
    return hints


def _reshape_hints(mv: ModelView) -> dict[str, tuple[int, tuple]]:
    """Output types ``(element type, dims)`` of the Reshapes (and Tiles) whose shape inference left dims
    unknown that their shape vector, traced by :func:`~graphprune.ir.shapefold.shape_elements`,
    tells (``Concat(Shape(x)[0:2], [-1])`` of a dynamic ``x``, or a ``-1`` head count next to
    dynamic batch and sequence): a dim is its size, or the ``dim_param`` of the dim it is
    read from (or is left to), else a fresh name."""
    from .shapefold import shape_elements

    def symbol(t: str, k: int):
        size = mv.shapes[t][k]
        names = mv.dim_params.get(t) or ()
        name = names[k] if k < len(names) and names[k] and names[k] != "?" else f"{t}[{k}]"
        return (int(size), ()) if size is not None else (1, (name,))

    hints = {}
    for i, node in enumerate(mv.nodes):
        if node.op_type not in ("Reshape", "Tile") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        x, y = node.input[0], node.output[0]
        xs, ys = mv.shapes.get(x), mv.shapes.get(y)
        if xs is None or x not in mv.dtypes or (ys is not None and None not in ys):
            continue
        elements = shape_elements(mv, node.input[1], (i, 1))
        if elements is None or (ys is not None and len(ys) != len(elements)):
            continue
        if node.op_type == "Tile":  # repeats: an axis repeated a known number of times
            if len(elements) != len(xs):
                continue
            dims = [
                (symbol(x, j)[0] * e.value, symbol(x, j)[1]) if e.source is None and e.value is not None else None
                for j, e in enumerate(elements)
            ]
        else:
            dims = _reshape_dims(mv, x, elements, symbol)
        out = tuple(
            ys[j] if ys is not None and ys[j] is not None
            else f"{y}[{j}]" if d is None or (d[1] and d[0] != 1) or len(d[1]) > 1
            else d[1][0] if d[1] else d[0]
            for j, d in enumerate(dims)
        )  # fmt: skip
        named = mv.dim_params.get(y) or (None,) * len(out)
        if (
            ys is None
            or any(old is None and isinstance(new, int) for old, new in zip(ys, out))
            # a Tile whose inference named its dims afresh (unk__5) takes its input's names
            # (repeat_kv as Tile: its Reshape back to heads then matches the cache's dims)
            or (
                node.op_type == "Tile"
                and any(
                    old is None and isinstance(new, str) and not new.startswith(f"{y}[") and new != name
                    for old, new, name in zip(ys, out, named)
                )
            )
        ):
            hints[y] = (mv.dtypes[x], out)
    return hints


def _reshape_dims(mv: ModelView, x: str, elements, symbol) -> list:
    """The output sizes of a Reshape of ``x`` to ``elements``, as monomials (None if unknown)."""
    from .shapefold import monomial_product as _product
    from .shapefold import monomial_quotient as _quotient

    xs = mv.shapes[x]
    dims: list = []
    for j, el in enumerate(elements):
        if el.source is not None:
            dims.append(symbol(*el.source))
        elif el.value == 0 and j < len(xs):
            dims.append(symbol(x, j))
        elif el.value is not None and el.value > 0:
            dims.append((el.value, ()))
        else:
            dims.append(None)
    if dims.count(None) == 1:
        rest = _quotient(_product(symbol(x, k) for k in range(len(xs))), _product(d for d in dims if d is not None))
        dims[dims.index(None)] = rest if rest is not None and len(rest[1]) <= 1 else None
    return dims


def find_cycle(model: onnx.ModelProto) -> list[str] | None:
    """Node names around a cycle in the main graph (producer -> consumer), or None."""
    import networkx as nx

    g = nx.DiGraph()
    producer = {}
    for i, node in enumerate(model.graph.node):
        g.add_node(i)
        for out in node.output:
            if out in producer:
                return None  # a name written twice is another problem (not SSA), not a cycle
            if out:
                producer[out] = i
    for i, node in enumerate(model.graph.node):
        for inp in node.input:
            if inp in producer:
                g.add_edge(producer[inp], i)
    try:
        edges = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return None
    names = [model.graph.node[a].name or model.graph.node[a].op_type for a, _ in edges]
    return names + names[:1]


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large float tensors have dims and type but no data."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = model.graph
    lg = light.graph
    lg.name = g.name
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    for node in g.node:
        if node.op_type == "Constant" and _has_large_tensor_attr(node):
            new = lg.node.add()
            new.op_type, new.name, new.domain = node.op_type, node.name, node.domain
            new.output.extend(node.output)
            for attr in node.attribute:
                a = new.attribute.add()
                if attr.type == onnx.AttributeProto.TENSOR and _is_large(attr.t):
                    a.name, a.type = attr.name, attr.type
                    a.t.CopyFrom(_stub(attr.t))
                else:
                    a.CopyFrom(attr)
        else:
            lg.node.append(node)
    for t in g.initializer:
        if _is_large(t):
            lg.initializer.append(_stub(t))
        elif weights.is_lazy(t):  # inference may need the value of a small one (a shape, axes)
            small = math.prod(t.dims) <= _CACHE_LIMIT
            lg.initializer.append(numpy_helper.from_array(_to_array(t), t.name) if small else _stub(t))
        else:
            lg.initializer.append(t)
    return light


def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes of every tensor that ONNX shape inference can tell (None for unknown dims), with
    the hints :func:`view` gives it (computed Reshape shapes, shape-keeping ai.onnx.ml ops)."""
    return view(model).shapes


def fresh_name(taken: set[str], base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is not in ``taken``; it is added to it."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def infer_with_folding(model: onnx.ModelProto, rounds: int = 64, hints: dict | None = None):
    """Shapes, element types, folded shape values (see :mod:`graphprune.ir.shapefold`) and the
    names of symbolic dims (``dim_param``, None where a dim has no name).

    Shape inference runs on a light copy; where tensors are left without a shape, the shape
    arithmetic that static shapes decide is folded into constants of the light copy and
    inference runs again, up to ``rounds`` times. ``hints`` (tensor -> (element type, dims))
    are given to inference as declared types (see :func:`view`).
    """
    from .shapefold import fold

    light = light_copy(model)
    for name, (elem, dims) in (hints or {}).items():
        light.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, list(dims)))
    small = _small_constants(model)
    folded: dict[str, np.ndarray] = {}
    shapes, types, params = _infer(light, model)
    for _ in range(rounds):
        # Always fold once (rules read folded Resize sizes or Slice bounds even when every
        # shape is known); infer again only while tensors are left without shapes.
        new = fold(model, shapes, lambda name: folded.get(name, small.get(name)))
        fresh = {k: v for k, v in new.items() if k not in folded}
        folded.update(fresh)
        if not fresh or not any(o not in shapes or None in shapes[o] for n in model.graph.node for o in n.output if o):
            break
        _substitute(light, fresh)
        shapes, types, params = _infer(light, model)
    return shapes, types, folded, params


def _small_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {}
    for t in model.graph.initializer:
        if math.prod(t.dims) <= 64 and (t.data_location != onnx.TensorProto.EXTERNAL or weights.is_lazy(t)):
            out[t.name] = _to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and math.prod(a.t.dims) <= 64:
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _substitute(light: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    """Make folded tensors constants of the light copy: their producers become Constant nodes."""
    g = light.graph
    for i, node in enumerate(g.node):
        if len(node.output) == 1 and node.output[0] in values:
            const = onnx.helper.make_node(
                "Constant", [], [node.output[0]], value=numpy_helper.from_array(values[node.output[0]])
            )
            g.node[i].CopyFrom(const)


def _infer(light: onnx.ModelProto, model: onnx.ModelProto):
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference fails on exotic graphs: fall back to the declared shapes
        inferred = light
    inferred = ortshapes.complete(inferred, light)  # com.microsoft ops: onnxruntime's symbolic inference
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    params: dict[str, tuple] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        s = _shape_of_value_info(vi)
        if s is not None:
            shapes[vi.name] = s
            names = tuple(d.dim_param or None for d in vi.type.tensor_type.shape.dim)
            if any(names):
                params[vi.name] = names
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    shapes[node.output[0]] = tuple(int(d) for d in attr.t.dims)
                    types[node.output[0]] = attr.t.data_type
    return shapes, types, params


def _to_array(t: onnx.TensorProto) -> np.ndarray:
    """A tensor's value: a read-only memory map for a large lazy tensor (a plain array for a
    small one: shapes and axes are computed with), else read from the proto."""
    if not weights.is_lazy(t):
        return numpy_helper.to_array(t)
    arr = weights.array(t)
    return np.array(arr) if arr.size <= _CACHE_LIMIT else arr


def _shape_of_value_info(vi: onnx.ValueInfoProto) -> Shape | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(declared_dim(d) for d in t.tensor_type.shape.dim)


def declared_dim(d: onnx.TensorShapeProto.Dimension) -> int | None:
    """The size a declared dim gives, or None for a symbolic or missing one. Some exporters
    (paddle2onnx) write a dynamic dim as ``dim_value: -1``: that is not a size either."""
    return d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None


def _is_large(t: onnx.TensorProto) -> bool:
    if t.data_type not in weights.FLOAT_TYPES:
        return False
    return math.prod(t.dims) > _LIGHT_THRESHOLD


def _has_large_tensor_attr(node: onnx.NodeProto) -> bool:
    return any(a.type == onnx.AttributeProto.TENSOR and _is_large(a.t) for a in node.attribute)


def _stub(t: onnx.TensorProto) -> onnx.TensorProto:
    s = onnx.TensorProto()
    s.name = t.name
    s.data_type = t.data_type
    s.dims.extend(t.dims)
    return s


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the outer scope (If/Loop/Scan bodies)."""
    names: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs = [attr.g]
        elif attr.type in (onnx.AttributeProto.GRAPHS, onnx.AttributeProto.UNDEFINED):
            graphs = list(attr.graphs)
        else:  # most attributes: no graph (reading .graphs of every one costs a wrapper each)
            continue
        for sub in graphs:
            local = {v.name for v in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                local.update(n.output)
            for n in sub.node:
                names.update(i for i in n.input if i and i not in local)
                names.update(i for i in _subgraph_inputs(n) if i not in local)
    return names
