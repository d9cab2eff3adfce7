"""A self-contained HTML page of a model's channel dependencies (``graphprune inspect --html``).

The page has three parts: a summary (groups, prunable channels, why groups are blocked),
an SVG drawing of the op graph whose nodes and edges are coloured by the group their
channels belong to, and the table of groups. Hovering or clicking a row lights up the
group in the drawing. Everything (CSS, JS, SVG) is inline: the page works offline.

The drawing is a layered layout computed here (no graphviz): nodes are put in layers by
longest path from the graph inputs, long edges pass through one invisible waypoint per
layer they cross (shared by every consumer of the same tensor, so a tensor read far down
the graph is one "bus" line), waypoints and nodes are ordered by barycenter sweeps and
placed by isotonic regression towards their neighbours. Constant nodes are not drawn.
Above :data:`MAX_DRAWN` drawn nodes only the nodes that touch a group's tensors are
kept, the rest are folded into dotted edges; above that again the drawing is skipped.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import networkx as nx

from .dependency import DependencyGraph
from .inspect import describe

MAX_DRAWN = 1500  # nodes; above this, only nodes touching a group's tensors are drawn
MAX_WAYPOINTS = 40000  # above this many waypoints long edges are drawn as direct curves
MEMBERS_SHOWN = 30  # member tensors listed per group in the table
REASONS_SHOWN = 4  # reasons listed per blocked group before "more"

BOX_H = 22
LAYER_H = 42
MARGIN = 24
NODE_GAP = 14
WAY_GAP = 7
WAY_W = 2


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass
class _Box:
    kind: str  # op | input | output
    label: str
    title: str
    stripes: list[tuple[int, int]]  # (group id, channels) in channel order: the fill
    groups: set[int]  # every group the box touches: what lights it up
    channels: str = ""  # the output's channel count, shown after the label
    layer: int = 0
    width: int = 0


@dataclass
class _Route:
    """One tensor from its source box to every drawn reader (or a path through hidden ops)."""

    src: int
    dsts: list[int] = field(default_factory=list)
    tensor: str | None = None  # None: a path through nodes that are not drawn
    colour: list[int] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)


class _Index:
    """Which groups own which dims of which tensors."""

    def __init__(self, deps: DependencyGraph):
        self.deps = deps
        self.by_tensor: dict[str, dict[int, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
        self.prunable = {g.id: g.prunable for g in deps.groups}
        for g in deps.groups:
            for m in g.members:
                first = int(m.indices.min()) if m.indices.size else 0
                self.by_tensor[m.tensor][m.axis].append((first, g.id, max(int(m.indices.size), 1)))
        for axes in self.by_tensor.values():
            for entries in axes.values():
                entries.sort()

    def all_groups(self, tensor: str) -> set[int]:
        axes = self.by_tensor.get(tensor)
        return {gid for entries in axes.values() for _, gid, _ in entries} if axes else set()

    def channel_axis(self, tensor: str) -> int:
        """Axis 1, or the last axis of a 1-D/2-D/3-D tensor; when no group owns it
        (channels-last layouts), the last axis a group owns."""
        shape = self.deps.view.shapes.get(tensor)
        preferred = len(shape) - 1 if shape and len(shape) <= 3 else 1
        axes = self.by_tensor.get(tensor)
        return max(axes) if axes and preferred not in axes else preferred

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
# The picture


@dataclass
class _Picture:
    svg: str = ""
    note: str = ""
    condensed: bool = False
    width: int = 0


def _build(deps: DependencyGraph, idx: _Index) -> tuple[list[_Box], list[_Route], bool] | None:
    mv = deps.view
    nodes = mv.nodes
    hidden_const = {i for i, n in enumerate(nodes) if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}
    shown = [i for i in range(len(nodes)) if i not in hidden_const]
    condensed = False
    if len(shown) > MAX_DRAWN:
        condensed = True
        shown = [i for i in shown if any(t in idx.by_tensor for t in list(nodes[i].input) + list(nodes[i].output) if t)]
        if len(shown) > MAX_DRAWN:
            return None
    shown_set = set(shown)
    constants = set(mv.initializers) | set(mv.constant_nodes)

    boxes: list[_Box] = []
    box_of_node: dict[int, int] = {}
    for i in shown:
        node = nodes[i]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        outs = [t for t in node.output if t]
        stripes = idx.channel_groups(outs[0]) if outs else []
        touched: set[int] = set()
        for t in list(node.input) + outs:
            if t:
                touched |= idx.all_groups(t)
        lines = [f"{mv.node_names[i]} ({op})"]
        lines += [f"out {t} {_shape_text(mv.shapes.get(t))}" for t in outs]
        lines += _group_lines(stripes, idx)
        label = op if len(op) <= 22 else op[:21] + "…"
        box_of_node[i] = len(boxes)
        boxes.append(_Box("op", label, "\n".join(lines), stripes, touched, channels=_channels(mv, idx, outs)))

    io_box: dict[tuple[str, str], int] = {}

    def io(kind: str, tensor: str) -> int:
        key = (kind, tensor)
        if key not in io_box:
            stripes = idx.channel_groups(tensor)
            label = tensor if len(tensor) <= 20 else tensor[:19] + "…"
            title = f"graph {kind} {tensor} {_shape_text(mv.shapes.get(tensor))}"
            title = "\n".join([title, *_group_lines(stripes, idx)])
            io_box[key] = len(boxes)
            boxes.append(_Box(kind, label, title, stripes, idx.all_groups(tensor)))
        return io_box[key]

    graph_inputs = set(mv.graph_inputs)

    def direct_source(t: str) -> int | None:
        p = mv.producer.get(t)
        if p is not None and p in shown_set:
            return box_of_node[p]
        if t in graph_inputs:
            return io("input", t)
        return None

    # Where a tensor made by a node that is not drawn comes from: the nearest drawn boxes.
    frontier: dict[int, set[int]] = {}
    if condensed:
        for i, node in enumerate(nodes):
            if i in shown_set or i in hidden_const:
                continue
            srcs: set[int] = set()
            for t in node.input:
                if not t or t in constants:
                    continue
                s = direct_source(t)
                if s is not None:
                    srcs.add(s)
                elif mv.producer.get(t) in frontier:
                    srcs |= frontier[mv.producer[t]]
                if len(srcs) > 6:
                    break
            frontier[i] = srcs

    routes: dict[str, _Route] = {}
    indirect: set[tuple[int, int]] = set()

    def connect(t: str, dst: int) -> None:
        s = direct_source(t)
        if s is not None:
            if t not in routes:
                colour = [g for g, _ in idx.channel_groups(t)]
                routes[t] = _Route(s, tensor=t, colour=colour, groups=idx.all_groups(t))
            if dst not in routes[t].dsts and dst != s:
                routes[t].dsts.append(dst)
        else:
            for s in frontier.get(mv.producer.get(t, -1), ()):
                if s != dst:
                    indirect.add((s, dst))

    for t, readers in mv.consumers.items():
        if t in constants:
            continue
        for i, _ in readers:
            if i in shown_set:
                connect(t, box_of_node[i])
    for t in mv.graph_outputs:
        if t in mv.producer or t in graph_inputs:
            connect(t, io("output", t))

    out = [r for r in routes.values() if r.dsts]
    direct_pairs = {(r.src, d) for r in out for d in r.dsts}
    out += [_Route(s, [d]) for s, d in sorted(indirect) if (s, d) not in direct_pairs]
    return boxes, out, condensed


def _channels(mv, idx: _Index, outs: list[str]) -> str:
    """The size of the output's channel axis, for the box label ("" if unknown or a vector)."""
    shape = mv.shapes.get(outs[0]) if outs else None
    if not shape or len(shape) < 2:
        return ""
    n = shape[idx.channel_axis(outs[0])]
    return "" if n is None else str(n)


