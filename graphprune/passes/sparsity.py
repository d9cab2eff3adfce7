"""Fine-grained sparsity: zeros written into the weights of contracting ops, shapes kept.

Rules:
1. Layers: every node that contracts a data input (the rules' ``contract``) against a float
   constant weight, directly or through Cast/Identity, whose input ("in") axis a rule
   declared. An integer weight (quantized: its zero is the zero point), a weight tied between
   nodes, or one without a declared input axis (grouped convolution) is skipped with that
   reason, and so is every other weight a rule gave a role but no contraction.
2. A weight is seen as ``[O, K, taps]``: ``O`` its "out" axis, ``K`` its "in" (reduction)
   axis, ``taps`` the other axes (a Conv's kernel positions) in order.
3. Patterns: ``unstructured`` zeros the ``sparsity`` fraction of each layer's weights;
   ``N:M`` (``2:4``, ``4:8``) zeros N of every M consecutive entries along ``K``, separately
   for each output and kernel position (a layer whose ``K`` is not a multiple of M is
   skipped); ``kernel`` zeros whole ``(out, in)`` kernels (all taps), the ``sparsity``
   fraction of them (a layer of one tap per kernel: single weights, i.e. unstructured).
4. Criteria (``sparsity_criterion``): ``magnitude`` (|W|, per layer), ``wanda`` (|W| times
   the input feature's norm on calibration data, compared per output as in Wanda), ``obs``
   (SparseGPT: columns pruned in blocks with the inverse Hessian ``(XᵀX + λI)⁻¹`` of the
   layer's calibration inputs, the remaining weights updated to absorb each pruned one).
   A data criterion on a layer without calibration rows falls back to magnitude, said per layer.
5. The record (:class:`SparseLayer`) keeps each layer's mask and, for ``obs``, the updated
   dense weight: the exact reference is the base (original, or with the updated weights)
   with a ``Mul`` by the mask on each weight where its node reads it
   (:func:`reference_bytes`), independent of how the zeros were written.
6. :func:`check_pattern` verifies N:M from the weights alone (every group of M along the
   input axis has at least N zeros); validation and tests use it.
"""

from __future__ import annotations

import io as _io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration.datasets import DEFAULT_BATCH
from ..calibration.statistics import DEFAULT_MAX_FEATURES as MAX_FEATURES  # a wider layer gets no Hessian: magnitude
from ..errors import InputError
from ..ir.weights import constant_tensors
from ..options import option
from . import PassContext, PassResult, TransformMixin

PATTERNS = ("unstructured", "2:4", "4:8", "kernel")
SPARSITY_CRITERIA = ("magnitude", "wanda", "obs")
DEFAULT_SPARSITY = 0.5
OBS_BLOCK = 128  # columns per SparseGPT block
OBS_DAMP = 0.01  # λ as a fraction of the Hessian's mean diagonal
MAX_ROWS = 256  # calibration rows per sample and layer (positions of a Conv)
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def n_of_m(pattern: str) -> tuple[int, int] | None:
    """``(N, M)`` of an ``N:M`` pattern (N zeros in every M), else None."""
    if ":" not in pattern:
        return None
    n, m = pattern.split(":")
    return int(n), int(m)


@dataclass
class SparseLayer:
    """One sparsified weight: where it is, its axes, its mask (True = zeroed) and what it became."""

    node: str
    node_index: int
    op: str
    weight: str  # the constant written (the weight's source, past Cast/Identity)
    readers: list[tuple[int, int]]  # (node index, input position) reading ``weight``
    shape: tuple[int, ...]
    in_axis: int
    out_axis: int
    criterion: str
    mask: np.ndarray = field(repr=False)  # bool, the weight's shape
    updated: np.ndarray | None = field(default=None, repr=False)  # OBS: dense updated weight, before the mask

    @property
    def sparsity(self) -> float:
        return float(self.mask.mean())

    def to_json(self) -> dict:
        return {
            "node": self.node,
            "op": self.op,
            "weight": self.weight,
            "shape": list(self.shape),
            "in_axis": self.in_axis,
            "zeros": int(self.mask.sum()),
            "size": int(self.mask.size),
            "sparsity": round(self.sparsity, 6),
            "criterion": self.criterion,
        }


