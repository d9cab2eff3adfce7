"""Validation: every pruned model is checked before it is trusted.

The contract (DESIGN.md):
1. ``onnx.checker.check_model(full_check=True)``, which includes strict shape inference;
2. an onnxruntime session runs on the data's first batch, or on random inputs of the declared
   shapes with symbolic dims sized by :mod:`graphprune.ir.input_sizes`; the original runs on them
   first (:func:`run_original`): inputs it rejects are the caller's error, not the pruning's;
3. exactness: the pruned model equals, within relative 1e-4 (four units in the last place
   for float16/bfloat16 outputs: :func:`exact_tolerance`), a *masked reference* built
   independently of the surgery: the original model with the weights that read the
   removed channels set to zero (a removed channel then contributes nothing, and every
   path it takes ends in such a weight or the group would have been blocked). When
   compensation changed weights, the reference is built from the compensated original
   (same removed channels, same new weights), so exactness still means "the surgery did
   what the plan says". On a quantized graph, where a float rounding difference can flip a
   requantized value by one step, an output may differ by a few of its quantization steps,
   and the comparison is repeated, held to float tolerance, with the activations' fake
   quantization bypassed (:func:`quantized_exactness`, :mod:`graphprune.validation.quantized`);
4. fidelity against the original: cosine similarity, relative L2 error, top-1 agreement;
   sequence and map outputs (ZipMap) are compared leaf by leaf (:func:`leaves`), a different
   structure being a total mismatch;
5. cost before and after: parameters, FLOPs, file size, latency.

Models opened lazily (external data left on disk) are given to onnxruntime and the checker
as files that point at their data (:func:`graphprune.ir.weights.runnable`): onnxruntime reads
the weights itself, and the masked reference is the original's graph with the masks, written
without weights beside the original's data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..analysis.dependency import DependencyGraph
from ..analysis.iochange import io_map
from ..analysis.plan import Plan, removed_entries
from ..edit.masking import masked_reference, masked_reference_bytes  # noqa: F401 (validation's names too)
from ..errors import InputError
from ..ir.weights import DIR_KEY, has_lazy, runnable
from ..objectives.cost import cost_of, latency_ms, random_feeds
from .quantized import QUANT_STEPS, fake_quant_bypassed, integer_sums, is_quantized, output_steps, step_diffs

EXACT_RTOL = 1e-4


@dataclass
class Exactness:
    checked: bool = False
    passed: bool = False
    max_rel_diff: float | None = None
    skipped_groups: list[str] = field(default_factory=list)
    note: str = ""
    tolerance: float = EXACT_RTOL  # what max_rel_diff was held to (see exact_tolerance)
    # Quantized graphs (graphprune.validation.quantized): outputs may differ by tolerance_steps of their
    # quantization step; quant_step is the step of the output nearest its bound, max_step_diff
    # the largest difference in steps, float_max_rel_diff the comparison with the activations'
    # fake quantization bypassed (held to the float tolerance). None on float graphs.
    tolerance_steps: int | None = None
    quant_step: float | None = None
    max_step_diff: float | None = None
    float_max_rel_diff: float | None = None
    # outputs of layers that lost input entries, compared too (layer_probes; a quantized graph's
    # in its bypassed comparison); None where no comparison was made
    layers_compared: int | None = None


_HALF_ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # unit in the last place at 1.0


def exact_tolerance(outputs: list[np.ndarray]) -> float:
    """``EXACT_RTOL``, or four units in the last place of a half-precision output (float16,
    bfloat16): onnxruntime rounds every op's result to that precision, and the pruned model
    sums fewer terms in another order than the reference, so the two differ by a few ulps."""
    ulp = max((_HALF_ULP.get(getattr(v, "dtype", np.dtype(object)).name, 0.0) for _, v in leaves(outputs)), default=0.0)
    return max(EXACT_RTOL, 4 * ulp)


@dataclass
class Fidelity:
    cosine: float | None = None
    rel_l2: float | None = None
    top1_agreement: float | None = None
    data: str | None = None  # the dataset it was measured on; None: seeded random inputs
    samples: int | None = None  # samples of ``data`` evaluated
    inputs: str | None = None  # without ``data``: "random inputs", "data's first batch" or "given feeds"


RANDOM_INPUTS = "generated inputs"  # what the API calls seeded random validation inputs


def on_inputs(fid: Fidelity, inputs_from: str) -> Fidelity:
    """``fid`` saying which inputs it was measured on; on random inputs without top-1 agreement,
    which there only says the logits' order survived noise (it read 1.000 for a model whose
    accuracy fell to 9.6%): agreement means something on real samples only."""
    if fid.data is None:
        fid.inputs = "random inputs" if inputs_from == RANDOM_INPUTS else inputs_from
        if inputs_from == RANDOM_INPUTS:
            fid.top1_agreement = None
    return fid


def holds(checker_passed, runtime_passed, exact: Exactness) -> bool:
    """The one rule of the contract: the checker passed, onnxruntime ran, and exactness, where
    it was checked, held (:attr:`Validation.passed` and :attr:`graphprune.present.report.Report.passed`)."""
    return bool(checker_passed) and bool(runtime_passed) and (not exact.checked or exact.passed)


@dataclass
class Validation:
    """Steps 1-4 of the contract for one pruned model (one step, or the end of a pipeline)."""

    checker_ok: bool
    checker_error: str
    runtime_ok: bool
    runtime_error: str
    exact: Exactness
    fidelity: Fidelity
    steps: list[Exactness] = field(default_factory=list)  # each step's own exactness

    @property
    def passed(self) -> bool:
        return holds(self.checker_ok, self.runtime_ok, self.exact)


@dataclass
class Reference:
    """How a step's exactness is proven: ``build()`` gives the serialized model the step's result
    must equal, made from ``base`` (the step's input, or that input with compensated weights) as
    it is at the call, independently of the surgery. ``deps`` and ``plan``, for a step that
    removes group entries, are ``base``'s analysis and the removals (what the comparison needs
    to fetch probes and to know which sums lost terms)."""

    base: onnx.ModelProto
    build: Callable[[], bytes]
    deps: DependencyGraph | None = None
    plan: Plan | None = None
    note: str = ""  # what the reference is, when the report should say it

    def __call__(self) -> bytes:
        return self.build()


def plan_reference(base: onnx.ModelProto, deps: DependencyGraph, plan: Plan) -> Reference:
    """The masked reference of a plan over ``base``'s groups (:func:`masked_reference_bytes`)."""
    return Reference(base, lambda: masked_reference_bytes(base, deps, plan), deps, plan)


