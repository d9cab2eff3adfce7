"""A self-contained HTML page of a model's channel dependencies (``graphprune inspect --html``).

The page has three parts: a summary (groups, prunable channels, why groups are blocked),
a drawing of the op graph whose nodes and edges are coloured by the group their channels
belong to, and the table of groups. Everything (CSS, JS, data) is inline: the page works
offline. The drawing is made in the browser by ``html_view.js`` from a JSON description
written here; the layout is computed here, once.

Rules:
1. Legible at any size. A graph of up to :data:`FLAT_MAX` drawn nodes is one view. A larger
   one is a tree of views: exporter scopes taken from node names (``/layers.3/mlp/...``)
   are boxes; a view that still has more than :data:`MAX_ITEMS` items is cut into
   consecutive chunks of about :data:`CHUNK` items, at the places the fewest tensors cross
   (between residual blocks, between layers), recursively. A box opens its view; the
   tensors that enter or leave a view are drawn as ports. Every view is small, so its
   text stays readable when it fits the pane.
2. Each view has a layered layout computed here (no graphviz): layers by longest path in
   graph order (an edge against it, possible between scope boxes, does not count), long
   edges pass through one waypoint per layer they cross (shared by every reader of the
   tensor), waypoints and boxes are ordered by barycenter sweeps and placed by isotonic
   regression towards their neighbours. Constant nodes are not drawn.
3. Groups are told apart by more than hue: a box of one group carries the group's number,
   every tooltip names its groups, blocked groups are hatched; a scope box is outlined in
   the group of the channels that leave it.
4. The table of groups sorts by size, unit, status and reason; a group that is one
   parameter vector (a single constant member) is folded under the group of the node that
   reads it.
5. Size stays proportional to the graph: node and tensor names once each (a tensor named
   after its producer is stored as the suffix), coordinates as integers.
"""

from __future__ import annotations

import heapq
import html
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources

from ..analysis.dependency import DependencyGraph
from .inspection import describe

FLAT_MAX = 250  # drawn nodes; up to this the graph is one view
FLAT_BLOCK = 60  # nodes; a scope box this small shows its nodes, not its sub-scopes
MAX_ITEMS = 80  # items of a view above which it is cut into chunks
CHUNK = 32  # items per chunk, about
MEMBERS_SHOWN = 30  # member tensors listed per group in the table
REASONS_SHOWN = 4  # reasons listed per blocked group before "more"

BOX_H = 22
LAYER_H = 42
MARGIN = 24
NODE_GAP = 14
WAY_GAP = 7
WAY_W = 2
MAX_WAYPOINTS = 40000  # per view; above this long edges are drawn as direct curves

# item kinds in a view (the JS reads the same numbers)
OP, BLOCK, PORT_IN, PORT_OUT, INPUT, OUTPUT = range(6)


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _text_width(*parts: str) -> int:
    """Pixel width of a box whose text is ``parts`` (the first at 11 px, the others at 10 px)."""
    main, rest = parts[0], [p for p in parts[1:] if p]
    return max(44, int(6.6 * len(main) + sum(5.8 * (len(p) + 1) for p in rest)) + 16)


