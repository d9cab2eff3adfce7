"""Validation: every pruned model is checked before it is trusted.

The contract (DESIGN.md):
1. ``onnx.checker.check_model(full_check=True)``, which includes strict shape inference;
2. an onnxruntime session runs on inputs of the declared shapes;
3. exactness: the pruned model equals, within relative 1e-4, a *masked reference* built
   independently of the surgery: the original model with the weights that read the
   removed channels set to zero (a removed channel then contributes nothing, and every
   path it takes ends in such a weight or the group would have been blocked);
4. fidelity against the original: cosine similarity, relative L2 error, top-1 agreement;
5. cost before and after: parameters, FLOPs, file size, latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .cost import cost_of, latency_ms, random_feeds
from .dependency import DependencyGraph
from .masking import masked_bytes
from .plan import Plan
from .surgery import removed_entries

EXACT_RTOL = 1e-4


@dataclass
class Exactness:
    checked: bool = False
    passed: bool = False
    max_rel_diff: float | None = None
    skipped_groups: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Fidelity:
    cosine: float | None = None
    rel_l2: float | None = None
    top1_agreement: float | None = None
    data: str | None = None  # the dataset it was measured on; None: seeded random inputs
    samples: int | None = None  # samples of ``data`` evaluated


@dataclass
class Validation:
    """Steps 1-4 of the contract for one pruned model."""

    checker_ok: bool
    checker_error: str
    runtime_ok: bool
    runtime_error: str
    exact: Exactness
    fidelity: Fidelity

    @property
    def passed(self) -> bool:
        return self.checker_ok and self.runtime_ok and (not self.exact.checked or self.exact.passed)


def check(pruned: onnx.ModelProto) -> str:
    """Empty string if the model passes the full checker, else the first line of the error."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:  # checker raises ValidationError, shape inference InferenceError
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ""


def run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` (a ModelProto or its bytes) in onnxruntime (CPU, one thread)."""
    import onnxruntime as ort  # imported here: it is slow to import and not needed to prune

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Basic optimisations only, and no QDQ fusion: the reference's mask Muls would stop a
    # DequantizeLinear->Conv->QuantizeLinear from becoming an integer QLinearConv that the
    # pruned model gets, and the two would then differ by the quantization error.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    del data
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def masked_reference(original: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> onnx.ModelProto:
    """The original with every removed channel multiplied by zero where a node sums over it.

    A ``Mul`` by a 0/1 mask is inserted on the data input of each contracting node (Conv
    input channels, the K axis of Gemm/MatMul): for these linear ops that is the same as
    zeroing the weight's columns, whatever produced the weight (an initializer, a Cast, a
    DequantizeLinear). Nothing of the surgery is used: no slicing, no attribute rewriting.
    """
    return onnx.load_from_string(masked_reference_bytes(original, deps, plan))


def masked_reference_bytes(original: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> bytes:
    """The serialized :func:`masked_reference`, made without copying the weights.

    The masks only add nodes and small initializers and rename inputs, so they are put
    into ``original`` itself, serialized, and taken out again (in ``finally``): the
    caller's model ends as it began, and memory never holds a second set of weights.
    """
    removed = removed_entries(deps, plan)
    contracted = {d for _, d in deps.contractions}
    masks = {}
    for dim, idx in removed.items():
        if dim in contracted and len(idx):
            mask = np.ones(deps.view.shapes[dim[0]][dim[1]])
            mask[idx] = 0
            masks[dim] = mask
    data, _ = masked_bytes(original, deps, masks)
    return data


def rel_diff(a: list[np.ndarray], b: list[np.ndarray], scale_of: list[np.ndarray] | None = None) -> float:
    """Largest |a - b| relative to the largest |b| (or, if larger, the largest |scale_of|), over
    all outputs.

    Pruning can cancel most of an output (the reference's output may be 100x smaller than
    the original's), while float32 rounding stays at the scale of the original computation:
    ``scale_of`` (the original's outputs) keeps that rounding from reading as a mismatch.
    """
    worst = 0.0
    for k, (x, y) in enumerate(zip(a, b)):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if not y64.size:
            continue
        scale = float(np.max(np.abs(y64)))
        if scale_of is not None and np.asarray(scale_of[k]).size:
            scale = max(scale, float(np.max(np.abs(np.asarray(scale_of[k], np.float64)))))
        worst = max(worst, float(np.max(np.abs(x64 - y64))) / max(scale, 1e-12))
    return worst


def fidelity(pruned_out: list[np.ndarray], original_out: list[np.ndarray]) -> Fidelity:
    p = np.concatenate([np.asarray(o, np.float64).ravel() for o in pruned_out])
    o = np.concatenate([np.asarray(o, np.float64).ravel() for o in original_out])
    denom = float(np.linalg.norm(p) * np.linalg.norm(o))
    cosine = float(p @ o / denom) if denom > 0 else (1.0 if np.array_equal(p, o) else 0.0)
    rel_l2 = float(np.linalg.norm(p - o) / max(float(np.linalg.norm(o)), 1e-12))
    top1 = None
    first_p, first_o = np.asarray(pruned_out[0]), np.asarray(original_out[0])
    if first_o.ndim == 2 and first_o.shape[1] > 1 and first_p.shape == first_o.shape:
        top1 = float(np.mean(first_p.argmax(axis=1) == first_o.argmax(axis=1)))
    return Fidelity(cosine=cosine, rel_l2=rel_l2, top1_agreement=top1)


def check_pruned(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    deps: DependencyGraph | None = None,
    plan: Plan | None = None,
    *,
    feeds: dict[str, np.ndarray] | None = None,
) -> Validation:
    """Steps 1-4 of the validation contract."""
    checker_error = check(pruned)
    feeds = feeds if feeds is not None else random_feeds(original)
    exact = Exactness()
    fid = Fidelity()
    try:
        pruned_out = run(pruned, feeds)
        runtime_error = ""
    except Exception as exc:
        pruned_out = None
        runtime_error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if pruned_out is not None:
        original_out = run(original, feeds)
        fid = fidelity(pruned_out, original_out)
        inexact = [g.label for g in deps.groups if "inexact" in g.facts and len(plan.removed(g))] if plan else []
        if inexact:
            exact = Exactness(
                checked=False,
                skipped_groups=inexact,
                note="groups pruned through a normalisation over their axis are not function-preserving;"
                " fidelity measures what they cost",
            )
        elif deps is not None and plan is not None:
            ref_out = run(masked_reference_bytes(original, deps, plan), feeds)
            diff = rel_diff(pruned_out, ref_out, scale_of=original_out)
            exact = Exactness(checked=True, passed=diff <= EXACT_RTOL, max_rel_diff=diff)
        else:
            exact.note = "no plan: exactness needs the plan the model was pruned with"
    return Validation(
        checker_ok=not checker_error,
        checker_error=checker_error,
        runtime_ok=pruned_out is not None,
        runtime_error=runtime_error,
        exact=exact,
        fidelity=fid,
    )


__all__ = ["check_pruned", "masked_reference", "Validation", "Exactness", "Fidelity", "cost_of", "latency_ms"]
