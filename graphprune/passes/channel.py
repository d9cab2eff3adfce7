"""Channel pruning: choose input channels by how well the consumers can do without them, then
refit the consumers' weights (ThiNet, Luo et al. 2017; He et al. 2017).

Rules:
1. Per group, removing index set ``R`` changes each consumer's output by ``Σ_{c∈R} M_c x_c``;
   its expected squared norm is ``1_Rᵀ G 1_R`` with ``G[c, d] = Σ_{t,u} (MᵀM ∘ Σ)[(c,t),(d,u)]``,
   ``Σ`` the consumer's input covariance from calibration (second moment if it has no bias
   to absorb means). ``G`` is divided by the consumer's output energy, so the consumers of
   a residual stream weigh alike, and summed over the group's consumers.
2. ``selection="greedy"`` (ThiNet): repeatedly remove the index that adds least to the error.
   ``selection="lasso"`` (He et al.): the smallest L1 penalty on channel coefficients ``β``
   (``min (1-β)ᵀG(1-β) + α|β|₁``) that leaves no more than the kept count non-zero; the
   largest ``|β|`` stay.
3. How many per group: ``floor(N * ratio)``, with ``round_to``, ``min_keep``, ``ignore`` and
   ``units`` as in filter pruning. A group without a calibrated consumer is ranked by
   ``criterion`` instead (counted in ``criterion_fallbacks``).
4. Then the consumers are compensated (``lstsq`` by default: ridge least squares on the
   kept channels) and the plan applied like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..analysis.consumers import weight_matrix, weight_value
from ..analysis.dependency import DependencyGraph, Group, analyze
from ..analysis.plan import Plan
from ..calibration.datasets import DEFAULT_BATCH
from ..calibration.statistics import DEFAULT_MAX_ROWS, Statistics
from ..edit.compensate import DEFAULT_RIDGE, METHODS
from ..edit.maskmode import mode_option
from ..errors import InputError
from ..options import option
from ..planning.allocate import keep_count, protected, unit_step
from ..planning.criteria import CRITERIA, ScoreContext
from . import PassContext, PassResult, TransformMixin
from .filter import DEFAULT_UNITS, UNITS
from .finish import (
    check_data_options,
    check_round_to,
    check_scope,
    check_sequential,
    finish,
    group_report,
    measure,
    round_to_of,
)

SELECTIONS = ("greedy", "lasso")


@dataclass(frozen=True)
class ChannelPruning(TransformMixin):
    """Remove the ``ratio`` of each group's channels whose loss the consumers feel least, and
    refit the consumers on the rest (needs calibration data)."""

    ratio: float = option(0.5, "fraction of each group to remove (default 0.5)")
    selection: str = option(
        "greedy", "--pass channel: ThiNet greedy selection (default) or He et al. LASSO", choices=SELECTIONS
    )
    calib: Any = option(None, "calibration data", metavar="DATA")  # a Dataset, or an .npz file or a folder of them
    calib_samples: int | None = option(None, "use at most N samples of --calib", metavar="N")
    batch_size: int = option(DEFAULT_BATCH, "samples per onnxruntime run on --calib (default 32)", metavar="N")
    compensate: str = option("lstsq", "how the consumers are refit", choices=METHODS)
    sequential: bool = option(
        False,
        "refit the consumers stage by stage in topological order on the pruned model's own inputs, so each"
        " layer repairs the error of those before it (one pass over --calib per stage; any --compensate but none)",
    )  # graphprune.edit.sequential
    ridge: float = option(DEFAULT_RIDGE, cli=False)
    max_rows: int = option(DEFAULT_MAX_ROWS, cli=False)
    criterion: str = option("l2", "ranks groups that no calibrated consumer reads")
    round_to: int | None = option(1, "keep channel counts multiples of N", cli_default=None)
    min_keep: int = option(1, "keep at least N entries per group")
    ignore: tuple[str, ...] = option((), "protect layers", metavar="NAME")
    units: tuple[str, ...] = option((), "prune only these units", flag="--unit", choices=UNITS)
    seed: int = option(0, "seed of the random criterion and inputs")
    mode: str = mode_option()  # remove | mask (graphprune.edit.maskmode)

    def __post_init__(self) -> None:
        from ..edit.maskmode import check_mode

        check_mode(self.mode)
        if not 0.0 < self.ratio < 1.0:
            raise InputError(f"ratio must be between 0 and 1 (exclusive), got {self.ratio}")
        if self.selection not in SELECTIONS:
            raise InputError(f"unknown selection {self.selection!r}; choose from {', '.join(SELECTIONS)}")
        if self.criterion not in CRITERIA:
            raise InputError(f"unknown criterion {self.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
        unknown = set(self.units) - set(UNITS)
        if unknown:
            raise InputError(f"unknown unit {sorted(unknown)[0]!r}; choose from {', '.join(UNITS)}")
        check_round_to(self.round_to)
        if self.min_keep < 1:
            raise InputError(f"min-keep must be a positive integer, got {self.min_keep}")
        check_data_options("channel pruning", self.compensate, self.calib, True, self.batch_size, self.calib_samples)
        check_sequential(self.sequential, self.compensate)

    inexact = False

    def __call__(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
        """Calibrate, select, compensate and cut."""
        context = context or PassContext()
        deps = context.deps if context.deps is not None else analyze(model)
        scope = check_scope(deps, self.ignore, self.units)
        stats = measure(self, model, deps, {"channels", "gram"})
        plan, notes = self.choose(deps, stats)
        result, data_notes = finish(self, model, deps, plan, stats, inplace=context.inplace)
        result.report = {**self.report(deps, plan, notes), **data_notes}
        result.report["notes"] = result.report.get("notes", []) + scope
        return result

    def choose(self, deps: DependencyGraph, stats: Statistics) -> tuple[Plan, dict]:
        """The channels to remove per group, by reconstruction error of the consumers."""
        skip = protected(deps, self.ignore)
        round_to, step = round_to_of(self.round_to, deps)
        units = self.units or DEFAULT_UNITS
        ctx = ScoreContext(seed=self.seed, stats=stats)
        centered = self.compensate != "none"
        removals: dict[int, np.ndarray] = {}
        errors: list[float] = []
        for g in deps.prunable_groups():
            if g.id in skip or g.unit not in units:
                continue
            keep = keep_count(g.size, int(np.floor(g.size * self.ratio)), unit_step(g, round_to), self.min_keep)
            if keep >= g.size:
                continue
            gram = group_error_gram(g, deps, stats, centered=centered)
            if gram is None:
                ctx.fell_back(f"channel selection -> {self.criterion} (no calibrated consumer in the group)")
                order = np.argsort(np.asarray(CRITERIA[self.criterion](g, deps, ctx)), kind="stable")
                gone = order[: g.size - keep]
            else:
                gone = greedy(gram, g.size - keep) if self.selection == "greedy" else lasso(gram, keep)
                errors.append(float(_error(gram, gone)))
            removals[g.id] = np.sort(np.asarray(gone, dtype=np.int64))
        notes = {
            "criterion_fallbacks": dict(ctx.fallbacks),
            "selection": self.selection,
            # mean over groups of the removed channels' share of the consumers' output energy
            "reconstruction_error": float(np.mean(errors)) if errors else None,
            **({"channel_step": step} if step else {}),
        }
        return Plan(removals), notes

    def report(self, deps: DependencyGraph, plan: Plan, notes: dict) -> dict:
        return {
            "criterion": "reconstruction",
            "ratio": self.ratio,
            "global": False,
            "round_to": self.round_to if self.round_to is not None else notes.get("channel_step", {}).get("step"),
            **group_report(deps, plan, self.ignore, self.units or DEFAULT_UNITS),
            **notes,
        }


def consumer_error_gram(c, w: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """``G[c, d]``: the expected inner product of channel ``c``'s and ``d``'s contributions to
    the consumer's output, divided by the output energy (rule 1)."""
    m = weight_matrix(c, w)
    k = m.T @ m
    k *= moment
    g = k.reshape(c.channels, c.taps, c.channels, c.taps).sum(axis=(1, 3))
    energy = float(np.trace(m @ moment @ m.T))
    return g / energy if energy > 0 else g


