"""Several model files pruned together: one consistent plan across files that share weights.

An encoder and its decoder, or a decoder and its decoder-with-past, are exported as separate
files holding copies of the same tensors. Pruned one by one, each file would lose different
entries of those tensors and the files would stop computing one model. With ``tie=True``:

Rules:
1. Two weights of two files are *shared* when they have the same name, shape, dtype and values,
   or (exporters rename) the same shape, dtype and values under different names, provided those
   values occur once in each file and are not one constant repeated (a zero bias or a unit
   scale would match by chance). Same name with different values: not shared, said in notes.
2. A shared weight's axis ties the group units that own its entries in each file (a union of
   units over the entries). Tied units form a *tied group* spanning files (or several groups
   of one file, which then lose the same indices).
3. A tied group is prunable only if every member group is prunable in its own file, every
   entry of a shared axis is in a group in every file that holds the weight, and its units
   correspond one to one across members. Otherwise every member stays whole and the report
   says why.
4. The removed units are chosen once: the members' criterion scores, each normalised by its
   mean, are summed per tied unit, and the ratio, ``round_to``, ``min_keep`` and ``ignore`` apply
   to the tied group as to one group. Each file's plan then carries those units, mapped to its
   own anchor and indices; groups not tied are allocated in their own file as usual.
5. Each file is then pruned with its plan and validated against its own original, exactly as
   a single prune. Graph inputs and outputs stay blocked, so a tensor passed from one file to
   the next (encoder hidden states, a KV cache) keeps its shape and the files still fit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .analysis.dependency import CONSTANT, INITIALIZER, DependencyGraph
from .analysis.dependency import analyze as _analyze
from .analysis.plan import Plan
from .errors import InputError
from .passes.filter import DEFAULT_UNITS, UNITS
from .passes.finish import check_round_to, check_scope, round_to_of
from .planning.allocate import allocate, keep_count, protected, unit_step
from .planning.criteria import CRITERIA, score_groups
from .planning.criteria.data_driven import DATA_CRITERIA


@dataclass
class TiedGroup:
    """Groups of several files (or of one file) that must lose the same units."""

    members: list[tuple[int, int]]  # (file index, group id)
    size: int
    matched_by: list[str]  # "name" and/or "hash"
    shared: list[str]  # the shared weights, "file:tensor[axis]"
    reason: str = ""  # why it stays whole ("" when prunable)
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # tied units removed
    # per member, the member group's index of each tied unit (a permutation of its range)
    index: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        return not self.reason

    def to_json(self, names: Sequence[str], deps: Sequence[DependencyGraph]) -> dict:
        anchors: dict[str, list[str]] = {}
        for f, gid in self.members:
            anchors.setdefault(names[f], []).append(deps[f].groups[gid].label)
        return {
            "anchors": anchors,
            "size": self.size,
            "removed": int(len(self.removed)),
            "matched_by": sorted(set(self.matched_by)),
            "shared": self.shared,
            "prunable": self.prunable,
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass
class Tying:
    """The tied groups of some analysed files and the notes on weights not tied."""

    groups: list[TiedGroup]
    notes: list[str]
    links: int  # shared weights found

    def of_file(self, f: int) -> list[TiedGroup]:
        return [t for t in self.groups if any(m[0] == f for m in t.members)]


def _digest(arr: np.ndarray) -> str | None:
    """Content hash of a weight, or None for a single value repeated (matches by chance)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.size < 2 or np.all(flat == flat[0]):
        return None
    return hashlib.sha256(flat.view(np.uint8)).hexdigest()


def _weights(deps: DependencyGraph) -> dict[str, tuple[tuple, int]]:
    """Weights that are group members: name -> (shape, dtype)."""
    out = {}
    for g in deps.groups:
        for m in g.members:
            if m.kind in (INITIALIZER, CONSTANT) and m.tensor not in out:
                t = deps.view.constant_tensor(m.tensor)
                out[m.tensor] = (tuple(t.dims), t.data_type)
    return out


