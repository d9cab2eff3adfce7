"""The plan: which entries of which groups to remove, and its JSON form.

A plan file is ``{"groups": [{"anchor": NAME, "axis": A, "remove": [i, ...]}, ...]}``.
Each entry names its group by one member, a weight initializer and an axis, and lists
indices on that member's axis. Other keys (top level or per entry) are informative and
ignored on reading, so a plan can carry notes.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .dependency import VIRTUAL, DependencyGraph, Group

FORMAT = "graphprune-plan-v1"
IO_CHANGES_KEY = "io_changes"  # top-level key: the graph inputs/outputs a plan changes (graphprune.analysis.iochange)


@dataclass
class Plan:
    """Removed group indices, keyed by group id of one :class:`DependencyGraph`."""

    removals: dict[int, np.ndarray] = field(default_factory=dict)

    def removed(self, group: Group) -> np.ndarray:
        return self.removals.get(group.id, np.zeros(0, dtype=np.int64))

    def same_removals(self, other: Plan) -> bool:
        """Whether ``other`` removes exactly the same indices from the same groups."""
        return self.removals.keys() == other.removals.keys() and all(
            np.array_equal(self.removals[k], other.removals[k]) for k in self.removals
        )

    @property
    def total_removed(self) -> int:
        return int(sum(len(v) for v in self.removals.values()))

    def to_json(self, deps: DependencyGraph, **meta) -> dict:
        """The JSON object of this plan, each group addressed by its anchor member."""
        entries = []
        for group in deps.groups:
            idx = self.removed(group)
            if len(idx) == 0:
                continue
            anchor = group.anchor
            if anchor is None:  # groups are only formed around weights, so this is a bug
                raise RuntimeError(f"group {group.label} has removals but no weight to name it in a plan")
            entries.append(
                {
                    "anchor": anchor.tensor,
                    "axis": anchor.axis,
                    "remove": np.sort(anchor.indices[idx].ravel()).tolist(),
                    "size": group.size,
                }
            )
        io = sorted({t for g in deps.groups if len(self.removed(g)) for pair in g.facts.get("io", ()) for t in pair})
        if io:  # graph inputs/outputs this plan changes (allowed by --allow-io-change): validate re-allows them
            meta = {**meta, IO_CHANGES_KEY: io}
        return {"format": FORMAT, **meta, "groups": entries}

    def save(self, path: str | os.PathLike, deps: DependencyGraph, **meta) -> None:
        from ..ir.files import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_json(deps, **meta), indent=1) + "\n")


def read_plan(path: str | os.PathLike) -> dict:
    """Read a plan file into its JSON object, or raise ``InputError``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such plan file")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: plan is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise InputError(f'{p}: plan must be a JSON object with a "groups" list')
    return data


def plan_from_json(data: dict, deps: DependencyGraph, source: str = "plan") -> Plan:
    """Turn a plan's JSON object into group removals, checking it against ``deps``.

    A plan that changes graph inputs/outputs (``io_changes``) needs the groups they block
    released in ``deps`` first (:func:`graphprune.analysis.iochange.release_for`)."""
    by_member: dict[tuple[str, int], list] = {}
    for group in deps.groups:
        for m in group.members:
            if m.kind in ("initializer", "constant"):
                by_member.setdefault((m.tensor, m.axis), []).append((group, m))
    known = set(deps.view.initializers) | set(deps.view.constant_nodes)
    removals: dict[int, set[int]] = {}
    for n, entry in enumerate(data.get("groups", [])):
        where = f"{source}: groups[{n}]"
        if not isinstance(entry, dict) or not {"anchor", "axis", "remove"} <= set(entry):
            raise InputError(f'{where} needs "anchor", "axis" and "remove"')
        anchor, axis, remove = entry["anchor"], entry["axis"], entry["remove"]
        if not isinstance(anchor, str) or not isinstance(axis, int) or not isinstance(remove, list):
            raise InputError(f"{where}: anchor must be a string, axis an integer, remove a list")
        if anchor not in known:
            raise InputError(f"{where}: no initializer named {anchor!r} in the model")
        shape = deps.view.shapes.get(anchor, ())
        if not 0 <= axis < len(shape):
            raise InputError(f"{where}: {anchor} has no axis {axis} (shape {list(shape)})")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in remove):
            raise InputError(f"{where}: remove must list integers")
        bad = [i for i in remove if not 0 <= i < shape[axis]]
        if bad:
            raise InputError(f"{where}: index {bad[0]} out of range for {anchor} axis {axis} (size {shape[axis]})")
        candidates = by_member.get((anchor, axis))
        if not candidates:
            raise InputError(f"{where}: {anchor} axis {axis} is not a prunable channel axis")
        wanted = set(remove)
        for group, member in candidates:
            if not wanted:
                break
            mine = [j for j in range(group.size) if wanted & set(member.indices[j].tolist())]
            if not mine:
                continue
            if not group.prunable:
                hint = ""
                if any(str(r).endswith(("(graph input)", "(graph output)")) for r in group.reasons):
                    hint = " (a plan that changes graph inputs/outputs needs --allow-io-change)"
                raise InputError(f"{where}: {anchor} axis {axis} is blocked: {group.reasons[0]}{hint}")
            for j in mine:
                entries = set(member.indices[j].tolist())
                if not entries <= wanted:
                    raise InputError(
                        f"{where}: indices {sorted(entries)} of {anchor} axis {axis} must be removed together"
                    )
                wanted -= entries
            removals.setdefault(group.id, set()).update(mine)
        if wanted:
            raise InputError(f"{where}: indices {sorted(wanted)[:5]} of {anchor} axis {axis} belong to no group")
    for gid, js in removals.items():
        if len(js) >= deps.groups[gid].size:
            raise InputError(f"{source}: plan removes every channel of group {deps.groups[gid].label}")
    return Plan({gid: np.array(sorted(js), dtype=np.int64) for gid, js in removals.items()})


