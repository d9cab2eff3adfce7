"""Channel dependencies: op rules -> couplings between dims -> groups.

A *dim* is one axis of one tensor (or a virtual axis such as the groups of a grouped
Conv). Rules couple dims with index maps (identity, segment, block, strided): the
dependency graph (:class:`Couplings`, plain dicts; ``DependencyGraph.graph`` gives it as a
networkx MultiGraph). Resolving the maps to single entries gives entry classes that must be
removed together; classes touching the same dims the same way form one :class:`Group`: a
channel space of size N whose index ``j`` owns ``member.indices[j]`` on every member's axis.

Resolution, in two ways that give the same groups, members and order:
1. A component whose couplings are all translations (identity, segment: CNNs, concats,
   splits) is cut into *atoms*, the entry ranges every coupling maps onto ranges whole (cut
   points propagated along the segments until closed); a union-find over atoms gives atom
   classes, and an entry class is an atom class and an offset in it. densenet121's 323,582
   entries on 923 dims are 5,235 atoms.
2. Any other component (block and strided maps: grouped convolutions, heads), or one that
   would have atoms for more than a quarter of its entries, is resolved entry by entry (a
   union-find over entries, vectorised with numpy). So is everything when two signatures'
   hashes collide, where the exact split orders the groups.

A group is blocked when any member dim is forbidden: a graph input or output, a dim a
node reads or writes without a rule that follows it, a dim a rule forbids (Softmax over
it), a dim of unknown size. Blocked groups keep every reason, for the user.

What analysis cannot follow is said too: a weight that no group covers (the node reading it
has no rule, reads a tensor whose shape inference lost, or is a subgraph) is listed in
``DependencyGraph.unanalysed`` with its reason, and ``DependencyGraph.notes`` holds
model-level notes (where shape inference stopped, those weights counted), which inspect
and prune print.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..ir.graph import ModelView, view
from ..rules import Dim, opsets, rule_for

if TYPE_CHECKING:
    import networkx as nx

INITIALIZER, CONSTANT, ACTIVATION, VIRTUAL = "initializer", "constant", "activation", "virtual"


class Reason(str):
    """Why a dim cannot lose entries: ``"<where> (<why>)"``, e.g.
    ``"/layer4/Softmax (Softmax over axis 1, the pruned axis)"``.

    A plain string for JSON and printing; ``where`` names the node or tensor, ``why`` the
    rule, so that reports can count groups per rule.
    """

    where: str
    why: str

    def __new__(cls, where: str, why: str) -> Reason:
        obj = super().__new__(cls, f"{where} ({why})")
        obj.where, obj.why = where, why
        return obj

    def __getnewargs__(self) -> tuple[str, str]:  # copy, deepcopy (dataclasses.asdict), pickle
        return (self.where, self.why)


def reason_kind(reason: str) -> str:
    """The rule part of a reason (what a report counts groups by)."""
    return reason.why if isinstance(reason, Reason) else reason


@dataclass
class Member:
    """One dim of a group: group index ``j`` owns ``indices[j]`` on ``axis`` of ``tensor``."""

    tensor: str
    axis: int
    kind: str  # initializer | constant | activation | virtual
    role: str | None  # "out" (makes the channel), "in" (reads it), "param", or None
    indices: np.ndarray  # int64 [N, k]

    @property
    def size(self) -> int:
        return int(self.indices.size)


@dataclass
class Group:
    """A channel space whose entries are removed together from every member."""

    id: int
    size: int
    members: list[Member]
    reasons: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # e.g. {"heads": 64}: the unit is a head of 64
    unit: str = "channels"  # channels (made by convolutions), mlp (by matrix products), heads

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def describe_size(self) -> str:
        """The size in the group's own unit: ``"12 heads x 64"`` or ``"256"``."""
        if "query_heads_per_unit" in self.facts:
            per = self.facts["query_heads_per_unit"]
            return f"{self.size} kv-heads ({per} query heads each) x {self.facts['heads']}"
        if "heads" in self.facts:
            return f"{self.size} heads x {self.facts['heads']}"
        return str(self.size)

    def weights(self, role: str | None = None) -> list[Member]:
        """Initializer/constant members, optionally only those of one role."""
        return [m for m in self.members if m.kind in (INITIALIZER, CONSTANT) and (role is None or m.role == role)]

    @property
    def anchor(self) -> Member | None:
        """The member that names this group in a plan: a weight, preferably with one entry
        per index (a block member, e.g. a head, lists all of its entries in the plan)."""
        ranked = sorted(
            self.weights(),
            key=lambda m: (m.indices.shape[1] != 1, {"out": 0, "in": 1, "param": 2}.get(m.role or "", 3)),
        )
        return ranked[0] if ranked else None

    @property
    def label(self) -> str:
        a = self.anchor
        if a is not None:
            return f"{a.tensor}[{a.axis}]"
        m = self.members[0]
        return f"{m.tensor}[{m.axis}]"


