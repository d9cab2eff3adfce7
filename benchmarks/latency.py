"""Real speed-up: onnxruntime CPU latency before and after pruning, against the MACs removed.

python -m benchmarks.latency [--models resnet50 mobilenet_v2 vit_b_16] [--ratios 0.25 0.5 0.75]
                             [--round-to 1 8 16] [--repeats 20] [--threads 1] [--latency-targets 0.5]
                             [--latency-models layer model] [--floor]

For each model (a zoo name: its torchscript export; or a deployment graph of
:data:`models.deploy.GRAPHS`: ``bert_fused``, ``gpt2_fused``, ``vit_fused`` from onnxruntime's
transformer optimizer, ``resnet18_qop`` quantized in QOperator format; run those with
``--no-aware --latency-targets``: their latency-aware rows were not measured), ratio and round_to:
- ``uniform``: every group loses ``ratio`` of its units (the plain ``--ratio`` pruning);
- ``latency-aware``: ``--target-flops`` at the MACs the uniform plan kept, with
  ``--objective latency``, once per ``--latency-models`` entry (``layer``: per-layer curves;
  ``model``: the whole model timed with each group pruned alone; tables measured here first, cached);
  channel counts on this machine's channel step, and the allocation it timed fastest
  (``latency``: by the table; ``flops``: by MACs; ``uniform``: one ratio) in the last column.
Speed-up is latency before / after (medians of at least ``--repeats`` runs and about
``--seconds`` per model, original and pruned timed in alternation in this process, fixed
threads); MACs reduction is MACs before / after;
*realized* = speed-up / MACs reduction (1.0: latency falls as much as MACs). Then each
``--latency-targets`` fraction is asked of ``--target-latency`` and the measured fraction
shown. ``--floor`` adds the fastest plan filter pruning can reach on this machine (every group
at one channel step): the speed-up no allocation at any MACs can beat. The machine may be
shared: run it more than once and compare.
"""

from __future__ import annotations

import argparse
import sys
import time

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.objectives.cost import cost_of
from graphprune.objectives.hardware import channel_step
from graphprune.passes.filter import FilterPruning
from graphprune.planning.layer_latency import compare_latency
from graphprune.present.report import grid
from models import deploy, zoo


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(model, pruned, flops_before: int, threads: int, repeats: int) -> tuple[float, float, float]:
    """(MACs kept, speed-up, realized) of ``pruned`` against ``model``."""
    before, after = compare_latency(model, pruned, threads=threads, repeats=repeats)
    kept = cost_of(pruned).flops / flops_before
    speedup = before / after
    return kept, speedup, speedup * kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet50", "mobilenet_v2", "vit_b_16"])
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--round-to", nargs="*", type=int, default=[1, 8, 16])
    ap.add_argument("--repeats", type=int, default=20, help="at least this many runs per model and measurement")
    ap.add_argument("--seconds", type=float, default=3.0, help="and about this long per model and measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-targets", nargs="*", type=float, default=[0.5])
    ap.add_argument("--no-aware", action="store_true", help="skip the latency-aware rows")
    ap.add_argument("--floor", action="store_true", help="also time every group at one channel step")
    ap.add_argument("--latency-models", nargs="*", default=["layer", "model"], choices=["layer", "model"])
    args = ap.parse_args(argv)
    rows, target_rows = [], []
    for name in args.models:
        model = deploy.GRAPHS[name]() if name in deploy.GRAPHS else zoo.load(name, "torchscript")
        deps = analyze(model)
        flops_before = cost_of(model, deps.view.shapes).flops
        model_ms = compare_latency(model, model, threads=args.threads, repeats=5)[0]
        repeats = max(args.repeats, int(args.seconds * 1000 / model_ms))
        say(f"{name}: {model_ms:.1f} ms, {repeats} runs per measurement")
        for ratio in args.ratios:
            for round_to in args.round_to:
                t0 = time.perf_counter()
                uniform = FilterPruning(ratio=ratio, round_to=round_to)
                pruned, _, _ = uniform.run(model, deps)
                kept, speedup, realized = measure(model, pruned, flops_before, args.threads, repeats)
                row = [name, ratio, round_to, f"{kept:.3f}", f"{speedup:.2f}", f"{realized:.2f}"]
                for kind in [] if args.no_aware else args.latency_models:
                    aware = FilterPruning(
                        target_flops=kept,
                        objective="latency",
                        round_to=round_to,
                        threads=args.threads,
                        latency_model=kind,
                        progress=say,
                    )
                    pruned, _, report = aware.run(model, deps)
                    kept2, speedup2, realized2 = measure(model, pruned, flops_before, args.threads, repeats)
                    row += [f"{kept2:.3f}", f"{speedup2:.2f}", f"{realized2:.2f}", report.get("allocation", "-")]
                rows.append(tuple(row))
                say(f"{name} ratio {ratio} round_to {round_to}: {row[3:]} ({time.perf_counter() - t0:.0f}s)")
        if args.floor:
            step = channel_step().step
            pruned, _, _ = FilterPruning(ratio=0.99, round_to=step).run(model, deps)
            kept, speedup, realized = measure(model, pruned, flops_before, args.threads, repeats)
            row = [name, f"floor ({step} ch)", step, f"{kept:.3f}", f"{speedup:.2f}", f"{realized:.2f}"]
            aware_columns = 0 if args.no_aware else 4 * len(args.latency_models)
            rows.append(tuple(row + ["-"] * aware_columns))
        for fraction in args.latency_targets:
            for kind in args.latency_models:
                result = graphprune.prune(
                    model,
                    target_latency=fraction,
                    latency_model=kind,
                    threads=args.threads,
                    validate=False,
                    progress=say,
                ).report.prune
                m = result["latency_measured"]
                tries = " -> ".join(f"{t['measured']:.3f}" for t in m["tries"])
                row = (name, kind, fraction, f"{result['reached']:.3f}", tries, f"{m['before_ms']:.1f}")
                target_rows.append(row)
    header = ["model", "ratio", "round_to", "MACs kept", "speed-up", "realized"]
    for kind in [] if args.no_aware else args.latency_models:
        header += [f"{kind}-aware MACs kept", f"{kind}-aware speed-up", f"{kind}-aware realized", "allocation"]
    runs = f"medians of >= {args.repeats} runs (~{args.seconds:g} s)"
    print(f"onnxruntime {threads_note(args.threads)}, {runs}, zoo models as torchscript exports")
    print(grid(tuple(header), rows))
    if target_rows:
        print()
        header2 = ("model", "latency model", "target latency", "measured", "tries (measured each)", "before ms")
        print(grid(header2, target_rows))
    return 0


def threads_note(threads: int) -> str:
    return f"CPU, {threads} intra-op thread{'s' if threads > 1 else ''}"


if __name__ == "__main__":
    sys.exit(main())