def compose(steps: list[dict], deps: DependencyGraph, source: str = "plan") -> dict:
    """One plan, in the indices of ``deps``'s model, that removes what ``steps`` (plans' JSON
    objects, oldest first, each addressing the model the previous ones made) removed in turn
    (groups the steps' graph input/output changes need released in ``deps`` first:
    :func:`graphprune.analysis.iochange.release_for`).

    Surgery keeps tensor names, so a later step's anchor is a tensor of the first model too:
    its indices are positions among the entries the earlier steps kept, mapped back here.
    Raises ``InputError`` if a step does not fit the model the earlier ones leave.
    """

    entries: list[dict] = []
    # graph inputs/outputs any step changed (--allow-io-change): the composed plan changes them too
    io = sorted({t for step in steps if isinstance(step, dict) for t in step.get(IO_CHANGES_KEY) or ()})
    meta = {IO_CHANGES_KEY: io} if io else {}
    for k, step in enumerate(steps):
        groups = step.get("groups") if isinstance(step, dict) else None
        if not isinstance(groups, list):
            raise InputError(f'{source}: step {k + 1} has no "groups" list')
        if k == 0:
            entries = list(groups)
            continue
        removed = removed_entries(deps, plan_from_json({**meta, "groups": entries}, deps, source=source))
        for n, entry in enumerate(groups):
            anchor, axis = entry.get("anchor"), entry.get("axis")
            shape = deps.view.shapes.get(anchor) if isinstance(anchor, str) else None
            if shape is None or not isinstance(axis, int) or not 0 <= axis < len(shape):
                raise InputError(f"{source}: step {k + 1} groups[{n}]: {anchor!r} axis {axis!r} is not in the model")
            kept = np.setdiff1d(np.arange(shape[axis]), removed.get((anchor, axis), np.zeros(0, np.int64)))
            remove = entry.get("remove")
            if not isinstance(remove, list) or not all(isinstance(i, int) and 0 <= i < len(kept) for i in remove):
                raise InputError(
                    f"{source}: step {k + 1} groups[{n}]: indices do not fit the {len(kept)} entries of"
                    f" {anchor} axis {axis} the earlier steps kept"
                )
            entries.append({"anchor": anchor, "axis": axis, "remove": kept[remove].tolist()})
    return {**meta, "groups": entries}


def removed_entries(deps: DependencyGraph, plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """Sorted entries removed from each (tensor, axis) by ``plan`` (read-only arrays).

    A prune asks this of the same plan several times (surgery, the pruned shapes, the graph
    IO it changes; a DenseNet's 5,000 members each time): the last answer is kept on ``deps``,
    keyed by the plan's contents, and a fresh dict of the same arrays is returned."""
    key = tuple((gid, np.asarray(idx).dtype.str, np.asarray(idx).tobytes()) for gid, idx in plan.removals.items())
    cached = deps._removed
    if cached is not None and cached[0] == key and cached[1] == len(deps.groups):
        return dict(cached[2])
    parts: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for group in deps.groups:
        js = plan.removed(group)
        if len(js) == 0:
            continue
        for m in group.members:
            if m.kind != VIRTUAL:
                parts[(m.tensor, m.axis)].append(m.indices[js].ravel())
    removed = {d: _sorted_unique(p) for d, p in parts.items()}
    for arr in removed.values():
        arr.flags.writeable = False
    deps._removed = (key, len(deps.groups), removed)
    return dict(removed)


def _sorted_unique(parts: list[np.ndarray]) -> np.ndarray:
    """``np.unique`` of the concatenated parts, without its per-call overhead (thousands of
    small index arrays in a DenseNet)."""
    arr = np.sort(parts[0] if len(parts) == 1 else np.concatenate(parts))
    if len(arr) > 1:
        arr = arr[np.concatenate(([True], arr[1:] != arr[:-1]))]
    return arr
