"""How well each latency model predicts whole-model latency: the random plans of the in-model
table (half of them held out) against the per-layer table's estimate and the in-model fit.

python -m benchmarks.latency_models [--models mobilenet_v2 resnet50] [--threads 1]

For each zoo model (torchscript export) the two tables are measured (or read from the cache);
the in-model table's plans are split in two (even and odd); the in-model rates are fitted on
the even plans and both models predict the saving (ms) of the odd ones. R^2 and the RMS error
are over the odd plans; ``one rate`` is latency proportional to MACs saved (the plain MACs
model, fitted), the baseline both should beat.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from graphprune.analysis.dependency import analyze
from graphprune.planning.cost_model import CostModel
from graphprune.planning.layer_latency import LatencyModel, latency_table
from graphprune.planning.model_latency import ModelLatency, fit_rates, model_table
from graphprune.present.report import grid
from models import zoo


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["mobilenet_v2", "resnet50"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        model = zoo.load(name, "torchscript")
        deps = analyze(model)
        cm = CostModel(deps)
        table = model_table(deps, cm, threads=args.threads, progress=say)
        inmodel = ModelLatency(table, cm)
        layer = LatencyModel(latency_table(deps, cm, threads=args.threads, progress=say), cm)
        removed = inmodel.removed(table.plans)
        y = np.array(table.saved_ms)
        fit = np.arange(len(y)) % 2 == 0
        test = ~fit
        x = inmodel.macs_saved(removed)
        total = x.sum(axis=1)
        one = float(total[fit] @ y[fit] / (total[fit] @ total[fit]))
        predictions = {
            "layer (per-layer curves)": (1 - layer.fraction(removed[test])) * table.model_ms,
            "model (in-model rates)": x[test] @ fit_rates(x[fit], y[fit]),
            "one rate (MACs)": total[test] * one,
        }
        var = float(((y[test] - y[test].mean()) ** 2).sum())
        for kind, pred in predictions.items():
            err = y[test] - pred
            r2 = 1 - float((err**2).sum()) / var
            rms = float(np.sqrt((err**2).mean()))
            rows.append((name, kind, int(test.sum()), f"{r2:.3f}", f"{rms:.2f}", f"{table.model_ms:.1f}"))
    print(f"held-out random plans of the in-model table, onnxruntime CPU, {args.threads} thread(s)")
    print(grid(("model", "latency model", "plans", "R^2", "RMS error ms", "model ms"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
