"""Per zoo transformer and unit: what pruning at ratio 0.5 removes, and whether it is exact;
with ``--accuracy``, top-1 of the trained digits ViT after pruning heads and MLP width.

python -m benchmarks.transformer_units [--models vit_b_16 swin_t convnext_tiny]
python -m benchmarks.transformer_units --accuracy [--methods ...] [--points ...] [--calib-samples N] [--json OUT]

``--accuracy`` prunes ``models/examples/digits_vit`` (3 blocks of 4 heads x 16 and an MLP of
256) at a few points (half the heads and half the MLP; heads only; MLP only at 1/4, 1/2, 3/4
removed) with each post-training method, no fine-tuning, and measures top-1 on the digits test
split (497 samples). Calibration data (criteria and compensation) is the first
``--calib-samples`` of the train split. Every ratio applies to every group of the point's units.
``--methods`` also takes the second-order, sequential and margin-weighted methods of issue 15
(``obs``, ``dcp``, ``...+seq``; not in the default run: a sequential row reads the calibration
data once per stage, one sample per run at the model's batch of 1) and ``sparsity``, a table of
its own: the sparsity pass on every MatMul/Gemm/Conv weight (50% and 75% unstructured, 2:4; by
magnitude, Wanda and OBS), shapes and MACs kept. ``--points`` restricts the columns (labels as
printed, e.g. ``"heads 1/2 + mlp 1/2"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import graphprune
from benchmarks.accuracy_vs_flops import SPARSITY_CELLS, SparsePoint, sparsity_table
from graphprune.calibration.datasets import open_dataset
from graphprune.errors import InputError
from graphprune.present.report import grid
from models import zoo

UNITS = (("heads",), ("mlp",), ("heads", "mlp"))

# (column label, units pruned, ratio removed from each of their groups)
POINTS: list[tuple[str, tuple[str, ...], float]] = [
    ("heads 1/2 + mlp 1/2", ("heads", "mlp"), 0.5),
    ("heads 1/2", ("heads",), 0.5),
    ("mlp 1/4", ("mlp",), 0.25),
    ("mlp 1/2", ("mlp",), 0.5),
    ("mlp 3/4", ("mlp",), 0.75),
]
# name -> (row label, options of graphprune.prune); "calib" is replaced by the calibration data.
METHODS: dict[str, tuple[str, dict]] = {
    "random": ("random (mean of seeds 0-2)", dict(criterion="random")),
    "l1": ("l1 magnitude", dict(criterion="l1")),
    "l2": ("l2 magnitude", dict(criterion="l2")),
    "activation": ("activation", dict(criterion="activation", calib=True)),
    "fluctuation": ("fluctuation", dict(criterion="fluctuation", calib=True)),
    "l2+bias": ("l2 + bias", dict(criterion="l2", compensate="bias", calib=True)),
    "activation+bias": ("activation + bias", dict(criterion="activation", compensate="bias", calib=True)),
    "fluctuation+bias": ("fluctuation + bias (FLAP)", dict(criterion="fluctuation", compensate="bias", calib=True)),
    "l1+lstsq": ("l1 + lstsq", dict(criterion="l1", compensate="lstsq", calib=True)),
    "l2+lstsq": ("l2 + lstsq", dict(criterion="l2", compensate="lstsq", calib=True)),
    "activation+lstsq": ("activation + lstsq", dict(criterion="activation", compensate="lstsq", calib=True)),
    "fluctuation+lstsq": ("fluctuation + lstsq", dict(criterion="fluctuation", compensate="lstsq", calib=True)),
    "wanda+lstsq": ("wanda + lstsq", dict(criterion="wanda", compensate="lstsq", calib=True)),
    "channel": ("channel ThiNet + lstsq", dict(pass_="channel", calib=True)),
}
# Asked for by --methods only: second order, sequential refits, margin-weighted (issue 15).
EXTRA_METHODS: dict[str, tuple[str, dict]] = {
    "obs": ("obs (structured OBS + OBS update)", dict(criterion="obs", calib=True)),
    "dcp": ("dcp (margin-weighted OBS)", dict(criterion="dcp", calib=True, labels="labels")),
    "wanda+lstsq+seq": (
        "wanda + lstsq, sequential",
        dict(criterion="wanda", compensate="lstsq", calib=True, sequential=True),
    ),
    "fluctuation+lstsq+seq": (
        "fluctuation + lstsq, sequential",
        dict(criterion="fluctuation", compensate="lstsq", calib=True, sequential=True),
    ),
    "channel+seq": ("channel ThiNet + lstsq, sequential", dict(pass_="channel", calib=True, sequential=True)),
    "obs+seq": ("obs, sequential", dict(criterion="obs", calib=True, sequential=True)),
    "dcp+seq": ("dcp, sequential", dict(criterion="dcp", calib=True, labels="labels", sequential=True)),
}
ALL_METHODS = {**METHODS, **EXTRA_METHODS}
SPARSITY = "sparsity"  # the sparsity pass's own table (benchmarks.accuracy_vs_flops.sparsity_sweep)
SEEDS = [0, 1, 2]  # random is averaged over these


@dataclass
class Cell:
    """One pruned model: what it kept and its test top-1 (mean over seeds for random)."""

    point: str
    accuracy: float
    flops_kept: float
    params_kept: float
    exact: bool
    note: str = ""


@dataclass
class Row:
    """A method's cells, in the order of the points."""

    method: str
    label: str
    cells: list[Cell] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class AccuracyTable:
    """The digits ViT's unpruned top-1, one row per method and the sparsity pass's points."""

    accuracy_original: float
    test_samples: int
    calib_samples: int
    rows: list[Row]
    sparsity: list[SparsePoint] = field(default_factory=list)

    def best(self, point: str) -> tuple[str, float]:
        """The method with the highest top-1 at ``point`` (the first row of a tie), and that top-1."""
        scored = [(r.method, c.accuracy) for r in self.rows for c in r.cells if c.point == point]
        return max(scored, key=lambda ma: ma[1])