@dataclass
class DependencyGraph:
    """The result of :func:`analyze`: the dims, their couplings and the groups."""

    view: ModelView
    couplings: Couplings
    groups: list[Group]
    forbidden: dict[Dim, list[str]]
    contractions: list[tuple[int, Dim]]  # (node index, data dim it sums over)
    # Shapes at the sizes costs are counted at (per sample, symbolic input dims resolved: see
    # graphprune.ir.input_sizes), for counting only; None: resolved with the defaults when first needed.
    sample_shapes: dict | None = None
    # Model-level notes for inspect and prune: where analysis could not follow the model
    # (shape inference stopping, weights no group covers); other analyses append their own.
    notes: list[str] = field(default_factory=list)
    # every weight dim a rule marked "out", "in" or "param" (groups keep only the non-trivial
    # ones): which axis of a weight a node reduces over, for weight-level passes (sparsity)
    roles: dict[Dim, str] = field(default_factory=dict)
    # weights (constants read by a node, rank >= 2) that no group covers, with why: shown and
    # counted by inspect beside the blocked groups
    unanalysed: dict[str, list[str]] = field(default_factory=dict)
    # the last plan's removed entries (graphprune.analysis.plan.removed_entries), keyed by its contents
    _removed: tuple | None = field(default=None, repr=False, compare=False)
    _graph: nx.MultiGraph | None = field(default=None, repr=False, compare=False)

    @property
    def graph(self) -> nx.MultiGraph:
        """The dims and couplings as a networkx graph (built when first asked for)."""
        if self._graph is None:
            self._graph = self.couplings.to_networkx()
        return self._graph

    @property
    def model(self) -> onnx.ModelProto:
        return self.view.model

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def blocked_groups(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    def blocked_counts(self) -> dict[str, int]:
        """How many groups each rule blocks (a group counts once per rule), most first."""
        counts: dict[str, int] = {}
        for g in self.blocked_groups():
            for kind in dict.fromkeys(reason_kind(r) for r in g.reasons):
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def unanalysed_counts(self) -> dict[str, int]:
        """How many weights outside any group each reason leaves there, most first."""
        counts: dict[str, int] = {}
        for reasons in self.unanalysed.values():
            for kind in dict.fromkeys(reason_kind(r) for r in reasons):
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def why_nothing(self) -> str:
        """One line on why no group is prunable ("" if one is): what blocks the groups, or
        why there are none."""
        if self.prunable_groups():
            return ""
        if self.groups:
            counts = ", ".join(f"{k} ({v})" for k, v in self.blocked_counts().items())
            why = f"all {len(self.groups)} groups are blocked: {counts}"
        else:
            why = "0 groups: no weight tensor has a channel axis that analysis could follow"
        if self.unanalysed:
            why += "; " + "; ".join(
                f"{n} weight{'s' if n > 1 else ''} outside any group: {kind}"
                for kind, n in self.unanalysed_counts().items()
            )
        elif not self.groups and self.notes:
            why += "; " + "; ".join(self.notes)
        return why

    def group_of(self, tensor: str, axis: int) -> Group | None:
        """The group one of whose members is ``tensor``'s ``axis`` (first match)."""
        for g in self.groups:
            for m in g.members:
                if m.tensor == tensor and m.axis == axis:
                    return g
        return None


def body_notes(model: onnx.ModelProto, *, outer: bool = True) -> list[str]:
    """Why weights used inside control flow are not pruned, one line per If/Loop/Scan node
    whose bodies hold parameters or read main-graph weights that no main-graph node reads:
    the analysis follows the main graph only, so those weights are in no group (they do count
    in the model's parameters). ``outer=False`` leaves out the main-graph weights read inside
    bodies (analysis lists them itself, weight by weight, in ``unanalysed``)."""
    from ..ir.graph import _subgraph_inputs
    from ..objectives.cost import body_params

    g = model.graph
    held = dict(body_params(g))
    weights = {t.name: t for t in g.initializer if t.data_type in _FLOAT_TENSORS}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type in _FLOAT_TENSORS:
            weights[node.output[0]] = node.attribute[0].t
    read_in_main = {i for node in g.node for i in node.input}
    notes = []
    for i, node in enumerate(g.node):
        outside = [weights[n] for n in _subgraph_inputs(node) if n in weights and n not in read_in_main]
        name, where = node.name or f"{node.op_type}_{i}", "branches" if node.op_type == "If" else "body"
        if held.get(i):
            notes.append(f"{held[i]} parameters inside {node.op_type} '{name}' {where} are not analysed")
        if outer and outside:
            n = sum(int(np.prod(t.dims, dtype=np.int64)) for t in outside)
            notes.append(f"{n} parameters read inside {node.op_type} '{name}' {where} are not analysed")
    return notes


_FLOAT_TENSORS = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


def analyze(model: onnx.ModelProto | ModelView, *, inexact: bool = False) -> DependencyGraph:
    """Trace the channel dependencies of ``model`` and return its groups.

    ``inexact=True`` also lets normalisations over the pruned axis through (LayerNorm over a
    transformer's hidden width, its decomposed forms): removal then changes the statistics,
    so such groups are marked ``facts["inexact"]`` and validated by fidelity, not exactness.
    """
    mv = model if isinstance(model, ModelView) else view(model)
    collector = _Collector(mv, inexact=inexact)
    for i, node in enumerate(mv.nodes):
        collector.run_rule(i, node)
    collector.check_boundaries()
    groups = _resolve(collector)
    deps = DependencyGraph(
        view=mv,
        couplings=collector.graph,
        groups=groups,
        forbidden=collector.forbidden,
        contractions=collector.contractions,
        roles=dict(collector.roles),
    )
    _note_what_analysis_missed(deps, collector.unknown)
    deps.notes.extend(body_notes(mv.model, outer=False))
    return deps


def node_label(mv: ModelView, index: int) -> str:
    """``"Conv 'conv1'"``, or ``"ai.onnx.ml.Scaler 'scaler'"`` for an op of another domain."""
    node = mv.nodes[index]
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    return f"{op} '{mv.node_names[index]}'"


def unknown_shapes(mv: ModelView) -> dict[str, str]:
    """Where each tensor without a known shape lost it: ``"after ai.onnx.ml.Scaler 'scaler'"``
    names the node where shape inference stopped (the first on its way whose inputs all had
    shapes), ``"from graph input 'x', which declares none"`` an input without a shape."""
    why: dict[str, str] = {}
    for name in mv.graph_inputs:
        if mv.shapes.get(name) is None:
            why[name] = f"from graph input '{name}', which declares none"
    for i, node in enumerate(mv.nodes):
        lost = next((why[t] for t in node.input if t in why), None)
        for t in node.output:
            if t and mv.shapes.get(t) is None:
                why[t] = lost or f"after {node_label(mv, i)}"
    return why


def _unanalysed(deps: DependencyGraph, tensor: str, reason: Reason, readers: dict[str, list[str]]) -> None:
    reasons = deps.unanalysed.setdefault(tensor, [])
    if reason not in reasons:
        reasons.append(reason)
        readers[reason.why].append(reason.where)


def _note_what_analysis_missed(deps: DependencyGraph, unknown: dict[str, str]) -> None:
    """Fill ``deps.unanalysed`` and ``deps.notes``: every weight no group covers because the
    node reading it has no rule or reads a tensor of unknown shape, and every place shape
    inference stopped. Nothing the analysis could not follow is left unsaid."""
    mv = deps.view
    covered = {m.tensor for g in deps.groups for m in g.members}
    versions = opsets(mv.model)
    readers: dict[str, list[str]] = defaultdict(list)  # reason kind -> labels of the nodes
    for i, node in enumerate(mv.nodes):
        for t in node.input:
            source = mv.weight_source(t) if t else None
            shape = mv.shapes.get(source) if source else None
            if source is None or shape is None or len(shape) < 2 or t in covered or source in covered:
                continue
            if rule_for(node, versions) is None:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                reason = Reason(mv.node_names[i], f"no rule for {op}")
            else:
                lost = next((unknown[x] for x in node.input if x in unknown), None)
                if lost is None:
                    continue
                reason = Reason(mv.node_names[i], f"{node.op_type} reads a tensor of unknown shape ({lost})")
            _unanalysed(deps, source, reason, readers)
    for t, uses in mv.consumers.items():  # weights of the main graph that only a subgraph reads
        shape = mv.shapes.get(t)
        if t in covered or not mv.is_constant(t) or shape is None or len(shape) < 2:
            continue
        for i, pos in uses:
            if pos < 0:
                op = mv.nodes[i].op_type
                _unanalysed(deps, t, Reason(mv.node_names[i], f"{op} reads it inside a subgraph"), readers)
    readers = {why: list(dict.fromkeys(names)) for why, names in readers.items()}
    stops: dict[str, int] = {}
    for t, why in unknown.items():
        if t in mv.producer:
            stops[why] = stops.get(why, 0) + 1
    for why, n in stops.items():
        deps.notes.append(f"shape unknown {why}: {n} tensor{'s have' if n > 1 else ' has'} no shape")
    counts = deps.unanalysed_counts()
    for why, names in readers.items():
        shown = ", ".join(repr(x) for x in names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        n = counts.get(why, len(names))
        deps.notes.append(f"{n} weight{'s' if n > 1 else ''} outside any group: {why} (at {shown})")


class Couplings:
    """The dims (``nodes``: dim -> ``{"size", "kind"}``) and their couplings (edges, each
    ``{"a", "b", "kind", "param"}``): the dependency graph in plain dicts, which analysis
    builds and walks (a DenseNet has 2,000 dims and 3,800 couplings);
    :meth:`to_networkx` gives it as a networkx MultiGraph."""

    def __init__(self) -> None:
        self.nodes: dict[Dim, dict] = {}
        self._edges: list[dict] = []
        self._adj: dict[Dim, list[int]] = {}

    def __contains__(self, d) -> bool:
        return d in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def add_node(self, d: Dim, **attr) -> None:
        if d in self.nodes:
            self.nodes[d].update(attr)
        else:
            self.nodes[d] = attr
            self._adj[d] = []

    def add_edge(self, u: Dim, v: Dim, /, **attr) -> None:
        adj = self._adj
        if u not in adj:
            self.add_node(u)
        if v not in adj:
            self.add_node(v)
        adj[u].append(len(self._edges))
        adj[v].append(len(self._edges))
        self._edges.append(attr)

    def edges(self, nbunch: Iterable[Dim] | None = None, data: bool = True) -> Iterator[tuple[Dim, Dim, dict]]:
        """Each coupling touching ``nbunch`` (default: every one) once, as ``(a, b, attrs)``."""
        if nbunch is None:
            for e in self._edges:
                yield e["a"], e["b"], e
            return
        seen: set[int] = set()
        for d in nbunch:
            for i in self._adj.get(d, ()):
                if i not in seen:
                    seen.add(i)
                    e = self._edges[i]
                    yield e["a"], e["b"], e

    def number_of_edges(self) -> int:
        return len(self._edges)

    def components(self) -> Iterator[list[Dim]]:
        """Connected components, in the order of their first dim."""
        seen: set[Dim] = set()
        for start in self.nodes:
            if start in seen:
                continue
            seen.add(start)
            comp, stack = [start], [start]
            while stack:
                d = stack.pop()
                for i in self._adj[d]:
                    e = self._edges[i]
                    other = e["b"] if e["a"] == d else e["a"]
                    if other not in seen:
                        seen.add(other)
                        comp.append(other)
                        stack.append(other)
            yield comp

    def to_networkx(self) -> nx.MultiGraph:
        import networkx as nx

        g = nx.MultiGraph()
        for d, attr in self.nodes.items():
            g.add_node(d, **attr)
        for e in self._edges:
            g.add_edge(e["a"], e["b"], **e)
        return g


class _Collector:
    """Implements the rules' :class:`~graphprune.rules.RuleContext` and gathers their output."""

    def __init__(self, mv: ModelView, *, inexact: bool = False):
        self.view = mv
        self.inexact = inexact
        self.opsets = opsets(mv.model)  # which registered rules apply (register_rule's versions)
        self.graph = Couplings()
        self.roles: dict[Dim, str] = {}
        self.forbidden: dict[Dim, list[str]] = defaultdict(list)
        self.declared: set[tuple[int, str, int]] = set()
        self.contractions: list[tuple[int, Dim]] = []
        self.tags: dict[Dim, dict] = {}
        self._node_index = -1
        self._node: onnx.NodeProto | None = None
        self.unknown = unknown_shapes(mv)

    # --- RuleContext -------------------------------------------------------------
    def run_rule(self, index: int, node: onnx.NodeProto) -> None:
        rule = rule_for(node, self.opsets)
        if rule is None:
            return
        self._node_index, self._node = index, node
        try:
            rule(node, self)
        except Exception as exc:  # a rule that trips on an odd node must not crash the run
            name = self.view.node_names[index]
            for t in list(node.input) + list(node.output):
                for ax in range(len(self.view.shapes.get(t) or ())):
                    self.forbid(self.dim(t, ax), Reason(name, f"rule for {node.op_type} failed: {exc}"))
        finally:
            self._node = None

    def attr(self, name: str, default=None):
        for a in self._node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def shape(self, tensor: str):
        return self.view.shapes.get(tensor)

    def value(self, tensor: str):
        return self.view.value(tensor)

    def dim(self, tensor: str, axis: int) -> Dim | None:
        shape = self.view.shapes.get(tensor)
        if shape is None or not tensor:
            return None
        rank = len(shape)
        if not -rank <= axis < rank:
            return None
        axis = axis + rank if axis < 0 else axis
        d = (tensor, axis)
        if d not in self.graph.nodes:
            self.graph.add_node(d, size=shape[axis], kind=self._kind(tensor))
        self.declared.add((self._node_index, tensor, axis))
        return d

    def virtual(self, label: str, size: int) -> Dim:
        d = (label, -1)
        self.graph.add_node(d, size=size, kind=VIRTUAL)
        return d

    def identity(self, a: Dim | None, b: Dim | None) -> None:
        self._edge(a, b, "identity", 0)

    def segment(self, part: Dim | None, whole: Dim | None, offset: int) -> None:
        self._edge(part, whole, "segment", offset)

    def block(self, coarse: Dim | None, fine: Dim | None, k: int) -> None:
        self._edge(coarse, fine, "identity" if k == 1 else "block", k)

    def strided(self, coarse: Dim | None, fine: Dim | None, outer: int, inner: int) -> None:
        if outer == 1:
            self.block(coarse, fine, inner)
        else:
            self._edge(coarse, fine, "strided", (outer, inner))

    def tag(self, d: Dim | None, key: str, value) -> None:
        if d is not None:
            self.tags.setdefault(d, {})[key] = value

    def inexact_ok(self, d: Dim | None, reason: str) -> bool:
        """A rule that cannot preserve the function on ``d``: with ``inexact`` analysis the dim
        is allowed and its group marked inexact (True); otherwise it is forbidden (False)."""
        if d is None:
            return False
        if self.inexact:
            name = self.view.node_names[self._node_index]
            self.tag(d, "inexact", f"{name} ({reason})")
            return True
        self.forbid(d, reason)
        return False

    def contract(self, d: Dim | None) -> None:
        if d is not None:
            self.contractions.append((self._node_index, d))

    def role(self, d: Dim | None, role: str) -> None:
        """Mark a weight dim; a weight computed by Cast/DequantizeLinear passes its role to the
        stored constant's same axis, which is what criteria read."""
        if d is None:
            return
        self.roles.setdefault(d, role)
        source = self.view.weight_source(d[0])
        if source is not None and source != d[0] and (source, d[1]) in self.graph:
            self.roles.setdefault((source, d[1]), role)

    def forbid(self, d: Dim | None, reason: str) -> None:
        """Block ``d``; a rule's plain-text reason is attached to the node it reads."""
        if d is None:
            return
        if not isinstance(reason, Reason) and self._node is not None:
            op = self._node.op_type
            why = reason if reason.startswith(op) else f"{op} {reason}"
            reason = Reason(self.view.node_names[self._node_index], why)
        if reason not in self.forbidden[d]:
            self.forbidden[d].append(reason)

    # --- helpers -----------------------------------------------------------------
    def _edge(self, a: Dim | None, b: Dim | None, kind: str, param: int) -> None:
        if a is None or b is None:
            # One side has no known shape: the other side must not lose entries alone.
            known = a if b is None else b
            if known is not None and self._node is not None:
                ports = list(self._node.input) + list(self._node.output)
                lost = next((self.unknown[t] for t in ports if t in self.unknown), None)
                where = f" ({lost})" if lost else ""
                self.forbid(known, f"{self._node.op_type} couples it to a tensor of unknown shape{where}")
            return
        if a == b:
            return
        self.graph.add_edge(a, b, a=a, b=b, kind=kind, param=param)

    def _kind(self, tensor: str) -> str:
        if tensor in self.view.initializers and tensor not in self.view.graph_inputs:
            return INITIALIZER
        if tensor in self.view.constant_nodes:
            return CONSTANT
        return ACTIVATION

    def check_boundaries(self) -> None:
        """Forbid dims that leave the graph or meet a node that does not follow them."""
        mv = self.view
        inputs, outputs = set(mv.graph_inputs), set(mv.graph_outputs)
        for d, data in self.graph.nodes.items():
            if data["kind"] == VIRTUAL:
                continue
            tensor, axis = d
            if data["size"] is None:
                self.forbid(d, Reason(tensor, f"unknown size of axis {axis}"))
            if tensor in inputs:
                self.forbid(d, Reason(tensor, "graph input"))
            if tensor in outputs:
                self.forbid(d, Reason(tensor, "graph output"))
            if data["kind"] == ACTIVATION and tensor in mv.producer:
                self._check_node(mv.producer[tensor], d, "writes")
            for ci, pos in mv.consumers.get(tensor, ()):
                if pos < 0:
                    self.forbid(d, Reason(mv.node_names[ci], f"{mv.nodes[ci].op_type} reads it inside a subgraph"))
                else:
                    self._check_node(ci, d, "reads")

    def _check_node(self, index: int, d: Dim, verb: str) -> None:
        if (index, d[0], d[1]) in self.declared:
            return
        node = self.view.nodes[index]
        name = self.view.node_names[index]
        if rule_for(node, self.opsets) is None:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            self.forbid(d, Reason(name, f"no rule for {op}"))
        else:
            ports = node.input if verb == "reads" else node.output
            side = f"{'input' if verb == 'reads' else 'output'} {list(ports).index(d[0])}"
            self.forbid(d, Reason(name, f"{node.op_type} has no rule for axis {d[1]} of {side}"))


def _resolve(c: _Collector) -> list[Group]:
    """Entry-level classes of the coupled dims, gathered into groups."""
    g = c.graph
    comps: list[list[Dim]] = []
    broken: list[tuple[list[Dim], str]] = []
    for comp in g.components():
        if not any(d in c.roles for d in comp):
            continue  # batch/spatial/kernel axes, shape arithmetic: no weight entry to remove
        reason = _inconsistent(g, comp)
        if reason:
            broken.append((comp, reason))
        else:
            comps.append(comp)
    order = _dim_order(c)
    keep = [d for comp in comps for d in comp]
    keep.sort(key=order)
    groups = _entry_groups(c, keep, comps)
    for comp, reason in broken:
        comp.sort(key=order)
        members = [
            Member(t, ax, g.nodes[(t, ax)]["kind"], c.roles.get((t, ax)), np.zeros((0, 1), np.int64)) for t, ax in comp
        ]
        reasons = [reason] + [r for d in comp for r in c.forbidden.get(d, [])]
        groups.append(Group(id=-1, size=0, members=members, reasons=list(dict.fromkeys(reasons))))
    for i, grp in enumerate(groups):
        grp.id = i
    return groups


def _dim_order(c: _Collector):
    order = {}
    for i, node in enumerate(c.view.nodes):
        for t in list(node.input) + list(node.output):
            order.setdefault(t, i)

    def key(d: Dim):
        return (order.get(d[0], len(order)), d[0], d[1])

    return key


def _inconsistent(g: Couplings, comp: Iterable[Dim]) -> str | None:
    for d in comp:
        if g.nodes[d]["size"] is None:
            return Reason(d[0], f"unknown size of axis {d[1]}")
    for _a, _b, data in g.edges(comp, data=True):
        ea, eb = data["a"], data["b"]
        sa, sb = g.nodes[ea]["size"], g.nodes[eb]["size"]
        kind, p = data["kind"], data["param"]
        ok = (
            (kind == "identity" and sa == sb)
            or (kind == "segment" and p + sa <= sb)
            or (kind == "block" and sa * p == sb)
            or (kind == "strided" and sa * p[0] * p[1] == sb)
        )
        if not ok:
            return Reason(ea[0], f"inconsistent sizes: axis {ea[1]} ({sa}) coupled to {eb[0]} axis {eb[1]} ({sb})")
    return None


@dataclass
class _Part:
    """A group found by one resolution, before ordering: its first dim (index in the sorted
    dims), its signature hash (the tie-break of groups with the same first dim) and contents."""

    first_dim: int
    sig: int
    size: int
    members: list[Member]
    reasons: list[str]

    @property
    def trivial(self) -> bool:
        # A group of one entry can lose nothing (one entry always stays): batch axes met by
        # broadcasting, one entry of a shape vector that scales a weight. Entries that no weight
        # touches make no group either: there is nothing to remove them from.
        return self.size == 1 or not any(m.role for m in self.members)


def _entry_groups(c: _Collector, dims: list[Dim], comps: list[list[Dim]] | None = None) -> list[Group]:
    """The groups of ``dims`` (sorted), which are whole connected ``comps``.

    A component whose couplings are all translations (identity, segment) is resolved over
    *atoms*, the ranges of entries that every coupling maps onto ranges whole (one per conv
    output inside a DenseNet's concats): the entry classes are then (atom class, offset), and
    a group is the atom classes with equal (dim, count) signatures. The others (block and
    strided maps: grouped convolutions, heads) are resolved entry by entry. Both give the same
    groups, members and order as resolving every dim entry by entry (:func:`_entry_parts`), which
    is what runs when two signatures' hashes collide.
    """
    if not dims:
        return []
    index = {d: i for i, d in enumerate(dims)}
    salt = _signature_salt(len(dims))
    parts: list[_Part] = []
    rest: list[int] = []
    cuts: dict[int, set[int]] = {}
    edges: list[tuple[int, int, int]] = []
    for comp in comps if comps is not None else [dims]:
        found = _cut_points(c, dims, sorted(index[d] for d in comp)) if comps is not None else None
        if found is None:
            rest.extend(index[d] for d in comp)
        else:
            cuts.update(found[0])
            edges.extend(found[1])
    if cuts:
        found = _atom_parts(c, dims, cuts, edges, salt)
        if found is None:  # hashes collided: resolve everything at once, as the exact split orders it
            return _ordered(c, _entry_parts(c, dims, list(range(len(dims))), salt, exact=True))
        parts.extend(found)
    if rest:
        found = _entry_parts(c, dims, sorted(rest), salt)
        if found is None:  # hashes collided: resolve everything at once, as the exact split orders it
            parts = _entry_parts(c, dims, list(range(len(dims))), salt, exact=True)
        else:
            parts.extend(found)
    if len({p.sig for p in parts}) < len(parts):  # two groups' hashes collide (across resolutions)
        parts = _entry_parts(c, dims, list(range(len(dims))), salt, exact=True)
    return _ordered(c, parts)


def _ordered(c: _Collector, parts: list[_Part]) -> list[Group]:
    """The non-trivial groups, by first dim and then hash (or number, when split exactly)."""
    ordered = sorted((p for p in parts if not p.trivial), key=lambda p: (p.first_dim, p.sig))
    return [
        _with_unit(c, Group(id=0, size=p.size, members=p.members, reasons=list(dict.fromkeys(p.reasons))))
        for p in ordered
    ]


# A component whose atoms would outnumber its entries by this fraction is resolved entry by
# entry: atoms are worth it only when there are few of them (whole conv outputs, not entries).
_ATOM_SHARE = 0.25


def _cut_points(
    c: _Collector, dims: list[Dim], comp: list[int]
) -> tuple[dict[int, set[int]], list[tuple[int, int, int]]] | None:
    """The cut points of one component's dims (indices into ``dims``), closed under its
    couplings, and those couplings as translations ``(a, b, shift)``: entry x of a is entry
    x + shift of b. None if a coupling is not a translation or there would be too many atoms."""
    g = c.graph
    sizes = {i: g.nodes[dims[i]]["size"] for i in comp}
    local = {dims[i]: i for i in comp}
    # the translations between dims (entry x of a is x + shift of b); dims joined by identities
    # share their cut points, so cut points travel between those classes along segments only
    edges: list[tuple[int, int, int]] = []
    same = {i: i for i in comp}

    def rep(i: int) -> int:
        while same[i] != i:
            same[i] = same[same[i]]
            i = same[i]
        return i

    segments = []
    for _a, _b, data in g.edges([dims[i] for i in comp], data=True):
        kind = data["kind"]
        ia, ib = local[data["a"]], local[data["b"]]
        if kind == "identity":
            edges.append((ia, ib, 0))
            ra, rb = rep(ia), rep(ib)
            if ra != rb:
                same[max(ra, rb)] = min(ra, rb)
        elif kind == "segment":
            edges.append((ia, ib, data["param"]))
            segments.append((ia, ib, data["param"]))
        else:
            return None
    moves: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)  # to, shift, lo, hi
    for ia, ib, shift in segments:
        ra, rb = rep(ia), rep(ib)
        moves[ra].append((rb, shift, 0, sizes[ia]))
        moves[rb].append((ra, -shift, shift, shift + sizes[ia]))
    reps = [i for i in comp if rep(i) == i]
    budget = max(64, int(_ATOM_SHARE * sum(sizes.values())))
    cuts = {i: {0, sizes[i]} for i in reps}
    count = 2 * len(reps)
    pending = {i: set(cuts[i]) for i in reps if i in moves}
    work = list(pending)
    while work:
        u = work.pop()
        points = pending.pop(u)
        for v, shift, lo, hi in moves[u]:
            new = {p + shift for p in points if lo <= p <= hi}
            new.difference_update(cuts[v])
            if not new:
                continue
            count += len(new)
            if count > budget:
                return None
            cuts[v] |= new
            if v in pending:
                pending[v] |= new
            else:
                pending[v] = new
                work.append(v)
    return {i: cuts[rep(i)] for i in comp}, edges


def _atom_parts(
    c: _Collector, dims: list[Dim], cuts: dict[int, set[int]], edges: list[tuple[int, int, int]], salt: np.ndarray
) -> list[_Part] | None:
    """The groups of components resolved over their atoms (``cuts`` and ``edges`` from
    :func:`_cut_points`), or None if two signatures' hashes collide."""
    g = c.graph
    comp = sorted(cuts)
    # atoms: consecutive cut points of each dim, numbered dim by dim (dims by position in comp)
    nc = len(comp)
    bounds = [np.array(sorted(cuts[i]), dtype=np.int64) for i in comp]
    n_cuts = np.array([len(b) for b in bounds], dtype=np.int64)
    cut_off = np.concatenate([[0], np.cumsum(n_cuts)])
    first_atom = cut_off[:-1] - np.arange(nc)  # each dim has one cut more than atoms
    n_atoms = int(cut_off[-1]) - nc
    cut = np.concatenate(bounds)
    atom_pos = np.repeat(np.arange(nc), n_cuts - 1)
    keep_cut = np.ones(len(cut), dtype=bool)
    keep_cut[cut_off[1:] - 1] = False  # the last cut of a dim starts no atom
    atom_start = cut[keep_cut]
    atom_len = cut[1:][keep_cut[:-1]] - atom_start
    # each translation joins the atoms of a to the atoms of b they land on (cuts match exactly)
    pos = {i: p for p, i in enumerate(comp)}
    if edges:
        ea, eb, eshift = (np.array(col, dtype=np.int64) for col in zip(*edges))
        ea, eb = np.array([pos[i] for i in ea.tolist()]), np.array([pos[i] for i in eb.tolist()])
        count = n_cuts[ea] - 1
        rep = np.repeat(np.arange(len(ea)), count)
        within = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        u = first_atom[ea][rep] + within
        span = int(cut.max()) + 1
        target = eb[rep] * span + atom_start[u] + eshift[rep]
        v = np.searchsorted(np.repeat(np.arange(nc), n_cuts) * span + cut, target) - eb[rep]
        label = _union_find(n_atoms, u, v)
    else:
        label = np.arange(n_atoms, dtype=np.int64)
    atom_dim = np.asarray(comp, dtype=np.int64)[atom_pos]  # index in dims
    # an atom class's signature: its (dim, count) pairs, as each entry class of it has them
    nd = len(dims)
    pair, counts = np.unique(label * nd + atom_dim, return_counts=True)
    pair_label, pair_dim = pair // nd, pair % nd
    start = np.flatnonzero(np.concatenate([[True], pair_label[1:] != pair_label[:-1]]))
    roots, length = pair_label[start], np.diff(np.concatenate([start, [len(pair_label)]]))
    with np.errstate(over="ignore"):
        sig = np.add.reduceat(salt[pair_dim] * counts.astype(np.uint64), start)
    signature: dict[int, tuple[bytes, bytes]] = {}
    group_of_class = np.empty(len(roots), dtype=np.int64)
    sigs: dict[int, int] = {}  # hash -> group number
    for k, (s, lo, n) in enumerate(zip(sig.tolist(), start.tolist(), length.tolist())):
        exact = (pair_dim[lo : lo + n].tobytes(), counts[lo : lo + n].tobytes())
        if signature.setdefault(s, exact) != exact:
            return None  # a collision: the entry-level resolution splits it exactly
        group_of_class[k] = sigs.setdefault(s, len(sigs))
    class_of_root = np.full(n_atoms, -1, dtype=np.int64)
    class_of_root[roots] = np.arange(len(roots))
    cls = class_of_root[label]
    class_len = atom_len[roots]
    if not np.array_equal(atom_len, class_len[cls]):  # cannot be, cut points being closed: be safe
        return None
    grp = group_of_class[cls]
    # a class's rank in its group: its first entry on the group's first dim (classes of one
    # group share their dims, and their atoms on a dim are disjoint)
    first_start = np.full(len(roots), np.iinfo(np.int64).max, dtype=np.int64)
    first_dim_of_class = np.full(len(roots), nd, dtype=np.int64)
    np.minimum.at(first_dim_of_class, cls, atom_dim)
    on_first = atom_dim == first_dim_of_class[cls]
    np.minimum.at(first_start, cls[on_first], atom_start[on_first])
    # atoms as members lay them out, (group, dim, class rank, start); a member's row of class
    # entry t is its atoms' starts + t
    order = np.lexsort((atom_start, first_start[cls], atom_dim, grp))
    g_o, d_o, c_o, s_o = grp[order], atom_dim[order], cls[order], atom_start[order]
    change = (g_o[1:] != g_o[:-1]) | (d_o[1:] != d_o[:-1])
    seg_start = np.flatnonzero(np.concatenate([[True], change | (c_o[1:] != c_o[:-1])]))
    k_seg = np.diff(np.concatenate([seg_start, [n_atoms]]))
    size_seg = k_seg * class_len[c_o[seg_start]]
    flat_base = np.concatenate([[0], np.cumsum(size_seg)])
    seg_of = np.repeat(np.arange(len(seg_start)), size_seg)
    e = np.arange(int(flat_base[-1]), dtype=np.int64) - flat_base[seg_of]
    k_of = k_seg[seg_of]
    values = s_o[seg_start[seg_of] + e % k_of] + e // k_of
    # members: runs of (group, dim)
    mem_start = np.flatnonzero(np.concatenate([[True], change]))
    mem_lo = flat_base[np.searchsorted(seg_start, mem_start)]
    mem_hi = np.concatenate([mem_lo[1:], flat_base[-1:]])
    n_groups = len(sigs)
    size_of_group = np.bincount(group_of_class, weights=class_len, minlength=n_groups).astype(np.int64).tolist()
    members: list[list[Member]] = [[] for _ in range(n_groups)]
    reasons: list[list[str]] = [[] for _ in range(n_groups)]
    first_dim: list[int] = [nd] * n_groups
    nodes, roles, forbidden = g.nodes, c.roles, c.forbidden
    for gi, d, lo, hi in zip(g_o[mem_start].tolist(), d_o[mem_start].tolist(), mem_lo.tolist(), mem_hi.tolist()):
        dim = dims[d]
        if not members[gi]:
            first_dim[gi] = d
        n = size_of_group[gi]
        members[gi].append(
            Member(dim[0], dim[1], nodes[dim]["kind"], roles.get(dim), values[lo:hi].reshape(n, (hi - lo) // n))
        )
        why = forbidden.get(dim)
        if why:
            reasons[gi].extend(why)
    return [
        _Part(first_dim=first_dim[gi], sig=s, size=size_of_group[gi], members=members[gi], reasons=reasons[gi])
        for s, gi in sigs.items()
    ]


def _entry_parts(
    c: _Collector, dims: list[Dim], sub: list[int], salt: np.ndarray, *, exact: bool = False
) -> list[_Part] | None:
    """The groups of the dims ``sub`` (indices into ``dims``, ascending; whole components)
    resolved entry by entry. None if two classes' signature hashes collide, unless ``exact``:
    then the groups are split by their exact pairs, and numbered as that split orders them."""
    g = c.graph
    sdims = [dims[i] for i in sub]
    index = {d: i for i, d in enumerate(sdims)}
    sizes = np.array([g.nodes[d]["size"] for d in sdims], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    label = _union_find(n, *_entry_pairs(g, index, sizes, offsets))
    dim_of = np.repeat(np.arange(len(sdims)), sizes)

    # Classes with the same dims, touched the same number of times, form one group.
    nd = len(sdims)
    pair, counts = np.unique(label * nd + dim_of, return_counts=True)
    roots, group_of_root, sigs, collided = _class_groups(
        pair // nd, pair % nd, counts, nd, salt=salt[np.asarray(sub, dtype=np.int64)], with_sigs=True
    )
    if collided and not exact:
        return None
    n_groups = int(group_of_root.max()) + 1
    classes_per_group = np.bincount(group_of_root, minlength=n_groups)
    group_of_label = np.full(n, -1, dtype=np.int64)
    group_of_label[roots] = group_of_root
    entry_group = group_of_label[label]

    # A class's rank in its group: its first entry on the group's first dim. Sorting all
    # entries by (group, dim, class rank, entry) lays out every member as [N, k] rows.
    first_dim = np.full(n_groups, nd, dtype=np.int64)
    np.minimum.at(first_dim, entry_group, dim_of)
    on_first = dim_of == first_dim[entry_group]
    key = np.full(n, n, dtype=np.int64)
    np.minimum.at(key, label[on_first], np.flatnonzero(on_first))
    order = _order(entry_group, dim_of, key[label], n_groups, nd, n)
    run_id = entry_group[order] * nd + dim_of[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(run_id)) + 1, [n]])

    # One member per run; the per-run numbers are read out of numpy once (a DenseNet has
    # thousands of runs: concat outputs hold a segment of every earlier layer's group).
    first = order[starts[:-1]]
    run_group, run_dim = entry_group[first], dim_of[first]
    local = order - offsets[dim_of[order]]  # each entry's index on its own dim
    kinds = [g.nodes[d]["kind"] for d in sdims]
    members: dict[int, list[Member]] = {}
    reasons: dict[int, list[str]] = {}
    for lo, hi, gi, d, n_cls in zip(
        starts[:-1].tolist(),
        starts[1:].tolist(),
        run_group.tolist(),
        run_dim.tolist(),
        classes_per_group[run_group].tolist(),
    ):
        dim = sdims[d]
        members.setdefault(gi, []).append(
            Member(
                tensor=dim[0],
                axis=dim[1],
                kind=kinds[d],
                role=c.roles.get(dim),
                indices=local[lo:hi].reshape(n_cls, (hi - lo) // n_cls),
            )
        )
        reasons.setdefault(gi, []).extend(c.forbidden.get(dim, ()))
    # with exact splitting the group number, not the hash, orders groups of one first dim
    return [
        _Part(
            first_dim=sub[int(first_dim[gi])],
            sig=gi if exact else sigs[gi],
            size=int(classes_per_group[gi]),
            members=members[gi],
            reasons=reasons[gi],
        )
        for gi in range(n_groups)
    ]


def _order(group: np.ndarray, dim: np.ndarray, rank: np.ndarray, n_groups: int, nd: int, n: int) -> np.ndarray:
    """The entries sorted by (group, dim, class rank, entry): one argsort of a combined int64 key
    where it fits (3-8x faster than ``np.lexsort`` of the four keys), else the lexsort."""
    if n_groups * nd * (n + 1) * max(n, 1) < 2**62:
        return np.argsort(((group * nd + dim) * (n + 1) + rank) * n + np.arange(n, dtype=np.int64))
    return np.lexsort((np.arange(n), rank, dim, group))


def _signature_salt(nd: int) -> np.ndarray:
    """One random 64-bit weight per dim for the class signatures (a fixed seed: stable group order)."""
    return np.random.default_rng(12345).integers(1, 2**62, size=nd, dtype=np.int64).astype(np.uint64)


def _class_groups(
    pair_label: np.ndarray,
    pair_dim: np.ndarray,
    counts: np.ndarray,
    nd: int,
    *,
    salt: np.ndarray | None = None,
    with_sigs: bool = False,
):
    """The classes (``roots``, sorted) and the group of each: classes group together exactly
    when their (dim, count) pairs are equal. Pairs come sorted by (label, dim).

    A salted sum over a class's pairs buckets the classes; every class is then compared pair
    by pair with the first class of its bucket, and a bucket where one differs (a collision
    of the sums) is split by the exact pairs, so correctness does not rest on the hash.
    ``salt`` (one weight per dim; default :func:`_signature_salt`) and ``with_sigs``: also
    return each group's hash (a Python int; group numbers follow them unless split) and
    whether a bucket was split.
    """
    salt = _signature_salt(nd) if salt is None else salt
    roots, start, length = np.unique(pair_label, return_index=True, return_counts=True)
    with np.errstate(over="ignore"):
        sig = np.add.reduceat(salt[pair_dim] * counts.astype(np.uint64), start)
    _, first, bucket = np.unique(sig, return_index=True, return_inverse=True)
    bucket = bucket.reshape(-1)
    rep = first[bucket]  # the first class of each class's bucket
    class_of_pair = np.repeat(np.arange(len(roots)), length)
    pos = np.arange(len(pair_label)) - start[class_of_pair]
    rep_pair = start[rep[class_of_pair]] + np.minimum(pos, length[rep[class_of_pair]] - 1)
    differs = (pair_dim != pair_dim[rep_pair]) | (counts != counts[rep_pair])
    bad = length != length[rep]
    bad[class_of_pair[differs]] = True
    collided = bool(bad.any())
    if collided:
        split = np.flatnonzero(np.isin(bucket, bucket[bad]))
        exact: dict[tuple[bytes, bytes], int] = {}
        bucket = bucket.copy()
        for ci in split:
            s, e = start[ci], start[ci] + length[ci]
            key = (pair_dim[s:e].tobytes(), counts[s:e].tobytes())
            bucket[ci] = len(first) + exact.setdefault(key, len(exact))
        _, bucket = np.unique(bucket, return_inverse=True)
    if not with_sigs:
        return roots, bucket.reshape(-1)
    return roots, bucket.reshape(-1), sig[first].tolist(), collided


# onnxruntime contrib ops that make channels from a weight as MatMul does (rules/contrib.py)
_MATRIX_OPS = frozenset({"MatMul", "Gemm", "Gather", "Attention", "FusedMatMul", "FusedGemm", "MatMulNBits"})


def _with_unit(c: _Collector, group: Group) -> Group:
    """Fill ``facts`` from the members' tags and name the unit: heads, mlp or channels."""
    for m in group.members:
        tags = c.tags.get((m.tensor, m.axis), {})
        group.facts.update(tags)
        if "heads" in tags and m.indices.shape[1] > 1:  # grouped-query attention
            group.facts["query_heads_per_unit"] = max(group.facts.get("query_heads_per_unit", 1), m.indices.shape[1])
    if "inexact" in group.facts:
        group.unit = "hidden"
        return group
    makers = {c.view.nodes[i].op_type for m in group.weights("out") for i, _ in c.view.weight_readers(m.tensor)}
    by_matrices = bool(makers) and makers <= _MATRIX_OPS | {"Cast", "DequantizeLinear", "Identity"}
    if "heads" in group.facts and by_matrices:  # projections make heads; a patch grid is not one
        group.unit = "heads"
        return group
    group.facts.pop("heads", None)
    group.facts.pop("query_heads_per_unit", None)
    if by_matrices:
        group.unit = "mlp"
    return group


def _entry_pairs(g: Couplings, index: dict, sizes: np.ndarray, offsets: np.ndarray):
    """Entry pairs ``(u, v)`` of every coupling, built for all edges at once.

    Edge ``e`` pairs ``n_e`` entries, ``t = 0 .. n_e-1``: ``u = a + t // q`` and
    ``v = b + shift + t``, with ``q = 1`` except for block maps (coarse ``a[i]`` owns fine
    ``b[i*k:(i+1)*k]``: ``q = k``) and ``shift`` the offset of a segment.
    """
    rows = []
    us, vs = [], []
    for _a, _b, data in g.edges(list(index), data=True):
        ia, ib = index[data["a"]], index[data["b"]]
        kind, p = data["kind"], data["param"]
        if kind == "strided":  # coarse[i] owns fine[o*n*inner + i*inner + r] for every o, r (rare)
            outer, inner = p
            n = sizes[ia]
            o, i, r = np.meshgrid(np.arange(outer), np.arange(n), np.arange(inner), indexing="ij")
            us.append(offsets[ia] + i.ravel())
            vs.append(offsets[ib] + (o * n * inner + i * inner + r).ravel())
            continue
        q = p if kind == "block" else 1
        shift = p if kind == "segment" else 0
        rows.append((offsets[ia], offsets[ib], sizes[ia] * q, q, shift))
    if rows:
        oa, ob, count, q, shift = (np.array(col, dtype=np.int64) for col in zip(*rows))
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        t = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(start, count)
        us.append(np.repeat(oa, count) + t // np.repeat(q, count))
        vs.append(np.repeat(ob + shift, count) + t)
    if not us:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(us).astype(np.int64), np.concatenate(vs).astype(np.int64)


def _union_find(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smallest entry of each connected component, for every entry (numpy, no Python loop per edge)."""
    parent = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return parent
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            return parent
        m = np.minimum(pu[differ], pv[differ])
        np.minimum.at(parent, pu[differ], m)
        np.minimum.at(parent, pv[differ], m)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
