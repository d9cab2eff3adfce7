"""Removing 1, 2, ... residual blocks by each criterion: MACs kept, fidelity, and accuracy where labels exist.

python -m benchmarks.layer_blocks [--models resnet50 vit_b_16] [--digits] [--onnx MODEL --calib DATA --test DATA]
                                  [--max-blocks K] [--samples N]

Zoo models have random-ish weights, so they are measured by fidelity against the original on
seeded random inputs (calibration for the influence criterion on other seeds); the bundled
trained digits CNN (``--digits``: its calib and test splits) and a model given with ``--onnx``
and ``--test`` data that has ``labels`` are also measured by top-1 accuracy.
The baseline is the original model, run in the same process; ``random`` is a seeded random
block order, for comparison with the two criteria. Each row's removal is checked against the
zeroed-f(x) reference on one input (``exact``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from graphprune.analysis.blocks import find_blocks, remove_blocks
from graphprune.calibration.datasets import open_dataset
from graphprune.edit.masking import zeroed_reference_bytes
from graphprune.objectives.cost import cost_of, random_feeds
from graphprune.passes.layer import lowest, score_blocks
from graphprune.present.report import grid
from graphprune.validation.contract import EXACT_RTOL, fidelity, rel_diff, run


def _random_npz(model: onnx.ModelProto, path: Path, seeds: range) -> Path:
    feeds = [random_feeds(model, seed=s) for s in seeds]
    np.savez(path, **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    return path


def _outputs(model: onnx.ModelProto, data: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """First output over every sample of ``data`` (one session), and the labels if there are any."""
    from graphprune.calibration.activations import stream_activations

    ds = open_dataset(data)
    extra = ("labels",) if all("labels" in k for k in ds.keys) else ()
    outs, labels = [], []
    name = model.graph.output[0].name
    for batch in stream_activations(model, ds, [], extra=extra, label="evaluating"):
        outs.append(batch[name])
        if extra:
            labels.append(batch["labels"])
    return np.concatenate(outs), (np.concatenate(labels) if extra else None)


def measure(name: str, model: onnx.ModelProto, calib: Path, test: Path, max_blocks: int) -> list[tuple]:
    blocks = find_blocks(model)
    k_max = min(max_blocks, len(blocks))
    flops = cost_of(model).flops
    base, labels = _outputs(model, test)
    base_acc = float(np.mean(base.argmax(1) == labels)) if labels is not None else None
    rows = [(name, "original", 0, "1.000", "1.0000", "0.0000", "1.000", _pct(base_acc), "-")]
    one = {k: v[:1] for k, v in next(iter(_feeds(model, test))).items()}
    rng = np.random.default_rng(0)
    orders = {
        "influence": score_blocks(model, blocks, "influence", calib=calib),
        "weight-norm": score_blocks(model, blocks, "weight-norm"),
        "random": rng.permutation(len(blocks)).astype(float),
    }
    for criterion, scores in orders.items():
        for k in range(1, k_max + 1):
            print(f"{name}: {criterion}, {k} block(s) ...", file=sys.stderr, flush=True)
            chosen = lowest(blocks, scores, k)
            pruned = remove_blocks(model, chosen)
            out, _ = _outputs(pruned, test)
            fid = fidelity([out], [base])
            acc = float(np.mean(out.argmax(1) == labels)) if labels is not None else None
            diff = rel_diff(run(pruned, one), run(zeroed_reference_bytes(model, chosen), one), run(model, one))
            rows.append(
                (
                    name,
                    criterion,
                    k,
                    f"{cost_of(pruned).flops / flops:.3f}",
                    f"{fid.cosine:.4f}",
                    f"{fid.rel_l2:.4f}",
                    f"{fid.top1_agreement:.3f}" if fid.top1_agreement is not None else "-",
                    _pct(acc),
                    "yes" if diff <= EXACT_RTOL else f"NO ({diff:.1e})",
                )
            )
    return rows


def _feeds(model: onnx.ModelProto, data: Path):
    from graphprune.calibration.datasets import input_specs

    return open_dataset(data).batches(input_specs(model), limit=1)


def _pct(acc: float | None) -> str:
    return "-" if acc is None else f"{acc:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet50", "vit_b_16"], help="zoo models")
    ap.add_argument("--digits", action="store_true", help="also measure the bundled digits CNN on its test split")
    ap.add_argument("--onnx", help="also measure this model (with --calib and --test)")
    ap.add_argument("--calib", help="calibration data for --onnx")
    ap.add_argument("--test", help="evaluation data for --onnx (accuracy when it has 'labels')")
    ap.add_argument("--max-blocks", type=int, default=6)
    ap.add_argument("--samples", type=int, default=8, help="random inputs for the zoo models (calib and eval each)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            from models import zoo

            model = zoo.load(name)
            calib = _random_npz(model, Path(tmp) / f"{name}_calib.npz", range(100, 100 + args.samples))
            test = _random_npz(model, Path(tmp) / f"{name}_test.npz", range(args.samples))
            rows += measure(name, model, calib, test, args.max_blocks)
        if args.digits:
            from models.examples import digits

            rows += measure("digits_cnn", onnx.load(digits.MODEL), digits.CALIB, digits.TEST, args.max_blocks)
        if args.onnx:
            if not (args.calib and args.test):
                ap.error("--onnx needs --calib and --test")
            rows += measure(
                Path(args.onnx).stem, onnx.load(args.onnx), Path(args.calib), Path(args.test), args.max_blocks
            )
    header = ("model", "criterion", "blocks", "MACs kept", "cosine", "rel L2", "top-1 agree", "accuracy", "exact")
    print(grid(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