def group_error_gram(group: Group, deps: DependencyGraph, stats: Statistics, *, centered: bool) -> np.ndarray | None:
    """The error Gram of ``group``'s indices, summed over its calibrated consumers, or None."""
    total = None
    for m in group.members:
        for i, c in stats.consumers.items():
            if (c.data, c.axis) != (m.tensor, m.axis) or i not in stats.grams:
                continue
            w = weight_value(deps, c)
            if w is None:
                continue
            moment = stats.grams[i].second_moment(centered and bool(c.bias_slot))
            g = consumer_error_gram(c, w, moment)
            idx = m.indices.ravel()
            k = m.indices.shape[1]
            part = g[np.ix_(idx, idx)].reshape(group.size, k, group.size, k).sum(axis=(1, 3))
            total = part if total is None else total + part
    return total


def greedy(gram: np.ndarray, n_remove: int) -> np.ndarray:
    """ThiNet: remove, one at a time, the index that adds least to ``1_Rᵀ G 1_R``."""
    n = len(gram)
    removed = np.zeros(n, dtype=bool)
    v = np.zeros(n)  # G 1_R
    diag = np.diag(gram).copy()
    out = []
    for _ in range(n_remove):
        cost = 2.0 * v + diag
        cost[removed] = np.inf
        j = int(np.argmin(cost))
        out.append(j)
        removed[j] = True
        v += gram[:, j]
    return np.array(out, dtype=np.int64)