class _Index:
    """Which groups own which dims of which tensors."""

    def __init__(self, deps: DependencyGraph):
        self.deps = deps
        self.by_tensor: dict[str, dict[int, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
        self.prunable = {g.id: g.prunable for g in deps.groups}
        self._all: dict[str, set[int]] = {}
        for g in deps.groups:
            for m in g.members:
                first = int(m.indices.min()) if m.indices.size else 0
                self.by_tensor[m.tensor][m.axis].append((first, g.id, max(int(m.indices.size), 1)))
        for axes in self.by_tensor.values():
            for entries in axes.values():
                entries.sort()

    def all_groups(self, tensor: str) -> set[int]:
        got = self._all.get(tensor)
        if got is None:
            axes = self.by_tensor.get(tensor)
            got = self._all[tensor] = {gid for entries in axes.values() for _, gid, _ in entries} if axes else set()
        return got

    def channel_axis(self, tensor: str) -> int:
        """Axis 1, or the last axis of a 1-D/2-D/3-D tensor; when no group owns it
        (channels-last layouts), the last axis a group owns; and when only blocked groups own
        it while a prunable group owns another axis (NHWC in swin: H blocked, C prunable),
        the last axis a prunable group owns."""
        shape = self.deps.view.shapes.get(tensor)
        preferred = len(shape) - 1 if shape and len(shape) <= 3 else 1
        axes = self.by_tensor.get(tensor)
        if not axes:
            return preferred
        if preferred not in axes:
            return max(axes)

        def prunable(axis: int) -> bool:
            return any(self.prunable[gid] for _, gid, _ in axes[axis])

        if not prunable(preferred):
            others = [a for a in axes if a != preferred and prunable(a)]
            if others:
                return max(others)
        return preferred

    def channel_groups(self, tensor: str) -> list[tuple[int, int]]:
        """(group, channels) of the tensor's channel axis, in channel order."""
        axes = self.by_tensor.get(tensor)
        axis = self.channel_axis(tensor)
        if not axes or axis not in axes:
            return []
        seen: dict[int, int] = {}
        for _, gid, n in axes[axis]:
            seen[gid] = seen.get(gid, 0) + n
        return list(seen.items())


# --------------------------------------------------------------------------------------
# The views: which items each one draws


@dataclass
class _Item:
    kind: int
    ref: int  # node, child view, or tensor
    order: float  # graph order, for layers
    width: int = 0
    layer: int = 0


@dataclass
class _Route:
    src: int
    dsts: list[int] = field(default_factory=list)
    tensor: int = -1


@dataclass
class _View:
    label: str
    parent: int
    depth: int
    children: list[tuple[int, int]] = field(default_factory=list)  # (OP, node) or (BLOCK, view)
    items: list[_Item] = field(default_factory=list)
    routes: list[_Route] = field(default_factory=list)
    nodes: int = 0  # drawn nodes inside
    first: int = 0  # first node inside, in graph order
    out_groups: list[int] = field(default_factory=list)
    width: int = 0
    height: int = 0
    xs: list[int] = field(default_factory=list)
    ways: list[list[int]] = field(default_factory=list)


class _Graph:
    """The drawn nodes in graph order, their tensors, and the tree of views over them."""

    def __init__(self, deps: DependencyGraph, idx: _Index):
        mv = deps.view
        self.mv, self.idx = mv, idx
        drawn = [i for i, n in enumerate(mv.nodes) if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx"))]
        self.order = _graph_order(mv, drawn)  # node index -> model node index
        self.rank = {i: k for k, i in enumerate(self.order)}
        constants = set(mv.initializers) | set(mv.constant_nodes)
        # tensors: graph inputs first, then outputs of drawn nodes in order
        self.tensors: list[str] = []
        self.tid: dict[str, int] = {}
        self.producer: list[int] = []  # node, or -1 for a graph input
        for t in mv.graph_inputs:
            if t not in constants and t not in self.tid:
                self.tid[t] = len(self.tensors)
                self.tensors.append(t)
                self.producer.append(-1)
        for k, i in enumerate(self.order):
            for t in mv.nodes[i].output:
                if t and t not in self.tid:
                    self.tid[t] = len(self.tensors)
                    self.tensors.append(t)
                    self.producer.append(k)
        self.readers: list[list[int]] = [[] for _ in self.tensors]  # nodes; -1: a graph output
        for k, i in enumerate(self.order):
            seen = set()
            for t in mv.nodes[i].input:
                j = self.tid.get(t)
                if j is not None and j not in seen:
                    seen.add(j)
                    self.readers[j].append(k)
        for t in mv.graph_outputs:
            j = self.tid.get(t)
            if j is not None:
                self.readers[j].append(-1)
        self.views: list[_View] = [_View("model", -1, 0)]
        self.leaf: list[int] = [0] * len(self.order)  # node -> the view it is drawn in
        if len(self.order) <= FLAT_MAX:
            self.views[0].children = [(OP, k) for k in range(len(self.order))]
        else:
            self._scopes()
        self._chunk_all()
        self._compact()
        self._count(0)

    def _compact(self) -> None:
        """Keep only the views reachable from the model's, numbered depth first."""
        keep, todo = [], [0]
        while todo:
            v = todo.pop()
            keep.append(v)
            todo.extend(reversed([ref for kind, ref in self.views[v].children if kind == BLOCK]))
        new = {v: j for j, v in enumerate(keep)}
        views = [self.views[v] for v in keep]
        for view in views:
            view.parent = new.get(view.parent, -1)
            view.children = [(kind, new[ref] if kind == BLOCK else ref) for kind, ref in view.children]
        self.views = views

    # -- the tree

    def _scopes(self) -> None:
        """Views from exporter scopes: ``/a/b.1/c/Op`` is drawn in view a > b.1 > c."""
        child: dict[tuple[int, str], int] = {}
        scopes: list[list[str]] = []
        for i in self.order:
            name = self.mv.node_names[i]
            scopes.append([p for p in name.split("/")[1:-1] if p] if name.startswith("/") else [])
        # A node without a scope (shape arithmetic the exporter leaves unnamed) joins the
        # deepest scope shared by its readers.
        for k in range(len(self.order) - 1, -1, -1):
            if self.mv.node_names[self.order[k]].startswith("/"):
                continue
            readers = [scopes[r] for t in self._outputs[k] for r in self.readers[t] if r >= 0]
            if readers:
                common = readers[0]
                for other in readers[1:]:
                    n = 0
                    while n < len(common) and n < len(other) and common[n] == other[n]:
                        n += 1
                    common = common[:n]
                scopes[k] = common
        for k, parts in enumerate(scopes):
            v = 0
            for p in parts:
                key = (v, p)
                if key not in child:
                    child[key] = len(self.views)
                    self.views.append(_View(p, v, self.views[v].depth + 1))
                    self.views[v].children.append((BLOCK, child[key]))
                v = child[key]
            self.views[v].children.append((OP, k))
        self._simplify(0)
        self._flatten(0)

    def _flatten(self, v: int) -> None:
        """A box of at most :data:`FLAT_BLOCK` nodes draws them all at once (one decoder layer is one view)."""
        for kind, ref in self.views[v].children:
            if kind != BLOCK:
                continue
            inside = list(self._nodes_of((BLOCK, ref)))
            if len(inside) <= FLAT_BLOCK:
                self.views[ref].children = [(OP, k) for k in inside]
            else:
                self._flatten(ref)

    def _simplify(self, v: int) -> None:
        """A box of one node is that node; a box whose only child is a box takes its children."""
        view = self.views[v]
        out = []
        for kind, ref in view.children:
            if kind == BLOCK:
                self._simplify(ref)
                sub = self.views[ref]
                while len(sub.children) == 1 and sub.children[0][0] == BLOCK:
                    inner = self.views[sub.children[0][1]]
                    sub.label, sub.children = f"{sub.label}/{inner.label}", inner.children
                    inner.children = []
                if len(sub.children) == 1:
                    out.append(sub.children[0])
                    sub.children = []
                    continue
                for c in sub.children:
                    if c[0] == BLOCK:
                        self.views[c[1]].parent = ref
            out.append((kind, ref))
        view.children = out

    def _first(self, c: tuple[int, int]) -> int:
        return c[1] if c[0] == OP else self.views[c[1]].first

    def _count(self, v: int) -> None:
        """Nodes, first node, depth and the leaf view of every node, from the children."""
        view = self.views[v]
        view.nodes, firsts = 0, []
        for kind, ref in view.children:
            if kind == OP:
                view.nodes += 1
                self.leaf[ref] = v
                firsts.append(ref)
            else:
                self.views[ref].parent, self.views[ref].depth = v, view.depth + 1
                self._count(ref)
                view.nodes += self.views[ref].nodes
                firsts.append(self.views[ref].first)
        view.first = min(firsts, default=0)
        view.children.sort(key=self._first)

    def _chunk_all(self) -> None:
        todo = [0]
        while todo:
            v = todo.pop()
            self._count(v)
            if len(self.views[v].children) > MAX_ITEMS:
                self._chunk(v)
            todo.extend(ref for kind, ref in self.views[v].children if kind == BLOCK)

    def _chunk(self, v: int) -> None:
        """Cut the children of ``v`` into consecutive chunks at the boundaries the fewest tensors cross."""
        view = self.views[v]
        kids = view.children
        n = len(kids)
        pos_of_node: dict[int, int] = {}
        for p, c in enumerate(kids):
            for k in self._nodes_of(c):
                pos_of_node[k] = p
        diff = [0] * (n + 1)
        for p, c in enumerate(kids):
            for k in self._nodes_of(c):
                for t in self._outputs[k]:
                    last = max((pos_of_node.get(r, -1) for r in self.readers[t]), default=-1)
                    if last > p:
                        diff[p] += 1
                        diff[last] -= 1
        crossing, run = [], 0
        for p in range(n):
            run += diff[p]
            crossing.append(run)  # tensors crossing the boundary after child p
        chunks: list[list[tuple[int, int]]] = []
        start = 0
        while start < n:
            if n - start <= CHUNK * 3 // 2:
                end = n
            else:
                lo, hi = start + CHUNK // 2, min(n - 1, start + CHUNK * 3 // 2)
                best = min(range(lo, hi), key=lambda b: (crossing[b], abs(b - start - CHUNK)))
                end = best + 1
            chunks.append(kids[start:end])
            start = end
        view.children = []
        for part in chunks:
            if len(part) == 1:
                view.children.append(part[0])
                continue
            sub = len(self.views)
            label = f"{self._name(part[0])} – {self._name(part[-1])}"
            self.views.append(_View(label, v, view.depth + 1, children=part))
            for c in part:
                if c[0] == BLOCK:
                    self.views[c[1]].parent = sub
            view.children.append((BLOCK, sub))
        self._count(v)
        if len(view.children) > MAX_ITEMS:
            self._chunk(v)

    def _name(self, c: tuple[int, int]) -> str:
        if c[0] == BLOCK:
            return self.views[c[1]].label.split(" – ")[0]
        name = self.mv.node_names[self.order[c[1]]]
        return name.rsplit("/", 1)[-1] or self.mv.nodes[self.order[c[1]]].op_type

    def _nodes_of(self, c: tuple[int, int]):
        if c[0] == OP:
            yield c[1]
            return
        for cc in self.views[c[1]].children:
            yield from self._nodes_of(cc)

    @property
    def _outputs(self) -> list[list[int]]:
        if not hasattr(self, "_outs"):
            self._outs: list[list[int]] = [[] for _ in self.order]
            for t, p in enumerate(self.producer):
                if p >= 0:
                    self._outs[p].append(t)
        return self._outs


def _graph_order(mv, drawn: list[int]) -> list[int]:
    """``drawn`` in a topological order, as near the file's order as possible."""
    drawn_set = set(drawn)
    deps: dict[int, set[int]] = {i: set() for i in drawn}
    readers: dict[int, list[int]] = defaultdict(list)
    for i in drawn:
        for t in mv.nodes[i].input:
            p = mv.producer.get(t)
            if p is not None and p in drawn_set and p != i and p not in deps[i]:
                deps[i].add(p)
                readers[p].append(i)
    missing = {i: len(d) for i, d in deps.items()}
    ready = [i for i in drawn if not missing[i]]
    heapq.heapify(ready)
    out = []
    while ready:
        i = heapq.heappop(ready)
        out.append(i)
        for r in readers[i]:
            missing[r] -= 1
            if not missing[r]:
                heapq.heappush(ready, r)
    if len(out) < len(drawn):  # a cycle: the file's order for what is left
        done = set(out)
        out += [i for i in drawn if i not in done]
    return out


def _pava(target: list[float], weight: list[float]) -> list[float]:
    """The non-decreasing sequence nearest to ``target`` in weighted least squares."""
    blocks: list[list[float]] = []  # [weight, weighted sum, count]
    for t, w in zip(target, weight):
        blocks.append([w, w * t, 1])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] > blocks[-1][1] / blocks[-1][0]:
            w2, s2, c2 = blocks.pop()
            blocks[-1][0] += w2
            blocks[-1][1] += s2
            blocks[-1][2] += c2
    out: list[float] = []
    for w, s, c in blocks:
        out.extend([s / w] * int(c))
    return out


class _Layout:
    """Layer assignment, waypoints, ordering and x placement of boxes and routes."""

    def __init__(self, boxes: list[_Item], routes: list[_Route]):
        self.boxes, self.routes = boxes, routes
        nb = len(boxes)
        self.n_layers = 1 + max((b.layer for b in boxes), default=0)
        span = sum(max(boxes[d].layer for d in r.dsts) - boxes[r.src].layer - 1 for r in routes)
        self.waypoints = span <= MAX_WAYPOINTS
        self.layer_of: list[int] = [b.layer for b in boxes]
        self.width: list[float] = [float(b.width) for b in boxes]
        self.chain: list[dict[int, int]] = []
        up: list[set[int]] = [set() for _ in range(nb)]
        down: list[set[int]] = [set() for _ in range(nb)]

        def item(layer: int) -> int:
            self.layer_of.append(layer)
            self.width.append(WAY_W)
            up.append(set())
            down.append(set())
            return len(self.layer_of) - 1

        def link(a: int, b: int) -> None:
            down[a].add(b)
            up[b].add(a)

        for r in routes:
            ls = boxes[r.src].layer
            chain: dict[int, int] = {}
            if self.waypoints:
                last = max(boxes[d].layer for d in r.dsts)
                for layer in range(ls + 1, last):
                    chain[layer] = item(layer)
                    link(chain.get(layer - 1, r.src), chain[layer])
            for d in r.dsts:
                link(chain.get(boxes[d].layer - 1, r.src), d)
            self.chain.append(chain)
        self.up, self.down = up, down
        self.rows: list[list[int]] = [[] for _ in range(self.n_layers)]
        # First order: sources in graph order, waypoints right after the box they leave.
        rank = {v: float(k) for k, v in enumerate(sorted(range(nb), key=lambda v: boxes[v].order))}
        start: list[float] = [rank[v] for v in range(nb)] + [0.0] * (len(self.layer_of) - nb)
        for r, chain in zip(routes, self.chain):
            for k, w in enumerate(chain.values()):
                start[w] = rank[r.src] + 0.5 + 1e-6 * k
        for v in sorted(range(len(self.layer_of)), key=lambda v: start[v]):
            self.rows[self.layer_of[v]].append(v)
        self._order()
        self._place()

    def _order(self, sweeps: int = 6) -> None:
        pos = [0.0] * len(self.layer_of)
        for row in self.rows:
            for k, v in enumerate(row):
                pos[v] = float(k)
        for s in range(sweeps):
            downward = s % 2 == 0
            layers = range(1, self.n_layers) if downward else range(self.n_layers - 2, -1, -1)
            nbrs = self.up if downward else self.down
            for layer in layers:
                row = self.rows[layer]

                def key(v: int, nbrs=nbrs) -> tuple[float, float]:
                    n = nbrs[v]
                    return (sum(pos[u] for u in n) / len(n) if n else pos[v], pos[v])

                row.sort(key=key)
                for k, v in enumerate(row):
                    pos[v] = float(k)

    def _sep(self, a: int, b: int) -> float:
        gap = NODE_GAP if a < len(self.boxes) and b < len(self.boxes) else WAY_GAP
        return (self.width[a] + self.width[b]) / 2 + gap

    def _place(self, passes: int = 10) -> None:
        x = [0.0] * len(self.layer_of)
        for row in self.rows:
            at = 0.0
            for k, v in enumerate(row):
                if k:
                    at += self._sep(row[k - 1], v)
                x[v] = at
        nb = len(self.boxes)
        for p in range(passes):
            downward = p % 2 == 0
            layers = range(1, self.n_layers) if downward else range(self.n_layers - 2, -1, -1)
            if p == passes - 1:
                layers = range(self.n_layers)
            for layer in layers:
                row = self.rows[layer]
                if not row:
                    continue
                target, weight, offset = [], [], 0.0
                for k, v in enumerate(row):
                    if k:
                        offset += self._sep(row[k - 1], v)
                    if p == passes - 1:
                        n = self.up[v] | self.down[v]
                    else:
                        n = self.up[v] if downward else self.down[v]
                    want = sum(x[u] for u in n) / len(n) if n else x[v]
                    target.append(want - offset)
                    weight.append(1.0 if v < nb else 2.0)  # keep long lines straight
                fitted = _pava(target, weight)
                offset = 0.0
                for k, v in enumerate(row):
                    if k:
                        offset += self._sep(row[k - 1], v)
                    x[v] = fitted[k] + offset
        left = min((x[v] - self.width[v] / 2 for v in range(len(x))), default=0.0)
        self.x = [round(xv - left + MARGIN, 1) for xv in x]
        self.svg_width = int(max((self.x[v] + self.width[v] / 2 for v in range(len(x))), default=0) + MARGIN)
        self.svg_height = int(self.n_layers * LAYER_H - (LAYER_H - BOX_H) + 2 * MARGIN)


def _lay_out(g: _Graph) -> None:
    """Items, routes, layers and coordinates of every view."""
    views = g.views
    chains: dict[int, list[int]] = {}

    def chain(v: int) -> list[int]:
        if v not in chains:
            p = views[v].parent
            chains[v] = ([] if p < 0 else chain(p)) + [v]
        return chains[v]

    item_at: list[dict[tuple[int, int], int]] = [{} for _ in views]

    def item(v: int, kind: int, ref: int, order: float) -> int:
        key = (kind, ref)
        at = item_at[v]
        if key not in at:
            at[key] = len(views[v].items)
            views[v].items.append(_Item(kind, ref, order))
        return at[key]

    for v, view in enumerate(views):
        for kind, ref in view.children:
            item(v, kind, ref, ref if kind == OP else views[ref].first)

    def in_view(v: int, k: int) -> int:
        """The item of view ``v`` that holds node ``k`` (``v`` is an ancestor of its leaf)."""
        leaf = g.leaf[k]
        if leaf == v:
            return item_at[v][(OP, k)]
        return item_at[v][(BLOCK, chain(leaf)[views[v].depth + 1])]

    routes: list[dict[int, _Route]] = [{} for _ in views]

    def connect(v: int, t: int, src: int, dst: int) -> None:
        r = routes[v].get(t)
        if r is None:
            r = routes[v][t] = _Route(src, tensor=t)
        if dst != src and dst not in r.dsts:
            r.dsts.append(dst)

    big = float(len(g.order) + 1)
    for t, p in enumerate(g.producer):
        cs = chain(g.leaf[p]) if p >= 0 else [0]
        for r in g.readers[t]:
            cr = chain(g.leaf[r]) if r >= 0 else [0]
            d = 0
            while d + 1 < len(cs) and d + 1 < len(cr) and cs[d + 1] == cr[d + 1]:
                d += 1
            top = cs[d]
            src = in_view(top, p) if p >= 0 else item(0, INPUT, t, -1)
            dst = in_view(top, r) if r >= 0 else item(0, OUTPUT, t, big)
            connect(top, t, src, dst)
            for v in cs[d + 1 :]:
                port = item(v, PORT_OUT, t, big)
                if (PORT_OUT, t) not in routes[v] and t not in routes[v]:
                    views[v].out_groups.extend(gid for gid, _ in g.idx.channel_groups(g.tensors[t]))
                connect(v, t, in_view(v, p), port)
            for v in cr[d + 1 :]:
                connect(v, t, item(v, PORT_IN, t, -1), in_view(v, r))
    done: dict[tuple, tuple] = {}
    for v, view in enumerate(views):
        view.routes = [r for r in routes[v].values() if r.dsts]
        view.out_groups = list(dict.fromkeys(view.out_groups))[:12]
        for it in view.items:
            it.width = _item_width(g, it)
        _layers(view)
        if not view.items:
            continue
        # repeated layers have the same drawing: lay it out once
        key = (
            tuple((it.kind, it.width, it.layer) for it in view.items),
            tuple((r.src, tuple(r.dsts)) for r in view.routes),
        )
        if key in done:
            view.xs, view.ways, view.width, view.height = done[key]
        else:
            _place(view)
            done[key] = view.xs, view.ways, view.width, view.height


def _item_width(g: _Graph, it: _Item) -> int:
    if it.kind == OP:
        op, chans, tag = _op_text(g, it.ref)
        return _text_width(op, chans, tag)
    if it.kind == BLOCK:
        sub = g.views[it.ref]
        return _text_width(_short(sub.label, 34), f"{sub.nodes} ops") + 8
    return _text_width("↑ " + _short(g.tensors[it.ref], 20))


def _op_text(g: _Graph, k: int) -> tuple[str, str, str]:
    """The label of node ``k``'s box: op type, channels of its output, '#group' if it has one group."""
    node = g.mv.nodes[g.order[k]]
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    outs = [t for t in node.output if t]
    chans = _channels(g.mv, g.idx, outs)
    stripes = g.idx.channel_groups(outs[0]) if outs else []
    tag = f"#{stripes[0][0]}" if len(stripes) == 1 else ""
    return _short(op, 22), chans, tag


def _channels(mv, idx: _Index, outs: list[str]) -> str:
    """The size of the output's channel axis, for the box label ("" if unknown or a vector)."""
    shape = mv.shapes.get(outs[0]) if outs else None
    if not shape or len(shape) < 2:
        return ""
    n = shape[idx.channel_axis(outs[0])]
    return "" if n is None else str(n)


def _layers(view: _View) -> None:
    """Longest-path layers in graph order (an edge against the order is drawn, not counted);
    a source not fed from above sits just above its first reader, and so does an entering port."""
    items = view.items
    preds: list[list[int]] = [[] for _ in items]
    succs: list[list[int]] = [[] for _ in items]
    for r in view.routes:
        for d in r.dsts:
            if items[r.src].order < items[d].order:
                preds[d].append(r.src)
                succs[r.src].append(d)
    order = sorted(range(len(items)), key=lambda i: items[i].order)
    fed = [it.kind in (INPUT, PORT_IN) for it in items]
    for v in order:
        if preds[v]:
            items[v].layer = 1 + max(items[p].layer for p in preds[v])
            fed[v] = any(fed[p] for p in preds[v])
    for v in reversed(order):
        if succs[v] and (not fed[v] or items[v].kind == PORT_IN):
            items[v].layer = min(items[s].layer for s in succs[v]) - 1
    low = min((it.layer for it in items), default=0)
    for it in items:
        it.layer -= low


def _place(view: _View) -> None:
    lay = _Layout(view.items, view.routes)
    view.xs = [int(round(x)) for x in lay.x[: len(view.items)]]
    view.ways = [[int(round(lay.x[w])) for w in chain.values()] for chain in lay.chain]
    view.width, view.height = lay.svg_width, lay.svg_height


# --------------------------------------------------------------------------------------
# The data the page draws from


def _data(g: _Graph, deps: DependencyGraph) -> dict:
    mv, idx = g.mv, g.idx
    nodes = []
    for i in g.order:
        node = mv.nodes[i]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        outs = [t for t in node.output if t]
        stripes = idx.channel_groups(outs[0]) if outs else []
        touched: set[int] = set()
        for t in list(node.input) + outs:
            if t:
                touched |= idx.all_groups(t)
        nodes.append([mv.node_names[i], op, _channels(mv, idx, outs), _flat(stripes), sorted(touched)])
    tensors = []
    for t, name in enumerate(g.tensors):
        p = g.producer[t]
        pname = mv.node_names[g.order[p]] if p >= 0 else ""
        stored = "\x01" + name[len(pname) :] if pname and name.startswith(pname) else name
        shape = _shape_text(mv.shapes.get(name))
        stripes = _flat(idx.channel_groups(name))
        tensors.append([stored, shape, stripes, sorted(idx.all_groups(name)), p, g.readers[t]])
    consts = []
    for name in list(mv.initializers) + list(mv.constant_nodes):
        readers = [g.rank[i] for i, _ in mv.consumers.get(name, []) if i in g.rank]
        if readers:
            consts.append([name, min(readers)])
    views = []
    for v in g.views:
        items = []
        for it in v.items:
            items += [it.kind, it.ref, it.layer, it.width]
        routes = [[r.tensor, r.src, r.dsts, w] for r, w in zip(v.routes, v.ways)]
        views.append(
            {
                "l": v.label,
                "p": v.parent,
                "n": v.nodes,
                "o": v.out_groups,
                "w": v.width,
                "h": v.height,
                "i": items,
                "x": v.xs,
                "r": routes,
            }
        )
    return {
        "nodes": nodes,
        "tensors": tensors,
        "consts": consts,
        "views": views,
        "blocked": sorted(gr.id for gr in deps.blocked_groups()),
        "geo": {"boxH": BOX_H, "layerH": LAYER_H, "margin": MARGIN},
    }


def _flat(stripes: list[tuple[int, int]]) -> list[int]:
    return [x for pair in stripes for x in pair]


def _json_script(data: dict) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="gp-data">{text}</script>'


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------
# The page


def _hue(gid: int) -> float:
    return (gid * 137.508) % 360


def _group_css(deps: DependencyGraph) -> str:
    """Fill, stroke and swatch of each group: the golden-angle hue, and three lightness and
    saturation steps so that neighbouring ids differ in more than hue."""
    rules = []
    for g in deps.groups:
        h = _hue(g.id)
        light = (84, 76, 68)[g.id % 3]
        sat = (72, 58, 80)[(g.id // 3) % 3]
        dark = (40, 30, 48)[g.id % 3]
        rules.append(
            f".f{g.id}{{fill:hsl({h:.0f},{sat}%,{light}%)}}.s{g.id}{{stroke:hsl({h:.0f},62%,{dark}%)}}"
            f".t{g.id}{{fill:hsl({h:.0f},70%,{dark - 8}%)}}"
            f".b{g.id}{{background:hsl({h:.0f},{sat}%,{light}%);border-color:hsl({h:.0f},62%,{dark}%)}}"
        )
    return "".join(rules)


def _legend() -> str:
    def swatch(inner: str, w: int = 26, h: int = 14) -> str:
        return f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}">{inner}</svg>'

    h1, h2 = _hue(1), _hue(2)
    items = [
        swatch(
            f'<rect x="1" y="1" width="11" height="12" rx="3" fill="hsl({h1:.0f},72%,80%)"'
            f' stroke="hsl({h1:.0f},62%,40%)"/><rect x="14" y="1" width="11" height="12" rx="3"'
            f' fill="hsl({h2:.0f},72%,80%)" stroke="hsl({h2:.0f},62%,40%)"/>'
        )
        + "one colour and number (#) per group",
        swatch('<rect x="1" y="1" width="24" height="12" rx="3" fill="#eef0f2" stroke="#a3abb4"/>') + "no group",
        swatch(
            '<rect x="1" y="1" width="24" height="12" rx="3" fill="hsl(200,72%,80%)"/>'
            '<rect x="1" y="1" width="24" height="12" rx="3" fill="url(#hatch-l)" stroke="#d62728" stroke-width="2"/>'
        )
        + "blocked group",
        swatch(
            f'<rect x="1" y="1" width="8" height="12" fill="hsl({h1:.0f},72%,80%)"/>'
            f'<rect x="9" y="1" width="8" height="12" fill="hsl({h2:.0f},72%,80%)"/>'
            '<rect x="17" y="1" width="8" height="12" fill="hsl(60,72%,80%)"/>'
            '<rect x="1" y="1" width="24" height="12" rx="3" fill="none" stroke="#3d444d"/>'
        )
        + "several groups (concat)",
        swatch(
            '<rect x="3" y="3" width="22" height="10" rx="3" fill="#fff" stroke="#8c959f"/>'
            f'<rect x="1" y="1" width="22" height="10" rx="3" fill="#f6f8fa" stroke="hsl({h1:.0f},62%,40%)"'
            ' stroke-width="2"/>'
        )
        + "box: a scope or a run of layers; click to expand, shift-click to open",
        swatch('<rect x="1" y="1" width="24" height="12" rx="6" fill="#3d444d"/>') + "graph input / output",
        swatch('<rect x="1" y="1" width="24" height="12" rx="6" fill="#fff" stroke="#57606a" stroke-dasharray="3 2"/>')
        + "tensor entering / leaving the box",
        swatch(f'<path d="M1 7H25" stroke="hsl({h1:.0f},62%,40%)" stroke-width="2"/>') + "edge: its channels' group",
    ]
    defs = (
        '<svg width="0" height="0" style="position:absolute"><defs><pattern id="hatch-l" width="6" height="6"'
        ' patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="2.2" height="6" fill="#d62728"'
        ' fill-opacity=".55"/></pattern></defs></svg>'
    )
    return '<div class="legend">' + defs + "".join(f"<span>{i}</span>" for i in items) + "</div>"


def _summary(summary: dict, title: str) -> str:
    cards = [
        ("", summary["nodes"], "nodes"),
        ("", summary["groups_total"], "groups"),
        ("ok", summary["groups_prunable"], "prunable groups"),
        ("bad", summary["groups_blocked"], "blocked groups"),
        ("ok", summary["prunable_channels"], "prunable channels"),
    ]
    out = [f"<h1>{_esc(title)}</h1>", '<div class="cards">']
    out += [f'<div class="card {c}"><b>{v:,}</b><span>{_esc(label)}</span></div>' for c, v, label in cards]
    out.append("</div>")
    reasons = list(summary["blocked_reasons"].items())
    if reasons:
        out.append("<h2>Why groups are blocked</h2>")

        def rows(items: list) -> str:
            cells = "".join(f'<tr><td class="num">{n}</td><td>{_esc(r)}</td></tr>' for r, n in items)
            return f'<table class="reasons">{cells}</table>'

        out.append(rows(reasons[:10]))
        if len(reasons) > 10:
            out.append(f"<details><summary>{len(reasons) - 10} more reasons</summary>{rows(reasons[10:])}</details>")
    else:
        out.append("<h2>No group is blocked</h2>")
    return "".join(out)


def _owners(deps: DependencyGraph, summary: dict, idx: _Index) -> dict[int, int]:
    """Trivial group -> the group it is folded under: a group whose one member is a constant
    (a parameter vector) belongs to the group of the output of the first node reading it."""
    mv = deps.view
    out: dict[int, int] = {}
    for g in summary["groups"]:
        ms = g["members"]
        if len(ms) != 1 or ms[0]["kind"] != "constant":
            continue
        for i, _ in mv.consumers.get(ms[0]["tensor"], []):
            outs = [t for t in mv.nodes[i].output if t]
            stripes = idx.channel_groups(outs[0]) if outs else []
            owner = next((gid for gid, _ in stripes if gid != g["id"]), None)
            if owner is not None:
                out[g["id"]] = owner
                break
    # an owner that is itself folded: fold under its owner's owner
    for gid in list(out):
        seen = {gid}
        while out[gid] in out and out[gid] not in seen:
            seen.add(out[gid])
            out[gid] = out[out[gid]]
    return out


def _table(summary: dict, owners: dict[int, int]) -> str:
    folded = Counter(owners.values())
    n = len(owners)
    hidden = "" if n else ' style="display:none"'  # no folded group: nothing to show (the script still binds it)
    head = (
        '<div class="filters"><h2 style="margin:0">Groups</h2>'
        '<input id="q" type="search" placeholder="filter: layer, tensor, reason…">'
        '<select id="st"><option value="all">all</option><option value="ok">prunable</option>'
        '<option value="bad">blocked</option></select>'
        f'<label class="tiny"{hidden}><input type="checkbox" id="trivial"> show {n} folded parameter'
        f" group{'s' if n != 1 else ''}</label>"
        '<span style="color:#59636e;font-size:12px">hover a row to light up its group; click to pin;'
        " click a header to sort</span></div>"
        '<table class="groups"><thead><tr><th data-sort="id" data-num="1">group</th>'
        '<th data-sort="size" data-num="1">size</th><th data-sort="unit">unit</th><th>members</th>'
        '<th>made by</th><th data-sort="status">status</th><th data-sort="reason">reason</th></tr></thead><tbody>'
    )
    rows = []
    for g in summary["groups"]:
        gid = g["id"]
        members = g["members"]
        items = []
        for m in members[:MEMBERS_SHOWN]:
            k = m["entries_per_index"]
            extra = f" ×{k}" if k > 1 else ""
            role = f" {m['role']}" if m["role"] else ""
            items.append(f"<li>{_esc(m['tensor'])}[{m['axis']}] <i>{_esc(m['kind'])}{_esc(role)}</i>{extra}</li>")
        if len(members) > MEMBERS_SHOWN:
            items.append(f"<li>… {len(members) - MEMBERS_SHOWN} more (see --json)</li>")
        member_cell = f"<details><summary>{len(members)}</summary><ul>{''.join(items)}</ul></details>"
        prods = g["producers"]
        made = "<br>".join(_esc(p) for p in prods[:3]) + (f"<br>+{len(prods) - 3} more" if len(prods) > 3 else "")
        if not made:
            made = f'<span class="anchor">— (anchor {_esc(g["label"])})</span>'
        made_title = _esc("\n".join(prods) or g["label"])
        reason = ""
        if g["prunable"]:
            status = '<span class="badge ok">prunable</span>'
            why = ""
        else:
            reasons = g["reasons"]
            reason = reasons[0] if reasons else ""
            shown = "".join(f"<li>{_esc(r)}</li>" for r in reasons[:REASONS_SHOWN])
            more = ""
            if len(reasons) > REASONS_SHOWN:
                rest = "".join(f"<li>{_esc(r)}</li>" for r in reasons[REASONS_SHOWN:])
                more = f"<details><summary>{len(reasons) - REASONS_SHOWN} more</summary><ul>{rest}</ul></details>"
            status = '<span class="badge bad">blocked</span>'
            why = f'<ul class="why">{shown}</ul>{more}'
        cls = "ok" if g["prunable"] else "bad"
        attrs = ""
        if gid in owners:
            cls += " folded"
            attrs = f' data-owner="{owners[gid]}"'
            made += f'<br><span class="anchor">folded under #{owners[gid]}</span>'
        elif folded.get(gid):
            made += f'<br><span class="anchor">+{folded[gid]} parameter groups folded here</span>'
        rows.append(
            f'<tr id="g{gid}" data-gid="{gid}" class="{cls}"{attrs} data-size="{g["size"]}"'
            f' data-unit="{_esc(g["unit"])}" data-status="{cls.split()[0]}" data-reason="{_esc(reason)}">'
            f'<td class="num" title="{_esc(g["label"])}"><span class="sw b{gid}"></span>{gid}'
            f' <button class="gv" title="show only this group and its neighbours">view</button></td>'
            f'<td class="num">{g["size"]}</td><td>{_esc(g["unit"])}</td><td class="num">{member_cell}</td>'
            f'<td class="made" title="{made_title}">{made}</td><td class="st">{status}</td><td>{why}</td></tr>'
        )
    return head + "".join(rows) + "</tbody></table>"


def render(deps: DependencyGraph, title: str) -> str:
    """The HTML page of ``deps``'s groups: summary, coloured op graph and table (self-contained)."""
    summary = describe(deps)
    idx = _Index(deps)
    g = _Graph(deps, idx)
    _lay_out(g)
    ops = Counter(n.op_type for n in deps.view.nodes)
    op_list = ", ".join(f"{_esc(op)} ×{n}" for op, n in sorted(ops.items()))
    owners = _owners(deps, summary, idx)
    bar = (
        '<div class="bar"><nav id="crumbs"></nav>'
        '<input id="find" type="search" placeholder="find node, tensor, weight…" title="Enter: next match">'
        '<span id="found"></span>'
        '<span class="zoom"><button id="up" title="up one level (Esc)">up</button>'
        '<button data-zoom="0.8" title="zoom out (-)">−</button>'
        '<button data-zoom="1.25" title="zoom in (+)">+</button>'
        '<button data-zoom="fit" title="fit the pane, text kept readable (0)">fit</button>'
        '<button data-zoom="1" title="1:1 (1)">1:1</button></span></div>'
    )
    hint = (
        '<div class="note" id="hint">Top to bottom. Wheel or +/− zooms, drag or arrows pan. Hover for names and'
        " shapes; click a node to pin its group, a box to expand it in place (click its frame to fold it;"
        " shift-click opens it alone).</div>"
    )
    if not g.order:
        hint = '<div class="note" id="hint">The graph has no nodes to draw (only constants).</div>'

    left = (
        f'<section id="left" class="pane">{bar}{_legend()}{hint}'
        '<div id="scroll" tabindex="0"><svg id="graph" class="graph" xmlns="http://www.w3.org/2000/svg">'
        "<defs>"
        '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="2.2" height="6" fill="#d62728" fill-opacity=".55"/></pattern>'
        '<clipPath id="rc" clipPathUnits="objectBoundingBox"><rect width="1" height="1" rx=".05" ry=".23"/>'
        '</clipPath></defs><g id="vp"></g></svg>'
        '<canvas id="mini" width="150" height="110" title="minimap: click to move there"></canvas></div></section>'
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}: channel groups</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{_asset('html_view.css')}{_group_css(deps)}</style></head><body>"
        f"<header>{_summary(summary, title)}</header>"
        f'<main>{left}<section id="right" class="pane">{_table(summary, owners)}</section></main>'
        f"<footer>ops: {op_list}<br>written by graphprune inspect --html</footer>"
        f"{_json_script(_data(g, deps))}"
        f"<script>{_asset('html_view.js')}</script></body></html>\n"
    )
