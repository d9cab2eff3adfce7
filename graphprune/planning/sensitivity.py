"""Sensitivity analysis: what pruning each group alone costs, measured on data.

For every prunable group and every ratio of a grid, the group's lowest-scoring indices are
removed (masked at their contracting consumers, which computes exactly what the pruned model
would) and the model is run over calibration samples. The drop is the loss of top-1 accuracy
when labels are given, else ``1 - mean cosine similarity`` between the outputs and the
original's. One onnxruntime session serves every variant: the masks are graph inputs, so a
variant is a different feed, not a new model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..analysis.blocks import Block, find_blocks
from ..analysis.dependency import DependencyGraph, Dim
from ..analysis.plan import Plan, removed_entries
from ..calibration.datasets import DEFAULT_BATCH, Dataset, class_indices, input_specs
from ..edit.masking import block_points, channel_points, insert_masks, mask_dtype, mask_shape
from ..errors import InputError
from ..ir import weights
from ..progress import progress
from ..validation.evaluate import check_labels
from .criteria import score_groups

FORMAT = "graphprune-sensitivity-v1"
DEFAULT_RATIOS = (0.25, 0.5, 0.75)


@dataclass
class GroupSensitivity:
    """One group's drop at each ratio of the grid (``removed[k]`` indices of ``size``)."""

    group: str
    anchor: str
    axis: int
    size: int
    unit: str
    removed: list[int] = field(default_factory=list)
    drop: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    accuracy: list[float] | None = None


@dataclass
class BlockSensitivity:
    """One residual block's drop when it alone is removed (``y = x + f(x)`` becomes ``y = x``)."""

    block: str  # the Add node
    x: str
    y: str
    params: int
    macs: int
    drop: float
    cosine: float
    accuracy: float | None = None


@dataclass
class Sensitivity:
    """The result of :func:`measure`; ``to_json`` is the file ``graphprune sensitivity`` writes."""

    model: str
    metric: str  # "accuracy" (labels given) or "cosine"
    baseline: float  # the original's accuracy, or 1.0 for cosine
    samples: int
    criterion: str
    ratios: list[float]
    groups: list[GroupSensitivity] = field(default_factory=list)
    blocks: list[BlockSensitivity] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | os.PathLike) -> None:
        from ..ir.files import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    def drop_at(self, group: str, ratio: float) -> float:
        """The drop of ``group`` at ``ratio``, linearly interpolated on the grid (0 at ratio 0)."""
        g = next(x for x in self.groups if x.group == group)
        return float(np.interp(ratio, [0.0, *self.ratios], [0.0, *g.drop]))


def read_sensitivity(path: str | os.PathLike) -> Sensitivity:
    """Read a sensitivity JSON written by :meth:`Sensitivity.save`, or raise ``InputError``."""
    try:
        data = json.loads(open(path).read())
        groups = [GroupSensitivity(**g) for g in data["groups"]]
        blocks = [BlockSensitivity(**b) for b in data.get("blocks", [])]
        return Sensitivity(
            model=data["model"],
            metric=data["metric"],
            baseline=data["baseline"],
            samples=data["samples"],
            criterion=data["criterion"],
            ratios=list(data["ratios"]),
            groups=groups,
            blocks=blocks,
        )
    except FileNotFoundError:
        raise InputError(f"{path}: no such sensitivity file") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a graphprune sensitivity file ({type(exc).__name__}: {exc})") from None


class MaskedRunner:
    """Runs ``model`` with chosen channels (and residual blocks) masked, one session for every choice."""

    def __init__(self, model: onnx.ModelProto, deps: DependencyGraph, dims: list[Dim], blocks: list[Block] = ()):
        points = channel_points(deps, {d: None for d in dims})
        data, names = insert_masks(model, [*points.values(), *block_points(model, blocks, zero=False)])
        self.names = dict(zip(points, names))
        self.block_names = dict(zip((b.id for b in blocks), names[len(points) :]))
        lazy = weights.has_lazy(model)  # lazy: weights read from their files
        self.session = weights.session(data, lazy, threads=1, optimization="basic")
        del data
        self.ones = {
            d: np.ones(mask_shape(deps, d), dtype=onnx.helper.tensor_dtype_to_np_dtype(mask_dtype(deps, d)))
            for d in self.names
        }
        self.block_one = {b.id: np.ones((), onnx.helper.tensor_dtype_to_np_dtype(b.dtype)) for b in blocks}

    def run(
        self, feeds: dict[str, np.ndarray], removed: dict[Dim, np.ndarray], blocks: tuple[int, ...] = ()
    ) -> np.ndarray:
        """The first output with the ``removed`` entries of each contracted dim masked and
        the given blocks' ``f(x)`` zeroed."""
        masks = {}
        for d, name in self.names.items():
            idx = removed.get(d)
            if idx is None or len(idx) == 0:
                masks[name] = self.ones[d]
            else:
                m = self.ones[d].copy()
                np.put_along_axis(m, _along(idx, m.ndim, d[1]), 0, axis=d[1])
                masks[name] = m
        for bid, name in self.block_names.items():
            masks[name] = np.array(0 if bid in blocks else 1, dtype=self.block_one[bid].dtype)
        return self.session.run(None, {**feeds, **masks})[0]