@dataclass
class Candidate:
    """A layer the pass may sparsify (before scoring)."""

    node_index: int
    weight: str
    readers: list[tuple[int, int]]
    in_axis: int
    out_axis: int


def _role_map(deps) -> dict[tuple[str, int], str]:
    roles = {(m.tensor, m.axis): m.role for g in deps.groups for m in g.members if m.role}
    return {**roles, **getattr(deps, "roles", {})}


def find_layers(deps) -> tuple[list[Candidate], list[dict]]:
    """The weights rule 1 allows, and the skipped ones with their reasons."""
    mv = deps.view
    roles = _role_map(deps)
    found: list[Candidate] = []
    skipped: list[dict] = []
    seen_nodes: set[int] = set()
    for node_index, (data, _axis) in deps.contractions:
        if node_index in seen_nodes:
            continue
        seen_nodes.add(node_index)
        node = mv.nodes[node_index]
        name = mv.node_names[node_index]
        for w in node.input:
            if not w or w == data or not mv.is_weight(w) or (mv.shapes.get(w) is None) or len(mv.shapes[w]) < 2:
                continue
            source = mv.weight_source(w)
            dtype = mv.constant_tensor(source).data_type
            if dtype not in _FLOAT:
                skipped.append(
                    {
                        "node": name,
                        "weight": source,
                        "reason": "integer weight (quantized: its zero is the zero point): not supported",
                    }
                )
                break
            readers = mv.weight_readers(source)
            if len(readers) > 1:
                skipped.append({"node": name, "weight": source, "reason": f"weight shared by {len(readers)} nodes"})
                break
            rank = len(mv.shapes[w])
            in_axes = [a for a in range(rank) if roles.get((source, a)) == "in"]
            out_axes = [a for a in range(rank) if roles.get((source, a)) == "out"]
            if len(in_axes) != 1 or len(out_axes) != 1 or in_axes == out_axes:
                skipped.append(
                    {
                        "node": name,
                        "weight": source,
                        "reason": f"{node.op_type}: no single input axis declared for"
                        " its weight (grouped convolution, or an op whose rule does not say)",
                    }
                )
                break
            # the reader of the source itself (a Cast reads it when the weight is converted)
            direct = list(mv.consumers.get(source, []))
            found.append(Candidate(node_index, source, direct, in_axes[0], out_axes[0]))
            break
    # weights of filters (a role "out" or "in") read by nodes that do not contract: said, not skipped silently
    for node_index, node in enumerate(mv.nodes):
        if node_index in seen_nodes:
            continue
        for w in node.input:
            source = mv.weight_source(w) if w else None
            rank = len(mv.shapes.get(w) or ())
            if source is None or rank < 2 or not any(roles.get((source, a)) in ("in", "out") for a in range(rank)):
                continue
            if node_index not in {i for i, _ in mv.weight_readers(source)}:
                continue  # a Cast or DequantizeLinear on the way to its reader
            why = f"{node.op_type} does not sum over one declared input axis of its weight (grouped convolution?)"
            skipped.append({"node": mv.node_names[node_index], "weight": source, "reason": why})
            break
    return found, skipped


def as_matrix(w: np.ndarray, in_axis: int, out_axis: int) -> np.ndarray:
    """``w`` as ``[O, K, taps]`` (rule 2), float64."""
    m = np.moveaxis(np.asarray(w, dtype=np.float64), (out_axis, in_axis), (0, 1))
    return m.reshape(m.shape[0], m.shape[1], -1)


