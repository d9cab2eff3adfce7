"""Compensation: fold what removed channels contributed back into their consumers' weights.

``compensate(model, deps, plan, stats, method)`` returns a copy of ``model`` whose consumers
(:mod:`graphprune.analysis.consumers`) that lose input channels under ``plan`` have new weights; the
structure is never changed, except that a Conv or Gemm without a bias may get one
(zero-initialised, then compensated). The plan is then applied to the compensated model,
and the exact reference of validation is built from it too.

Rules:
1. ``bias``: the removed channels' mean input times their weight columns is added to the
   bias: ``b += M[:, removed] · mean[removed]``. For a Conv the mean of each weight entry's
   input is taken over the output positions of the zero-padded input, so the consumer's
   mean output (over positions and samples) is exactly kept, borders included; a single
   position still differs by its deviation from the mean.
2. ``lstsq``: the kept weight columns and the bias are refit by ridge least squares on the
   consumer's calibration Gram (float64), so that the consumer's output on the kept channels
   best matches the original output: ``M'ₖ = M Σ₍:,k₎ (Σₖₖ + λI)⁻¹``, ``b' = b + M μ − M'ₖ μₖ``
   with ``Σ`` the input covariance and ``λ = ridge · trace(Σₖₖ) / |k|``. A consumer with no
   bias slot (MatMul not followed by a bias Add) is fit without a bias, on ``E[x xᵀ]``. A
   consumer without a Gram (too wide) falls back to ``bias``.
2b. ``obs``: the optimal brain surgeon update on the same statistics (:func:`graphprune.edit.obs.obs_refit`):
   the same least squares with its ridge pulling the kept weights toward their original
   values instead of toward zero (equal to ``lstsq`` as ``ridge → 0``); same bias and fallback.
3. Weights keep their dtype (float16 is solved in float64 and stored back) and their place
   (an initializer, or a ``Constant`` node's value); consumers whose weight is computed at
   run time (QDQ, bfloat16 Cast) or shared between nodes are left alone and listed in the notes.
4. Removed columns keep their values: the surgery drops them, the reference masks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis.consumers import Consumer, features_of, from_matrix, weight_matrix
from ..analysis.dependency import DependencyGraph
from ..analysis.plan import Plan, removed_entries
from ..calibration.statistics import Statistics
from ..ir.graph import fresh_name

METHODS = ("none", "bias", "lstsq", "obs")
DEFAULT_RIDGE = 1e-3


@dataclass
class Compensation:
    """The compensated model and what was done to which consumer."""

    model: onnx.ModelProto
    method: str
    changed: list[str] = field(default_factory=list)  # consumer node names
    skipped: dict[str, str] = field(default_factory=dict)  # consumer node name -> why
    fallbacks: dict[str, str] = field(default_factory=dict)  # node name -> what was done instead
    added_bias: bool = False
    stages: int | None = None  # sequential refits (graphprune.edit.sequential): how many stages

    def summary(self) -> dict:
        return {
            "method": self.method,
            "consumers": len(self.changed),
            "skipped": dict(self.skipped),
            "fallbacks": dict(self.fallbacks),
            **({"sequential_stages": self.stages} if self.stages is not None else {}),
        }


def compensate(
    model: onnx.ModelProto,
    deps: DependencyGraph,
    plan: Plan,
    stats: Statistics,
    method: str,
    *,
    ridge: float = DEFAULT_RIDGE,
) -> Compensation:
    """A copy of ``model`` with the consumers of ``plan``'s removed channels compensated."""
    if method not in METHODS:
        raise ValueError(f"unknown compensation {method!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = Compensation(out, method)
    if method == "none":
        return result
    removed = removed_entries(deps, plan)
    inits = _constant_tensors(out)
    taken = set(inits) | {o for n in out.graph.node for o in n.output}
    for i, c in sorted(stats.consumers.items()):
        gone = removed.get((c.data, c.axis))
        if gone is None or len(gone) == 0:
            continue
        if not c.refittable:
            result.skipped[c.name] = c.note
            continue
        how = method
        if how in ("lstsq", "obs") and i not in stats.grams:
            how = "bias"
            result.fallbacks[c.name] = "bias (" + stats.skipped.get(i, "no Gram matrix") + ")"
        mean = stats.feature_mean(i) if how == "bias" else None
        if how == "bias" and mean is None:
            result.skipped[c.name] = "no calibration statistics for its input"
            continue
        if how == "bias" and not c.bias_slot:
            result.skipped[c.name] = "no bias to fold the mean into"
            continue
        w_t = inits[c.weight]
        w = numpy_helper.to_array(w_t)
        m = weight_matrix(c, w)
        b = _bias_vector(c, inits, m.shape[0])
        if how == "bias":
            f = features_of(c, gone)
            b_new = b + m[:, f] @ mean[f]
            m_new = m
        else:
            g = stats.grams[i]
            m_new, b_new = _refit(c, m, b, g.second_moment, g.mean, gone, ridge, toward_original=how == "obs")
        w_t.CopyFrom(_tensor_like(from_matrix(c, m_new, w), w_t))
        if b_new is not None:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(deps.view.dtypes.get(c.data, onnx.TensorProto.FLOAT))
            result.added_bias |= _write_bias(out, c, inits, taken, b_new, dtype)
        result.changed.append(c.name)
    return result


def _constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The tensor protos that hold the main graph's constants, by name: initializers and the
    ``value`` of Constant nodes (rewritten in place, so a Constant weight stays one)."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


def _refit(c: Consumer, m, b, moment, mean, gone, ridge: float, toward_original: bool = False):
    """Ridge least-squares refit of the kept columns (and the bias, if the consumer has a slot);
    ``toward_original``: the OBS update (rule 2b)."""
    keep_mask = np.ones(c.features, dtype=bool)
    keep_mask[features_of(c, gone)] = False
    k = np.flatnonzero(keep_mask)
    centered = bool(c.bias_slot)
    sigma = moment(centered)
    s_kk = sigma[np.ix_(k, k)]
    lam = ridge * max(float(np.trace(s_kk)) / max(len(k), 1), 1e-12)
    if toward_original:
        from .obs import obs_refit

        m_new = obs_refit(m, sigma, k, lam)
        return m_new, (b + m @ mean - m_new[:, k] @ mean[k]) if centered else None
    rhs = sigma[k, :] @ m.T  # [k, O]
    try:
        sol = np.linalg.solve(s_kk + lam * np.eye(len(k)), rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(s_kk + lam * np.eye(len(k)), rhs, rcond=None)[0]
    m_new = m.copy()
    m_new[:, k] = sol.T
    b_new = None
    if centered:
        b_new = b + m @ mean - m_new[:, k] @ mean[k]
    return m_new, b_new


def _bias_vector(c: Consumer, inits: dict, n_out: int) -> np.ndarray:
    if c.bias is None:
        return np.zeros(n_out)
    return numpy_helper.to_array(inits[c.bias]).astype(np.float64).reshape(-1)


def _tensor_like(arr: np.ndarray, like: onnx.TensorProto) -> onnx.TensorProto:
    t = numpy_helper.from_array(np.ascontiguousarray(arr), like.name)
    t.doc_string = like.doc_string
    return t


def _write_bias(model: onnx.ModelProto, c: Consumer, inits: dict, taken: set, b: np.ndarray, dtype) -> bool:
    """Store the new bias; True when a bias input had to be added to the node."""
    if c.bias is not None:
        t = inits[c.bias]
        old = numpy_helper.to_array(t)
        t.CopyFrom(_tensor_like(b.reshape(old.shape).astype(old.dtype), t))
        return False
    node = model.graph.node[c.node]
    name = fresh_name(taken, f"{node.name or node.output[0]}.graphprune_bias")
    model.graph.initializer.append(numpy_helper.from_array(b.astype(dtype), name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    return True


def compensated_plan(
    model: onnx.ModelProto,
    deps: DependencyGraph,
    plan: Plan,
    stats: Statistics,
    method: str,
    *,
    ridge: float = DEFAULT_RIDGE,
    inexact: bool = False,
) -> tuple[Compensation, DependencyGraph, Plan]:
    """:func:`compensate`, with the analysis and plan that apply to the compensated model: a
    bias added to a Conv or Gemm is a new member of its output group, so the model is analysed
    again and the plan carried over by its anchors (weight names, which do not change)."""
    return with_plan(compensate(model, deps, plan, stats, method, ridge=ridge), deps, plan, inexact=inexact)


def with_plan(
    comp: Compensation, deps: DependencyGraph, plan: Plan, *, inexact: bool = False
) -> tuple[Compensation, DependencyGraph, Plan]:
    """``comp`` with the analysis and plan that apply to its model (see :func:`compensated_plan`)."""
    if not comp.added_bias:
        return comp, deps, plan
    from ..analysis.dependency import analyze
    from ..analysis.iochange import release_for
    from ..analysis.plan import plan_from_json

    new_deps = analyze(comp.model, inexact=inexact)
    data = plan.to_json(deps)
    release_for(data, new_deps)
    return comp, new_deps, plan_from_json(data, new_deps, source="compensated plan")
