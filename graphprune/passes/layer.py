"""Layer pruning: remove the residual blocks ``y = x + f(x)`` that matter least, ``y := x``.

Rules:
1. Blocks are those of :func:`graphprune.analysis.blocks.find_blocks`; each gets a score, lower means
   less important, and the ``remove_blocks`` lowest go (a block inside an already chosen one
   is skipped: removing the outer block removed it).
2. ``influence`` (ShortGPT's block influence, data-driven): 1 - mean over calibration samples
   of the cosine similarity between ``x`` and ``y``, each sample flattened. A block whose
   output is its input scores 0.
3. ``weight-norm`` (data-free): an estimate of ``|f(x)| / |x|`` for a unit-scale isotropic
   ``x``, propagated through f: a linear op with weight ``W`` multiplies the gain by
   ``|W|_F / sqrt(fan_in)`` (the RMS gain of ``W`` on isotropic input), BatchNormalization by
   the RMS of its effective scale, a normalisation (LayerNorm, ...) resets it to the RMS of
   its scale, bounded ops (Softmax, Sigmoid, Tanh, Erf) to 1, a product of two activations
   multiplies their gains, a sum adds them in quadrature, a constant factor scales by its RMS,
   and every other op (ReLU, reshapes, pooling) passes the largest gain it reads. Biases and
   the energy a ReLU drops are ignored: it ranks blocks, it does not predict outputs.
4. The pruned model carries its plan (the removed blocks, by Add node name, kept input and
   output) in ``metadata_props["graphprune.layer_plan"]``; the report lists ``blocks_found``
   and ``blocks_removed`` (names, scores, parameters and MACs).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ..analysis.blocks import Block, effective, find_blocks, remove_blocks
from ..edit.masking import zeroed_reference_bytes
from ..edit.maskmode import mode_option
from ..errors import InputError
from ..ir.graph import ModelView, view
from ..options import option
from ..validation.contract import Reference
from . import PassContext, PassResult, TransformMixin
from .filter import set_metadata

LAYER_PLAN_KEY = "graphprune.layer_plan"
BLOCK_CRITERIA = ("influence", "weight-norm")
CALIB_LIMIT = 256  # calibration samples read for the influence criterion


@dataclass(frozen=True)
class LayerPruning(TransformMixin):
    """Remove the ``remove_blocks`` residual blocks with the lowest ``criterion`` scores.

    ``influence`` needs ``calib`` (an ``.npz`` file or folder, see :mod:`graphprune.calibration.datasets`).
    ``plan`` (a layer plan's JSON object, as stored in the metadata) replaces scoring.
    """

    remove_blocks: int = option(1, "layer pass: how many residual blocks to remove", metavar="N")
    criterion: str | None = option(  # None: influence with calib, weight-norm without
        None,
        "layer pass: how blocks are ranked (default: influence with --calib, weight-norm without)",
        flag="--block-criterion",
        choices=BLOCK_CRITERIA,
    )
    calib: str | os.PathLike | None = option(None, "calibration data", metavar="DATA")
    calib_limit: int | None = option(CALIB_LIMIT, cli=False)
    plan: dict | None = option(None, cli=False)  # a layer plan's JSON object, as stored in the metadata
    mode: str = mode_option()  # remove | mask (graphprune.edit.maskmode)

    def __post_init__(self) -> None:
        if self.criterion is None:
            object.__setattr__(self, "criterion", "influence" if self.calib is not None else "weight-norm")
        from ..edit.maskmode import check_mode

        check_mode(self.mode)
        if self.plan is not None:
            return
        if isinstance(self.remove_blocks, bool) or not isinstance(self.remove_blocks, int) or self.remove_blocks < 1:
            raise InputError(f"remove-blocks must be a positive integer, got {self.remove_blocks}")
        if self.criterion not in BLOCK_CRITERIA:
            raise InputError(f"unknown block criterion {self.criterion!r}; choose from {', '.join(BLOCK_CRITERIA)}")
        if self.criterion == "influence" and self.calib is None:
            raise InputError("the influence criterion needs calibration data (--calib DATA)")

    def __call__(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
        """Scoring, choice and surgery; the reference is ``model`` with each removed block's
        ``f(x)`` multiplied by zero at its Add (independent of the surgery)."""
        pruned, chosen, report, plan = self._run(model)
        reference = Reference(model, lambda: zeroed_reference_bytes(model, chosen))
        return PassResult(pruned, report, reference=reference, record=plan, name=type(self).__name__)

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Block], dict]:
        """Scoring, choice and surgery: ``(pruned, removed blocks, report)``."""
        pruned, chosen, report, _ = self._run(model)
        return pruned, chosen, report

    def _run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Block], dict, dict]:
        mv = view(model)
        blocks = find_blocks(model, mv)
        if self.plan is not None:
            chosen = blocks_of_plan(self.plan, blocks)
            stored = {e["add"]: e.get("score") for e in self.plan["blocks"]}
            scores = np.array([_num(stored.get(b.add)) or np.nan for b in blocks], dtype=float)
        else:
            scores = score_blocks(model, blocks, self.criterion, calib=self.calib, limit=self.calib_limit, mv=mv)
            chosen = lowest(blocks, scores, self.remove_blocks)
        if self.mode == "mask":
            from ..edit.maskmode import mask_blocks

            pruned = mask_blocks(model, chosen)
        else:
            pruned = remove_blocks(model, chosen)
        plan = plan_json(chosen, scores, None if self.plan is not None else self.criterion)
        set_metadata(pruned, LAYER_PLAN_KEY, json.dumps(plan, separators=(",", ":")))
        if self.mode == "mask":
            from .finish import mark_masked

            mark_masked(pruned, plan)
        return pruned, chosen, self.report(blocks, chosen, scores), plan

    def report(self, blocks: Sequence[Block], chosen: Sequence[Block], scores: np.ndarray) -> dict:
        total_macs = max(1, sum(b.macs for b in effective(blocks)))
        return {
            "criterion": None if self.plan is not None else self.criterion,
            "remove_blocks": len(chosen) if self.plan is not None else self.remove_blocks,
            "calib": None
            if self.calib is None
            else str(getattr(self.calib, "path", self.calib)),  # a Dataset: its path
            "blocks_found": len(blocks),
            **({"mode": "mask"} if self.mode == "mask" else {}),
            "blocks_removed": [_entry(b, scores[b.id]) for b in chosen],
            "block_scores": [
                {"add": b.add, "score": _num(scores[b.id]), "macs_share": b.macs / total_macs} for b in blocks
            ],
        }


def _entry(b: Block, score: float) -> dict:
    return {"add": b.add, "x": b.x, "y": b.y, "score": _num(score), "params": b.params, "macs": b.macs}


def _num(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


# --------------------------------------------------------------------------- choice


def lowest(blocks: Sequence[Block], scores: np.ndarray, k: int) -> list[Block]:
    """The ``k`` lowest-scoring blocks, skipping those nested in (or holding) a chosen one.

    Raises ``InputError`` when fewer than ``k`` blocks can be removed.
    """
    if k > len(blocks):
        raise InputError(
            f"cannot remove {k} block{'s' * (k != 1)}: the model has {len(blocks)} removable residual"
            f" block{'s' * (len(blocks) != 1)}"
            " (`graphprune inspect` lists them)"
        )
    chosen: list[Block] = []
    covered: set[int] = set()
    for i in np.argsort(np.asarray(scores, dtype=float), kind="stable"):
        b = blocks[int(i)]
        if b.add_index in covered or any(c.add_index in b.nodes for c in chosen):
            continue
        chosen.append(b)
        covered.update(b.nodes)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise InputError(
            f"cannot remove {k} blocks: only {len(chosen)} of the {len(blocks)} do not nest in one another"
        )
    return sorted(chosen, key=lambda b: b.add_index)


def plan_json(chosen: Sequence[Block], scores: np.ndarray, criterion: str | None) -> dict:
    return {
        "format": "graphprune.layer_plan/1",
        "criterion": criterion,
        "blocks": [{"add": b.add, "keep": b.x, "output": b.y, "score": _num(scores[b.id])} for b in chosen],
    }


def blocks_of_plan(plan: dict, blocks: Sequence[Block], source: str = "layer plan") -> list[Block]:
    """The blocks a layer plan names (by Add node name, checked against the kept input)."""
    entries = plan.get("blocks") if isinstance(plan, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{source}: expected an object with a 'blocks' list")
    by_add = {b.add: b for b in blocks}
    chosen = []
    for e in entries:
        name = e.get("add") if isinstance(e, dict) else None
        b = by_add.get(name)
        if b is None:
            raise InputError(f"{source}: no removable residual block at Add node {name!r}")
        if e.get("keep", b.x) != b.x:
            raise InputError(f"{source}: block {name!r} keeps {b.x!r}, not {e.get('keep')!r}")
        chosen.append(b)
    return chosen


# --------------------------------------------------------------------------- criteria


def score_blocks(
    model: onnx.ModelProto,
    blocks: Sequence[Block],
    criterion: str,
    *,
    calib: str | os.PathLike | None = None,
    limit: int | None = CALIB_LIMIT,
    mv: ModelView | None = None,
) -> np.ndarray:
    """One score per block (lower = less important), by ``criterion`` (see the module rules)."""
    if not blocks:
        return np.zeros(0)
    if criterion == "influence":
        if calib is None:
            raise InputError("the influence criterion needs calibration data (--calib DATA)")
        from ..calibration.datasets import Dataset, open_dataset

        return influence(model, blocks, calib if isinstance(calib, Dataset) else open_dataset(calib), limit=limit)
    if criterion == "weight-norm":
        mv = mv or view(model)
        return np.array([weight_gain(mv, b) for b in blocks])
    raise InputError(f"unknown block criterion {criterion!r}; choose from {', '.join(BLOCK_CRITERIA)}")


def influence(model: onnx.ModelProto, blocks: Sequence[Block], dataset, *, limit: int | None = CALIB_LIMIT):
    """1 - mean cosine similarity between each block's ``x`` and ``y`` (per sample, flattened)."""
    from ..calibration.activations import stream_activations

    tensors = [t for b in blocks for t in (b.x, b.y)]
    dtypes = {t: b.dtype for b in blocks for t in (b.x, b.y)}
    sums = np.zeros(len(blocks))
    count = 0
    for acts in stream_activations(model, dataset, tensors, dtypes=dtypes, limit=limit, label="block influence"):
        n = 0
        for k, b in enumerate(blocks):
            x = np.asarray(acts[b.x], np.float64).reshape(len(acts[b.x]), -1)
            y = np.asarray(acts[b.y], np.float64).reshape(len(acts[b.y]), -1)
            sums[k] += _cosines(x, y).sum()
            n = len(x)
        count += n
    if count == 0:
        raise InputError(f"{dataset.path}: no calibration samples the model can take")
    return 1.0 - sums / count


def _cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    dot = np.einsum("ij,ij->i", x, y)
    denom = nx * ny
    both_zero = (nx == 0) & (ny == 0)
    return np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), np.where(both_zero, 1.0, 0.0))


