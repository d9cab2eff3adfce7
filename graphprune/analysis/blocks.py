"""Residual blocks ``y = x + f(x)``: where they are, what they cost, and how to remove them.

Rules:
1. A block is an ``Add`` whose two inputs are ``x`` and ``f(x)``, where every path from the
   graph inputs to ``f(x)`` goes through ``x`` (``x``'s producer dominates ``f(x)``'s in the
   data-flow graph), ``f`` reads ``x`` and constants only, no tensor of ``f`` is read outside
   ``f`` or is a graph output, ``f(x)`` is read only by the ``Add``, ``x``, ``f(x)`` and ``y``
   have the same known shape (no broadcasting) and ``f`` reads at least one weight (a float
   constant of more than one element). A projection shortcut (``conv(x) + f(x)``) is no block:
   its ``x`` side is not the tensor ``f`` starts from.
2. Shape arithmetic that static shapes decide (``Shape -> Gather -> ...``, see
   :mod:`graphprune.ir.shapefold`) counts as constant: it does not make a path into ``f``.
3. Dominators are computed once for the whole graph (``networkx.immediate_dominators``) and
   numbered on the dominator tree, so each dominance test is O(1); ``f``'s nodes are found by a
   backward walk from ``f(x)`` that stops at ``x``: discovery is linear in the graph for
   blocks that do not nest.
4. Removal: consumers of ``y`` read ``x``; a graph output ``y`` (or one a subgraph reads)
   keeps its name through an ``Identity(x)`` that takes the ``Add``'s place; ``f``'s nodes,
   the ``Add``, and the nodes and initializers that only they used are dropped. Every other
   name stays.
5. The exactness reference of a removal is the original with ``f(x)`` multiplied by zero at
   the ``Add`` (an inserted ``Mul``), built without copying weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ..ir.graph import ModelView, view
from ..ir.weights import FLOAT_TYPES, set_field
from ..objectives.cost import node_macs

_SRC = "graphprune:source"


@dataclass(frozen=True)
class Block:
    """One removable residual block ``y = x + f(x)``."""

    id: int
    add: str  # name of the Add node (``Add_<index>`` when it has none)
    add_index: int
    x: str  # the shortcut: kept when the block is removed
    fx: str  # f's output, the Add's other input
    y: str  # the Add's output
    nodes: tuple[int, ...]  # indices of f's nodes (computing f(x) from x), in graph order
    params: int  # elements of the float constants only f reads (what removal drops)
    macs: int  # MACs of f and the Add (what removal saves)
    dtype: int = onnx.TensorProto.FLOAT  # element type of x and y

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "add": self.add,
            "x": self.x,
            "y": self.y,
            "fx": self.fx,
            "nodes": len(self.nodes),
            "params": self.params,
            "macs": self.macs,
        }


def find_blocks(model: onnx.ModelProto, mv: ModelView | None = None) -> list[Block]:
    """Every removable residual block of ``model``, in graph order (see the module rules)."""
    import networkx as nx

    mv = mv or view(model)
    static = _static_nodes(mv)

    def dynamic(t: str) -> bool:
        if not t or t in mv.folded or mv.is_constant(t):
            return False
        if t in mv.producer:
            return mv.producer[t] not in static
        return t in mv.graph_inputs

    def vertex(t: str):
        return mv.producer.get(t, ("input", t))

    g = nx.DiGraph()
    g.add_node(_SRC)
    for t in mv.graph_inputs:
        g.add_edge(_SRC, ("input", t))
    for i, node in enumerate(mv.nodes):
        if i in static:
            continue
        g.add_node(i)
        reads = [t for t in node.input if dynamic(t)]
        if not reads:
            g.add_edge(_SRC, i)  # reads nothing dynamic itself but a subgraph does, or a random op
    for t, uses in mv.consumers.items():
        if not dynamic(t):
            continue
        for i, _ in uses:
            if i not in static:
                g.add_edge(vertex(t), i)
    idom = nx.immediate_dominators(g, _SRC)
    tin, tout = _tree_numbers(idom, _SRC)

    def dominates(a, b) -> bool:
        return a in tin and b in tin and tin[a] <= tin[b] and tout[b] <= tout[a]

    outputs = set(mv.graph_outputs)
    blocks: list[Block] = []
    counted: dict | None = None  # shapes per sample, made when the first block needs them
    for i, node in enumerate(mv.nodes):
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or i in static or len(node.input) != 2:
            continue
        a, b = node.input
        if not (dynamic(a) and dynamic(b)) or a == b:
            continue
        for x, fx in ((a, b), (b, a)):
            p, q = vertex(x), vertex(fx)
            if not isinstance(q, int) or p == q or not dominates(p, q):
                continue
            f_nodes = _body(g, p, q)
            if f_nodes is not None:
                f_nodes = _removable(mv, i, x, fx, f_nodes, static, outputs, dynamic, vertex)
            if f_nodes is None:
                continue
            params, largest = _exclusive_params(mv, f_nodes)
            if largest <= 1:
                continue  # no weight: an Add(x, relu(x)) is not a layer
            if counted is None:  # a dynamic model's blocks are counted per sample (graphprune.ir.input_sizes)
                from ..ir.input_sizes import count_shapes, resolve

                counted = count_shapes(mv.model, resolve(mv.model)) or mv.shapes
            macs = sum(node_macs(mv.nodes[k], counted) or 0 for k in (*f_nodes, i))
            dtype = mv.dtypes.get(x, onnx.TensorProto.FLOAT)
            blocks.append(Block(len(blocks), mv.node_names[i], i, x, fx, node.output[0], f_nodes, params, macs, dtype))
            break
    return blocks


def _static_nodes(mv: ModelView) -> set[int]:
    """Nodes that read no dynamic tensor (constants and what is computed from them only)."""
    static: set[int] = set()
    inputs = set(mv.graph_inputs)
    for i, node in enumerate(mv.nodes):
        if all(o in mv.folded for o in node.output if o) and any(node.output):
            static.add(i)
            continue
        dyn = False
        for t in node.input:
            if not t or t in mv.folded or mv.is_constant(t):
                continue
            if t in inputs or (t in mv.producer and mv.producer[t] not in static):
                dyn = True
                break
        if not dyn and not _reads_outer(node) and node.op_type not in _RANDOM_OPS:
            static.add(i)
    return static


_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})


def _reads_outer(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _tree_numbers(idom: dict, root) -> tuple[dict, dict]:
    """Entry and exit times of a depth-first walk of the dominator tree (networkx before 3.5
    maps the root to itself, later versions leave it out)."""
    children: dict = {}
    for v, d in idom.items():
        if v != d:
            children.setdefault(d, []).append(v)
    tin: dict = {}
    tout: dict = {}
    clock = 0
    stack = [(root, False)]
    while stack:
        v, done = stack.pop()
        if done:
            tout[v] = clock
            clock += 1
            continue
        tin[v] = clock
        clock += 1
        stack.append((v, True))
        stack.extend((c, False) for c in children.get(v, ()))
    return tin, tout


def _body(g, p, q) -> tuple[int, ...] | None:
    """Nodes on the paths from ``p`` to ``q`` (``q`` included, ``p`` not): a backward walk
    from ``q`` that stops at ``p``. ``p`` dominates ``q``, so the walk never leaves f."""
    seen = {q}
    stack = [q]
    while stack:
        v = stack.pop()
        for u in g.predecessors(v):
            if u == p or u in seen:
                continue
            if u == _SRC or not isinstance(u, int):
                return None  # cannot happen when p dominates q; kept as a guard
            seen.add(u)
            stack.append(u)
    return tuple(sorted(seen))


def _removable(
    mv: ModelView, add: int, x: str, fx: str, f_nodes, static: set[int], outputs: set[str], dynamic, vertex
) -> tuple[int, ...] | None:
    """f's nodes plus the shape readers that only f needs (a ``Shape`` of a tensor of f whose
    value static shapes decide), or None when the block is not removable (module rule 1)."""
    inside = set(f_nodes)
    p = vertex(x)
    if fx in outputs or [i for i, _ in mv.consumers.get(fx, [])] != [add]:
        return None
    for k in f_nodes:
        for t in mv.nodes[k].input:
            if dynamic(t) and vertex(t) == p and t != x:
                return None  # f reads another output of x's producer
    work = list(f_nodes)
    while work:
        k = work.pop()
        for o in mv.nodes[k].output:
            if not o or o == fx:
                continue
            if o in outputs:
                return None
            for c, _ in mv.consumers.get(o, []):
                if c in inside:
                    continue
                if c not in static:
                    return None  # a tensor of f is used outside f
                inside.add(c)  # a shape reader: goes with f if nothing outside needs it
                work.append(c)
    shapes = [mv.shapes.get(t) for t in (x, fx, mv.nodes[add].output[0])]
    if any(s is None for s in shapes) or not shapes[0] == shapes[1] == shapes[2]:
        return None
    if mv.dtypes.get(x) != mv.dtypes.get(fx):
        return None
    return tuple(sorted(inside))


def _exclusive_params(mv: ModelView, f_nodes: Sequence[int]) -> tuple[int, int]:
    """Elements of the float constants that only f reads (what removal drops, counted as
    :func:`graphprune.objectives.cost.count_params` does), and the size of the largest of them."""
    inside = set(f_nodes)
    total = largest = 0
    seen: set[str] = set()
    for k in f_nodes:
        for t in mv.nodes[k].input:
            if not t or t in seen:
                continue
            seen.add(t)
            src = mv.weight_source(t)
            if src is None or mv.dtypes.get(src) not in FLOAT_TYPES:
                continue
            if any(i not in inside for i, _ in mv.consumers.get(t, [])):
                continue
            n = int(np.prod(mv.shapes.get(src, (0,)), dtype=np.int64))
            total += n
            largest = max(largest, n)
    return total, largest


# --------------------------------------------------------------------------- removal


def effective(blocks: Iterable[Block]) -> list[Block]:
    """``blocks`` without those inside another one (removing the outer block removes them)."""
    blocks = list(blocks)
    covered = {k for b in blocks for k in b.nodes}
    return [b for b in blocks if b.add_index not in covered]


def remove_blocks(model: onnx.ModelProto, blocks: Iterable[Block]) -> onnx.ModelProto:
    """A copy of ``model`` with each block's ``y`` replaced by its ``x`` (see the module rules).

    The blocks must come from :func:`find_blocks` on this very model. Weights are copied
    once, and only those that stay.
    """
    blocks = effective(blocks)
    g = model.graph
    outputs = {o.name for o in g.output}
    read_by_subgraphs = {t for n in g.node for t in _outer_reads(n)}
    dropped = {k for b in blocks for k in b.nodes} | {b.add_index for b in blocks}
    rename: dict[str, str] = {}
    identities: dict[int, onnx.NodeProto] = {}
    for b in sorted(blocks, key=lambda b: b.add_index):
        if b.y in outputs or b.y in read_by_subgraphs:  # the name must stay: an Identity keeps it
            identities[b.add_index] = onnx.helper.make_node("Identity", [b.x], [b.y], name=b.add)
        else:
            rename[b.y] = b.x

    def resolve(t: str) -> str:
        while t in rename:
            t = rename[t]
        return t

    nodes: list[onnx.NodeProto] = []
    origin: list[int] = []  # index in the original of each new node
    for i, node in enumerate(g.node):
        if i in identities:
            node = identities[i]
        elif i in dropped:
            continue
        if any(t in rename for t in node.input):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for pos, t in enumerate(new.input):
                new.input[pos] = resolve(t)
            node = new
        nodes.append(node)
        origin.append(i)
    # Nodes only the removed blocks needed go too; nodes that were dead already are not ours.
    was_live = _live(g.node, outputs)
    now_live = _live(nodes, outputs)
    kept_nodes = [n for k, n in enumerate(nodes) if k in now_live or origin[k] not in was_live]
    used = {t for n in kept_nodes for t in n.input} | outputs
    for n in kept_nodes:
        used |= _outer_reads(n)
    before_used = {t for n in g.node for t in n.input} | outputs
    for n in g.node:
        before_used |= _outer_reads(n)
    produced = {o for n in kept_nodes for o in n.output}

    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            set_field(out, field, value)
    for field, value in g.ListFields():
        if field.name not in ("node", "initializer", "value_info", "input"):
            set_field(out.graph, field, value)
    out.graph.node.extend(kept_nodes)
    dropped_inits = set()
    for t in g.initializer:
        if t.name in used or t.name not in before_used:
            out.graph.initializer.append(t)
        else:
            dropped_inits.add(t.name)
    out.graph.input.extend(v for v in g.input if v.name not in dropped_inits)
    out.graph.value_info.extend(v for v in g.value_info if v.name in produced)
    return out


def _live(nodes: Sequence[onnx.NodeProto], outputs: set[str]) -> set[int]:
    """Positions of the nodes (in topological order) that the graph outputs depend on."""
    needed = set(outputs)
    live: set[int] = set()
    for k in range(len(nodes) - 1, -1, -1):
        n = nodes[k]
        if any(o in needed for o in n.output) or not any(n.output):
            live.add(k)
            needed.update(t for t in n.input if t)
            needed |= _outer_reads(n)
    return live


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    from ..ir.graph import _subgraph_inputs

    return _subgraph_inputs(node) if _reads_outer(node) else set()