def shared_weights(deps: Sequence[DependencyGraph], names: Sequence[str]) -> tuple[list[tuple], list[str]]:
    """Shared weights between every pair of files (rule 1): ``[(f, tensor, g, tensor, how)]``, notes."""
    weights = [_weights(d) for d in deps]
    digests: list[dict[str, str | None]] = [{} for _ in deps]

    def digest(f: int, name: str) -> str | None:
        if name not in digests[f]:
            digests[f][name] = _digest(deps[f].view.value(name))
        return digests[f][name]

    links, notes = [], []
    for a in range(len(deps)):
        for b in range(a + 1, len(deps)):
            matched_a, matched_b = set(), set()
            for name in sorted(set(weights[a]) & set(weights[b])):
                if weights[a][name] != weights[b][name]:
                    notes.append(f"{names[a]} and {names[b]} both have {name} with other shapes or types: not tied")
                elif digest(a, name) != digest(b, name):
                    notes.append(f"{names[a]} and {names[b]} both have {name} with other values: not tied")
                else:
                    links.append((a, name, b, name, "name"))
                    matched_a.add(name)
                    matched_b.add(name)
            # content: among the weights the names did not match, a hash seen once on each side
            by_hash: list[dict[tuple, list[str]]] = [{}, {}]
            for side, f, matched in ((0, a, matched_a), (1, b, matched_b)):
                for name, (shape, dtype) in weights[f].items():
                    if name not in matched:
                        h = digest(f, name)
                        if h is not None:
                            by_hash[side].setdefault((shape, dtype, h), []).append(name)
            for key in sorted(set(by_hash[0]) & set(by_hash[1]), key=lambda k: by_hash[0][k][0]):
                left, right = by_hash[0][key], by_hash[1][key]
                if len(left) == 1 and len(right) == 1:
                    links.append((a, left[0], b, right[0], "hash"))
                else:
                    notes.append(
                        f"{names[a]} {left[0]} and {names[b]} {right[0]}: equal values held by several weights"
                        " of one file: not tied"
                    )
    return links, notes


class _Union:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x, y) -> None:
        self.parent[self.find(x)] = self.find(y)


def _member_index(deps: DependencyGraph) -> dict[tuple[str, int], list]:
    """``(tensor, axis) -> [(group id, member)]`` over every group of ``deps``."""
    index: dict[tuple[str, int], list] = {}
    for g in deps.groups:
        for m in g.members:
            index.setdefault((m.tensor, m.axis), []).append((g.id, m))
    return index


def _owners(index: dict, tensor: str, axis: int, size: int) -> np.ndarray:
    """For each entry of ``tensor``'s ``axis``: the unit ``(group id, index)`` owning it, as a
    (size, 2) array with -1 where no group holds it."""
    out = np.full((size, 2), -1, dtype=np.int64)
    for gid, m in index.get((tensor, axis), []):
        n, k = m.indices.shape
        out[m.indices.reshape(-1), 0] = gid
        out[m.indices.reshape(-1), 1] = np.repeat(np.arange(n), k)
    return out


def find_ties(deps: Sequence[DependencyGraph], names: Sequence[str]) -> Tying:
    """The tied groups of ``deps`` (one analysis per file), by rules 1-3."""
    links, notes = shared_weights(deps, names)
    units = _Union()
    blocked: dict[tuple[int, int], str] = {}
    how: dict[tuple[int, int], set[str]] = {}
    shared: dict[tuple[int, int], set[str]] = {}
    tied_groups: set[tuple[int, int]] = set()
    index = [_member_index(d) for d in deps]
    pairs: dict[tuple[int, int], list[np.ndarray]] = {}
    for a, ta, b, tb, kind in links:
        shape = tuple(deps[a].view.constant_tensor(ta).dims)
        for axis, size in enumerate(shape):
            own_a, own_b = _owners(index[a], ta, axis, size), _owners(index[b], tb, axis, size)
            in_a, in_b = own_a[:, 0] >= 0, own_b[:, 0] >= 0
            if not in_a.any() and not in_b.any():
                continue
            members = {(a, int(g)) for g in own_a[in_a, 0]} | {(b, int(g)) for g in own_b[in_b, 0]}
            tied_groups |= members
            for m in members:
                how.setdefault(m, set()).add(kind)
                shared.setdefault(m, set()).update({f"{names[a]}:{ta}[{axis}]", f"{names[b]}:{tb}[{axis}]"})
            if not (in_a.all() and in_b.all()):
                f, t = (a, ta) if not in_a.all() else (b, tb)
                for m in members:
                    blocked.setdefault(m, f"{names[f]}: {t} axis {axis} is not wholly in a group there")
            both = in_a & in_b
            pairs.setdefault((a, b), []).append(np.concatenate([own_a[both], own_b[both]], axis=1))
    # each unit pair once (a head's entries, and a weight, its bias and its reader repeat them)
    for (a, b), rows in pairs.items():
        for ga, ja, gb, jb in np.unique(np.concatenate(rows), axis=0).tolist():
            units.union((a, ga, ja), (b, gb, jb))
    # groups joined by any shared unit form one tied group
    joined = _Union()
    for f, gid in tied_groups:
        for j in range(deps[f].groups[gid].size):
            joined.union((f, gid), ("unit", units.find((f, gid, j))))
    by_root: dict = {}
    for m in sorted(tied_groups):
        by_root.setdefault(joined.find(m), []).append(m)
    ties = []
    for members in by_root.values():
        tie = _tied_group(deps, names, members, units, blocked)
        tie.matched_by = sorted(set().union(*(how[m] for m in members)))
        tie.shared = sorted(set().union(*(shared[m] for m in members)))
        ties.append(tie)
    return Tying(ties, notes, len(links))


