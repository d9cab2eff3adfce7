"""Post-training pruning without fine-tuning: top-1 accuracy kept by each method at the same FLOPs.

    python -m benchmarks.data_pruning MODEL CALIB TEST [--flops 0.5] [--calib-samples N]

``CALIB`` and ``TEST`` are ``.npz`` files with the model's input names and ``labels``. The
ratio per group is chosen once (by bisection, so that about ``--flops`` of the FLOPs stay);
every method then removes the same number of channels per group, so they cost the same
and differ only in which channels go and how the weights are repaired. Each row prints the
accuracy on TEST and its ratio to the unpruned model's accuracy measured in this process.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

import graphprune
from graphprune.data import input_specs, open_dataset

METHODS = [
    ("l2 (data-free)", dict(criterion="l2")),
    ("activation", dict(criterion="activation")),
    ("apoz", dict(criterion="apoz")),
    ("wanda", dict(criterion="wanda")),
    ("fluctuation", dict(criterion="fluctuation")),
    ("l2 + bias", dict(criterion="l2", compensate="bias")),
    ("fluctuation + bias (FLAP)", dict(criterion="fluctuation", compensate="bias")),
    ("l2 + lstsq", dict(criterion="l2", compensate="lstsq")),
    ("fluctuation + lstsq", dict(criterion="fluctuation", compensate="lstsq")),
    ("channel: ThiNet greedy + lstsq", dict(pass_="channel")),
    ("channel: LASSO + lstsq", dict(pass_="channel", selection="lasso")),
]


def accuracy(model: onnx.ModelProto, path: str) -> float:
    """Top-1 accuracy of ``model`` on the ``.npz`` at ``path`` (its ``labels`` key)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    specs = input_specs(model)
    right = total = 0
    for feeds in open_dataset(path).batches(specs, batch_size=64, extra=("labels",)):
        logits = sess.run(None, {s.name: feeds[s.name] for s in specs})[0]
        right += int(np.sum(logits.argmax(axis=1) == feeds["labels"]))
        total += len(feeds["labels"])
    return right / total


def ratio_for(model: onnx.ModelProto, flops: float) -> tuple[float, float]:
    """The uniform ratio that keeps about ``flops`` of the FLOPs, and the fraction it keeps."""
    lo, hi = 0.0, 0.95
    best = (0.5, 1.0)
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        r = graphprune.prune(model, ratio=mid, validate=False).report
        kept = r.flops_after / r.flops_before
        if abs(kept - flops) < abs(best[1] - flops):
            best = (mid, kept)
        lo, hi = (mid, hi) if kept > flops else (lo, mid)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("test")
    ap.add_argument("--flops", type=float, default=0.5, help="fraction of FLOPs to keep (default 0.5)")
    ap.add_argument("--calib-samples", type=int, default=None)
    args = ap.parse_args(argv)
    model = graphprune.load_model(args.model)
    base = accuracy(model, args.test)
    ratio, kept = ratio_for(model, args.flops)
    print(f"unpruned top-1 {base:.4f}; ratio {ratio:.3f} per group keeps {kept:.3f} of the FLOPs")
    print(f"{'method':34} {'top-1':>7} {'kept':>7} {'exact':>6} {'seconds':>8}")
    for name, options in METHODS:
        t0 = time.perf_counter()
        needs = name != "l2 (data-free)"
        result = graphprune.prune(
            model,
            ratio=ratio,
            latency=False,
            calib=args.calib if needs else None,
            calib_samples=args.calib_samples,
            **options,
        )
        seconds = time.perf_counter() - t0
        acc = accuracy(result.model, args.test)
        exact = "yes" if result.report.exact.passed else "NO"
        print(f"{name:34} {acc:7.4f} {acc / base:7.3f} {exact:>6} {seconds:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