def _group_lines(stripes: list[tuple[int, int]], idx: _Index) -> list[str]:
    if not stripes:
        return ["channels: no group"]
    parts = [f"{g} ({'prunable' if idx.prunable[g] else 'blocked'}, {n} ch)" for g, n in stripes[:8]]
    more = f" +{len(stripes) - 8} more" if len(stripes) > 8 else ""
    return ["channels: group " + ", ".join(parts) + more]


def _layers(boxes: list[_Box], routes: list[_Route]) -> bool:
    """Longest-path layers from the inputs; sources not fed by an input sit just above their readers."""
    g = nx.DiGraph()
    g.add_nodes_from(range(len(boxes)))
    for r in routes:
        for d in r.dsts:
            g.add_edge(r.src, d)
    try:
        order = list(nx.topological_sort(g))
    except nx.NetworkXUnfeasible:
        return False
    for v in order:
        preds = list(g.predecessors(v))
        boxes[v].layer = 1 + max(boxes[p].layer for p in preds) if preds else 0
    fed: set[int] = set()
    for v, b in enumerate(boxes):
        if b.kind == "input":
            fed.add(v)
            fed |= nx.descendants(g, v)
    for v in reversed(order):
        succ = list(g.successors(v))
        if v not in fed and succ:
            boxes[v].layer = min(boxes[s].layer for s in succ) - 1
    low = min((b.layer for b in boxes), default=0)
    for b in boxes:
        b.layer -= low
    return True


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

    def __init__(self, boxes: list[_Box], routes: list[_Route]):
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
        start: list[float] = list(range(nb)) + [0.0] * (len(self.layer_of) - nb)
        for r, chain in zip(routes, self.chain):
            for k, w in enumerate(chain.values()):
                start[w] = r.src + 0.5 + 1e-6 * k
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


