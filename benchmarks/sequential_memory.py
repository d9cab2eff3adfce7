"""Peak memory of the lstsq refit, one-shot against sequential (``--sequential``), on one model.

    python -m benchmarks.sequential_memory MODEL DATA [--samples N] [--ratio R] [--mode oneshot|sequential]

Without ``--mode`` each mode runs in its own process (peak RSS is per process) and the two
peaks are printed side by side. The plan is the same for both (l2, uniform ``--ratio``);
``oneshot`` calibrates the Gram matrix of every consumer that loses channels at once, then
refits (what ``--compensate lstsq`` does today); ``sequential`` holds one stage's
statistics at a time and reads the data once per stage. The baseline is the peak after
loading and analysing the model.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from graphprune.analysis.dependency import analyze
from graphprune.api import load_model
from graphprune.calibration.datasets import open_dataset
from graphprune.calibration.statistics import calibrate
from graphprune.edit.compensate import compensate
from graphprune.edit.sequential import sequential_compensate
from graphprune.passes.finish import consumers_losing
from graphprune.planning.allocate import allocate
from graphprune.planning.criteria import score_groups


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(args) -> None:
    model = load_model(args.model)
    deps = analyze(model)
    ds = open_dataset(args.data)
    scores, _ = score_groups(deps, "l2")
    plan = allocate(deps, scores, args.ratio)
    base = peak_mb()
    t0 = time.perf_counter()
    if args.mode == "oneshot":
        stats = calibrate(model, deps, ds, want=("channels", "gram"), nodes=consumers_losing(deps, plan),
                          limit=args.samples)  # fmt: skip
        comp = compensate(model, deps, plan, stats, "lstsq")
        what = f"{len(stats.grams)} Gram matrices at once ({stats.nbytes / 2**20:.0f} MB)"
    else:
        comp = sequential_compensate(model, deps, plan, ds, "lstsq", limit=args.samples)
        what = f"{comp.stages} stages"
    peak = peak_mb()
    print(
        f"{args.mode}: peak RSS {peak:.0f} MB (model and analysis {base:.0f} MB), {len(comp.changed)} consumers"
        f" refit, {what}, {args.samples} samples, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--mode", choices=["oneshot", "sequential"])
    args = ap.parse_args(argv)
    if args.mode:
        one(args)
        return 0
    for mode in ("oneshot", "sequential"):
        cmd = [sys.executable, "-m", "benchmarks.sequential_memory", args.model, args.data, "--mode", mode,
               "--samples", str(args.samples), "--ratio", str(args.ratio)]  # fmt: skip
        subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
