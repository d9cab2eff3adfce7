"""Calibration: statistics of a model's activations on user data, in bounded memory.

Rules:
1. One onnxruntime pass over the data (batches streamed, see :mod:`graphprune.calibration.datasets`) exposes
   the inputs of the consumers (:mod:`graphprune.analysis.consumers`) that read a prunable group:
   what criteria score and what compensation refits.
2. Per consumer input and channel: running float64 sums of the values, their squares and
   their zeros, over every position of every sample (``want`` "channels"); for a Conv
   consumer also the mean of each (channel, kernel tap) of its zero-padded input over its
   output positions, which is what the mean output depends on at the borders too.
3. Per consumer (``want`` "gram"): the Gram matrix ``XᵀX`` and the sum of its input rows ``X``
   (float64), over at most ``max_rows`` random rows per sample (spatial positions of a Conv
   as im2col patches, tokens of a matrix product). That is all least squares needs, in
   ``features²`` numbers whatever the number of samples; a consumer wider than
   ``max_features`` gets no Gram (noted in ``skipped``).
4. With ``labels`` (a key of the dataset holding class indices) each sample's rows count in
   the Gram matrices with the weight :func:`margin_weights` gives it from the model's first
   output (its logits): ``XᵀWX`` and ``ΣWx``, ``rows`` the sum of the weights. Samples the
   classifier is close to getting wrong weigh up to ``1 + MARGIN_WEIGHT``, confident ones 1.
5. Memory is bounded by one batch of the exposed tensors plus the statistics: a dynamic
   batch is shrunk so that one batch of them stays under ``batch_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..analysis.consumers import Consumer, consumers_of, rows, tap_sums
from ..analysis.dependency import DependencyGraph
from ..errors import InputError
from .activations import stream_activations
from .datasets import DEFAULT_BATCH, Dataset, input_specs, open_dataset

DEFAULT_MAX_ROWS = 64  # rows per sample and consumer for the Gram matrices
DEFAULT_MAX_FEATURES = 4608  # a 3x3 conv over 512 channels: a Gram of 170 MB
DEFAULT_BATCH_BYTES = 256 << 20
MARGIN_WEIGHT = 10.0  # extra weight of a sample the classifier gives no probability to its class


def margin_weights(logits: np.ndarray, labels: np.ndarray, source="calibration data", key: str = "labels"):
    """Per sample ``1 + MARGIN_WEIGHT · (1 - p_y)``, ``p_y`` the softmax probability of its
    true class: the norm of the cross-entropy's gradient at the logits grows with ``1 - p_y``,
    so samples near the decision boundary (small margin) weigh most (rule 4). Labels that are
    not class indices of the logits raise ``InputError`` naming ``source``."""
    from .datasets import class_indices

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise InputError(f"{source}: --labels needs a classifier: the model's first output has shape {list(z.shape)}")
    y = class_indices(labels, z.shape[1], source, key)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return 1.0 + MARGIN_WEIGHT * (1.0 - p[np.arange(len(y)), y])


@dataclass
class ChannelStats:
    """Running sums over every value of each channel of one tensor axis."""

    count: int
    sum: np.ndarray
    sum_sq: np.ndarray
    zeros: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def mean_square(self) -> np.ndarray:
        return self.sum_sq / max(self.count, 1)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.mean_square - self.mean**2, 0.0)

    @property
    def zero_fraction(self) -> np.ndarray:
        return self.zeros / max(self.count, 1)


@dataclass
class GramStats:
    """``XᵀX`` and ``Σx`` of a consumer's input rows (features ``c * taps + t``).

    Rows are added in blocks (at most half the Gram's size waiting, between 1 and 16 MB): one
    large product is much faster than many small ones, and memory stays bounded.
    """

    rows: float  # the number of rows (their total weight when weighted)
    gram: np.ndarray
    total: np.ndarray
    pending: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, x: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Add rows ``x``, each counted ``weight`` times (default once)."""
        if weight is None:
            self.total += x.sum(axis=0)
            self.rows += len(x)
        else:
            self.total += weight @ x
            self.rows += float(weight.sum())
            x = x * np.sqrt(weight)[:, None]
        self.pending.append(x)
        if sum(p.nbytes for p in self.pending) >= min(16 << 20, max(1 << 20, self.gram.nbytes // 2)):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = np.concatenate(self.pending)
        self.pending.clear()
        self.gram += x.T @ x

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.rows, 1)

    def second_moment(self, centered: bool) -> np.ndarray:
        """``E[x xᵀ]``, or the covariance ``E[x xᵀ] - μμᵀ`` when ``centered``."""
        m = self.gram / max(self.rows, 1)
        if centered:
            mu = self.mean
            m = m - np.outer(mu, mu)
        return m


@dataclass
class Statistics:
    """What calibration measured: per consumer input (tensor, axis) and per consumer node."""

    samples: int = 0
    batches: int = 0
    channels: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    taps: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)  # Conv node -> (sum per feature, count)
    grams: dict[int, GramStats] = field(default_factory=dict)
    consumers: dict[int, Consumer] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # consumer node -> why it has no Gram

    @property
    def nbytes(self) -> int:
        """Memory held by the statistics (what must not grow with the number of samples)."""
        n = sum(s.sum.nbytes + s.sum_sq.nbytes + s.zeros.nbytes for s in self.channels.values())
        n += sum(t.nbytes for t, _ in self.taps.values())
        return n + sum(g.gram.nbytes + g.total.nbytes for g in self.grams.values())

    def feature_mean(self, node: int) -> np.ndarray | None:
        """Mean input of each weight column of consumer ``node`` (features ``c * taps + t``)."""
        c = self.consumers[node]
        if node in self.taps:
            total, count = self.taps[node]
            return total / max(count, 1)
        s = self.channels.get((c.data, c.axis))
        return None if s is None else np.repeat(s.mean, c.taps)

    def summary(self) -> dict:
        return {"samples": self.samples, "batches": self.batches}

    def merged(self, other: Statistics) -> Statistics:
        """These statistics with ``other``'s added (a second pass measuring other things)."""
        return Statistics(
            samples=max(self.samples, other.samples),
            batches=max(self.batches, other.batches),
            channels={**self.channels, **other.channels},
            taps={**self.taps, **other.taps},
            grams={**self.grams, **other.grams},
            consumers={**self.consumers, **other.consumers},
            skipped={**self.skipped, **other.skipped},
        )


def as_dataset(calib) -> Dataset:
    """A :class:`Dataset` from a path (an ``.npz`` file or a folder of them) or as given."""
    return calib if isinstance(calib, Dataset) else open_dataset(calib)


def calibrated_consumers(deps: DependencyGraph) -> dict[int, Consumer]:
    """The consumers whose input is a member of a prunable group (the only ones that matter)."""
    members = {(m.tensor, m.axis) for g in deps.prunable_groups() for m in g.members}
    return {i: c for i, c in consumers_of(deps).items() if (c.data, c.axis) in members}


def calibrate(
    model,
    deps: DependencyGraph,
    dataset: Dataset,
    *,
    want: Iterable[str] = ("channels", "gram"),
    nodes: Iterable[int] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_features: int = DEFAULT_MAX_FEATURES,
    batch_size: int = DEFAULT_BATCH,
    limit: int | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    seed: int = 0,
    labels: str | None = None,
) -> Statistics:
    """Run ``model`` over ``dataset`` and gather the statistics asked for.

    ``nodes`` limits the consumers (node indices) whose inputs are measured; by default
    every consumer of a prunable group. ``labels``: weight the Gram rows by margin (rule 4).
    """
    want = set(want)
    consumers = calibrated_consumers(deps)
    if nodes is not None:
        chosen = set(nodes)
        consumers = {i: c for i, c in consumers.items() if i in chosen}
    stats = Statistics(consumers=consumers)
    gram_nodes: dict[int, Consumer] = {}
    if "gram" in want:
        for i, c in consumers.items():
            if c.layout == "":
                stats.skipped[i] = c.note
            elif c.features > max_features:
                stats.skipped[i] = f"{c.features} input features is more than {max_features}: no Gram matrix"
            else:
                gram_nodes[i] = c
    tensors = sorted({c.data for c in consumers.values()} if "channels" in want else set())
    tensors = sorted(set(tensors) | {c.data for c in gram_nodes.values()})
    if not tensors:
        return stats
    mv = deps.view
    per_sample = sum(4 * int(np.prod([d or 1 for d in (mv.shapes.get(t) or (1,))[1:]])) for t in tensors)
    dynamic = not any(s.fixed_batch for s in input_specs(model))
    if dynamic:
        batch_size = max(1, min(batch_size, batch_bytes // max(per_sample, 1)))
    rng = np.random.default_rng(seed)
    channel_dims = sorted({(c.data, c.axis) for c in consumers.values()}) if "channels" in want else []
    tap_nodes = [i for i, c in consumers.items() if c.layout == "conv" and c.taps > 1] if "channels" in want else []
    extra = (labels,) if labels is not None and gram_nodes else ()
    stream = stream_activations(
        model, dataset, tensors, dtypes=mv.dtypes, batch_size=batch_size, limit=limit, extra=extra
    )
    for batch in stream:
        first = batch[tensors[0]]
        logits = batch[model.graph.output[0].name] if extra else None
        weight = margin_weights(logits, batch[labels], dataset.path, labels) if extra else None
        stats.batches += 1
        stats.samples += int(first.shape[0]) if first.ndim else 1
        for tensor, axis in channel_dims:
            _add_channels(stats.channels, tensor, axis, batch[tensor])
        for i in tap_nodes:
            total, count = tap_sums(consumers[i], batch[consumers[i].data])
            before = stats.taps.get(i)
            stats.taps[i] = (total, count) if before is None else (before[0] + total, before[1] + count)
        for i, c in gram_nodes.items():
            x, owner = rows(c, batch[c.data], max_rows, rng, owners=True)
            g = stats.grams.get(i)
            if g is None:
                f = c.features
                g = stats.grams[i] = GramStats(0, np.zeros((f, f)), np.zeros(f))
            g.add(x, None if weight is None else weight[owner])
    for g in stats.grams.values():
        g.flush()
    return stats


def _add_channels(store: dict, tensor: str, axis: int, x: np.ndarray) -> None:
    c = x.shape[axis]
    xs = np.moveaxis(np.asarray(x), axis, 0).reshape(c, -1)
    s = store.get((tensor, axis))
    if s is None:
        s = store[(tensor, axis)] = ChannelStats(0, np.zeros(c), np.zeros(c), np.zeros(c))
    s.count += xs.shape[1]
    s.sum += xs.sum(axis=1, dtype=np.float64)
    s.sum_sq += np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
    s.zeros += np.count_nonzero(xs == 0, axis=1)