_BOUNDED = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Erf", "HardSigmoid", "Softsign", "Hardmax"})
_NORMS = frozenset(
    {
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "SimplifiedLayerNormalization",
    }
)
_PRODUCTS = frozenset({"Mul", "MatMul", "Einsum", "Gemm"})


def weight_gain(mv: ModelView, block: Block) -> float:
    """The data-free score of module rule 3: estimated ``|f(x)| / |x|``."""
    gain: dict[str, float] = {block.x: 1.0}
    for k in block.nodes:
        node = mv.nodes[k]
        dyn = [gain[t] for t in node.input if t in gain]
        if not dyn or not node.output:
            continue  # a shape reader
        g = _node_gain(mv, node, dyn)
        for o in node.output:
            if o:
                gain[o] = g
    return float(gain.get(block.fx, 0.0))


def _node_gain(mv: ModelView, node: onnx.NodeProto, dyn: list[float]) -> float:
    op = node.op_type
    consts = [(pos, t) for pos, t in enumerate(node.input) if t and mv.weight_source(t) is not None]

    def value(t: str) -> np.ndarray | None:
        v = mv.value(mv.weight_source(t))
        return None if v is None else np.asarray(v, np.float64)

    if op in _BOUNDED:
        return 1.0
    if op == "BatchNormalization" and len(node.input) >= 5:
        scale, var = value(node.input[1]), value(node.input[4])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        return dyn[0] * _rms(scale / np.sqrt(var + eps)) if scale is not None and var is not None else dyn[0]
    if op in _NORMS:
        scale = value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return _rms(scale) if scale is not None else 1.0
    if op in ("Conv", "ConvTranspose") and len(node.input) > 1 and mv.is_weight(node.input[1]):
        w = value(node.input[1])
        if w is None:
            return dyn[0]
        fan_in = w.size / (w.shape[0] if op == "Conv" else w.shape[1] * _group(node))
        return dyn[0] * float(np.linalg.norm(w)) / math.sqrt(max(fan_in, 1.0))
    if op in ("MatMul", "Gemm") and consts and len(dyn) == 1:
        pos, t = consts[0]
        w = value(t)
        if w is None or w.ndim < 2:
            return dyn[0] * (_rms(w) if w is not None else 1.0)
        trans = any(a.name == ("transB" if pos == 1 else "transA") and a.i for a in node.attribute)
        if pos == 1:  # x @ W: W's rows meet x
            fan_in = w.shape[-1] if trans else w.shape[-2]
        else:  # W @ x
            fan_in = w.shape[-2] if trans else w.shape[-1]
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0) if op == "Gemm" else 1.0
        return dyn[0] * abs(alpha) * float(np.linalg.norm(w)) / math.sqrt(max(fan_in, 1))
    if op in _PRODUCTS or op == "Div":
        g = dyn[0]
        for h in dyn[1:]:
            g = g * h if op != "Div" else g / max(h, 1e-12)
        for pos, t in consts:
            v = value(t)
            if v is not None and v.size:
                r = _rms(v)
                g = g * r if not (op == "Div" and pos == 1) else g / max(r, 1e-12)
        return g
    if op in ("Add", "Sub", "Sum") and len(dyn) > 1:
        return math.sqrt(sum(h * h for h in dyn))
    if op == "Pow" and len(node.input) > 1:
        e = value(node.input[1]) if mv.weight_source(node.input[1]) else None
        return dyn[0] ** float(e.ravel()[0]) if e is not None and e.size == 1 else dyn[0]
    if op == "Sqrt":
        return math.sqrt(dyn[0])
    if op == "Reciprocal":
        return 1.0 / max(dyn[0], 1e-12)
    return max(dyn)


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(v)))) if v.size else 1.0


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)