def _tied_group(deps, names, members, units: _Union, blocked: dict) -> TiedGroup:
    """One tied group: its size and per-member index maps, or the reason it stays whole (rule 3)."""
    sizes = {m: deps[m[0]].groups[m[1]].size for m in members}
    tie = TiedGroup(members=members, size=min(sizes.values()), matched_by=[], shared=[])
    for m in members:
        g = deps[m[0]].groups[m[1]]
        if not g.prunable:
            tie.reason = f"{names[m[0]]}: {g.label} is blocked: {g.reasons[0]}"
            return tie
    reason = next((blocked[m] for m in members if m in blocked), "")
    if reason:
        tie.reason = reason
        return tie
    comps: dict = {}
    for f, gid in members:
        for j in range(sizes[(f, gid)]):
            comps.setdefault(units.find((f, gid, j)), []).append((f, gid, j))
    one_to_one = len(set(sizes.values())) == 1 and all(
        len(c) == len(members) and len({(f, g) for f, g, _ in c}) == len(members) for c in comps.values()
    )
    if not one_to_one:
        tie.reason = "the shared weights group their entries into different units across files"
        return tie
    order = sorted(comps.values(), key=lambda c: min(c))  # tied unit t: the t-th of the first member
    for f, gid in members:
        tie.index[(f, gid)] = np.array([next(j for ff, g, j in c if (ff, g) == (f, gid)) for c in order], np.int64)
    return tie