def accuracy_table(
    methods: list[str] | None = None,
    points: list[tuple[str, tuple[str, ...], float]] = POINTS,
    *,
    calib_samples: int = 256,
) -> AccuracyTable:
    """Prune the digits ViT at every point with every method and measure test top-1 (``sparsity``
    among the methods: the sparsity pass's table instead of a row)."""
    from benchmarks.accuracy_vs_flops import sparsity_sweep, top1
    from models.examples import digits_vit

    methods = list(METHODS) if methods is None else methods
    unknown = [m for m in methods if m not in ALL_METHODS and m != SPARSITY]
    if unknown:
        choices = ", ".join([*ALL_METHODS, SPARSITY])
        raise InputError(f"unknown method {unknown[0]!r}; choose from {choices}")
    model = graphprune.load_model(str(digits_vit.MODEL))
    test, calib = open_dataset(digits_vit.TEST), str(digits_vit.TRAIN)
    base = top1(model, test)
    rows, sparse = [], []
    for name in methods:
        if name == SPARSITY:
            sparse = sparsity_sweep(model, calib, calib_samples, test, None)
            continue
        label, options = ALL_METHODS[name]
        if options.get("calib"):
            options = {**options, "calib": calib, "calib_samples": calib_samples}
        row, t0 = Row(name, label), time.perf_counter()
        for point, units, ratio in points:
            print(f"{name} at {point} ...", file=sys.stderr, flush=True)
            accs, exact = [], True
            for seed in SEEDS if name == "random" else [0]:
                result = graphprune.prune(model, ratio=ratio, units=units, seed=seed, latency=False, **options)
                r = result.report
                accs.append(top1(result.model, test))
                exact = exact and bool(r.passed and r.exact.checked and r.exact.passed)
            note = f"min {min(accs):.3f} max {max(accs):.3f}" if len(accs) > 1 else ""
            row.cells.append(
                Cell(
                    point,
                    float(np.mean(accs)),
                    r.flops_after / r.flops_before,
                    r.params_after / r.params_before,
                    exact,
                    note,
                )
            )
        row.seconds = time.perf_counter() - t0
        rows.append(row)
    n_calib = min(calib_samples, open_dataset(calib).n_samples)
    return AccuracyTable(base, test.n_samples, n_calib, rows, sparse)