def _top(layer: int) -> int:
    return MARGIN + layer * LAYER_H


def _curve(x0: float, y0: float, x1: float, y1: float) -> str:
    m = (y0 + y1) / 2
    return f"C{x0:g} {m:g} {x1:g} {m:g} {x1:g} {y1:g}"


def _text_width(label: str, channels: str = "") -> int:
    return max(44, int(6.6 * len(label) + 5.8 * (len(channels) + 1 if channels else 0)) + 16)


def _picture(deps: DependencyGraph, idx: _Index) -> _Picture:
    built = _build(deps, idx)
    if built is None:
        shown = sum(1 for n in deps.view.nodes if n.op_type != "Constant")
        return _Picture(note=f"graph too large to draw ({shown} nodes); the table below lists every group")
    boxes, routes, condensed = built
    if not boxes:
        return _Picture(note="the graph has no nodes to draw")
    for b in boxes:
        b.width = _text_width(b.label, b.channels)
    if not _layers(boxes, routes):
        return _Picture(note="the graph has a cycle; not drawn")
    lay = _Layout(boxes, routes)
    nb = len(boxes)

    # Input ports: spread the edges entering a box along its top, in the order they come from.
    ports: dict[tuple[int, int], float] = {}
    incoming: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for ri, (r, chain) in enumerate(zip(routes, lay.chain)):
        for d in r.dsts:
            before = chain.get(boxes[d].layer - 1, r.src)
            incoming[d].append((lay.x[before], ri))
    for d, ins in incoming.items():
        ins.sort()
        step = min(10.0, (lay.width[d] - 12) / max(len(ins), 1))
        for k, (_, ri) in enumerate(ins):
            ports[(ri, d)] = round(lay.x[d] + (k - (len(ins) - 1) / 2) * step, 1)

    edges: list[str] = []
    for ri, (r, chain) in enumerate(zip(routes, lay.chain)):
        xs, ys = lay.x[r.src], _top(boxes[r.src].layer) + BOX_H
        d_parts = [f"M{xs:g} {ys}"]
        px, py = xs, ys
        for layer, w in chain.items():
            wx, top = lay.x[w], _top(layer)
            d_parts.append(f"{_curve(px, py, wx, top)}L{wx:g} {top + BOX_H}")
            px, py = wx, top + BOX_H
        for d in r.dsts:
            before = chain.get(boxes[d].layer - 1)
            bx, by = (lay.x[before], _top(boxes[d].layer - 1) + BOX_H) if before is not None else (xs, ys)
            d_parts.append(f"M{bx:g} {by}{_curve(bx, by, ports[(ri, d)], _top(boxes[d].layer))}")
        path = "".join(d_parts)
        edges.append(_edge_svg(r, path, idx, deps))

    nodes_svg = [_box_svg(b, lay.x[v] - lay.width[v] / 2, _top(b.layer), idx) for v, b in enumerate(boxes)]
    w, h = lay.svg_width, lay.svg_height
    svg = (
        f'<svg id="graph" class="graph" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"'
        f' viewBox="0 0 {w} {h}" data-w="{w}" data-h="{h}">'
        "<defs>"
        '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="2.2" height="6" fill="#d62728" fill-opacity=".55"/></pattern>'
        '<clipPath id="rc" clipPathUnits="objectBoundingBox"><rect width="1" height="1" rx=".05" ry=".23"/></clipPath>'
        "</defs>"
        f'<g class="edges">{"".join(edges)}</g><g class="nodes">{"".join(nodes_svg)}</g></svg>'
    )
    note = ""
    if condensed:
        note = (
            f"large graph: only the {nb - sum(b.kind != 'op' for b in boxes)} nodes that touch a group's tensors"
            " are drawn; dotted grey lines are paths through the others"
        )
    return _Picture(svg=svg, note=note, condensed=condensed, width=w)