INEXACT_NOTE = (
    "groups pruned through a normalisation over their axis are not function-preserving; fidelity measures what they"
    " cost"
)


@dataclass
class Step:
    """One checked step: ``after`` came from ``before``; ``reference`` (None: not
    function-preserving, ``skipped_groups`` and ``note`` say why) is what it must equal."""

    before: onnx.ModelProto
    after: onnx.ModelProto
    reference: Reference | None
    skipped_groups: list[str] = field(default_factory=list)
    note: str = ""
    # graph input/output entries ``after`` lost (a KV cache's heads: graphprune.analysis.iochange.IoMap);
    # None: from the reference's plan
    cut: Any = None
    violations: list[str] = field(default_factory=list)  # postconditions the pass found broken


def check(pruned: onnx.ModelProto | str) -> str:
    """Empty string if the model (a ModelProto or a path) passes the full checker, else the
    first line of the error. A lazy model is checked as a file beside its data."""
    try:
        with runnable(pruned) if isinstance(pruned, onnx.ModelProto) else contextlib.nullcontext(pruned) as source:
            onnx.checker.check_model(source, full_check=True)
    except Exception as exc:  # checker raises ValidationError, shape inference InferenceError
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ""


def run(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` (a ModelProto, its bytes or a path) in onnxruntime (CPU, one thread).

    A lazy model (or the bytes of one: a reference built from it) runs from a file beside its
    data (:func:`graphprune.ir.weights.runnable`).
    """
    if isinstance(model, bytes) and DIR_KEY.encode() in model:
        model = onnx.load_from_string(model)  # no weights in it: small
    if isinstance(model, onnx.ModelProto) and has_lazy(model):
        with runnable(model) as source:
            return run(source, feeds)
    from ..ir.runtime import run as run_session
    from ..ir.runtime import session

    # Basic optimisations only, and no QDQ fusion: the reference's mask Muls would stop a
    # DequantizeLinear->Conv->QuantizeLinear from becoming an integer QLinearConv that the
    # pruned model gets, and the two would then differ by the quantization error.
    sess = session(model, optimization="basic", qdq_fusion=False)
    # Copies (runtime.run): onnxruntime's arrays keep the session's memory (every weight it holds)
    # alive for as long as they live, and validation keeps the outputs of three sessions.
    return run_session(sess, feeds)


def leaves(outputs) -> list[tuple[str, object]]:
    """The tensors of a run's outputs with their paths: a sequence output (a list) gives one
    leaf per element, a map (ZipMap's dicts) one per key; the path says where each came from,
    so two runs compare leaf by leaf only when their structures are equal."""
    out: list[tuple[str, object]] = []

    def walk(path: str, v) -> None:
        if isinstance(v, (list, tuple)):
            out.append((f"{path}#len", len(v)))
            for i, x in enumerate(v):
                walk(f"{path}[{i}]", x)
        elif isinstance(v, dict):
            for k in sorted(v, key=repr):
                walk(f"{path}[{k!r}]", v[k])
        else:
            out.append((path, v))

    for i, o in enumerate(outputs):
        walk(str(i), o)
    return out


def numeric(v) -> np.ndarray | None:
    """A leaf as float64 (booleans, integers, ml_dtypes floats too), or None (strings, objects)."""
    a = np.asarray(v)
    if a.dtype == object or a.dtype.kind in "USV" and a.dtype.name not in _ML_FLOATS:
        return None
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError):
        return None


_ML_FLOATS = frozenset(
    {"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "int4", "uint4"}
)


def rel_diff(a: list, b: list, scale_of: list | None = None) -> float:
    """Largest |a - b| relative to the largest |b| (or, if larger, the largest |scale_of|), over
    all outputs; ``inf`` when the two differ in structure (sequence lengths, map keys, shapes)
    or in a non-numeric value (strings).

    Pruning can cancel most of an output (the reference's output may be 100x smaller than
    the original's), while float32 rounding stays at the scale of the original computation:
    ``scale_of`` (the original's outputs) keeps that rounding from reading as a mismatch.
    """
    la, lb = leaves(a), leaves(b)
    if [p for p, _ in la] != [p for p, _ in lb]:
        return float("inf")
    scales: dict[str, float] = {}  # per output: the largest magnitude over all its leaves
    for path, v in lb + (leaves(scale_of) if scale_of is not None else []):
        v64 = None if path.endswith("#len") else numeric(v)
        if v64 is not None and v64.size:
            top = path.split("[", 1)[0].split("#", 1)[0]
            scales[top] = max(scales.get(top, 0.0), float(np.max(np.abs(v64))))
    worst = 0.0
    for (path, x), (_, y) in zip(la, lb):
        x64, y64 = numeric(x), numeric(y)
        if x64 is None or y64 is None:
            if np.shape(x) != np.shape(y) or not np.array_equal(np.asarray(x), np.asarray(y)):
                return float("inf")
            continue
        if x64.shape != y64.shape:
            return float("inf")
        if not y64.size:
            continue
        scale = scales.get(path.split("[", 1)[0].split("#", 1)[0], 0.0)
        worst = max(worst, float(np.max(np.abs(x64 - y64))) / max(scale, 1e-12))
    return worst


def quantized_exactness(
    base: onnx.ModelProto,
    pruned: onnx.ModelProto,
    reference: Callable[[], bytes],
    feeds: dict[str, np.ndarray],
    pruned_out: list[np.ndarray],
    ref_out: list[np.ndarray],
    original_out: list[np.ndarray],
    *,
    value: Callable[[str], np.ndarray | None] | None = None,
) -> Exactness:
    """Exactness of a quantized graph (rules in :mod:`graphprune.validation.quantized`): each output
    within ``QUANT_STEPS`` of its quantization step (or the float tolerance), and the same
    comparison with the activations' fake quantization bypassed within the float tolerance.

    ``reference()`` builds the reference's bytes from ``base`` as it is when called (it is
    called again with ``base`` bypassed); ``value`` gives constants' values (default: read
    from ``base``)."""
    tol = exact_tolerance(pruned_out)
    steps = output_steps(base, value)
    in_steps = step_diffs(pruned_out, ref_out, steps)
    rels, bounds = [], []
    for p, r, o, step in zip(pruned_out, ref_out, original_out, steps):
        rels.append(rel_diff([p], [r], scale_of=[o]))
        scale = max(float(np.max(np.abs(np.asarray(a, np.float64)), initial=0.0)) for a in (r, o))
        bounds.append(tol if step is None else max(tol, QUANT_STEPS * step / max(scale, 1e-12)))
    float_diff, note, layer, layers = None, "", "", []
    try:
        with fake_quant_bypassed(base) as bypassed, fake_quant_bypassed(pruned):
            if bypassed:
                # the layers that lost input entries too, in float (see layer_probes): a wrong
                # index map fades by the outputs of mobilenet_v2's quantized skeleton
                n = len(base.graph.output)
                if isinstance(reference, Reference):
                    layers = layer_probes(pruned, base, reference, [o.name for o in base.graph.output], feeds)
                base_float = run(base, feeds)
                with _fetching([base, pruned], layers, reference.deps if layers else None):
                    ref_run, pruned_run = run(reference(), feeds), run(pruned, feeds)
                float_diff = rel_diff(pruned_run[:n], ref_run[:n], scale_of=base_float)
                if layers:
                    removed = removed_entries(reference.deps, reference.plan)
                    layer_diff, layer = _layer_diff(layers, pruned_run[n:], ref_run[n:], removed)
                    layer = layer if layer_diff > float_diff else ""
                    float_diff = max(float_diff, layer_diff)
    except Exception as exc:  # a quantizer the bypass cannot read as float (types): say so
        note = f"fake quantization could not be bypassed ({str(exc).strip().splitlines()[0][:200]})"
    held = [k for k in range(len(rels)) if steps[k] is not None or float_diff is None]
    unheld = [k for k in range(len(rels)) if k not in held]
    if unheld:
        names = ", ".join(repr(o.name) for k, o in enumerate(base.graph.output) if k in unheld)
        note = f"outputs {names} have no quantization step: held by the bypassed comparison only"
    worst = max(held, key=lambda k: rels[k] / bounds[k], default=None)
    passed = all(rels[k] <= bounds[k] for k in held) and (float_diff is None or float_diff <= tol)
    if float_diff is not None and float_diff > tol:
        note = f"with fake quantization bypassed: max rel diff {float_diff:.2e} over {tol:.0e}"
        note += f" at layer output {layer!r}" if layer else ""
    known = [s for s in in_steps if s is not None]
    return Exactness(
        checked=True,
        passed=passed,
        max_rel_diff=max(rels, default=0.0),
        tolerance=bounds[worst] if worst is not None else tol,
        note=note,
        tolerance_steps=QUANT_STEPS,
        quant_step=steps[worst] if worst is not None else None,
        max_step_diff=max(known) if known else None,
        float_max_rel_diff=float_diff,
        layers_compared=len(layers) if float_diff is not None else None,
    )


def fidelity_sums(p: np.ndarray, o: np.ndarray) -> tuple[float, float, float, float]:
    """``(p·o, p·p, o·o, |p-o|²)`` of flattened float64 outputs: what :func:`cosine_and_rel_l2`
    needs, and what can be added up batch by batch (:func:`graphprune.validation.evaluate.evaluate`)."""
    d = p - o
    return float(p @ o), float(p @ p), float(o @ o), float(d @ d)


def cosine_and_rel_l2(dot: float, pp: float, oo: float, dd: float) -> tuple[float, float]:
    """The one definition of fidelity's cosine and relative L2 error, from :func:`fidelity_sums`
    (of one run, or summed over a dataset): cosine ``p·o / (|p| |o|)`` (1 when both are zero and
    equal, 0 when one is zero), relative L2 ``|p - o| / |o|``."""
    denom = float(np.sqrt(pp) * np.sqrt(oo))
    cosine = dot / denom if denom > 0 else (1.0 if dd == 0 else 0.0)
    return float(cosine), float(np.sqrt(dd) / max(float(np.sqrt(oo)), 1e-12))


def fidelity(pruned_out: list, original_out: list) -> Fidelity:
    """Cosine, relative L2 and top-1 agreement over every numeric leaf of the outputs; a run whose
    outputs differ in structure from the original's has cosine 0 and relative error 1."""
    lp, lo = leaves(pruned_out), leaves(original_out)
    same = [p for p, _ in lp] == [p for p, _ in lo]
    pairs = [(numeric(x), numeric(y)) for (p, x), (_, y) in zip(lp, lo) if not p.endswith("#len")] if same else []
    if not same or any((x is None) != (y is None) or (x is not None and x.shape != y.shape) for x, y in pairs):
        return Fidelity(cosine=0.0, rel_l2=1.0)
    pairs = [(x, y) for x, y in pairs if x is not None]
    p = np.concatenate([x.ravel() for x, _ in pairs]) if pairs else np.zeros(0)
    o = np.concatenate([y.ravel() for _, y in pairs]) if pairs else np.zeros(0)
    cosine, rel_l2 = cosine_and_rel_l2(*fidelity_sums(p, o))
    top1 = None
    first_p, first_o = pruned_out[0], original_out[0]
    if isinstance(first_o, np.ndarray) and isinstance(first_p, np.ndarray):
        if (
            first_o.ndim == 2
            and first_o.shape[1] > 1
            and first_p.shape == first_o.shape
            and first_o.dtype.kind in "fiu"
        ):
            top1 = float(np.mean(first_p.argmax(axis=1) == first_o.argmax(axis=1)))
    return Fidelity(cosine=cosine, rel_l2=rel_l2, top1_agreement=top1)


def run_original(original, feeds: dict, inputs_from: str = "generated inputs", timed=None) -> list:
    """The original's outputs on ``feeds``; an ``InputError`` naming the feeds' shapes if it does
    not run on them: a pruned model cannot be blamed for inputs its original rejects.

    ``timed`` (a :class:`~graphprune.objectives.cost.TimedSession` of the original on these
    feeds, when latency is timed after) runs it instead, so that run is also latency's first:
    for a float model full optimisations change its outputs by rounding only, and the original
    serves as fidelity's baseline and the scale of exactness, never as the reference. If the
    fully optimised session fails, the basic one decides (timing will report its own error)."""
    if timed is not None and timed.feeds is feeds and not is_quantized(original):
        try:
            return timed.run()
        except Exception:
            pass
    try:
        return run(original, feeds)
    except Exception as exc:
        from ..ir.files import one_line
        from ..ir.input_sizes import describe

        raise InputError(
            f"the original model does not run on the {inputs_from} ({describe(feeds)}): {one_line(exc, 200)};"
            " give sizes it takes with --input-shape NAME:D1,D2,... (input_shapes=) or data with --data/--calib"
        ) from None


# Ops whose output saturates: on random inputs a Sigmoid after a large negative logit gives
# ~1e-7, where onnxruntime's own approximation carries ~1e-7 of absolute error, so a relative
# comparison of the output reads noise as a mismatch (and a wrong plan could hide in it).
_SATURATING = frozenset({"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "LogSoftmax"})
_SHAPE_ONLY = frozenset({"Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})


def saturating_inputs(model: onnx.ModelProto) -> dict[int, str]:
    """For each graph output made by a saturating op (Sigmoid, Tanh, Softmax...; through
    shape-only ops), the op's input: ``{output index: tensor name}``.

    Exactness compares that input instead of the output: the op is the same node in the pruned
    model and the reference, so its input differing is the only way its output can differ, and
    the input is free of the op's own rounding where it saturates."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for k, out in enumerate(model.graph.output):
        node, hops = producer.get(out.name), 0
        while node is not None and node.op_type in _SHAPE_ONLY and node.input and hops < 8:
            node, hops = producer.get(node.input[0]), hops + 1
        if node is not None and node.op_type in _SATURATING and node.domain in ("", "ai.onnx") and node.input:
            found[k] = node.input[0]
    return found


@contextlib.contextmanager
def _fetching(models: list[onnx.ModelProto], names: list[str], deps: DependencyGraph | None):
    """``names`` added as graph outputs of each model (after its own) for the block's length,
    with their type and rank (sizes left unknown: pruning changes them)."""
    added = []
    try:
        for m in {id(m): m for m in models}.values():  # the same object once
            present = {o.name for o in m.graph.output}
            extra = [
                onnx.helper.make_tensor_value_info(n, deps.view.dtypes[n], [None] * len(deps.view.shapes[n]))
                for n in names
                if n not in present
            ]
            m.graph.output.extend(extra)
            added.append((m, len(extra)))
        yield
    finally:
        for m, n in added:
            for _ in range(n):
                m.graph.output.pop()


def _probes(before, after, base, deps) -> tuple[dict[int, str], list[str]]:
    """``({output index: the input of its saturating op, compared instead}, those inputs to fetch as extra
    outputs)``: inputs that are graph outputs already are compared as such, and nothing is probed
    unless every model is in memory and the analysis knows the inputs' types (lazy models run
    from files, which would need them written again)."""
    if deps is None or not isinstance(after, onnx.ModelProto) or any(has_lazy(m) for m in (before, after, base)):
        return {}, []
    saturating = saturating_inputs(base)
    outputs = {o.name for o in base.graph.output}
    names = [n for n in dict.fromkeys(saturating.values()) if n not in outputs]
    if any(n not in deps.view.dtypes or deps.view.shapes.get(n) is None for n in names):
        return {}, []
    return saturating, names


LAYER_PROBE_ELEMENTS = 4_000_000  # elements of layer outputs fetched per model (16 MB of float32)


def layer_probes(after, base, ref: Reference, taken: list[str], feeds: dict | None = None) -> list[str]:
    """Outputs of the nodes that sum over entries the plan removes (a Conv reading pruned input
    channels, a MatMul over a pruned K), to compare at their kept entries: a wrong index map at
    one layer can fade below the tolerance by the model's outputs (in mobilenet_v2's skeleton
    an input-channel swap moved the output by 3e-7 relative) but not at the layer itself.

    Float models in memory only; tensors whose type, rank and sample shape the analysis knows,
    that both models make and that are not fetched already (``taken``); when they do not all fit
    in :data:`LAYER_PROBE_ELEMENTS` elements (counted at the size of ``feeds``: the analysis'
    shapes are per sample, validation may run a batch of data), as many as fit, the smallest first."""
    deps, plan = ref.deps, ref.plan
    if deps is None or plan is None or not isinstance(after, onnx.ModelProto):
        return []
    if any(has_lazy(m) for m in (after, base)):
        return []
    shapes = deps.sample_shapes or deps.view.shapes
    made = {o for n in after.graph.node for o in n.output} & {o for n in base.graph.node for o in n.output}
    skip = set(taken) | {o.name for o in base.graph.output} | {o.name for o in after.graph.output}
    names, sizes = [], []
    for node in _summing(ref):
        t = node.output[0] if node.output else ""
        dims = shapes.get(t)
        if (
            t in skip
            or t not in made
            or t in names
            or deps.view.dtypes.get(t) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
            or dims is None
            or t not in deps.view.shapes
            or not all(isinstance(d, int) and d > 0 for d in dims)
        ):
            continue
        names.append(t)
        sizes.append(int(np.prod(dims)))
    per_sample = {i: shapes.get(i) for i in deps.view.graph_inputs} if feeds else {}
    scale = max(
        [
            np.size(v) / max(int(np.prod(per_sample[k])), 1)
            for k, v in (feeds or {}).items()
            if isinstance(v, np.ndarray) and per_sample.get(k) and all(isinstance(d, int) for d in per_sample[k])
        ],
        default=1.0,
    )
    sizes = [int(z * max(scale, 1.0)) for z in sizes]
    if sum(sizes) <= LAYER_PROBE_ELEMENTS:
        return names
    chosen, budget = set(), LAYER_PROBE_ELEMENTS
    for k in sorted(range(len(names)), key=lambda k: sizes[k]):  # as many as fit
        if sizes[k] > budget:
            break
        chosen.add(k)
        budget -= sizes[k]
    return [names[k] for k in sorted(chosen)]


def _layer_diff(names: list[str], after_vals: list, ref_vals: list, removed: dict) -> tuple[float, str]:
    """The largest difference of the layer probes, each relative to its reference's largest
    magnitude, with the reference cut to the pruned model's kept entries; and the tensor."""
    worst, where = 0.0, ""
    for name, a, r in zip(names, after_vals, ref_vals):
        kept = np.asarray(r)
        for (tensor, axis), idx in removed.items():
            if tensor == name and axis < kept.ndim:
                kept = np.delete(kept, idx, axis=axis)
        if kept.shape != np.shape(a):  # not the layout the analysis predicted: no claim either way
            continue
        d = rel_diff([a], [kept], scale_of=[r])
        if d > worst:
            worst, where = d, name
    return worst, where


def check_steps(
    original: onnx.ModelProto,
    steps: list[Step],
    *,
    feeds: dict[str, np.ndarray] | None = None,
    final_source: onnx.ModelProto | str | None = None,
    inputs_from: str = "generated inputs",
    timed_original=None,
) -> Validation:
    """Steps 1-4 of the validation contract for the last step's model, one step or a pipeline.

    Checker and onnxruntime run on the final model, fidelity compares it with ``original``, and
    exactness is checked per step, each step's result against the reference built from that
    step's own input (so it keeps meaning "the surgery did what the step's plan says").
    ``final_source``: what :func:`~graphprune.ir.weights.runnable` gave for the final model, if the
    caller has it (a lazy model is then written once for every check). The original runs first:
    if it does not run on ``feeds`` (described as ``inputs_from``), the inputs are at fault, not
    the pruning (:func:`run_original`), through ``timed_original`` when given (a
    :class:`~graphprune.objectives.cost.TimedSession`: its run then counts for latency too).
    """
    feeds = feeds if feeds is not None else random_feeds(original)
    final = steps[-1].after if steps else original
    opened = runnable(final) if final_source is None else contextlib.nullcontext(final_source)
    with opened as source:  # a lazy model: one file whose data onnxruntime reads itself, for every check
        checker_error = check(source)
        exacts, original_out, final_out, runtime_error = [], None, None, ""
        for k, step in enumerate(steps):
            last = k == len(steps) - 1
            ex, before_out, after_out, error = step_exactness(
                step,
                feeds,
                after_source=source if last else None,
                blame=inputs_from if k == 0 else None,
                timed=timed_original if k == 0 else None,
            )
            exacts.append(ex)
            original_out = before_out if k == 0 else original_out
            if last:
                final_out, runtime_error = after_out, error
        if not steps:
            original_out = run_original(original, feeds, inputs_from, timed_original)
            final_out = original_out
    fid = on_inputs(fidelity(final_out, original_out), inputs_from) if final_out is not None else Fidelity()
    return Validation(
        checker_ok=not checker_error,
        checker_error=checker_error,
        runtime_ok=final_out is not None,
        runtime_error=runtime_error,
        exact=combined(exacts),
        fidelity=fid,
        steps=exacts,
    )


def check_pruned(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    deps: DependencyGraph | None = None,
    plan: Plan | None = None,
    *,
    feeds: dict[str, np.ndarray] | None = None,
    reference: onnx.ModelProto | None = None,
    inputs_from: str = "generated inputs",
    cut=None,
) -> Validation:
    """:func:`check_steps` for one step that applied ``plan`` (over ``deps``, the analysis of
    ``reference``: the original, or the original with compensated weights) to ``original``."""
    if deps is None or plan is None:
        step = Step(original, pruned, None, note="no plan: exactness needs the plan the model was pruned with")
    else:
        inexact = [g.label for g in deps.groups if "inexact" in g.facts and len(plan.removed(g))]
        base = original if reference is None else reference
        step = Step(original, pruned, None if inexact else plan_reference(base, deps, plan), inexact, cut=cut)
    return check_steps(original, [step], feeds=feeds, inputs_from=inputs_from)


def step_exactness(
    step: Step, feeds: dict, *, after_source=None, blame: str | None = None, timed=None
) -> tuple[Exactness, list, list | None, str]:
    """One step's exactness: ``(exactness, the input's outputs, the result's outputs or None if it
    does not run, its runtime error)``. ``blame`` (what the feeds are) runs the step's input as
    the original (:func:`run_original`). Outputs made by a saturating op are compared at that
    op's input (:func:`saturating_inputs`), fetched as extra outputs when the models are in memory.
    A step that changed graph inputs/outputs (``step.cut``, :mod:`graphprune.analysis.iochange`) runs its
    result on the kept entries of the changed inputs, and every run is compared at the kept entries.
    ``timed``: the input's latency session, used when its outputs are all that is fetched
    (:func:`run_original`)."""
    ref = step.reference
    base = ref.base if ref is not None else step.before
    deps = ref.deps if ref is not None else None
    cut = step.cut if step.cut is not None else io_map(deps, ref.plan if ref is not None else None)
    after = step.after if after_source is None else after_source
    saturated, probes = _probes(step.before, after, base, deps) if ref is not None else ({}, [])
    n = len(step.before.graph.output)
    names = [o.name for o in step.before.graph.output[:n]] + probes
    models = [m for m in (step.before, after, base) if isinstance(m, onnx.ModelProto)]
    with _fetching(models, probes, deps):
        timed = timed if not probes else None  # probes are extra outputs: not the model timed
        before_all = run_original(step.before, feeds, blame, timed) if blame else run(step.before, feeds)
        before_all = cut.outputs(names, before_all)
        before_out, before_probe = before_all[:n], before_all[n:]
        # layer outputs: fetched from the pruned model and the reference only (the step's input,
        # often the same object as base, has run already)
        quantized = is_quantized(base)
        layers = layer_probes(after, base, ref, names, feeds) if ref is not None and not quantized else []
        m = n + len(probes)
        with _fetching([x for x in (after, base) if isinstance(x, onnx.ModelProto)], layers, deps):
            try:
                after_run = run(after, cut.feeds(feeds))
            except Exception as exc:
                error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                return Exactness(note="the pruned model does not run"), before_out, None, error
            after_all, after_layers = after_run[:m], after_run[m:]
            after_out, after_probe = after_all[:n], after_all[n:]
            if ref is None and step.violations:
                return Exactness(checked=True, passed=False, note="; ".join(step.violations)), before_out, after_out, ""
            if ref is None:
                note = step.note or (INEXACT_NOTE if step.skipped_groups else "not function-preserving: see fidelity")
                return (
                    Exactness(checked=False, skipped_groups=list(step.skipped_groups), note=note),
                    before_out,
                    after_out,
                    "",
                )
            ref_run = run(ref(), feeds)  # lazy: beside the data
            ref_all, ref_layers = cut.outputs(names, ref_run[:m]), ref_run[m:]
            ref_out, ref_probe = ref_all[:n], ref_all[n:]
    if quantized and not (ref.plan is not None and integer_sums(_summing(ref))):  # integer sums: exact
        value = deps.view.value if deps is not None else None
        exact = quantized_exactness(base, step.after, ref, feeds, after_out, ref_out, before_out, value=value)
        return exact, before_out, after_out, ""
    held = [k for k in range(n) if k not in saturated]
    diff = rel_diff(
        [after_out[k] for k in held] + after_probe,
        [ref_out[k] for k in held] + ref_probe,
        scale_of=[before_out[k] for k in held] + before_probe,
    )
    tol = exact_tolerance(after_out)
    layer_diff, layer = (
        _layer_diff(layers, after_layers, ref_layers, removed_entries(deps, ref.plan)) if layers else (0.0, "")
    )
    exact = Exactness(
        checked=True,
        passed=max(diff, layer_diff) <= tol,
        max_rel_diff=max(diff, layer_diff),
        tolerance=tol,
        note=ref.note,
        layers_compared=len(layers),
    )
    if layer_diff > tol:
        said = f"layer output {layer!r} differs from the reference's at its kept entries by {layer_diff:.2e}"
        exact.note = f"{exact.note}; {said}" if exact.note else said
    if saturated:
        inputs = ", ".join(dict.fromkeys(saturated.values()))
        said = f"outputs after a saturating op compared at its input ({inputs})"
        exact.note = f"{exact.note}; {said}" if exact.note else said
    if step.violations:  # the pass's own postconditions (a sparsity pattern): broken means failed
        exact.passed = False
        exact.note = "; ".join(step.violations)
    return exact, before_out, after_out, ""


def _summing(ref: Reference) -> list[onnx.NodeProto]:
    """The nodes of ``ref.base`` that sum over entries its plan removes."""
    removed = removed_entries(ref.deps, ref.plan)
    return [ref.base.graph.node[i] for i, dim in ref.deps.contractions if len(removed.get(dim, ()))]


def combined(exacts: list[Exactness]) -> Exactness:
    """The exactness of a run of steps: one step's own, or, for several, checked and passed when
    every step was, with the step nearest its bound speaking for the tolerance (quantized steps
    have their own)."""
    if not exacts:
        return Exactness(note="no plan: exactness needs the plan the model was pruned with")
    if len(exacts) == 1:
        return exacts[0]
    worst = max(
        (e for e in exacts if e.max_rel_diff is not None), key=lambda e: e.max_rel_diff / e.tolerance, default=None
    )
    floats = [e.float_max_rel_diff for e in exacts if e.float_max_rel_diff is not None]
    return Exactness(
        checked=all(e.checked for e in exacts),
        passed=all(e.passed or not e.checked for e in exacts),
        max_rel_diff=None if worst is None else worst.max_rel_diff,
        skipped_groups=[g for e in exacts for g in e.skipped_groups],
        note="per step, each against a reference from its own input",
        **(
            {}
            if worst is None
            else {
                "tolerance": worst.tolerance,
                "tolerance_steps": worst.tolerance_steps,
                "quant_step": worst.quant_step,
                "max_step_diff": worst.max_step_diff,
                "float_max_rel_diff": max(floats, default=None),
            }
        ),
    )


__all__ = [
    "check_pruned",
    "check_steps",
    "masked_reference",
    "Reference",
    "Step",
    "Validation",
    "Exactness",
    "Fidelity",
    "cost_of",
    "latency_ms",
]