def accuracy_grid(t: AccuracyTable) -> str:
    """Rows = methods, columns = points, cells = top-1 % ("!" where exactness failed); a first
    row gives the MACs and parameters each point keeps."""
    points = [c.point for c in t.rows[0].cells] if t.rows else []
    kept = [f"{c.flops_kept:.2f} / {c.params_kept:.2f}" for c in t.rows[0].cells] if t.rows else []
    rows = [("MACs / params kept", *kept, "", "")]
    for r in t.rows:
        cells = [f"{100 * c.accuracy:.1f}" + ("" if c.exact else "!") for c in r.cells]
        rows.append((r.label, *cells, "yes" if all(c.exact for c in r.cells) else "NO", f"{r.seconds:.0f}"))
    return grid(("method / pruned", *points, "exact", "seconds"), rows)


def accuracy_main(args) -> int:
    points = [p for p in POINTS if p[0] in args.points] if args.points else POINTS
    t = accuracy_table(args.methods, points, calib_samples=args.calib_samples)
    print(
        f"digits ViT, unpruned top-1 {100 * t.accuracy_original:.2f}% on {t.test_samples} test samples; "
        f"{t.calib_samples} calibration samples from the train split; no fine-tuning"
    )
    if t.rows:
        print(accuracy_grid(t))
    for point, _, _ in points:
        if t.rows:
            method, acc = t.best(point)
            share = acc / t.accuracy_original
            print(f"best at {point}: {ALL_METHODS[method][0]}, {100 * acc:.1f}% = {share:.1%} of the original")
    if t.sparsity:
        print("\nsparsity pass (zeros written into MatMul/Gemm/Conv weights, shapes kept; MACs unchanged):")
        print(sparsity_table(t.sparsity))
        print(SPARSITY_CELLS)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(t), fh, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["vit_b_16", "swin_t", "convnext_tiny"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--accuracy", action="store_true", help="top-1 of the digits ViT per method and point instead")
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=[*ALL_METHODS, SPARSITY],
        metavar="METHOD",
        help=f"with --accuracy; default: {' '.join(METHODS)}; also: {' '.join(EXTRA_METHODS)} {SPARSITY}",
    )
    ap.add_argument(
        "--points",
        nargs="+",
        choices=[p[0] for p in POINTS],
        metavar="POINT",
        help=f"with --accuracy: only these columns; of {', '.join(repr(p[0]) for p in POINTS)}",
    )
    ap.add_argument("--calib-samples", type=int, default=256, help="with --accuracy: train-split samples")
    ap.add_argument("--json", help="with --accuracy: also write the numbers as JSON")
    args = ap.parse_args(argv)
    if args.accuracy:
        return accuracy_main(args)
    rows = []
    for name in args.models:
        for exporter in zoo.exporters(name):
            model = zoo.load(name, exporter)
            deps = graphprune.analyze(model)
            for units in UNITS:
                groups = [g for g in deps.prunable_groups() if g.unit in units]
                if not groups:
                    rows.append((name, exporter, "+".join(units), 0, "-", "-", "-"))
                    continue
                print(f"{name} ({exporter}) {'+'.join(units)} ...", file=sys.stderr, flush=True)
                r = graphprune.prune(model, ratio=args.ratio, units=units, latency=False).report
                sizes = sorted({g.describe_size for g in groups}, key=len)
                rows.append(
                    (
                        name,
                        exporter,
                        "+".join(units),
                        f"{len(groups)} ({', '.join(sizes[:3])}{', ...' if len(sizes) > 3 else ''})",
                        f"{r.params_after / r.params_before:.3f}",
                        f"{r.flops_after / r.flops_before:.3f}",
                        "yes" if r.passed and r.exact.passed else "NO",
                    )
                )
    print(grid(("model", "exporter", "units", "groups pruned", "params kept", "MACs kept", "exact"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
