"""Criteria: one importance score per index of a group (higher is more important).

Rules:
1. A criterion reads the weights of the group's members, never the graph.
2. Member scores are normalised by their mean before they are averaged, so a group's
   members weigh the same whatever their scale, and groups are comparable for a global
   threshold (each group's scores average 1).
3. Magnitude criteria use the weights that make ("out") and read ("in") the channel;
   a group with neither falls back to its per-channel parameters.
4. Data criteria (``criteria/data_driven.py``) read calibration statistics from the context; a
   group without them falls back visibly (``ScoreContext.fell_back``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...analysis.dependency import DependencyGraph, Group, Member
from ...ir.weights import drop_pages

if TYPE_CHECKING:
    from ...calibration.statistics import Statistics


@dataclass
class ScoreContext:
    """What a criterion may need besides the group: a seed, calibration statistics (data
    criteria), and a place for notes."""

    seed: int = 0
    stats: Statistics | None = None
    fallbacks: dict[str, int] = field(default_factory=dict)
    _entry_cache: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict, repr=False)
    _weight_axes: dict[str, set[int]] | None = field(default=None, repr=False)

    def entry_stats(self, deps: DependencyGraph, m: Member, reduce: str) -> np.ndarray:
        """Per group index: the l1 or squared-l2 mass of the member's slices.

        The per-entry sums of a weight axis are computed once and shared by every group that
        owns part of that axis (a DenseNet conv reads segments of many groups); a weight is
        read once for all its axes that prunable groups hold (a conv's filters and its input
        channels), not once per axis.
        """
        key = (m.tensor, m.axis, reduce)
        per_entry = self._entry_cache.get(key)
        if per_entry is None:
            if self._weight_axes is None:
                self._weight_axes = _weight_axes(deps)
            axes = sorted(self._weight_axes.get(m.tensor, set()) | {m.axis})
            for axis, masses in entry_masses_by_axis(deps.view.value(m.tensor), axes, reduce).items():
                self._entry_cache[(m.tensor, axis, reduce)] = masses
            per_entry = self._entry_cache[key]
        return per_entry[m.indices].sum(axis=1)

    def fell_back(self, what: str) -> None:
        """Record that a group was scored differently from what was asked."""
        self.fallbacks[what] = self.fallbacks.get(what, 0) + 1


Criterion = Callable[[Group, DependencyGraph, ScoreContext], np.ndarray]
CRITERIA: dict[str, Criterion] = {}


def criterion(name: str) -> Callable[[Criterion], Criterion]:
    def register(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return register


def entry_masses(arr: np.ndarray, axis: int, reduce: str, block: int = 1 << 20) -> np.ndarray:
    """The l1 or squared-l2 mass of each entry of ``axis`` (summed over the other axes)."""
    return entry_masses_by_axis(arr, [axis], reduce, block)[axis]


def entry_masses_by_axis(arr: np.ndarray, axes: list[int], reduce: str, block: int = 1 << 20) -> dict[int, np.ndarray]:
    """:func:`entry_masses` of each of ``axes``, from one pass over the weight.

    Large weights (a memory-mapped float16 matrix) are reduced in blocks of the leading axis
    of about ``block`` elements, and a memory map lets go of each block once it is read:
    no temporary and no resident copy the size of the weight is made.
    """
    if arr.ndim == 0 or arr.size <= block:
        return {axis: _masses(arr, axis, reduce) for axis in axes}
    step = max(1, block // max(1, arr.size // arr.shape[0]))
    parts: dict[int, list[np.ndarray]] = {axis: [] for axis in axes}
    for i in range(0, arr.shape[0], step):
        for axis in axes:
            parts[axis].append(_masses(arr[i : i + step], axis, reduce))
        drop_pages(arr)
    return {axis: np.concatenate(p) if axis == 0 else np.sum(p, axis=0) for axis, p in parts.items()}


def _weight_axes(deps: DependencyGraph) -> dict[str, set[int]]:
    """The axes of each weight that prunable groups hold (what scoring will ask of it)."""
    out: dict[str, set[int]] = {}
    for g in deps.prunable_groups():
        for m in g.weights():
            out.setdefault(m.tensor, set()).add(m.axis)
    return out


def _masses(arr: np.ndarray, axis: int, reduce: str) -> np.ndarray:
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)  # float16/bfloat16: score in float32, the model keeps its dtype
    others = tuple(a for a in range(arr.ndim) if a != axis)
    if reduce == "l1":
        return np.abs(arr).sum(axis=others)
    # einsum sums the squares without a temporary the size of the weight
    letters = "abcdefghijklmnop"[: arr.ndim]
    return np.einsum(f"{letters},{letters}->{letters[axis]}", arr, arr)


def normalised_mean(columns: list[np.ndarray], size: int) -> np.ndarray:
    if not columns:
        raise ValueError("no weights to score")  # callers check magnitude_members first
    out = np.zeros(size, dtype=np.float64)
    for c in columns:
        c = c.astype(np.float64)
        mean = c.mean()
        out += c / mean if mean > 0 else c
    return out / len(columns)


def magnitude_members(group: Group) -> list[Member]:
    ms = [m for m in group.weights() if m.role in ("out", "in")]
    return ms or group.weights("param")


def score_groups(
    deps: DependencyGraph, name: str, *, seed: int = 0, stats: Statistics | None = None
) -> tuple[dict[int, np.ndarray], ScoreContext]:
    """Scores of every prunable group under criterion ``name`` (``stats``: calibration, for
    the data criteria)."""
    fn = CRITERIA[name]
    ctx = ScoreContext(seed=seed, stats=stats)
    scores = {g.id: np.asarray(fn(g, deps, ctx), dtype=np.float64) for g in deps.prunable_groups()}
    return scores, ctx


# the criteria register themselves on import
from . import data_driven, magnitude, second_order  # noqa: E402,F401
