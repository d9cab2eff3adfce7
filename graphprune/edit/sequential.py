"""Sequential compensation: refit consumers stage by stage on the *pruned* model's own inputs,
so that each layer repairs the error of the layers before it (``--sequential``).

Rules:
1. The plan is chosen first, as without ``sequential`` (on the original's statistics); only
   the refit is sequential.
2. The consumers refit are those that lose input channels under the plan and every
   refittable consumer downstream of one of them (its input changes even if it keeps every
   channel). A consumer's *stage* is one more than the latest stage of a refit consumer
   upstream of it; consumers of one stage do not see each other's refits.
3. Per stage, one pass over the calibration data runs the original and the current pruned
   model (the original with every refit so far, its removed channels masked at their
   consumers: what the pruned model computes, :func:`graphprune.validation.contract.masked_reference`)
   on the same batches, and collects for each consumer of the stage, from the same rows of
   both: ``Σ x̃ x̃ᵀ``, ``Σ x̃ xᵀ``, ``Σ x`` and ``Σ x̃`` (``x`` the original's input row,
   ``x̃`` the pruned model's, float64). Only one stage's statistics are held at a time (with
   at most 16 MB of rows per consumer waiting to enter them as one product), so memory is
   bounded by the widest stage (not by the model); the data is read once per stage.
4. The refit makes the consumer's output on the pruned model's input match the original's on
   its own: ``lstsq`` ``M'_K = M C_{x x̃_K} (Σ̃_KK + λI)⁻¹``, ``obs`` the same with the ridge
   pulling toward ``M_K`` (``(M C + λ M_K)(Σ̃_KK + λI)⁻¹``), ``bias`` keeps ``M`` and moves the
   bias by ``M μ − M_K μ̃_K``; the bias of ``lstsq``/``obs`` absorbs the means the same way,
   and covariances are centred when the consumer has a bias. With labels (``dcp``) rows
   are weighted by margin as in :mod:`graphprune.calibration.statistics`.
5. Consumers too wide for a Gram matrix or not refittable are left as the one-shot
   compensation leaves them and listed (``fallbacks`` / ``skipped``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis.consumers import Consumer, features_of, from_matrix, rows, weight_matrix
from ..analysis.dependency import DependencyGraph
from ..analysis.plan import Plan, removed_entries
from ..calibration.activations import session_with_outputs
from ..calibration.datasets import DEFAULT_BATCH, Dataset, input_specs
from ..calibration.statistics import DEFAULT_MAX_FEATURES, DEFAULT_MAX_ROWS, margin_weights
from ..progress import progress
from .compensate import (
    DEFAULT_RIDGE,
    Compensation,
    _bias_vector,
    _constant_tensors,
    _tensor_like,
    _write_bias,
)


def stages(deps: DependencyGraph, plan: Plan, consumers: dict[int, Consumer]) -> list[list[int]]:
    """The consumers to refit (rule 2), grouped by stage, in topological order."""
    mv = deps.view
    removed = removed_entries(deps, plan)
    losing = {i for i, c in consumers.items() if len(removed.get((c.data, c.axis), ())) > 0}
    upstream: dict[str, set[int]] = {}  # tensor -> consumer nodes it depends on

    def above(tensor: str) -> set[int]:
        seen = upstream.get(tensor)
        if seen is not None:
            return seen
        out: set[int] = set()
        stack, visited = [tensor], set()
        while stack:
            t = stack.pop()
            if t in visited or t not in mv.producer:
                continue
            visited.add(t)
            j = mv.producer[t]
            if j in consumers:
                out.add(j)
            stack.extend(x for x in mv.nodes[j].input if x)
        upstream[tensor] = out
        return out

    order = sorted(consumers)  # an ONNX graph lists its nodes in topological order
    level: dict[int, int] = {}
    for i in order:
        before = [level[j] for j in above(consumers[i].data) if j in level]
        if i in losing or before:
            level[i] = 1 + max(before, default=-1)
    out: list[list[int]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for i, s in level.items():
        out[s].append(i)
    return [sorted(s) for s in out if s]


PENDING_BYTES = 16 << 20  # rows of one consumer waiting to enter its sums (rule 3)


class _Pair:
    """Rule 3's sums for one consumer. Rows wait until they fill :data:`PENDING_BYTES` and
    enter the sums in one large product: with one sample per batch (a model fixed to batch 1)
    the small products of a few dozen rows each were most of a stage's time, and BLAS only
    reaches its speed from several hundred rows on."""

    def __init__(self, f: int):
        self.a = np.zeros((f, f))  # Σ x̃ x̃ᵀ
        self.b = np.zeros((f, f))  # Σ x̃ xᵀ
        self.mu = np.zeros(f)
        self.mu_p = np.zeros(f)
        self.n = 0.0
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # (√w x̃, √w x)
        self.pending_bytes = 0

    def add(self, x: np.ndarray, xp: np.ndarray, w: np.ndarray | None) -> None:
        if w is None:
            self.mu += x.sum(axis=0)
            self.mu_p += xp.sum(axis=0)
            self.n += len(x)
        else:
            self.mu += w @ x
            self.mu_p += w @ xp
            self.n += float(w.sum())
            root = np.sqrt(w)[:, None]
            x, xp = x * root, xp * root  # Σ w x̃ xᵀ = (√w x̃)ᵀ (√w x)
        self.pending.append((xp, x))
        self.pending_bytes += xp.nbytes + x.nbytes
        if self.pending_bytes >= PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        xp = np.concatenate([p for p, _ in self.pending])
        x = np.concatenate([o for _, o in self.pending])
        self.pending.clear()
        self.pending_bytes = 0
        self.a += xp.T @ xp
        self.b += xp.T @ x


def _refit(c: Consumer, m: np.ndarray, b: np.ndarray, s: _Pair, keep: np.ndarray, method: str, ridge: float):
    """Rule 4: the new weight matrix (removed columns as they were) and bias (or None)."""
    n = max(s.n, 1e-12)
    mu, mu_p = s.mu / n, s.mu_p / n
    centered = bool(c.bias_slot)
    m_new = m.copy()
    if method == "bias":
        b_new = b + m @ mu - m[:, keep] @ mu_p[keep]
        return m_new, b_new
    a = s.a[np.ix_(keep, keep)] / n
    cross = s.b[keep, :] / n  # E[x̃_K xᵀ]
    if centered:
        a = a - np.outer(mu_p[keep], mu_p[keep])
        cross = cross - np.outer(mu_p[keep], mu)
    lam = ridge * max(float(np.trace(a)) / max(len(keep), 1), 1e-12)
    rhs = cross @ m.T  # [K, O]
    if method == "obs":
        rhs = rhs + lam * m[:, keep].T
    try:
        sol = np.linalg.solve(a + lam * np.eye(len(keep)), rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(a + lam * np.eye(len(keep)), rhs, rcond=None)[0]
    m_new[:, keep] = sol.T
    b_new = b + m @ mu - m_new[:, keep] @ mu_p[keep] if centered else None
    return m_new, b_new


def sequential_compensate(
    model: onnx.ModelProto,
    deps: DependencyGraph,
    plan: Plan,
    dataset: Dataset,
    method: str,
    *,
    ridge: float = DEFAULT_RIDGE,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_features: int = DEFAULT_MAX_FEATURES,
    batch_size: int = DEFAULT_BATCH,
    limit: int | None = None,
    seed: int = 0,
    labels: str | None = None,
) -> Compensation:
    """A copy of ``model`` whose consumers are refit stage by stage (rules 2-4)."""
    from ..calibration.statistics import calibrated_consumers
    from .masking import masked_reference_bytes

    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = Compensation(out, method)
    if method == "none" or not plan.removals:
        return result
    consumers = {}
    for i, c in calibrated_consumers(deps).items():
        if not c.refittable:
            result.skipped[c.name] = c.note
        elif c.layout == "" or c.features > max_features:
            result.skipped[c.name] = f"{c.features} input features: no Gram matrix, not refit"
        else:
            consumers[i] = c
    removed = removed_entries(deps, plan)
    inits = _constant_tensors(out)
    taken = set(inits) | {o for n in out.graph.node for o in n.output}
    specs = input_specs(model)
    dtypes = deps.view.dtypes
    all_stages = stages(deps, plan, consumers)
    result.stages = len(all_stages)
    for k, stage in enumerate(all_stages):
        tensors = sorted({consumers[i].data for i in stage})
        current = onnx.load_from_string(masked_reference_bytes(out, deps, plan))
        sess_o = session_with_outputs(model, tensors, dtypes)
        sess_p = session_with_outputs(current, tensors, dtypes)
        del current
        names_o = [o.name for o in sess_o.get_outputs()]
        sums = {i: _Pair(consumers[i].features) for i in stage}
        extra = (labels,) if labels is not None else ()
        batches = dataset.batches(specs, batch_size=batch_size, limit=limit, extra=extra)
        for b, feeds in enumerate(progress(batches, f"sequential refit, stage {k + 1}/{len(all_stages)}")):
            inputs = {s.name: feeds[s.name] for s in specs}
            got_o = dict(zip(names_o, sess_o.run(names_o, inputs), strict=True))
            got_p = dict(zip(tensors, sess_p.run(tensors, inputs), strict=True))
            logits = got_o[model.graph.output[0].name]
            weight = None if labels is None else margin_weights(logits, feeds[labels], dataset.path, labels)
            for i in stage:
                c = consumers[i]
                rng_seed = [seed, b, i]
                x, owner = rows(c, got_o[c.data], max_rows, np.random.default_rng(rng_seed), owners=True)
                xp = rows(c, got_p[c.data], max_rows, np.random.default_rng(rng_seed))  # the same rows
                sums[i].add(x, xp, None if weight is None else weight[owner])
        del sess_o, sess_p
        for i in stage:
            sums[i].flush()
            c = consumers[i]
            keep_mask = np.ones(c.features, dtype=bool)
            keep_mask[features_of(c, removed.get((c.data, c.axis), np.zeros(0, dtype=np.int64)))] = False
            w_t = inits[c.weight]
            w = numpy_helper.to_array(w_t)
            m = weight_matrix(c, w)
            b0 = _bias_vector(c, inits, m.shape[0])
            if method == "bias" and not c.bias_slot:
                result.skipped[c.name] = "no bias to fold the mean into"
                continue
            m_new, b_new = _refit(c, m, b0, sums[i], np.flatnonzero(keep_mask), method, ridge)
            w_t.CopyFrom(_tensor_like(from_matrix(c, m_new, w), w_t))
            if b_new is not None:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(dtypes.get(c.data, onnx.TensorProto.FLOAT))
                result.added_bias |= _write_bias(out, c, inits, taken, b_new, dtype)
                inits = _constant_tensors(out)
            result.changed.append(c.name)
        del sums
    return result
