"""Groups that change the graph's inputs and outputs: a KV cache's heads (``--allow-io-change``).

A group whose member is a graph input or output is blocked (the model's interface is a
user's contract). A decoder with a KV cache carries state through its interface: layer ``i``
reads ``past_key_values.i.key`` and writes ``present.i.key``, which the caller feeds back as
the next past. Its key/value heads reach both, so they are blocked, yet pruning them is sound
as long as past and present lose the same heads: the caller's cache simply gets smaller.

Rules:
1. Off by default. With ``allow_io_change`` a group may be pruned when its only obstacles are
   graph inputs and outputs, and every one of them is *paired*: each graph input of the group
   has a graph output in the same group, and each graph output a graph input, such that the
   two are on the same axis, lose the same entries (identical member indices, so the axis has
   the same size), have the same rank and element type (other axes may differ: a cache's
   sequence grows from ``past_seq`` to ``total_seq``, or from 3 to 4 in a fixed-shape export),
   and the output is computed from the input (carried state, as a cache). Past and present
   then change together, and the model can be fed its own outputs.
2. Any other graph input or output in a group keeps it blocked (logits, hidden states, an
   encoder's output: a shape the caller did not agree to change); ``deps.notes`` says how
   many groups stayed blocked for that.
3. Every graph input or output whose shape changed is listed (:func:`io_changes`, the report's
   ``io_changes``): name, input or output, axis, declared dims before and after, and the
   entries removed on that axis (which heads of the caller's cache go).
4. Validation feeds the pruned model the kept entries of each changed input
   (:func:`IoMap.feeds`) and compares each changed output (and any compared tensor) with the
   kept entries of the reference's and the original's (:func:`IoMap.kept`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .dependency import DependencyGraph, reason_kind
from .plan import IO_CHANGES_KEY, Plan

IO_REASONS = frozenset({"graph input", "graph output"})


@dataclass
class IoChange:
    """One graph input or output whose declared shape the pruning changed."""

    name: str
    kind: str  # "input" | "output"
    axis: int
    before: list  # declared dims: ints, or the symbolic names as strings (None: unnamed)
    after: list
    removed: list[int]  # entries removed on ``axis``

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "axis": self.axis,
            "before": self.before,
            "after": self.after,
            "removed": self.removed,
        }


@dataclass
class Released:
    """What :func:`release_io` did: groups released, and groups left blocked by unpaired IO."""

    groups: list[int] = field(default_factory=list)
    unpaired: dict[int, list[str]] = field(default_factory=dict)  # group id -> its unpaired IO tensors


def paired_io(deps: DependencyGraph) -> tuple[dict[int, list[list[str]]], dict[int, list[str]]]:
    """Without changing ``deps``: the blocked groups rule 1 would release, with their [input,
    output] pairs, and those blocked only by graph IO that rule 2 keeps, with the unpaired tensors."""
    mv = deps.view
    inputs, outputs = set(mv.graph_inputs), set(mv.graph_outputs)
    declared = {vi.name: vi for vi in [*mv.model.graph.input, *mv.model.graph.output]}
    paired: dict[int, list[list[str]]] = {}
    unpaired: dict[int, list[str]] = {}
    for g in deps.groups:
        if g.prunable or any(reason_kind(r) not in IO_REASONS for r in g.reasons):
            continue
        io = [m for m in g.members if m.tensor in inputs or m.tensor in outputs]
        ins = [m for m in io if m.tensor in inputs]
        outs = [m for m in io if m.tensor in outputs and m.tensor not in inputs]
        pairs, left = _pair(mv, declared, ins, outs)
        if left or not pairs:
            unpaired[g.id] = left or [m.tensor for m in io]
        else:
            paired[g.id] = [[a, b] for a, b in pairs]
    return paired, unpaired


def release_io(deps: DependencyGraph) -> Released:
    """Make the groups that rule 1 allows prunable (their IO reasons removed, the paired tensors
    in ``facts["io"]``); a note in ``deps.notes`` for the groups rule 2 keeps blocked. Mutates
    ``deps`` and is idempotent."""
    paired, unpaired = paired_io(deps)
    out = Released(groups=sorted(paired), unpaired=unpaired)
    for gid, pairs in paired.items():
        deps.groups[gid].reasons = []
        deps.groups[gid].facts["io"] = pairs
    if out.unpaired:
        n = len(out.unpaired)
        names = sorted({t for ts in out.unpaired.values() for t in ts})
        shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        note = (
            f"--allow-io-change: {n} group{'s' if n > 1 else ''} reaching graph inputs/outputs not paired as"
            f" carried state (past -> present) stay blocked ({shown})"
        )
        if note not in deps.notes:  # released twice (a plan applied with the flag): said once
            deps.notes.append(note)
    return out


def release_for(plans: dict | list, deps: DependencyGraph, allow: bool | None = None) -> None:
    """:func:`release_io` when ``allow``, or (None) when one of ``plans`` (plans' JSON objects, or
    one) lists graph inputs/outputs it changed, as a prune that allowed them writes: applying,
    composing or validating such a plan needs those groups prunable."""
    listed = [plans] if isinstance(plans, dict) else plans
    if allow or (allow is None and any(isinstance(p, dict) and p.get(IO_CHANGES_KEY) for p in listed)):
        release_io(deps)


def _pair(mv, declared: dict, ins: list, outs: list) -> tuple[list[tuple[str, str]], list[str]]:
    """Match each graph-input member with a graph-output member (rule 1); the pairs, and the
    tensors left unmatched."""
    pairs, free = [], list(outs)
    unpaired = []
    for a in ins:
        match = next((b for b in free if _pairs_with(mv, declared, a, b)), None)
        if match is None:
            unpaired.append(a.tensor)
            continue
        free.remove(match)
        pairs.append((a.tensor, match.tensor))
    unpaired += [b.tensor for b in free]
    return pairs, unpaired


def _pairs_with(mv, declared: dict, a, b) -> bool:
    if a.axis != b.axis or a.indices.shape != b.indices.shape or not np.array_equal(a.indices, b.indices):
        return False
    ta, tb = declared[a.tensor].type.tensor_type, declared[b.tensor].type.tensor_type
    if ta.elem_type != tb.elem_type or len(ta.shape.dim) != len(tb.shape.dim):
        return False
    return a.tensor in _ancestors(mv, b.tensor)


def _ancestors(mv, tensor: str) -> set[str]:
    """Every tensor ``tensor`` is computed from (through the main graph)."""
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        i = mv.producer.get(t)
        if i is None:
            continue
        for x in mv.nodes[i].input:
            if x and x not in seen:
                seen.add(x)
                stack.append(x)
    return seen


def io_changes(deps: DependencyGraph, plan: Plan) -> list[IoChange]:
    """Every graph input and output whose declared shape ``plan`` changes (rule 3), inputs first."""
    from .plan import removed_entries

    removed = removed_entries(deps, plan)
    mv = deps.view
    changes = []
    for kind, vis in (("input", mv.model.graph.input), ("output", mv.model.graph.output)):
        for vi in vis:
            if kind == "input" and vi.name not in mv.graph_inputs:
                continue  # an initializer listed among the inputs: a weight, not interface
            dims = [_dim(d) for d in vi.type.tensor_type.shape.dim]
            for axis in range(len(dims)):
                idx = removed.get((vi.name, axis))
                if idx is None or not len(idx):
                    continue
                after = list(dims)
                if isinstance(after[axis], int):
                    after[axis] -= len(idx)
                changes.append(IoChange(vi.name, kind, axis, dims, after, [int(i) for i in idx]))
    return changes


def _dim(d: onnx.TensorShapeProto.Dimension):
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or None


@dataclass
class IoMap:
    """The entries each tensor keeps, for running and comparing a model whose IO changed."""

    removed: dict[str, dict[int, np.ndarray]]  # tensor -> axis -> removed entries
    inputs: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.removed)

    def feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The original's ``feeds`` with each changed input cut to its kept entries."""
        if not self:
            return feeds
        return {k: self.kept(k, v) if k in self.inputs else v for k, v in feeds.items()}

    def kept(self, name: str, value):
        """``value`` (the original's tensor ``name``) without the entries the pruned model lost."""
        axes = self.removed.get(name)
        if not axes or not isinstance(value, np.ndarray):
            return value
        for axis, idx in axes.items():
            if axis < value.ndim and value.shape[axis] > int(idx.max(initial=-1)):
                value = np.delete(value, idx, axis=axis)
        return value

    def outputs(self, names: list[str], values: list) -> list:
        """``values`` (the original's or the reference's, one per name) cut like the pruned model's."""
        return [self.kept(n, v) for n, v in zip(names, values)]


def io_map(deps: DependencyGraph | None, plan: Plan | None) -> IoMap:
    """The :class:`IoMap` of ``plan`` on ``deps``: empty unless a released group loses entries."""
    if deps is None or plan is None or not any("io" in g.facts and len(plan.removed(g)) for g in deps.groups):
        return IoMap({}, frozenset())
    from .plan import removed_entries

    removed: dict[str, dict[int, np.ndarray]] = {}
    for (tensor, axis), idx in removed_entries(deps, plan).items():
        removed.setdefault(tensor, {})[axis] = idx
    return IoMap(removed, frozenset(deps.view.graph_inputs))