def _gattr(groups: set[int]) -> str:
    return " ".join(str(g) for g in sorted(groups))


def _edge_svg(r: _Route, path: str, idx: _Index, deps: DependencyGraph) -> str:
    if r.tensor is None:
        return f'<path class="e via" d="{path}"><title>through nodes not drawn</title></path>'
    shape = _shape_text(deps.view.shapes.get(r.tensor))
    title = _esc("\n".join([f"{r.tensor} {shape}", *_group_lines(idx.channel_groups(r.tensor), idx)]))
    data = _gattr(r.groups)
    k = len(r.colour)
    if k == 0:
        return f'<path class="e s-" data-g="{data}" d="{path}"><title>{title}</title></path>'
    if k == 1:
        return f'<path class="e s{r.colour[0]}" data-g="{data}" d="{path}"><title>{title}</title></path>'
    if k > 4:  # many segments (a wide concat): one neutral line
        return f'<path class="e mix" data-g="{data}" d="{path}"><title>{title}</title></path>'
    # a few segments: one dashed copy per group, the dashes interleaved
    inner = "".join(f'<path class="s{g} d{k}-{j}" d="{path}"/>' for j, g in enumerate(r.colour))
    return f'<g class="e" data-g="{data}"><title>{title}</title>{inner}</g>'


def _box_svg(b: _Box, left: float, top: int, idx: _Index) -> str:
    w = int(round(b.width))
    title = _esc(b.title)
    data = _gattr(b.groups)
    label = _esc(b.label)
    head = f'<g class="n {b.kind}" data-g="{data}" transform="translate({left:g} {top})"><title>{title}</title>'
    count = f'<tspan class="c"> {_esc(b.channels)}</tspan>' if b.channels else ""
    text = f'<text x="{w / 2:g}" y="15">{label}{count}</text></g>'
    if b.kind != "op":
        first = b.stripes[0][0] if b.stripes else None
        cls = f" s{first}" if first is not None else ""
        return f'{head}<rect class="io{cls}" width="{w}" height="{BOX_H}" rx="11"/>{text}'
    blocked = any(not idx.prunable[g] for g, _ in b.stripes)
    over = f'<rect class="hat" width="{w}" height="{BOX_H}" rx="5"/>' if blocked else ""
    if len(b.stripes) <= 1:
        fill = f"f{b.stripes[0][0]} s{b.stripes[0][0]}" if b.stripes else "f- s-"
        return f'{head}<rect class="box {fill}" width="{w}" height="{BOX_H}" rx="5"/>{over}{text}'
    total = sum(n for _, n in b.stripes) or 1
    at, parts = 0.0, []
    for g, n in b.stripes:
        sw = w * n / total
        parts.append(f'<rect class="f{g}" x="{at:.1f}" width="{sw + 0.6:.1f}" height="{BOX_H}"/>')
        at += sw
    outline = f'<rect class="box multi" width="{w}" height="{BOX_H}" rx="5"/>'
    return f'{head}<g clip-path="url(#rc)">{"".join(parts)}</g>{outline}{over}{text}'


