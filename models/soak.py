"""Soak test: prune many random models and check the whole contract on each.

    python -m models.soak N [--seed S] [--verbose] [--save-failures DIR]
                            [--max-blocks B] [--blocks KIND,...] [--idioms IDIOM,...|none]
                            [--timeout SECONDS]

Model ``i`` is ``random_model(S + i, idioms=...)`` (``--idioms``: the generator's
idioms that may be drawn, default :data:`~models.random_graphs.DEFAULT_IDIOMS`; a seed
reproduces with the same idioms). Each is analysed, then pruned by
``graphprune.prune`` at a random ratio in (0.05, 0.95), with a random criterion, a random
``round_to`` in {1, 2, 4, 8} and sometimes a global threshold (the pruning settings are
drawn from the seed too, so a failure is reproduced by its seed alone). The invariant
(:func:`check_example`):

* the model is valid and runs in onnxruntime (else the generator is at fault);
* nothing raises (analysis, pruning, validation);
* the report's checker, onnxruntime and exactness checks passed (exactness checked);
* the pruned model passes ``onnx.checker.check_model(full_check=True)`` on its own, keeps
  the graph outputs' shapes, and the input model is left unmodified;
* every group with a member tensor read or written by a ``custom.test.Mystery`` node is
  blocked with a reason naming ``no rule for custom.test.Mystery``; no blocked group loses
  entries, and the Mystery nodes' tensors keep their shapes;
* the pruned model can be analysed again, and ``graphprune.validate`` with the plan stored
  in its metadata passes (exactness included); a re-analysis that blocks a group for a
  reason the original did not have is reported as a *note*, not a failure;
* when nothing is pruned, the output equals the original's;
* something is pruned whenever the ratio and ``round_to`` allow removing entries from a
  prunable group (uniform allocation; with a global threshold only ``pruned <= prunable``).

Each failure prints a ``FAIL seed S (settings): reason`` line (``--save-failures`` also
writes ``seed_S.onnx`` and ``seed_S.txt``), each note a ``note seed S ...`` line. The summary
is ``examples N, pruned P, blocked groups B, failures F`` (P: examples in which at least
one group was pruned; B: blocked groups over all examples), followed by a line listing the
failing seeds if any; the exit code is 1 when there are failures. With N > 20 a progress
line goes to stderr every 10%.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

import graphprune
from graphprune.objectives.cost import random_feeds
from graphprune.planning.criteria import CRITERIA
from graphprune.planning.criteria.data_driven import DATA_CRITERIA
from graphprune.planning.criteria.second_order import GRAM_CRITERIA
from graphprune.validation.contract import run
from models.random_graphs import BLOCKS, DEFAULT_IDIOMS, IDIOMS, MYSTERY_DOMAIN, MYSTERY_OP, describe, random_model

MYSTERY_REASON = f"no rule for {MYSTERY_DOMAIN}.{MYSTERY_OP}"
# dcp needs class labels for a classifier's logits, which random graphs do not have; obs calibrates
SOAK_CRITERIA = tuple(sorted(c for c in CRITERIA if c != "dcp"))
CALIBRATED = (*DATA_CRITERIA, *GRAM_CRITERIA)
ROUND_TO = (1, 2, 4, 8)


@dataclass
class Settings:
    """How one example is pruned."""

    ratio: float
    criterion: str
    round_to: int
    global_threshold: bool
    seed: int = 0

    def kwargs(self) -> dict:
        return {
            "ratio": self.ratio,
            "criterion": self.criterion,
            "round_to": self.round_to,
            "global_threshold": self.global_threshold,
            "seed": self.seed,
        }

    def __str__(self) -> str:
        g = " global" if self.global_threshold else ""
        return f"ratio={self.ratio:.3f} criterion={self.criterion} round_to={self.round_to}{g}"


@dataclass
class Outcome:
    """What happened to one example; ``failure`` is None when the invariant held."""

    failure: str | None = None
    groups: int = 0
    prunable: int = 0
    blocked: int = 0
    pruned_groups: int = 0
    mystery_groups: int = 0
    max_rel_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> bool:
        return self.pruned_groups > 0


class _Violation(Exception):
    """The invariant does not hold; the message is the one-line reason."""


def draw_settings(seed: int) -> Settings:
    """The pruning settings of example ``seed`` (independent of the model's own draws)."""
    rng = np.random.default_rng([seed, 0x50A4])
    return Settings(
        ratio=float(rng.uniform(0.05, 0.95)),
        criterion=str(rng.choice(SOAK_CRITERIA)),
        round_to=int(rng.choice(ROUND_TO)),
        global_threshold=bool(rng.random() < 0.25),
        seed=int(rng.integers(2**31)),
    )


def built_shapes(model: onnx.ModelProto) -> dict[str, tuple] | None:
    """The input's shape as the generator built it (recorded in the model's doc string), when
    the model declares it with symbolic dims: what a user of such a model gives as
    ``--input-shape``, since a size that suits one head (a Flatten before a Gemm) is the
    model's own, not one the default sizes can guess."""
    shape = describe(model).get("input_shape")
    (x,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = x.type.tensor_type.shape.dim
    if shape is None or all(d.HasField("dim_value") for d in dims):
        return None
    return {x.name: tuple(shape)}


def calibration_file(model: onnx.ModelProto, path: Path, samples: int = 4) -> Path:
    """Seeded random samples for ``model``'s inputs, saved as an ``.npz`` (keys = input names)."""
    feeds = [random_feeds(model, seed=k, shapes=built_shapes(model)) for k in range(samples)]
    np.savez(path, **{name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
    return path


def mystery_tensors(model: onnx.ModelProto) -> set[str]:
    """Every tensor read or written by a ``custom.test.Mystery`` node."""
    out: set[str] = set()
    for node in model.graph.node:
        if node.domain == MYSTERY_DOMAIN and node.op_type == MYSTERY_OP:
            out.update(t for t in list(node.input) + list(node.output) if t)
    return out


def expected_to_prune(size: int, ratio: float, round_to: int, min_keep: int = 1) -> bool:
    """Whether uniform allocation as documented (remove ``floor(N * ratio)``, keep at least
    ``min_keep``, round the kept count to a multiple of ``round_to``, leave groups of
    ``round_to`` or fewer alone) removes anything from a group of ``size``."""
    keep = max(min_keep, size - math.floor(size * ratio), 1)
    if round_to > 1:
        if size <= round_to:
            return False
        keep = max(round_to, round(keep / round_to) * round_to)
    return min(keep, size) < size


def check_example(model: onnx.ModelProto, settings: Settings) -> Outcome:
    """Analyse, prune and validate ``model``; check the invariant. Never raises."""
    outcome = Outcome()
    try:
        _check(model, settings, outcome)
    except _Violation as v:
        outcome.failure = str(v)
    except Exception as exc:  # the invariant: nothing raises
        outcome.failure = f"{type(exc).__name__} {_where(exc)}: {_one_line(exc)}"
    return outcome


def _check(model: onnx.ModelProto, settings: Settings, out: Outcome) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise _Violation(f"generator made an invalid model: {_one_line(exc)}") from None
    try:  # the original must run, or a runtime failure of the pruned model proves nothing
        run(model, random_feeds(model, shapes=built_shapes(model)))
    except Exception as exc:
        raise _Violation(f"generator made a model onnxruntime cannot run: {_one_line(exc)}") from None
    before = model.SerializeToString()
    mystery = mystery_tensors(model)

    deps = graphprune.analyze(model)
    out.groups, out.prunable, out.blocked = len(deps.groups), len(deps.prunable_groups()), len(deps.blocked_groups())
    for g in deps.groups:
        if any(m.tensor in mystery for m in g.members):
            out.mystery_groups += 1
            if g.prunable:
                raise _Violation(f"group {g.label} touches a {MYSTERY_OP} node and is prunable")
            if not any(MYSTERY_REASON in r for r in g.reasons):
                raise _Violation(f"group {g.label} touches a {MYSTERY_OP} node, blocked for: {'; '.join(g.reasons)}")

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = settings.kwargs()
        if settings.criterion in CALIBRATED:  # data criteria calibrate on a few random samples
            kwargs["calib"] = calibration_file(model, Path(tmp) / "calib.npz")
        result = graphprune.prune(model, latency=False, input_shapes=built_shapes(model), **kwargs)
    report, pruned = result.report, result.model
    out.pruned_groups = report.groups_pruned
    out.max_rel_diff = report.exact.max_rel_diff

    if model.SerializeToString() != before:
        raise _Violation("prune modified its input model")
    if not report.checker["passed"]:
        raise _Violation(f"checker failed: {report.checker['error']}")
    if not report.runtime["passed"]:
        raise _Violation(f"onnxruntime failed: {report.runtime['error']}")
    if not report.exact.checked:
        raise _Violation(f"exactness not checked: {report.exact.note}")
    if not report.exact.passed:
        raise _Violation(f"not exact: max rel diff {report.exact.max_rel_diff:.3g}")
    if not report.passed:
        raise _Violation("report.passed is False")
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:
        raise _Violation(f"pruned model fails the checker: {_one_line(exc)}") from None
    if [_dims(v) for v in pruned.graph.output] != [_dims(v) for v in model.graph.output]:
        raise _Violation("graph output shapes changed")

    if report.groups_blocked != out.blocked or len(result.deps.groups) != out.groups:
        raise _Violation(
            f"analysis differs between analyze ({out.groups} groups, {out.blocked} blocked) and prune"
            f" ({len(result.deps.groups)} groups, {report.groups_blocked} blocked)"
        )
    for g in result.deps.blocked_groups():
        if len(result.plan.removed(g)) > 0:
            raise _Violation(f"blocked group {g.label} lost entries")
    if mystery:
        old, new = _inferred_shapes(model), _inferred_shapes(pruned)
        changed = sorted(t for t in mystery if old.get(t) != new.get(t))
        if changed:
            raise _Violation(
                f"{MYSTERY_OP} tensor {changed[0]} changed shape {old.get(changed[0])} -> {new.get(changed[0])}"
            )
    if report.groups_pruned == 0 and not (report.fidelity.rel_l2 is not None and report.fidelity.rel_l2 <= 1e-6):
        raise _Violation(f"nothing pruned, yet the output differs from the original (rel L2 {report.fidelity.rel_l2})")
    if report.groups_pruned > out.prunable:
        raise _Violation(f"{report.groups_pruned} groups pruned of {out.prunable} prunable")
    if report.groups_pruned and report.params_after >= report.params_before:
        raise _Violation(f"groups pruned but parameters {report.params_before} -> {report.params_after}")
    # Re-analysis must work. The groups may differ (a grouped conv left with one convolution
    # group prunes channel by channel; a group cut to one channel has nothing left to prune),
    # but a reason to block that the original did not have is worth a note (not a failure:
    # the contract says nothing about pruning twice).
    again = graphprune.analyze(pruned)
    before_reasons = {r for g in deps.blocked_groups() for r in g.reasons}
    fresh = [(g.label, r) for g in again.blocked_groups() for r in g.reasons if r not in before_reasons]
    if fresh:
        out.notes.append(
            f"the pruned model has {len(again.blocked_groups())} blocked groups (the original {out.blocked});"
            f" new: {fresh[0][0]}: {fresh[0][1]}"
        )
    # the plan stored in the metadata validates the model later, too; compensated weights (obs's
    # default) are only at hand in the pruning run, where exactness was checked
    compensated = report.prune.get("compensate", {}).get("method", "none") not in (None, "none")
    if report.groups_pruned:
        later = graphprune.validate(model, pruned, latency=False, input_shapes=built_shapes(model))
        if not later.passed or not (compensated or (later.exact.checked and later.exact.passed)):
            raise _Violation(f"validate() with the stored plan fails: exact {later.exact}, checker {later.checker}")
    if not settings.global_threshold and report.groups_pruned == 0:
        if any(expected_to_prune(g.size, settings.ratio, settings.round_to) for g in deps.prunable_groups()):
            raise _Violation("nothing pruned although a prunable group is large enough for the ratio")


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    """The innermost frame in graphprune (or else the innermost frame) as ``file:line``."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}graphprune{os.sep}" in f.filename] or frames
    if not ours:
        return "(no traceback)"
    f = ours[-1]
    return f"at {os.path.relpath(f.filename)}:{f.lineno} ({f.name})"


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_one(
    seed: int,
    *,
    max_blocks: int = 6,
    kinds: list[str] | None = None,
    idioms: tuple[str, ...] = DEFAULT_IDIOMS,
    timeout: float = 0,
) -> tuple[onnx.ModelProto | None, Settings, Outcome]:
    """Generate, prune and check example ``seed`` (``timeout`` seconds at most, 0: no limit)."""
    settings = draw_settings(seed)
    model = None
    use_alarm = timeout > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            model = random_model(seed, max_blocks=max_blocks, kinds=kinds, idioms=idioms)
        except Exception as exc:
            return None, settings, Outcome(failure=f"generator raised {type(exc).__name__}: {_one_line(exc)}")
        return model, settings, check_example(model, settings)
    except _Timeout:
        return model, settings, Outcome(failure=f"timed out after {timeout:g} s")
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, metavar="N", help="number of random models")
    ap.add_argument("--seed", type=int, default=0, help="first seed (models S .. S+N-1)")
    ap.add_argument("--verbose", action="store_true", help="one line per example")
    ap.add_argument("--save-failures", metavar="DIR", help="write failing models (and why) into DIR")
    ap.add_argument("--max-blocks", type=int, default=6, help="top-level blocks per model at most")
    ap.add_argument("--blocks", help="comma-separated block kinds to draw from (default: all)")
    ap.add_argument(
        "--idioms",
        default=",".join(DEFAULT_IDIOMS),
        help=f"comma-separated generator idioms to draw, or 'none' (default: {','.join(DEFAULT_IDIOMS)};"
        f" all: {','.join(IDIOMS)})",
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per example (0: none)")
    args = ap.parse_args(argv)
    if args.n < 0:
        ap.error("N must be >= 0")
    kinds = [k.strip() for k in args.blocks.split(",") if k.strip()] if args.blocks else None
    if kinds and set(kinds) - set(BLOCKS):
        ap.error(f"unknown block kinds; choose from {', '.join(BLOCKS)}")

    idioms = () if args.idioms.strip() == "none" else tuple(i.strip() for i in args.idioms.split(",") if i.strip())
    if set(idioms) - set(IDIOMS):
        ap.error(f"unknown idioms; choose from {', '.join(IDIOMS)} (or none)")
    save_dir = Path(args.save_failures) if args.save_failures else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    progress = args.n > 20 and not args.verbose
    step = max(1, args.n // 10)
    start = time.perf_counter()
    pruned = blocked = notes = 0
    failures: list[tuple[int, str]] = []
    for k in range(args.n):
        seed = args.seed + k
        model, settings, outcome = run_one(
            seed, max_blocks=args.max_blocks, kinds=kinds, idioms=idioms, timeout=args.timeout
        )
        pruned += outcome.pruned
        blocked += outcome.blocked
        if args.verbose:
            status = "ok" if outcome.failure is None else f"FAIL {outcome.failure}"
            diff = f"{outcome.max_rel_diff:.1e}" if outcome.max_rel_diff is not None else "-"
            print(
                f"seed {seed}: {settings}; groups {outcome.groups}, prunable {outcome.prunable},"
                f" pruned {outcome.pruned_groups}, blocked {outcome.blocked} (Mystery {outcome.mystery_groups}),"
                f" diff {diff}: {status}",
                flush=True,
            )
        for note in outcome.notes:
            notes += 1
            print(f"note seed {seed} ({settings}): {note}", flush=True)
        if outcome.failure is not None:
            failures.append((seed, outcome.failure))
            if not args.verbose:
                print(f"FAIL seed {seed} ({settings}): {outcome.failure}", flush=True)
            if save_dir is not None and model is not None:
                onnx.save(model, save_dir / f"seed_{seed}.onnx")
                (save_dir / f"seed_{seed}.txt").write_text(f"seed {seed}\n{settings}\n{outcome.failure}\n")
        if progress and ((k + 1) % step == 0 or k + 1 == args.n):
            elapsed = time.perf_counter() - start
            print(
                f"soak: {k + 1}/{args.n} ({100 * (k + 1) // args.n}%), {len(failures)} failures, {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    if notes:
        print(f"{notes} notes (not failures)")
    print(f"examples {args.n}, pruned {pruned}, blocked groups {blocked}, failures {len(failures)}")
    if failures:
        print("failing seeds: " + " ".join(str(s) for s, _ in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