def from_matrix(m: np.ndarray, shape: tuple, in_axis: int, out_axis: int) -> np.ndarray:
    """Inverse of :func:`as_matrix` (any dtype)."""
    moved = [shape[out_axis], shape[in_axis]] + [s for a, s in enumerate(shape) if a not in (out_axis, in_axis)]
    return np.moveaxis(m.reshape(moved), (0, 1), (out_axis, in_axis))


def _smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` smallest entries of ``scores`` (same shape), ties by position."""
    flat = scores.reshape(-1)
    mask = np.zeros(flat.size, bool)
    if k > 0:
        mask[np.argsort(flat, kind="stable")[:k]] = True
    return mask.reshape(scores.shape)


def _smallest_per_row(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` smallest entries of each row of 2-D ``scores``."""
    mask = np.zeros(scores.shape, bool)
    if k > 0:
        np.put_along_axis(mask, np.argsort(scores, axis=1, kind="stable")[:, :k], True, axis=1)
    return mask


def select(scores: np.ndarray, pattern: str, sparsity: float, per_output: bool) -> np.ndarray:
    """Mask ``[O, K, taps]`` (True = zero) of the lowest ``scores`` under ``pattern``."""
    o, k, taps = scores.shape
    nm = n_of_m(pattern)
    if nm is not None:
        n, m = nm
        g = np.moveaxis(scores.reshape(o, k // m, m, taps), 2, -1)  # [O, K/M, taps, M]
        order = np.argsort(g, axis=-1, kind="stable")
        mask = np.zeros_like(g, dtype=bool)
        np.put_along_axis(mask, order[..., :n], True, axis=-1)
        return np.moveaxis(mask, -1, 2).reshape(o, k, taps)
    if pattern == "kernel":
        ks = scores.sum(axis=2)  # [O, K]
        if per_output:
            km = _smallest_per_row(ks, int(round(sparsity * k)))
        else:
            km = _smallest(ks, int(round(sparsity * ks.size)))
        return np.repeat(km[:, :, None], taps, axis=2)
    if per_output:
        flat = scores.reshape(o, -1)
        return _smallest_per_row(flat, int(round(sparsity * flat.shape[1]))).reshape(scores.shape)
    return _smallest(scores, int(round(sparsity * scores.size)))


def check_pattern(w: np.ndarray, in_axis: int, n: int, m: int) -> int:
    """Groups of ``m`` consecutive entries along ``in_axis`` of ``w`` (each other index apart)
    with fewer than ``n`` zeros: 0 means the N:M pattern holds. Raises ValueError when the
    axis is not a multiple of ``m``."""
    a = np.moveaxis(np.asarray(w), in_axis, -1)
    if a.shape[-1] % m:
        raise ValueError(f"input axis of {a.shape[-1]} entries is not a multiple of {m}")
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    return int(np.count_nonzero((groups == 0).sum(axis=-1) < n))


def obs_prune(
    w: np.ndarray, hessian: np.ndarray, pattern: str, sparsity: float, *, block: int = OBS_BLOCK, damp: float = OBS_DAMP
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on ``w`` ``[O, K, taps]`` with ``hessian`` over its features ``k * taps + t``:
    ``(mask, updated)``, ``updated`` the dense weights after the OBS updates (rule 4).

    Columns are visited in an order that keeps each pruning unit together: tap-major for N:M
    (a group of M is M consecutive input channels at one tap), channel-major otherwise (a
    kernel is ``taps`` consecutive columns). In each block of columns the mask is chosen by
    ``w² / [H⁻¹]ⱼⱼ²`` (N:M per group as its first column is reached), then every column is
    zeroed where masked and its error spread over the later columns by the inverse Hessian's
    Cholesky factor."""
    o, k, taps = w.shape
    nm = n_of_m(pattern)
    if nm is not None:
        order = (np.arange(k)[None, :] * taps + np.arange(taps)[:, None]).reshape(-1)  # tap-major
    else:
        order = np.arange(k * taps)
    mat = w.reshape(o, k * taps)[:, order].copy()
    h = hessian[np.ix_(order, order)].astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    mat[:, dead] = 0.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H⁻¹
    cols = k * taps
    unit = taps if pattern == "kernel" else 1
    step = nm[1] if nm else unit
    bs = max(step, block // step * step)
    mask = np.zeros_like(mat, dtype=bool)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = mat[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hi = hinv[i1:i2, i1:i2]
        d = np.diag(hi)
        m1 = np.zeros_like(w1, dtype=bool)
        if nm is None:
            score = (w1**2 / d[None, :] ** 2).reshape(o, -1, unit).sum(axis=2)
            km = _smallest(score, int(round(sparsity * score.size)))
            m1 = np.repeat(km, unit, axis=1)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                s = w1[:, i : i + nm[1]] ** 2 / d[i : i + nm[1]][None, :] ** 2
                idx = np.argsort(s, axis=1, kind="stable")[:, : nm[0]]
                np.put_along_axis(m1[:, i : i + nm[1]], idx, True, axis=1)
            col = w1[:, i]
            q = np.where(m1[:, i], 0.0, col)
            q1[:, i] = q
            e = (col - q) / hi[i, i]
            w1[:, i:] -= np.outer(e, hi[i, i:])
            err1[:, i] = e
        mat[:, i1:i2] = q1
        mask[:, i1:i2] = m1
        mat[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    inverse = np.argsort(order)
    updated = mat[:, inverse].reshape(o, k, taps)
    mask_out = mask[:, inverse].reshape(o, k, taps)
    return mask_out, updated


@dataclass
class LayerInputs:
    """Calibration of the sparsified layers' inputs: per layer, the Gram ``XᵀX`` (obs) or its
    diagonal (wanda) over input rows, and why a layer has none."""

    grams: dict[int, np.ndarray] = field(default_factory=dict)
    norms: dict[int, np.ndarray] = field(default_factory=dict)  # per feature: sqrt(Σ x²)
    missing: dict[int, str] = field(default_factory=dict)
    samples: int = 0
    batches: int = 0


def calibrate_layers(model, deps, layers: list[Candidate], pass_, *, gram: bool) -> LayerInputs:
    """Stream the calibration data once and gather what the data criterion needs per layer."""
    from ..analysis.consumers import consumers_of, rows
    from ..calibration.activations import stream_activations
    from ..calibration.statistics import GramStats, as_dataset

    out = LayerInputs()
    cons = consumers_of(deps)
    usable = {}
    for c in layers:
        con = cons.get(c.node_index)
        if con is None or con.layout == "":
            out.missing[c.node_index] = con.note if con is not None else "not a consumer"
        elif gram and con.features > MAX_FEATURES:
            out.missing[c.node_index] = f"{con.features} input features: no Hessian"
        else:
            usable[c.node_index] = con
    if not usable:
        return out
    tensors = sorted({con.data for con in usable.values()})
    rng = np.random.default_rng(pass_.seed)
    sums: dict[int, Any] = {}
    for batch in stream_activations(
        model,
        as_dataset(pass_.calib),
        tensors,
        dtypes=deps.view.dtypes,
        batch_size=pass_.batch_size,
        limit=pass_.calib_samples,
    ):
        first = batch[tensors[0]]
        out.batches += 1
        out.samples += int(first.shape[0]) if first.ndim else 1
        for i, con in usable.items():
            x = rows(con, batch[con.data], MAX_ROWS, rng)
            if gram:
                if i not in sums:
                    sums[i] = GramStats(0, np.zeros((x.shape[1],) * 2), np.zeros(x.shape[1]))
                sums[i].add(x)  # rows gathered into blocks: one large product, not many small ones
            else:
                sums[i] = sums.get(i, 0) + np.einsum("ij,ij->j", x, x)
    for i, s in sums.items():
        if gram:
            s.flush()
            out.grams[i] = s.gram
        else:
            out.norms[i] = np.sqrt(s)
    return out


@dataclass(frozen=True)
class SparsityPruning(TransformMixin):
    """Zero the ``sparsity`` fraction of the weights of every Conv/ConvTranspose/MatMul/Gemm
    under ``pattern``, ranked by ``sparsity_criterion``; shapes and MACs stay as they were."""

    pattern: str = option(
        "unstructured",
        "--pass sparsity: which weights may be zeroed: any (unstructured), 2 of every 4 or 4 of every 8"
        " consecutive entries along a Conv/MatMul/Gemm weight's input axis (2:4, 4:8), or whole k x k kernels",
        choices=PATTERNS,
    )
    sparsity: float | None = option(  # None: 0.5 (the N:M patterns fix it at N/M)
        None, "--pass sparsity: fraction of each layer's weights zeroed (default 0.5; N:M patterns fix it)", metavar="S"
    )
    sparsity_criterion: str = option(
        "magnitude",
        "--pass sparsity: how weights are ranked: magnitude, wanda (|W| x input norm) or obs (SparseGPT-like, with"
        " the optimal update of the kept weights); wanda and obs need --calib",
        choices=SPARSITY_CRITERIA,
    )
    calib: Any = option(None, "calibration data", metavar="DATA")
    calib_samples: int | None = option(None, "use at most N samples of --calib", metavar="N")
    batch_size: int = option(DEFAULT_BATCH, "samples per onnxruntime run on --calib (default 32)", metavar="N")
    ignore: tuple[str, ...] = option((), "protect layers", metavar="NAME")
    seed: int = option(0, "seed of the random criterion and inputs")

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise InputError(f"unknown pattern {self.pattern!r}; choose from {', '.join(PATTERNS)}")
        if self.sparsity_criterion not in SPARSITY_CRITERIA:
            raise InputError(
                f"unknown sparsity criterion {self.sparsity_criterion!r}; choose from {', '.join(SPARSITY_CRITERIA)}"
            )
        s = self.sparsity
        if s is not None and (isinstance(s, bool) or not 0.0 < float(s) < 1.0):
            raise InputError(f"sparsity must be between 0 and 1 (exclusive), got {s}")
        nm = n_of_m(self.pattern)
        if nm is not None and s is not None and abs(float(s) - nm[0] / nm[1]) > 1e-9:
            raise InputError(
                f"pattern {self.pattern} zeros {nm[0]} of every {nm[1]} weights: its sparsity is {nm[0] / nm[1]:g},"
                f" not {s} (leave --sparsity out)"
            )
        if self.sparsity_criterion != "magnitude" and self.calib is None:
            raise InputError(
                f"sparsity criterion {self.sparsity_criterion!r} needs calibration data: give --calib DATA"
                " (an .npz file or a folder of them)"
            )
        if self.batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {self.batch_size}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise InputError(f"calib-samples must be a positive integer, got {self.calib_samples}")

    @property
    def fraction(self) -> float:
        nm = n_of_m(self.pattern)
        return nm[0] / nm[1] if nm else (DEFAULT_SPARSITY if self.sparsity is None else float(self.sparsity))

    def __call__(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
        """Choose and write the zeros; the reference is ``model`` (with OBS: its updated weights)
        with a ``Mul`` by each layer's 0/1 mask on its weight, and the written pattern is
        checked again as a postcondition (rule 6)."""
        import json

        from ..validation.contract import Reference
        from .finish import SPARSITY_METADATA_KEY, set_metadata

        result = self.run(model, context.deps if context is not None else None)
        details = dict(result.report)
        layers = result.layers
        if not layers:
            skipped = sorted({s["reason"] for s in details["sparsity"]["skipped"]})
            details["nothing_pruned"] = "no Conv/ConvTranspose/MatMul/Gemm weight could be sparsified" + (
                ": " + "; ".join(skipped) if skipped else ""
            )
        zeros_b, size_b = model_zeros(model)
        zeros_a, _ = model_zeros(result.model)
        details["sparsity"]["of_all_weights_before"] = round(zeros_b / max(size_b, 1), 6)
        details["sparsity"]["of_all_weights"] = round(zeros_a / max(size_b, 1), 6)
        details["zip_bytes_before"] = zip_bytes(model)
        details["zip_bytes_after"] = zip_bytes(result.model)
        record = {
            "pattern": self.pattern,
            "criterion": self.sparsity_criterion,
            "layers": [{"weight": ly.weight, "in_axis": ly.in_axis} for ly in layers],
        }
        # earlier steps' plans address the input's ancestors, which do not have these zeros: the
        # sparse model carries its own record only (validate it against its input)
        keep = [(p.key, p.value) for p in result.model.metadata_props if not p.key.startswith("graphprune.")]
        del result.model.metadata_props[:]
        for k, v in keep:
            set_metadata(result.model, k, v)
        set_metadata(result.model, SPARSITY_METADATA_KEY, json.dumps(record, separators=(",", ":")))
        check = check_layers(result.model, layers, self.pattern)
        details["pattern_check"] = check
        note = "against the original with the same zeros masked" + (
            " (OBS: its updated weights, masked)" if any(ly.updated is not None for ly in layers) else ""
        )
        reference = Reference(model, lambda: reference_bytes(model, layers), note=note)
        return PassResult(
            result.model,
            details,
            deps=result.deps,
            reference=reference,
            record=record,
            name=type(self).__name__,
            changed=bool(layers),
            violations=[] if check["passed"] else [f"pattern check failed on {', '.join(check['failed'][:3])}"],
        )

    def run(self, model: onnx.ModelProto, deps=None) -> Sparsified:
        """Choose and write the zeros: the sparse model, its record and report (rule 5)."""
        import fnmatch

        from ..analysis.dependency import analyze
        from ..ir.weights import has_lazy

        if has_lazy(model):  # weights are written through copies of the tensors, which a lazy model does not hold
            raise InputError("--pass sparsity on a model with external data is not supported yet")
        deps = deps if deps is not None else analyze(model)
        candidates, skipped = find_layers(deps)
        mv = deps.view
        if self.ignore:
            from .finish import check_scope

            check_scope(deps, self.ignore, ())  # a pattern that matches nothing is an error
            kept = []
            for c in candidates:
                hit = [mv.node_names[c.node_index], c.weight]
                if any(fnmatch.fnmatchcase(h, p) for h in hit for p in self.ignore):
                    skipped.append({"node": hit[0], "weight": c.weight, "reason": "ignored (--ignore)"})
                else:
                    kept.append(c)
            candidates = kept
        nm = n_of_m(self.pattern)
        if nm is not None:
            kept = []
            for c in candidates:
                k = mv.shapes[c.weight][c.in_axis]
                if k % nm[1]:
                    skipped.append(
                        {
                            "node": mv.node_names[c.node_index],
                            "weight": c.weight,
                            "reason": f"input axis of {k} entries is not a multiple of {nm[1]}",
                        }
                    )
                else:
                    kept.append(c)
            candidates = kept
        inputs = None
        if self.sparsity_criterion != "magnitude" and candidates:
            inputs = calibrate_layers(model, deps, candidates, self, gram=self.sparsity_criterion == "obs")
        layers = [self._layer(mv, c, inputs) for c in candidates]
        sparse = write_layers(model, layers)
        notes = {}
        if inputs is not None:
            notes["calibration"] = {"samples": inputs.samples, "batches": inputs.batches}
        report = {
            "pass": "sparsity",
            "pattern": self.pattern,
            "sparsity_criterion": self.sparsity_criterion,
            "sparsity": sparsity_report(model, layers, skipped, self.fraction),
            **notes,
        }
        return Sparsified(sparse, layers, report, deps)

    def _layer(self, mv, c: Candidate, inputs: LayerInputs | None) -> SparseLayer:
        w = mv.value(c.weight)
        m = as_matrix(w, c.in_axis, c.out_axis)
        criterion = self.sparsity_criterion
        updated = None
        if criterion == "obs" and inputs is not None and c.node_index in inputs.grams:
            mask, upd = obs_prune(m, inputs.grams[c.node_index], self.pattern, self.fraction)
            updated = from_matrix(upd, w.shape, c.in_axis, c.out_axis).astype(w.dtype)
        elif criterion == "wanda" and inputs is not None and c.node_index in inputs.norms:
            norm = inputs.norms[c.node_index].reshape(1, m.shape[1], m.shape[2])
            mask = select(np.abs(m) * norm, self.pattern, self.fraction, per_output=True)
        else:
            if criterion != "magnitude":
                why = (inputs.missing.get(c.node_index) if inputs is not None else None) or "no calibration rows"
                criterion = f"magnitude (fallback from {self.sparsity_criterion}: {why})"
            mask = select(np.abs(m), self.pattern, self.fraction, per_output=False)
        return SparseLayer(
            node=mv.node_names[c.node_index],
            node_index=c.node_index,
            op=mv.nodes[c.node_index].op_type,
            weight=c.weight,
            readers=c.readers,
            shape=tuple(w.shape),
            in_axis=c.in_axis,
            out_axis=c.out_axis,
            criterion=criterion,
            mask=from_matrix(mask, w.shape, c.in_axis, c.out_axis).astype(bool),
            updated=updated,
        )


@dataclass
class Sparsified:
    """The sparse model, its layers (masks, updated weights), the report and the analysis."""

    model: onnx.ModelProto
    layers: list[SparseLayer]
    report: dict
    deps: Any


def _base_value(model: onnx.ModelProto, layer: SparseLayer) -> np.ndarray:
    return numpy_helper.to_array(constant_tensors(model)[layer.weight])


def write_layers(model: onnx.ModelProto, layers: list[SparseLayer], *, masked: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` with each layer's weight replaced by its updated value (obs) and,
    when ``masked``, zeros where its mask says."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    protos = constant_tensors(out)
    for layer in layers:
        t = protos[layer.weight]
        w = layer.updated if layer.updated is not None else numpy_helper.to_array(t)
        if masked:
            w = np.where(layer.mask, np.zeros((), w.dtype), w)
        new = numpy_helper.from_array(np.ascontiguousarray(w), t.name)
        new.doc_string = t.doc_string
        t.CopyFrom(new)
    return out


def reference_bytes(model: onnx.ModelProto, layers: list[SparseLayer]) -> bytes:
    """The exact reference of rule 5: ``model`` (with the obs layers' updated dense weights)
    serialized with a ``Mul`` by each layer's 0/1 mask where its weight is read."""
    from ..edit.masking import MaskPoint, insert_masks

    base = write_layers(model, [ly for ly in layers if ly.updated is not None], masked=False)
    protos = constant_tensors(base)
    points = [
        MaskPoint(ly.weight, list(ly.readers), list(ly.shape), protos[ly.weight].data_type, (~ly.mask).astype(float))
        for ly in layers
    ]
    data, _ = insert_masks(base, points, prefix="graphprune_sparsity")
    return data


def sparsity_report(model: onnx.ModelProto, layers: list[SparseLayer], skipped: list[dict], target: float) -> dict:
    """Report key ``sparsity``: per layer and overall (over the layers sparsified, and over
    every float weight of the model), and the layers skipped with their reasons."""
    zeros = sum(int(ly.mask.sum()) for ly in layers)
    size = sum(int(ly.mask.size) for ly in layers)
    return {
        "target": target,
        "overall": round(zeros / size, 6) if size else 0.0,
        "layers_sparsified": len(layers),
        "weights_sparsified": size,
        "zeros": zeros,
        "layers": [ly.to_json() for ly in layers],
        "skipped": skipped,
    }


def model_zeros(model: onnx.ModelProto) -> tuple[int, int]:
    """``(zeros, size)`` over the float initializers of ``model``."""
    zeros = size = 0
    for t in model.graph.initializer:
        if t.data_type in _FLOAT:
            a = numpy_helper.to_array(t)
            zeros += int(np.count_nonzero(a == 0))
            size += int(a.size)
    return zeros, size


def zip_bytes(model: onnx.ModelProto) -> int:
    """Size of the serialized model compressed into a zip archive (deflate, level 6): what
    zeros buy on disk or over the wire."""
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.writestr("model.onnx", model.SerializeToString())
    return buf.tell()


def check_layers(model: onnx.ModelProto, layers: list[SparseLayer], pattern: str) -> dict:
    """The independent pattern check of a sparse model (rule 6): read back each layer's weight
    and count the groups of M that have fewer than N zeros (N:M), or the zeros (others)."""
    nm = n_of_m(pattern)
    protos = constant_tensors(model)
    bad: list[str] = []
    for ly in layers:
        w = numpy_helper.to_array(protos[ly.weight])
        if nm is not None and check_pattern(w, ly.in_axis, *nm):
            bad.append(ly.weight)
        if np.count_nonzero(w == 0) < int(ly.mask.sum()):
            bad.append(ly.weight)
    return {"checked": len(layers), "passed": not bad, "failed": sorted(set(bad)), "pattern": pattern}


def replayed_step(original: onnx.ModelProto, sparse: onnx.ModelProto):
    """The checked step from ``original`` to ``sparse`` (``graphprune validate``), rebuilt from the
    record in ``sparse``'s metadata: the reference is the original with the sparse model's zeros
    masked on those weights, and the pattern is checked again from the written weights. After
    OBS the kept weights were updated from calibration data, which only the pruning run has:
    then only the pattern is checked, and the note says so."""
    from ..analysis.dependency import analyze
    from ..validation.contract import Reference, Step
    from .finish import SPARSITY_METADATA_KEY, get_metadata

    record = json.loads(get_metadata(sparse, SPARSITY_METADATA_KEY))
    mine = {t.name: t for t in sparse.graph.initializer}
    deps = analyze(original)
    layers = []
    for entry in record.get("layers", []):
        name = entry["weight"]
        if name not in mine or name not in deps.view.initializers:
            return Step(
                original,
                sparse,
                None,
                note=f"the sparse model's record names {name}, which is not a weight of both models",
            )
        w = numpy_helper.to_array(mine[name])
        if tuple(w.shape) != tuple(deps.view.shapes.get(name) or ()):
            note = (
                f"{name} has another shape in the original: the model was sparsified after other steps;"
                " validate it against the model it was sparsified from"
            )
            return Step(original, sparse, None, note=note)
        readers = list(deps.view.consumers.get(name, []))
        layers.append(SparseLayer("", -1, "", name, readers, tuple(w.shape), int(entry["in_axis"]), 0, "", w == 0))
    check = check_layers(sparse, layers, record.get("pattern", "unstructured"))
    said = f"pattern {check['pattern']} checked on {check['checked']} weights"
    violations = [] if check["passed"] else [f"{said}: fails on {', '.join(check['failed'][:3])}"]
    if record.get("criterion") not in ("magnitude", "wanda"):  # obs, or a record that does not say
        note = (
            f"{said}: {'held' if check['passed'] else 'failed'}; the kept weights were updated by OBS from"
            " calibration data, which only the pruning run has: exactness is checked there"
        )
        return Step(original, sparse, None, note=note, violations=violations)
    note = f"against the original with the sparse model's zeros masked; {said}: held"
    reference = Reference(original, lambda: reference_bytes(original, layers), note=note)
    return Step(original, sparse, reference, violations=violations)