def _along(idx: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = len(idx)
    return np.asarray(idx).reshape(shape)


def measure(
    model: onnx.ModelProto,
    deps: DependencyGraph,
    dataset: Dataset,
    *,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    criterion: str = "l2",
    samples: int = 128,
    labels: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    units: tuple[str, ...] = (),
    blocks: bool = True,
    name: str = "model",
    shard: tuple[int, int] | None = None,
) -> Sensitivity:
    """Each prunable group's drop when pruned alone to each of ``ratios`` by ``criterion``,
    and (``blocks``) each removable residual block's drop when it alone is removed.

    ``shard=(k, n)`` measures only the groups and blocks at positions ``k``, ``k + n``, ...
    with the same session (every mask inserted) as the whole run, so that the shards'
    results, put back in order (:func:`merge_shards`), equal the whole run's."""
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise InputError(f"ratios must be between 0 and 1 (exclusive), got {list(ratios)}")
    ratios = tuple(sorted(ratios))
    if labels:
        check_labels(dataset, labels)
    scores, _ = score_groups(deps, criterion)
    groups = [g for g in deps.prunable_groups() if g.id in scores and (not units or g.unit in units)]
    contracted = {d for _, d in deps.contractions}
    variants: list[tuple[int, int, dict[Dim, np.ndarray]]] = []
    for g in groups:
        order = np.argsort(scores[g.id], kind="stable")
        for k, r in enumerate(ratios):
            n = min(int(np.floor(g.size * r)), g.size - 1)
            removed = removed_entries(deps, Plan({g.id: np.sort(order[:n])})) if n else {}
            variants.append((g.id, k, {d: idx for d, idx in removed.items() if d in contracted}))
    found = find_blocks(model, deps.view) if blocks else []
    runner = MaskedRunner(model, deps, sorted({d for _, _, rem in variants for d in rem}), found)

    specs = input_specs(model)
    extra = (labels,) if labels else ()
    batches = list(dataset.batches(specs, batch_size=batch_size, limit=samples, extra=extra))
    if not batches:
        raise InputError(f"{dataset.path}: no samples to measure on")
    feeds = [{s.name: b[s.name] for s in specs} for b in batches]
    original = [runner.run(f, {}) for f in feeds]
    truth = None
    if labels:  # read as `validate --labels` reads them: class indices, or one-hot / scores by argmax
        if original[0].ndim != 2:
            raise _not_a_classifier(original[0].shape)
        classes = original[0].shape[1]
        truth = np.concatenate([class_indices(b[labels], classes, dataset.path, labels) for b in batches])
    # samples fed (axis 0 of the inputs), not rows of the first output, whose axis 0 need not be the batch
    n_samples = sum(len(f[specs[0].name]) for f in feeds) if specs else len(feeds)
    base_acc = _accuracy(original, truth) if truth is not None else None

    results = {
        g.id: GroupSensitivity(
            group=g.label,
            anchor=g.anchor.tensor if g.anchor else g.label,
            axis=g.anchor.axis if g.anchor else 0,
            size=g.size,
            unit=g.unit,
            removed=[min(int(np.floor(g.size * r)), g.size - 1) for r in ratios],
            accuracy=[] if truth is not None else None,
        )
        for g in groups
    }
    if shard is not None:
        k, n = shard
        mine = {g.id for i, g in enumerate(groups) if i % n == k}
        groups = [g for g in groups if g.id in mine]
        variants = [v for v in variants if v[0] in mine]
        found = [b for i, b in enumerate(found) if i % n == k]
    for gid, _, removed in progress(variants, "sensitivity"):
        outs = [runner.run(f, removed) for f in feeds]
        res = results[gid]
        cos = _mean_cosine(outs, original)
        res.cosine.append(cos)
        if truth is not None:
            acc = _accuracy(outs, truth)
            res.accuracy.append(acc)  # type: ignore[union-attr]
            res.drop.append(float(base_acc - acc))  # type: ignore[operator]
        else:
            res.drop.append(1.0 - cos)
    block_results = []
    for b in progress(found, "blocks"):
        outs = [runner.run(f, {}, (b.id,)) for f in feeds]
        cos = _mean_cosine(outs, original)
        acc = _accuracy(outs, truth) if truth is not None else None
        drop = float(base_acc - acc) if acc is not None else 1.0 - cos  # type: ignore[operator]
        block_results.append(BlockSensitivity(b.add, b.x, b.y, b.params, b.macs, drop, cos, acc))
    return Sensitivity(
        model=name,
        metric="accuracy" if truth is not None else "cosine",
        baseline=float(base_acc) if base_acc is not None else 1.0,
        samples=n_samples,
        criterion=criterion,
        ratios=list(ratios),
        groups=[results[g.id] for g in groups],
        blocks=block_results,
    )


def merge_shards(shards: list[Sensitivity]) -> Sensitivity:
    """The whole run's result from ``measure(shard=(k, n))`` for k = 0..n-1, in order."""
    first = shards[0]
    n = len(shards)
    groups = [shards[i % n].groups[i // n] for i in range(sum(len(s.groups) for s in shards))]
    blocks = [shards[i % n].blocks[i // n] for i in range(sum(len(s.blocks) for s in shards))]
    return Sensitivity(
        model=first.model,
        metric=first.metric,
        baseline=first.baseline,
        samples=first.samples,
        criterion=first.criterion,
        ratios=first.ratios,
        groups=groups,
        blocks=blocks,
    )


def _mean_cosine(outs: list[np.ndarray], ref: list[np.ndarray]) -> float:
    a = np.concatenate([o.reshape(len(o), -1) for o in outs]).astype(np.float64)
    b = np.concatenate([o.reshape(len(o), -1) for o in ref]).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
    return float(np.mean(cos))


def _accuracy(outs: list[np.ndarray], truth: np.ndarray) -> float:
    logits = np.concatenate(outs)
    if logits.ndim != 2 or len(logits) != len(truth):
        raise _not_a_classifier(logits.shape)
    return float(np.mean(logits.argmax(axis=1) == truth))


def _not_a_classifier(shape) -> InputError:
    return InputError(f"accuracy needs a [N, classes] first output; the model gives {list(shape)}")


def plot(sens: Sensitivity, path: str | os.PathLike) -> None:
    """Draw the drop of every group against the ratio removed, and the groups ranked at the
    middle ratio (PNG; needs matplotlib: ``pip install graphprune[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'graphprune[plot]'") from None
    from ..ir.files import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    cmap = plt.get_cmap("viridis")
    n = max(len(sens.groups), 1)
    xs = [0.0, *sens.ratios]
    for k, g in enumerate(sens.groups):
        left.plot(xs, [0.0, *g.drop], color=cmap(k / n), lw=1, alpha=0.8)
    left.set_xlabel("fraction of the group removed")
    left.set_ylabel("accuracy drop" if sens.metric == "accuracy" else "1 - cosine of outputs")
    left.set_title(f"each group pruned alone ({len(sens.groups)} groups; colour = depth)")
    left.grid(alpha=0.3)
    mid = len(sens.ratios) // 2
    bars = [(g.group, g.drop[mid], "tab:red") for g in sens.groups]
    bars += [(f"block {b.block}", b.drop, "tab:blue") for b in sens.blocks]
    ranked = sorted(bars, key=lambda t: t[1], reverse=True)[:30][::-1]
    right.barh([t[0] for t in ranked], [t[1] for t in ranked], color=[t[2] for t in ranked])
    title = f"most sensitive: groups at ratio {sens.ratios[mid]} (red)"
    right.set_title(title + (", residual blocks removed (blue)" if sens.blocks else ""))
    right.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{sens.model}: sensitivity ({sens.criterion}, {sens.samples} samples)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def loss_curves(sens: Sensitivity, deps: DependencyGraph) -> tuple[dict[int, Callable], list[str]]:
    """Per prunable group of ``deps`` found in ``sens`` (by anchor, axis and size): the measured
    drop of removing ``r`` units, for allocation to a target (``allocate_to_target(losses=)``).

    Drops are clipped at 0 and made non-decreasing (a drop measured on a few samples is noisy;
    removing more never helps), interpolated linearly between the grid's counts, and removing
    more than the grid's largest ratio is priced out (it was never measured). Groups not in the
    file are returned by label: they are left as they are.
    """
    by_anchor = {(g.anchor, g.axis, g.size): g for g in sens.groups}
    curves: dict[int, Callable] = {}
    missing = []
    for g in deps.prunable_groups():
        a = g.anchor
        row = by_anchor.get((a.tensor, a.axis, g.size)) if a is not None else None
        if row is None:
            missing.append(g.label)
            continue
        xs = np.array([0, *row.removed], dtype=np.float64)
        ys = np.maximum.accumulate(np.clip(np.array([0.0, *row.drop]), 0.0, None))
        curves[g.id] = _curve(xs, ys)
    return curves, missing


def _curve(xs: np.ndarray, ys: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    top = xs[-1]

    def lost(r: np.ndarray) -> np.ndarray:
        r = np.asarray(r, dtype=np.float64)
        return np.where(r > top, 1e9, np.interp(r, xs, ys))

    return lost
