"""Structured optimal brain surgeon (OBS): which channels a group can lose at least cost, and
the optimal update of what its consumers keep (Hassibi & Stork 1993; structured as in ZipLM,
Kurtic et al. 2023).

Rules:
1. A consumer ``y = M x + b`` with input second moment ``H`` (its calibration Gram, centred
   when it has a bias to absorb means, damped by ``λ = ridge · trace(H) / F``) loses input
   features ``S``: under the optimal update of the others its output error grows by
   ``Σ_outputs M_S ((H⁻¹)_SS)⁻¹ M_Sᵀ``, and the update is ``ΔM = -M_S ((H⁻¹)_SS)⁻¹ (H⁻¹)_S,:``.
   The error is divided by the consumer's output energy ``trace(M H Mᵀ)``, so the consumers
   of a residual stream weigh alike, and summed over the group's consumers.
2. Selection is greedy: remove the group index whose features (every tap of every mapped
   channel, in every consumer) cost least, apply the update to ``M`` and downdate ``H⁻¹``
   (``H⁻¹ -= H⁻¹_:,S ((H⁻¹)_SS)⁻¹ H⁻¹_S,:``, exact for the remaining features), and repeat
   until the group is empty. An index's score is the accumulated error at its removal, so
   the lowest ``k`` scores are the first ``k`` greedy removals. Groups of more than
   ``MAX_STEPS`` indices remove several at a time (the cheapest ones of that step).
3. The updates of a greedy sequence compose to one closed form for the set removed:
   ``M'_K = M_K + M_S Σ_SK (Σ_KK + λI)⁻¹`` (:func:`obs_refit`): least squares on the same
   statistics, damped toward the original weights instead of toward zero. With ``λ → 0`` it
   is exactly the ``lstsq`` refit (tested). The bias absorbs the means:
   ``b' = b + M μ − M'_K μ_K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.consumers import Consumer, features_of, weight_matrix, weight_value

MAX_STEPS = 256  # greedy steps per group at most; larger groups remove several per step


def obs_refit(m: np.ndarray, sigma: np.ndarray, keep: np.ndarray, lam: float) -> np.ndarray:
    """Rule 3: ``M`` with the kept columns ``keep`` updated for the loss of the others (which
    keep their values: the surgery drops them, the reference masks them)."""
    gone = np.setdiff1d(np.arange(m.shape[1]), keep)
    out = m.copy()
    if len(gone) == 0:
        return out
    s_kk = sigma[np.ix_(keep, keep)] + lam * np.eye(len(keep))
    rhs = sigma[np.ix_(keep, gone)] @ m[:, gone].T  # Σ_KS M_Sᵀ
    try:
        sol = np.linalg.solve(s_kk, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(s_kk, rhs, rcond=None)[0]
    out[:, keep] = m[:, keep] + sol.T
    return out


@dataclass
class _Part:
    """One consumer of a group during the greedy selection."""

    w: np.ndarray  # [O, F] weight, updated as indices go
    hinv: np.ndarray  # [F, F] inverse damped Hessian, downdated as indices go
    blocks: np.ndarray  # [N, b] feature indices of each group index
    energy: float


def _parts(group, deps, stats, ridge: float) -> list[_Part]:
    parts = []
    for mem in group.members:
        for i, c in stats.consumers.items():
            if (c.data, c.axis) != (mem.tensor, mem.axis) or i not in stats.grams:
                continue
            w = weight_value(deps, c)
            if w is None:
                continue
            parts.append(_part(c, weight_matrix(c, w), stats.grams[i], mem.indices, ridge))
    return parts


def _part(c: Consumer, m: np.ndarray, gram, indices: np.ndarray, ridge: float) -> _Part:
    h = gram.second_moment(bool(c.bias_slot))
    energy = float(np.trace(m @ h @ m.T))
    lam = ridge * max(float(np.trace(h)) / max(len(h), 1), 1e-12)
    hinv = np.linalg.inv(h + lam * np.eye(len(h)))
    blocks = np.stack([features_of(c, row) for row in indices])
    return _Part(m.copy(), hinv, blocks, energy if energy > 0 else 1.0)


def _costs(p: _Part, alive: np.ndarray) -> np.ndarray:
    """Rule 1 for each alive index alone: the output error its removal adds, over the energy."""
    idx = p.blocks[alive]  # [n, b]
    h = p.hinv[idx[:, :, None], idx[:, None, :]]  # [n, b, b]
    wb = np.transpose(p.w[:, idx], (1, 2, 0))  # [n, b, O]
    try:
        x = np.linalg.solve(h, wb)
    except np.linalg.LinAlgError:
        x = np.stack([np.linalg.lstsq(a, y, rcond=None)[0] for a, y in zip(h, wb, strict=True)])
    return np.einsum("nbo,nbo->n", wb, x) / p.energy


def _remove(p: _Part, feats: np.ndarray) -> None:
    """Apply the OBS update for features ``feats`` and downdate ``H⁻¹`` (rule 2)."""
    h_ss = p.hinv[np.ix_(feats, feats)]
    t = np.linalg.lstsq(h_ss, p.hinv[feats, :], rcond=None)[0]  # ((H⁻¹)_SS)⁻¹ (H⁻¹)_S,:
    p.w -= p.w[:, feats] @ t
    p.hinv -= p.hinv[:, feats] @ t
    p.hinv[feats, :] = 0.0
    p.hinv[:, feats] = 0.0
    p.w[:, feats] = 0.0


def greedy_obs(group, deps, stats, ridge: float) -> np.ndarray | None:
    """Scores of ``group``'s indices by rule 2 (higher is more important), or None when no
    calibrated consumer with a Gram matrix reads the group."""
    parts = _parts(group, deps, stats, ridge)
    if not parts:
        return None
    n = group.size
    alive = np.ones(n, dtype=bool)
    scores = np.zeros(n)
    total = 0.0
    per_step = max(1, -(-n // MAX_STEPS))
    while alive.any():
        live = np.flatnonzero(alive)
        cost = sum(_costs(p, live) for p in parts)
        pick = live[np.argsort(cost, kind="stable")[:per_step]]
        total = max(total, total + float(np.sum(np.maximum(np.sort(cost)[:per_step], 0.0))))
        # a strictly increasing score: ties keep the greedy order
        scores[pick] = total + (n - alive.sum() + np.arange(len(pick)) + 1) * 1e-12
        alive[pick] = False
        if alive.any():
            for p in parts:
                _remove(p, p.blocks[pick].ravel())
    return scores
