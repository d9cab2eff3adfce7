"""The report of a prune or a validation: one dataclass, its JSON form and its terminal table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..validation.contract import Exactness, Fidelity
from ..validation.evaluate import Accuracy


@dataclass
class Report:
    """What was done and what it cost; the JSON keys are a contract (add, never rename)."""

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None
    latency_batch: int | None = None  # the batch both latencies were timed at (None: not timed, or no batch axis)
    validated: bool = False
    checker: dict[str, Any] = field(default_factory=lambda: {"passed": None, "error": ""})
    runtime: dict[str, Any] = field(default_factory=lambda: {"passed": None, "error": ""})
    exact: Exactness = field(default_factory=Exactness)
    fidelity: Fidelity = field(default_factory=Fidelity)
    accuracy: Accuracy | None = None  # top-1 of both models on labelled data (validate --data --labels)
    prune: dict[str, Any] = field(default_factory=dict)
    # Symbolic input dims: the per-sample dims costs were counted at, {input: [dims]}, and where
    # they came from, {input: "--input-shape" | "data" | "default"} (graphprune.ir.input_sizes); None
    # when every input dim is fixed.
    assumed_shapes: dict[str, list[int]] | None = None
    assumed_shapes_from: dict[str, str] | None = None

    @property
    def passed(self) -> bool:
        """True when validation ran and every step of the contract held."""
        return (
            self.validated
            and bool(self.checker["passed"])
            and bool(self.runtime["passed"])
            and (not self.exact.checked or self.exact.passed)
        )

    def why_failed(self) -> str:
        """Why validation failed, in one line: the first check that did not hold (a quantized
        graph's bypassed comparison, or a layer output, named by the exactness note)."""
        if not self.checker["passed"]:
            return f"checker: {self.checker['error']}"
        if not self.runtime["passed"]:
            return f"onnxruntime: {self.runtime['error']}"
        e = self.exact
        if e.note.startswith("with fake quantization bypassed") or "layer output" in e.note:
            return f"exactness: {e.note}"
        if e.max_rel_diff is not None:
            return f"exactness: max relative difference {e.max_rel_diff:.2e} over {e.tolerance:.0e}"
        return f"exactness: {e.note or 'failed'}"

    @property
    def groups_pruned(self) -> int:
        return int(self.prune.get("groups_pruned", 0))

    @property
    def groups_blocked(self) -> int:
        return int(self.prune.get("groups_blocked", 0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("prune")
        d["passed"] = self.passed
        d["groups_pruned"] = extra.pop("groups_pruned", 0)
        d["groups_blocked"] = extra.pop("groups_blocked", 0)
        d.update(extra)
        return d

    def table(self) -> str:
        """A terminal table: before -> after for each cost, then the checks."""
        rows = [
            (
                "parameters",
                _num(self.params_before),
                _num(self.params_after),
                _ratio(self.params_after, self.params_before),
            ),
            (
                "FLOPs (MACs)",
                _num(self.flops_before),
                _num(self.flops_after),
                _ratio(self.flops_after, self.flops_before),
            ),
        ]
        if self.file_bytes_before is not None and self.file_bytes_after is not None:
            rows.append(
                (
                    "file size",
                    _bytes(self.file_bytes_before),
                    _bytes(self.file_bytes_after),
                    _ratio(self.file_bytes_after, self.file_bytes_before),
                )
            )
        if self.latency_ms_before is not None and self.latency_ms_after is not None:
            at = f", batch {self.latency_batch}" if self.latency_batch is not None else ""
            rows.append(
                (
                    f"latency (ORT, median{at})",
                    f"{self.latency_ms_before:.2f} ms",
                    f"{self.latency_ms_after:.2f} ms",
                    _ratio(self.latency_ms_after, self.latency_ms_before),
                )
            )
        lines = _grid(("", "before", "after", "ratio"), rows)
        if self.latency_ms_before and self.latency_ms_after and self.latency_ms_after > self.latency_ms_before:
            lines.append(slower_note(self.latency_ms_after / self.latency_ms_before, self.prune.get("round_to")))
        if self.assumed_shapes:
            froms = self.assumed_shapes_from or {}
            shown = ", ".join(
                f"{k} {'x'.join(map(str, d))} ({froms.get(k, '?')})" for k, d in self.assumed_shapes.items()
            )
            lines.append(f"costs per sample at: {shown}")
        p = self.prune
        if p.get("sparsity"):
            sp = p["sparsity"]
            lines.append(
                f"sparsity ({p.get('pattern')}, {p.get('sparsity_criterion')}): {sp['overall']:.3f} of the weights of"
                f" {sp['layers_sparsified']} layers zeroed, {len(sp['skipped'])} layers skipped; MACs of dense kernels"
                " unchanged"
            )
            if p.get("zip_bytes_before") and p.get("zip_bytes_after"):
                zb, za = p["zip_bytes_before"], p["zip_bytes_after"]
                lines.append(f"zip (deflate): {_bytes(zb)} -> {_bytes(za)} ({_ratio(za, zb)})")
        elif "groups_prunable" in p or ("groups_pruned" in p and "blocks_found" not in p):
            lines.append(
                f"groups: {p.get('groups_pruned', 0)} pruned of {p.get('groups_prunable', 0)} prunable,"
                f" {p.get('groups_blocked', 0)} blocked, {p.get('channels_removed', 0)} channels removed"
            )
        lines.extend(io_lines(p))
        if p.get("mode") == "mask" or any(s.get("mode") == "mask" for s in p.get("passes") or []):
            lines.append("mode: mask: what is pruned is written as zeros, all shapes kept (parameters, MACs unchanged)")
        if p.get("channel_step"):  # counts kept on it: say so, the ratio asked was rounded
            s = p["channel_step"]
            lines.append(
                f"channel step: {s['step']} ({s['source']}): convolution channel counts kept on its multiples"
                + ("" if p.get("target") else "; --round-to 1 for the ratio as asked")
            )
        if p.get("channel_step_skipped"):  # a target the step could not meet: counts left free, say why
            lines.append(f"channel step: not kept: {p['channel_step_skipped']}")
        lines.extend(f"note: {n}" for n in p.get("notes") or [])  # where analysis could not follow the model
        if p.get("target"):
            t = p["target"]
            how = " (measured)" if "latency_measured" in p else ""
            lines.append(
                f"target: keep {t['fraction']:.3f} of {t['metric']}, reached {p['reached']:.3f}{how}"
                f" (objective: {p.get('objective')})"
            )
        if "blocks_found" in p:
            removed = p.get("blocks_removed", [])
            names = ", ".join(b["add"] for b in removed[:4]) + (f" +{len(removed) - 4}" if len(removed) > 4 else "")
            lines.append(
                f"residual blocks: {len(removed)} removed of {p['blocks_found']}" + (f" ({names})" if names else "")
            )
        if p.get("calibration"):
            lines.append(f"calibration: {p['calibration']['samples']} samples in {p['calibration']['batches']} batches")
        comp = p.get("compensate") or {}
        if comp.get("method", "none") != "none":
            left = len(comp.get("skipped", {}))
            lines.append(
                f"compensation: {comp['method']} on {comp.get('consumers', 0)} consumers"
                + (f", {left} left as they were (see the report)" if left else "")
            )
        if not self.validated:
            lines.append("validation: skipped (--no-validate)")
            return "\n".join(lines)
        lines.append(f"checker: {'passed' if self.checker['passed'] else 'FAILED: ' + self.checker['error']}")
        lines.append(f"onnxruntime: {'ran' if self.runtime['passed'] else 'FAILED: ' + self.runtime['error']}")
        if self.exact.checked:
            verdict = "passed" if self.exact.passed else "FAILED"
            per_step = f", {self.exact.note}" if self.exact.note else ""
            e = self.exact
            if e.tolerance_steps is not None and e.quant_step is not None and e.max_step_diff is not None:
                per_step = f", {e.max_step_diff:.0f} of {e.tolerance_steps} quantization steps of {e.quant_step:.3g}"
                if e.float_max_rel_diff is not None:
                    per_step += f", {e.float_max_rel_diff:.2e} with fake quantization bypassed"
                per_step += f"; {e.note}" if e.note else ""
            lines.append(
                f"exactness vs masked reference: {verdict} (max rel diff {self.exact.max_rel_diff:.2e}{per_step})"
            )
        else:
            lines.append(f"exactness: not checked ({self.exact.note or 'no plan'})")
        f = self.fidelity
        if f.cosine is not None:
            top1 = f", top-1 agreement {f.top1_agreement:.3f}" if f.top1_agreement is not None else ""
            where = (
                f" on {f.data} ({f.samples} samples)" if f.data is not None else f" on {f.inputs}" if f.inputs else ""
            )
            lines.append(f"fidelity vs original{where}: cosine {f.cosine:.4f}, relative L2 {f.rel_l2:.4f}{top1}")
        a = self.accuracy
        if a is not None:
            change = 100 * (a.pruned - a.original)
            lines.append(
                f"top-1 accuracy ({a.samples} samples, labels {a.labels!r}): original {a.original:.4f},"
                f" pruned {a.pruned:.4f} ({change:+.2f} points)"
            )
        return "\n".join(lines)


def io_lines(p: dict) -> list[str]:
    """The table's lines on changed graph inputs/outputs (``--allow-io-change``) and the head
    count every layer keeps (``--uniform-heads``)."""
    lines = []
    changes = p.get("io_changes") or []
    if changes:
        shown = [f"{c['name']} {_dims(c['before'])} -> {_dims(c['after'])}" for c in changes[:4]]
        more = f" +{len(changes) - 4} more (see the report's io_changes)" if len(changes) > 4 else ""
        lines.append(f"graph inputs/outputs changed: {len(changes)}: " + ", ".join(shown) + more)
    if "num_key_value_heads" in p:
        k, q = p["num_key_value_heads"], p.get("num_attention_heads")
        if k is None:
            lines.append(f"uniform heads: {p.get('uniform_heads') or 'layers keep different head counts'}")
        else:
            heads = f", num_attention_heads {q}" if q else ""
            lines.append(f"uniform heads: num_key_value_heads {k}{heads} in every layer")
            if p.get("uniform_heads"):
                lines.append(f"note: {p['uniform_heads']}")
    return lines


def _dims(dims: list) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def slower_note(ratio: float, round_to: int | None) -> str:
    """The table's line when the pruned model timed slower than the original, with the likely cause."""
    from ..objectives.hardware import channel_step

    step = channel_step().step
    why = (
        f"channel counts between onnxruntime's blocks of {step} cost the next whole block and can leave its"
        f" fast kernels; try --round-to {step}"
        if not round_to or round_to % step
        else "the kernels of the thinner layers may be slower here; time it again (--latency-runs) or prune less"
    )
    return f"note: the pruned model is slower ({ratio:.2f}x the original's latency): {why}"


def _grid(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """Rows under a header; numbers (and the cost columns) right-aligned, text left-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = [i > 0 and all(_numeric(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for r in [header, tuple("-" * w for w in widths), *rows]:
        cells = [str(c).rjust(w) if right[i] else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def _numeric(cell) -> bool:
    text = str(cell)
    return isinstance(cell, (int, float)) or (text[:1].isdigit() or text[:1] == "-")


def grid(header: tuple[str, ...], rows: list[tuple]) -> str:
    """A plain-text table with a header line."""
    return "\n".join(_grid(tuple(map(str, header)), rows))


def _num(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}" if before else "-"