# --------------------------------------------------------------------------------------
# The page


def _hue(gid: int) -> float:
    return (gid * 137.508) % 360


def _group_css(deps: DependencyGraph) -> str:
    rules = []
    for g in deps.groups:
        h = _hue(g.id)
        light = 84 if g.id % 2 else 77
        rules.append(
            f".f{g.id}{{fill:hsl({h:.0f},72%,{light}%)}}.s{g.id}{{stroke:hsl({h:.0f},62%,40%)}}"
            f".b{g.id}{{background:hsl({h:.0f},72%,{light}%);border-color:hsl({h:.0f},62%,40%)}}"
        )
    return "".join(rules)


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
background:#f6f7f9}
header{padding:18px 24px 12px;background:#fff;border-bottom:1px solid #d8dde3}
h1{font-size:20px;margin:0 0 10px;word-break:break-all}
h2{font-size:15px;margin:0 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:10px}
.card{border:1px solid #d8dde3;border-radius:8px;padding:6px 14px;background:#fbfcfd;min-width:110px}
.card b{display:block;font-size:20px}
.card span{color:#59636e;font-size:12px}
.card.ok b{color:#1a7f37}.card.bad b{color:#cf222e}
.reasons{border-collapse:collapse;font-size:13px}
.reasons td{padding:1px 10px 1px 0;vertical-align:top}
.reasons td.num{text-align:right;color:#cf222e;font-weight:600}
main{display:flex;gap:16px;padding:16px;align-items:flex-start}
.pane{background:#fff;border:1px solid #d8dde3;border-radius:8px}
#left{flex:0 1 auto;max-width:58%;min-width:340px;position:sticky;top:8px;display:flex;flex-direction:column;
max-height:calc(100vh - 16px)}
#right{flex:1 1 0;min-width:480px;padding:12px 14px}
.bar{display:flex;gap:6px;align-items:center;padding:8px 10px;border-bottom:1px solid #e5e8ec;font-size:12px;
color:#59636e;flex-wrap:wrap}
.bar .zoom{margin-left:auto;white-space:nowrap;display:flex;gap:4px}
.bar button{font:inherit;border:1px solid #c8cdd3;background:#fff;border-radius:5px;padding:1px 8px;cursor:pointer}
#scroll{overflow:auto;flex:1 1 auto;min-height:200px}
.note{padding:10px 12px;color:#59636e;font-size:13px}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;padding:8px 10px;border-bottom:1px solid #e5e8ec;font-size:12px;
color:#3d444d}
.legend svg{vertical-align:middle;margin-right:4px}
svg.graph{display:block;margin:0 auto}
.n text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;text-anchor:middle;
fill:#1f2328;paint-order:stroke;stroke:#fff;stroke-width:2.5px;stroke-linejoin:round;pointer-events:none}
.n{cursor:pointer}
.box{stroke-width:1.3}
.box.multi{fill:none;stroke:#3d444d}
.f-{fill:#eef0f2}.s-{stroke:#a3abb4}
.hat{fill:url(#hatch);stroke:#d62728;stroke-width:2}
.io{fill:#3d444d;stroke-width:2.5}
.n.input text,.n.output text{fill:#fff;stroke:none}
.e{fill:none;stroke-width:1.6}
.e path{fill:none}
.e.mix{stroke:#57606a;stroke-width:2.2}
.e.via{stroke:#b4bcc5;stroke-width:1.2;stroke-dasharray:2 3}
.n text .c{fill:#59636e;font-size:10px}
.d2-0{stroke-dasharray:6 6}.d2-1{stroke-dasharray:6 6;stroke-dashoffset:6}
.d3-0{stroke-dasharray:6 12}.d3-1{stroke-dasharray:6 12;stroke-dashoffset:6}
.d3-2{stroke-dasharray:6 12;stroke-dashoffset:12}
.d4-0{stroke-dasharray:6 18}.d4-1{stroke-dasharray:6 18;stroke-dashoffset:6}
.d4-2{stroke-dasharray:6 18;stroke-dashoffset:12}.d4-3{stroke-dasharray:6 18;stroke-dashoffset:18}
svg.focus .n:not(.on){opacity:.16}
svg.focus .e:not(.on){opacity:.07}
svg.focus .e.on{stroke-width:3}
svg.focus .n.on .box,svg.focus .n.on .io{stroke-width:2.6}
.filters{display:flex;gap:8px;margin-bottom:8px;align-items:center;flex-wrap:wrap}
.filters input{font:inherit;padding:3px 8px;border:1px solid #c8cdd3;border-radius:5px;min-width:220px}
.filters select{font:inherit;padding:2px 4px}
table.groups{border-collapse:collapse;width:100%;font-size:13px}
.groups th{position:sticky;top:0;background:#f0f2f4;text-align:left;padding:5px 6px;border-bottom:1px solid #d8dde3;
z-index:1}
.groups td{padding:4px 6px;border-bottom:1px solid #eceff2;vertical-align:top}
.groups tr{cursor:pointer}
.groups tr:hover td,.groups tr.on td{background:#fff8c5}
.groups td.num{text-align:right;white-space:nowrap}
.made{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px;word-break:break-all}
.anchor{color:#59636e}
.groups td.st{min-width:140px}
.sw{display:inline-block;width:12px;height:12px;border-radius:3px;border:1.5px solid;margin-right:6px;
vertical-align:-1px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600}
.badge.ok{background:#dafbe1;color:#116329}.badge.bad{background:#ffebe9;color:#a40e26}
ul.why{margin:2px 0 0;padding-left:16px;color:#3d444d;font-size:12px;word-break:break-word}
details summary{cursor:pointer}
details ul{margin:2px 0;padding-left:16px;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
font-size:11px;word-break:break-all;text-align:left}
footer{padding:6px 24px 18px;color:#59636e;font-size:12px}
@media (max-width:1000px){main{flex-direction:column}#left{max-width:100%;position:static}#right{min-width:0}}
"""

_JS = """
(function () {
  var svg = document.getElementById("graph"), box = document.getElementById("scroll");
  var rows = document.querySelectorAll("tr[data-gid]");
  var byGroup = {}, pinned = null;
  if (svg) {
    svg.querySelectorAll("[data-g]").forEach(function (el) {
      el.getAttribute("data-g").split(" ").forEach(function (g) {
        if (g) (byGroup[g] = byGroup[g] || []).push(el);
      });
    });
  }
  function show(g) {
    if (svg) {
      svg.querySelectorAll(".on").forEach(function (el) { el.classList.remove("on"); });
      svg.classList.toggle("focus", g !== null);
      if (g !== null) (byGroup[g] || []).forEach(function (el) { el.classList.add("on"); });
    }
    rows.forEach(function (r) { r.classList.toggle("on", r.getAttribute("data-gid") === g); });
  }
  function reveal(g) {  // scroll the drawing (not the page) to the group's first node
    var els = (byGroup[g] || []).filter(function (el) { return el.classList.contains("n"); });
    if (!els.length || !box) return;
    var r = els[0].getBoundingClientRect(), b = box.getBoundingClientRect();
    box.scrollBy({top: r.top - b.top - box.clientHeight / 2, left: r.left - b.left - box.clientWidth / 2,
                  behavior: "smooth"});
  }
  rows.forEach(function (r) {
    var g = r.getAttribute("data-gid");
    r.addEventListener("mouseenter", function () { show(g); });
    r.addEventListener("mouseleave", function () { show(pinned); });
    r.addEventListener("click", function (ev) {
      if (ev.target.closest("summary")) return;
      pinned = pinned === g ? null : g;
      show(pinned);
      if (pinned !== null) reveal(g);
    });
  });
  if (svg) {
    svg.addEventListener("click", function (ev) {  // a node of several groups: each click, the next
      var el = ev.target.closest(".n,.e");
      if (!el) { pinned = null; show(null); return; }
      var gs = (el.getAttribute("data-g") || "").split(" ").filter(Boolean);
      if (!gs.length) return;
      pinned = gs[(gs.indexOf(pinned) + 1) % gs.length];
      show(pinned);
      var row = document.getElementById("g" + pinned);
      if (row) row.scrollIntoView({block: "nearest", behavior: "smooth"});
    });
    var scale = 1, W = +svg.getAttribute("data-w"), H = +svg.getAttribute("data-h");
    function zoom(s) {
      scale = Math.max(0.05, Math.min(4, s));
      svg.setAttribute("width", W * scale);
      svg.setAttribute("height", H * scale);
    }
    document.querySelectorAll("[data-zoom]").forEach(function (b) {
      b.addEventListener("click", function () {
        var z = b.getAttribute("data-zoom");
        if (z === "fit") zoom(Math.min(box.clientWidth / W, box.clientHeight / H));
        else if (z === "1") zoom(1);
        else zoom(scale * +z);
      });
    });
  }
  var q = document.getElementById("q"), st = document.getElementById("st");
  function filter() {
    var t = q.value.toLowerCase(), s = st.value;
    rows.forEach(function (r) {
      var ok = (!t || r.textContent.toLowerCase().indexOf(t) >= 0) && (s === "all" || r.classList.contains(s));
      r.style.display = ok ? "" : "none";
    });
  }
  if (q) { q.addEventListener("input", filter); st.addEventListener("change", filter); }
})();
"""


def _legend(pic: _Picture) -> str:
    def swatch(inner: str, w: int = 26, h: int = 14) -> str:
        return f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}">{inner}</svg>'

    h1, h2 = _hue(1), _hue(2)
    items = [
        swatch(
            f'<rect x="1" y="1" width="11" height="12" rx="3" fill="hsl({h1:.0f},72%,80%)"'
            f' stroke="hsl({h1:.0f},62%,40%)"/><rect x="14" y="1" width="11" height="12" rx="3"'
            f' fill="hsl({h2:.0f},72%,80%)" stroke="hsl({h2:.0f},62%,40%)"/>'
        )
        + "one colour per group (its output channels)",
        swatch('<rect x="1" y="1" width="24" height="12" rx="3" fill="#eef0f2" stroke="#a3abb4"/>') + "no group",
        swatch(
            '<rect x="1" y="1" width="24" height="12" rx="3" fill="hsl(200,72%,80%)"/>'
            '<rect x="1" y="1" width="24" height="12" rx="3" fill="url(#hatch)" stroke="#d62728" stroke-width="2"/>'
        )
        + "blocked group",
        swatch(
            f'<rect x="1" y="1" width="8" height="12" fill="hsl({h1:.0f},72%,80%)"/>'
            f'<rect x="9" y="1" width="8" height="12" fill="hsl({h2:.0f},72%,80%)"/>'
            '<rect x="17" y="1" width="8" height="12" fill="hsl(60,72%,80%)"/>'
            '<rect x="1" y="1" width="24" height="12" rx="3" fill="none" stroke="#3d444d"/>'
        )
        + "several groups (concat), in channel order",
        swatch('<rect x="1" y="1" width="24" height="12" rx="6" fill="#3d444d"/>') + "graph input / output",
        swatch(f'<path d="M1 7H25" stroke="hsl({h1:.0f},62%,40%)" stroke-width="2"/>')
        + "edge: the group of the channels it carries",
        swatch('<path d="M1 7H25" stroke="#57606a" stroke-width="2.4"/>') + "edge of many groups",
    ]
    if pic.condensed:
        items.append(
            swatch('<path d="M1 7H25" stroke="#9aa3ad" stroke-width="1.5" stroke-dasharray="2 3"/>')
            + "through nodes not drawn"
        )
    return '<div class="legend">' + "".join(f"<span>{i}</span>" for i in items) + "</div>"


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


def _table(summary: dict) -> str:
    head = (
        '<div class="filters"><h2 style="margin:0">Groups</h2>'
        '<input id="q" type="search" placeholder="filter: layer, tensor, reason…">'
        '<select id="st"><option value="all">all</option><option value="ok">prunable</option>'
        '<option value="bad">blocked</option></select>'
        '<span style="color:#59636e;font-size:12px">hover a row to light up its group; click to pin</span></div>'
        '<table class="groups"><thead><tr><th>group</th><th>size</th><th>members</th>'
        "<th>made by</th><th>status</th></tr></thead><tbody>"
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
        if g["prunable"]:
            status = '<span class="badge ok">prunable</span>'
        else:
            reasons = g["reasons"]
            shown = "".join(f"<li>{_esc(r)}</li>" for r in reasons[:REASONS_SHOWN])
            more = ""
            if len(reasons) > REASONS_SHOWN:
                rest = "".join(f"<li>{_esc(r)}</li>" for r in reasons[REASONS_SHOWN:])
                more = f"<details><summary>{len(reasons) - REASONS_SHOWN} more</summary><ul>{rest}</ul></details>"
            status = f'<span class="badge bad">blocked</span><ul class="why">{shown}</ul>{more}'
        cls = "ok" if g["prunable"] else "bad"
        rows.append(
            f'<tr id="g{gid}" data-gid="{gid}" class="{cls}">'
            f'<td class="num" title="{_esc(g["label"])}"><span class="sw b{gid}"></span>{gid}</td>'
            f'<td class="num">{g["size"]}</td><td class="num">{member_cell}</td>'
            f'<td class="made" title="{made_title}">{made}</td><td class="st">{status}</td></tr>'
        )
    return head + "".join(rows) + "</tbody></table>"


def render(deps: DependencyGraph, title: str) -> str:
    """The HTML page of ``deps``'s groups: summary, coloured op graph and table (self-contained)."""
    summary = describe(deps)
    idx = _Index(deps)
    pic = _picture(deps, idx)
    ops = Counter(n.op_type for n in deps.view.nodes)
    op_list = ", ".join(f"{_esc(op)} ×{n}" for op, n in sorted(ops.items()))
    if pic.svg:
        bar = (
            '<div class="bar"><span><b style="color:#1f2328">Op graph</b>, top to bottom. Hover a node or edge'
            " for names and shapes; click it to pin its group.</span>"
            '<span class="zoom"><button data-zoom="0.8" title="zoom out">−</button>'
            '<button data-zoom="1.25" title="zoom in">+</button>'
            '<button data-zoom="fit" title="fit the pane">fit</button><button data-zoom="1">1:1</button></span></div>'
        )
        note = f'<div class="note">{_esc(pic.note)}</div>' if pic.note else ""
        basis = max(pic.width + 20, 460)
        left = (
            f'<section id="left" class="pane" style="flex-basis:{basis}px">{bar}{_legend(pic)}{note}'
            f'<div id="scroll">{pic.svg}</div></section>'
        )
    else:
        left = f'<section id="left" class="pane"><div class="note">{_esc(pic.note)}</div></section>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}: channel groups</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{_CSS}{_group_css(deps)}</style></head><body>"
        f"<header>{_summary(summary, title)}</header>"
        f'<main>{left}<section id="right" class="pane">{_table(summary)}</section></main>'
        f"<footer>ops: {op_list}<br>written by graphprune inspect --html</footer>"
        f"<script>{_JS}</script></body></html>\n"
    )
