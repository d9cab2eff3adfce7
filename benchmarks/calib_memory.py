"""Calibration memory: peak RSS of calibrating on 1/8 of the data, then on all of it.

    python -m benchmarks.calib_memory MODEL DATA [--gram] [--max-rows N]

The baseline is the peak after loading and analysing the model, in the same process. The
statistics are kept in memory of a fixed size, so the peak should not grow from 1/8 of the
samples to all of them; ``--gram`` also accumulates every consumer's Gram matrix (what
``--compensate lstsq`` and ``--pass channel`` need), whose size is set by the model alone.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

from graphprune.analysis.dependency import analyze
from graphprune.api import load_model
from graphprune.calibration.datasets import open_dataset
from graphprune.calibration.statistics import DEFAULT_MAX_ROWS, calibrate


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--gram", action="store_true", help="also accumulate the Gram matrices")
    ap.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    deps = analyze(model)
    ds = open_dataset(args.data)
    base = peak_mb()
    want = ("channels", "gram") if args.gram else ("channels",)
    print(f"model and analysis: peak RSS {base:.0f} MB; {ds.n_samples} samples in {len(ds.files)} files")
    for n in (max(1, ds.n_samples // 8), ds.n_samples):
        t0 = time.perf_counter()
        stats = calibrate(model, deps, ds, want=want, limit=n, max_rows=args.max_rows, batch_size=args.batch_size)
        peak = peak_mb()
        print(
            f"{n:6d} samples ({stats.batches} batches): peak RSS {peak:.0f} MB ({peak / base:.2f}x baseline),"
            f" statistics {stats.nbytes / 2**20:.1f} MB, {len(stats.grams)} Gram matrices,"
            f" {time.perf_counter() - t0:.0f} s"
        )
        del stats  # the next run must not find this one's statistics still held
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