def tied_plans(
    deps: Sequence[DependencyGraph],
    names: Sequence[str],
    *,
    ratio: float = 0.5,
    criterion: str = "l2",
    round_to: int | None = 1,
    min_keep: int = 1,
    ignore: Sequence[str] = (),
    units: Sequence[str] = (),
    seed: int = 0,
) -> tuple[list[Plan], Tying]:
    """One plan per file (rule 4) and the ties they keep."""
    if criterion in DATA_CRITERIA:
        raise InputError(f"criterion {criterion!r} needs calibration data, which tied pruning does not take")
    if criterion not in CRITERIA:
        raise InputError(f"unknown criterion {criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
    if not 0.0 < ratio < 1.0:
        raise InputError(f"ratio must be between 0 and 1 (exclusive), got {ratio}")
    unknown = set(units) - set(UNITS)
    if unknown:
        raise InputError(f"unknown unit {sorted(unknown)[0]!r}; choose from {', '.join(UNITS)}")
    check_round_to(round_to)
    failed = []
    for d in deps:  # an --ignore pattern or a unit that no file has would be silently ignored
        try:
            check_scope(d, tuple(ignore), tuple(units))
        except InputError as exc:
            failed.append(exc)
    if failed and len(failed) == len(deps):
        raise failed[0]
    tying = find_ties(deps, names)
    wanted = tuple(units) or DEFAULT_UNITS
    plans = []
    scores, steps, skips = [], [], []
    for d in deps:
        s, _ = score_groups(d, criterion, seed=seed)
        scores.append({gid: v for gid, v in s.items() if d.groups[gid].unit in wanted})
        steps.append(round_to_of(round_to, d)[0])
        skips.append(protected(d, ignore))
    tied_ids = [{m[1] for t in tying.of_file(f) for m in t.members if m[0] == f} for f in range(len(deps))]
    for f, d in enumerate(deps):
        untied = {gid: s for gid, s in scores[f].items() if gid not in tied_ids[f]}
        plans.append(
            allocate(d, untied, ratio, round_to=steps[f], min_keep=min_keep, ignore=tuple(ignore)) if untied else Plan()
        )
    for tie in tying.groups:
        if not tie.prunable:
            continue
        if any(gid not in scores[f] for f, gid in tie.members):
            tie.reason = "a member group is of a unit not asked for"
            continue
        if any(gid in skips[f] for f, gid in tie.members):
            tie.reason = "a member group is protected (--ignore)"
            continue
        total = np.zeros(tie.size)
        for f, gid in tie.members:
            s = scores[f][gid][tie.index[(f, gid)]]
            mean = s.mean()
            total += s / mean if mean > 0 else s
        step = max(unit_step(deps[f].groups[gid], steps[f]) for f, gid in tie.members)
        keep = keep_count(tie.size, int(np.floor(tie.size * ratio)), step, min_keep)
        if keep >= tie.size:
            continue
        tie.removed = np.sort(np.argsort(total, kind="stable")[: tie.size - keep]).astype(np.int64)
        for f, gid in tie.members:
            plans[f].removals[gid] = np.sort(tie.index[(f, gid)][tie.removed])
    return plans, tying


def file_names(paths: Sequence[str]) -> list[str]:
    """Labels of the files in reports: their base names (unique, as their outputs share a folder)."""
    import os

    names = [os.path.basename(os.fspath(p)) if not isinstance(p, onnx.ModelProto) else "" for p in paths]
    names = [n or f"model{i}" for i, n in enumerate(names)]
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise InputError(f"two models are named {sorted(seen)[0]}: their outputs would share one file name")
    return names


def analyze_all(models: Sequence[onnx.ModelProto], units: Sequence[str] = ()) -> list[DependencyGraph]:
    return [_analyze(m, inexact="hidden" in units) for m in models]


@dataclass
class ManyResult:
    """Per file (in the order given): its name, its :class:`~graphprune.api.PruneResult`; and the
    tied groups (``None`` when the files were pruned independently)."""

    names: list[str]
    results: list
    tying: Tying | None
    notes: list[str] = field(default_factory=list)
    tied: list[dict] = field(default_factory=list)  # every tied group's JSON (TiedGroup.to_json)

    @property
    def passed(self) -> bool:
        return all(r.report.passed or not r.report.validated for r in self.results)


def prune_many(
    models: Sequence,
    *,
    tie: bool = True,
    ratio: float = 0.5,
    criterion: str | None = None,
    round_to: int | None = 1,
    min_keep: int = 1,
    ignore: Sequence[str] = (),
    units: Sequence[str] = (),
    seed: int = 0,
    validate: bool = True,
    latency: bool = True,
    input_shapes: dict | Sequence[dict | None] | None = None,
    latency_runs: int | None = None,
    names: Sequence[str] | None = None,
) -> ManyResult:
    """Prune several model files (paths or ModelProtos) by ``ratio`` with a data-free
    ``criterion``; with ``tie`` (rules above) one consistent plan across the weights they share,
    else each file on its own. Each file is validated against its own original; its report's
    ``tied`` lists the tied groups it is part of. ``input_shapes`` ({input: dims}) applies to
    whichever files have those inputs, or is a list of such dicts, one per file."""
    from . import api

    names = list(names) if names is not None else file_names(models)
    protos = [api.load_model(m) for m in models]
    if isinstance(input_shapes, dict) or input_shapes is None:
        shapes = input_shapes or {}
        unknown = [k for k in shapes if not any(k in {i.name for i in p.graph.input} for p in protos)]
        if unknown:
            raise InputError(f"--input-shape {unknown[0]}: no model has such an input")
        per_file = [{k: v for k, v in shapes.items() if k in {i.name for i in p.graph.input}} or None for p in protos]
    elif len(input_shapes) != len(protos):
        raise InputError(f"input_shapes: {len(input_shapes)} dicts for {len(protos)} models")
    else:
        per_file = list(input_shapes)
    criterion = criterion or "l2"
    common = dict(validate=validate, latency=latency, latency_runs=latency_runs)

    deps = analyze_all(protos, units)
    if not tie:
        links, notes = shared_weights(deps, names)
        if links:
            notes.append(f"{len(links)} weights are shared between the files and were pruned independently")
        results = [
            api.prune(
                p,
                ratio,
                criterion,
                round_to=round_to,
                min_keep=min_keep,
                ignore=tuple(ignore),
                units=tuple(units),
                seed=seed,
                input_shapes=sizes,
                **common,
            )
            for p, sizes in zip(protos, per_file, strict=True)
        ]
        return ManyResult(names, results, None, notes)
    plans, tying = tied_plans(
        deps,
        names,
        ratio=ratio,
        criterion=criterion,
        round_to=round_to,
        min_keep=min_keep,
        ignore=ignore,
        units=units,
        seed=seed,
    )
    results = []
    for f, (p, d, plan) in enumerate(zip(protos, deps, plans, strict=True)):
        result = api.prune(p, plan=plan.to_json(d), input_shapes=per_file[f], **common)
        result.report.prune.update(
            criterion=criterion,
            ratio=ratio,
            source="tied plan",
            tied=[t.to_json(names, deps) for t in tying.of_file(f)],
        )
        results.append(result)
    return ManyResult(names, results, tying, tying.notes, [t.to_json(names, deps) for t in tying.groups])