def lasso(gram: np.ndarray, keep: int, *, sweeps: int = 60, steps: int = 30) -> np.ndarray:
    """He et al.: the indices outside the ``keep`` largest ``|β|`` of the sparsest L1 solution
    of ``min (1-β)ᵀG(1-β) + α|β|₁`` that has at most ``keep`` non-zeros (bisection on α)."""
    n = len(gram)
    g1 = gram.sum(axis=1)
    lo, hi = 0.0, 2.0 * float(np.abs(g1).max()) + 1e-12
    best = _cd(gram, g1, lo, np.ones(n), sweeps)
    beta = best.copy()
    for _ in range(steps):
        alpha = 0.5 * (lo + hi)
        beta = _cd(gram, g1, alpha, beta, sweeps)
        if np.count_nonzero(beta) > keep:
            lo = alpha
        else:
            hi, best = alpha, beta.copy()
    order = np.argsort(-np.abs(best), kind="stable")
    return np.sort(order[keep:])


def _cd(gram: np.ndarray, g1: np.ndarray, alpha: float, beta: np.ndarray, sweeps: int) -> np.ndarray:
    """Coordinate descent on ``βᵀGβ - 2βᵀG1 + α|β|₁``."""
    beta = beta.copy()
    diag = np.maximum(np.diag(gram), 1e-12)
    r = g1 - gram @ beta  # G(1 - β)
    for _ in range(sweeps):
        change = 0.0
        for j in range(len(beta)):
            z = r[j] + diag[j] * beta[j]
            new = np.sign(z) * max(abs(z) - alpha / 2.0, 0.0) / diag[j]
            if new != beta[j]:
                r -= gram[:, j] * (new - beta[j])
                change = max(change, abs(new - beta[j]))
                beta[j] = new
        if change < 1e-8:
            break
    return beta


def _error(gram: np.ndarray, gone) -> float:
    idx = np.asarray(gone, dtype=np.int64)
    return float(gram[np.ix_(idx, idx)].sum())
