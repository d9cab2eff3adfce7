"""How fast does ``graphprune search`` run trials, and where does a trial's time go?

python -m benchmarks.search [--trials 6] [--workers 1 2] [--executors local ray] [--json OUT.json]

Each (executor, workers) pair runs the same search of the bundled digits CNN (a fixed space
of the filter pass at several targets and criteria with lstsq, so every trial does the same
kind of work) into a fresh store. Reported per pair: trials per minute while trials ran
(from the executor's start to the last result), the input checks before it, the time to the
first result (starting the pool or Ray, each worker loading the model and data, the first
trial), the end (rebuilding the front and timing it alone), and the mean of what each trial's
time was made of: prune and validate (analysis, calibration, allocation, compensation,
surgery, checker, onnxruntime, exactness), evaluation on the test split, latency timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from graphprune.present.report import grid
from graphprune.search import search
from graphprune.search.space import Space

DIGITS = Path(__file__).resolve().parents[1] / "models" / "examples" / "digits"
SPACE = {
    "pass": ["filter"],
    "criterion": ["l2", "activation", "fluctuation"],
    "compensate": ["lstsq"],
    "target_flops": [0.4, 0.5, 0.6],
    "round_to": [8],
    "units": [[]],
    "remove_blocks": [0],
    "sensitivity": [False],
}


def one(executor: str, workers: int, trials: int) -> dict:
    marks: dict[str, float] = {}

    def progress(msg: str) -> None:
        now = time.perf_counter()
        if msg.startswith("starting"):
            marks["start"] = now
        elif msg.startswith("trials done"):
            marks.setdefault("first", now)
            marks["last"] = now

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = search(
            DIGITS / "digits_cnn.onnx",
            calib=DIGITS / "digits_calib.npz",
            data=DIGITS / "digits_test.npz",
            labels="labels",
            store=Path(d) / "runs.db",
            trials=trials,
            space=Space({k: list(v) for k, v in SPACE.items()}, "benchmark"),
            workers=workers,
            executor=executor,
            progress=progress,
        )
        end = time.perf_counter()
    done = [t for t in result.trials if t.timings]
    parts = {k: statistics.mean(t.timings.get(k, 0.0) for t in done) for k in ("prune_validate", "evaluate", "latency")}
    running = marks["last"] - marks["start"]
    return {
        "executor": executor,
        "workers": workers,
        "trials": result.ran_now,
        "trials_per_minute": 60.0 * result.ran_now / running,
        "startup_s": marks["start"] - t0,
        "running_s": running,
        "first_result_s": marks["first"] - marks["start"],
        "end_s": end - marks["last"],
        "trial_s": statistics.mean(t.seconds for t in done),
        **{f"{k}_s": v for k, v in parts.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--executors", nargs="+", default=["local", "ray"])
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = []
    for ex in args.executors:
        for w in args.workers:
            rows.append(one(ex, w, args.trials))
            print(f"{ex} x{w}: {rows[-1]['trials_per_minute']:.1f} trials/min", file=sys.stderr, flush=True)
    head = [
        "executor",
        "workers",
        "trials",
        "trials/min",
        "checks s",
        "to 1st result s",
        "end s",
        "trial s",
        "prune+validate s",
        "evaluate s",
        "latency s",
    ]
    keys = [
        "executor",
        "workers",
        "trials",
        "trials_per_minute",
        "startup_s",
        "first_result_s",
        "end_s",
        "trial_s",
        "prune_validate_s",
        "evaluate_s",
        "latency_s",
    ]
    print(grid(head, [[r[k] if isinstance(r[k], (str, int)) else f"{r[k]:.2f}" for k in keys] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
