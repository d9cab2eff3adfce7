"""Top-1 accuracy against FLOPs kept on the bundled digits CNN, for every post-training method.

    python -m benchmarks.accuracy_vs_flops [--levels 1.0 0.9 ... 0.3] [--methods l2 lstsq ...]
                                           [--out PLOT.png] [--json OUT.json] [--quick]

For each FLOPs level (fraction of the original MACs kept) the uniform ratio per group that
reaches it is found once, by bisection on cheap data-free prunes, and shared by every
ratio-based method: they all remove the same number of channels per group, so they cost the
same and differ only in which channels go and how the weights are repaired. ``lstsq@target``
instead allocates globally (``target_flops=``) and prints the level it reached; the layer
pass removes whole residual blocks, so it reaches only a few discrete levels (printed).
Torch-Pruning's L2 magnitude pruner, on the same trained torch model and without fine-tuning,
is a reference line when torch and torch-pruning are installed (the ``bench`` extra).
Accuracy is measured on ``digits_test.npz`` against the unpruned model's, in this process.
``sparsity`` adds a table of its own: the sparsity pass (zeros written into the weights, shapes
kept) at 50% and 75% unstructured and 2:4, by magnitude, Wanda and OBS (SparseGPT-like update);
its MACs are the dense model's (dense kernels do not skip zeros), so the table gives the
fraction of weights left non-zero and the zipped size instead of FLOPs kept.
The transformer example (the digits ViT) has the same methods by unit (heads, MLP) in
``python -m benchmarks.transformer_units --accuracy``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.calibration.activations import session_with_outputs
from graphprune.calibration.datasets import Dataset, input_specs, open_dataset
from graphprune.errors import InputError
from graphprune.objectives.cost import cost_of
from graphprune.planning.sensitivity import measure as measure_sensitivity
from graphprune.present.report import grid
from models.examples import digits

LEVELS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
SEEDS = [0, 1, 2]  # random is averaged over these

# name -> (label, options of graphprune.prune); the ratio (or target) is added per level.
RATIO_METHODS: dict[str, tuple[str, dict]] = {
    "random": ("random (mean of seeds)", dict(criterion="random")),
    "l2": ("l2 magnitude (data-free)", dict(criterion="l2")),
    "fpgm": ("fpgm (data-free)", dict(criterion="fpgm")),
    "activation": ("activation", dict(criterion="activation", calib=True)),
    "fluctuation": ("fluctuation", dict(criterion="fluctuation", calib=True)),
    "bias": ("filter l2 + bias", dict(criterion="l2", compensate="bias", calib=True)),
    "lstsq": ("filter l2 + lstsq", dict(criterion="l2", compensate="lstsq", calib=True)),
    "channel": ("channel ThiNet + lstsq", dict(pass_="channel", calib=True)),
    "lstsq@target": (
        "filter l2 + lstsq, global target",
        dict(criterion="l2", compensate="lstsq", calib=True, target=True),
    ),
    "sensitivity": ("l2, sensitivity target", dict(criterion="l2", target=True, sensitivity=True)),
    "sensitivity+lstsq": (
        "l2 + lstsq, sensitivity target",
        dict(criterion="l2", compensate="lstsq", calib=True, target=True, sensitivity=True),
    ),
}
# Asked for by --methods only (they were in the older single-point benchmarks).
EXTRA_METHODS: dict[str, tuple[str, dict]] = {
    "l1": ("l1 magnitude (data-free)", dict(criterion="l1")),
    "bn-scale": ("bn-scale (data-free)", dict(criterion="bn-scale")),
    "apoz": ("apoz", dict(criterion="apoz", calib=True)),
    "wanda": ("wanda", dict(criterion="wanda", calib=True)),
    "fluctuation+bias": ("fluctuation + bias (FLAP)", dict(criterion="fluctuation", compensate="bias", calib=True)),
    "fluctuation+lstsq": ("fluctuation + lstsq", dict(criterion="fluctuation", compensate="lstsq", calib=True)),
    "lasso": ("channel LASSO + lstsq", dict(pass_="channel", selection="lasso", calib=True)),
    # second order, sequential refits, margin-weighted (issue 15); a sequential row reads the
    # calibration data once per stage: 13-24 s per level on the digits CNN (batch 1)
    "obs": ("obs (structured OBS + OBS update)", dict(criterion="obs", calib=True)),
    "lstsq+seq": (
        "filter l2 + lstsq, sequential",
        dict(criterion="l2", compensate="lstsq", calib=True, sequential=True),
    ),
    "obs+seq": ("obs, sequential", dict(criterion="obs", calib=True, sequential=True)),
    "channel+seq": ("channel ThiNet + lstsq, sequential", dict(pass_="channel", calib=True, sequential=True)),
    "dcp": ("dcp (margin-weighted OBS)", dict(criterion="dcp", calib=True, labels="labels")),
    "dcp+seq": ("dcp, sequential", dict(criterion="dcp", calib=True, labels="labels", sequential=True)),
}
RATIO_METHODS.update(EXTRA_METHODS)
LAYER_METHODS = {
    "layer": ("layer pass (influence)", "influence"),
    "layer-wn": ("layer pass (weight-norm)", "weight-norm"),
}
TORCH = {"torch-pruning": "Torch-Pruning L2 (no fine-tune)"}
SPARSITY = {"sparsity": "sparsity pass (zeros in the weights)"}
SPARSITY_CONFIGS = [("unstructured", 0.5), ("unstructured", 0.75), ("2:4", 0.5)]  # (pattern, fraction zeroed)
SPARSITY_CRITERIA = ["magnitude", "wanda", "obs"]
METHODS = [m for m in RATIO_METHODS if m not in EXTRA_METHODS] + [*LAYER_METHODS, *TORCH, *SPARSITY]
ALL_METHODS = [*RATIO_METHODS, *LAYER_METHODS, *TORCH, *SPARSITY]


@dataclass
class Point:
    """One pruned model: the FLOPs fraction it kept and its test top-1 accuracy."""

    level: float  # the level asked for (a column of the table)
    flops_kept: float  # what it reached
    accuracy: float
    exact: bool | None  # None: not checked (unpruned, or the torch reference)
    note: str = ""


@dataclass
class Curve:
    """A method's points, in the order of the levels; ``missing`` says why there are none."""

    method: str
    label: str
    points: list[Point] = field(default_factory=list)
    seconds: float = 0.0
    missing: str = ""
    note: str = ""


@dataclass
class SparsePoint:
    """One sparsified model: its pattern, criterion and fraction zeroed, what it kept non-zero,
    its test top-1 and zipped size."""

    pattern: str
    criterion: str
    sparsity: float  # asked for (each sparsified layer)
    nonzero: float  # fraction of the model's float weights left non-zero
    accuracy: float
    exact: bool
    zip_ratio: float  # zipped size after / before
    seconds: float


@dataclass
class Sweep:
    """The whole measurement: the unpruned accuracy, the shared ratios and every curve."""

    accuracy_original: float
    test_samples: int
    calib_samples: int
    ratios: dict[float, tuple[float, float]]  # level -> (uniform ratio, FLOPs kept at it)
    curves: list[Curve]
    sparsity: list[SparsePoint] = field(default_factory=list)


def top1(model: onnx.ModelProto, test: Dataset, limit: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``test`` (its ``labels`` key)."""
    sess = session_with_outputs(model, [])
    specs = input_specs(model)
    first = sess.get_outputs()[0].name
    right = total = 0
    for feeds in test.batches(specs, batch_size=64, limit=limit, extra=("labels",)):
        logits = sess.run([first], {s.name: feeds[s.name] for s in specs})[0]
        right += int(np.sum(logits.argmax(axis=1) == feeds["labels"]))
        total += len(feeds["labels"])
    return right / total


def flops_fraction(model: onnx.ModelProto, ratio: float) -> float:
    """MACs kept by a uniform data-free prune at ``ratio`` (no validation: cheap)."""
    r = graphprune.prune(model, ratio=ratio, validate=False, latency=False).report
    return r.flops_after / r.flops_before


def bisect(kept, level: float, hi: float = 0.95, steps: int = 12) -> tuple[float, float]:
    """The ratio in [0, hi] whose ``kept(ratio)`` is closest to ``level`` (kept falls with ratio)."""
    lo, best = 0.0, (0.0, 1.0)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        k = kept(mid)
        if abs(k - level) < abs(best[1] - level):
            best = (mid, k)
        lo, hi = (mid, hi) if k > level else (lo, mid)
    return best


def shared_ratios(model: onnx.ModelProto, levels: list[float]) -> dict[float, tuple[float, float]]:
    """For each level below 1, the uniform ratio that keeps about that fraction of MACs."""
    return {lv: bisect(lambda r: flops_fraction(model, r), lv) for lv in levels if lv < 1.0}


def ratio_curve(model, name: str, levels, ratios, calib, calib_samples, test, limit, base, sens=None) -> Curve:
    """Prune at every level with one ratio-based method (or its target, for ``target`` methods);
    random is averaged over SEEDS; ``sensitivity`` methods allocate by ``sens``."""
    label, options = RATIO_METHODS[name]
    target = options.get("target", False)
    options = {k: (calib if k == "calib" else sens if k == "sensitivity" else v) for k, v in options.items()}
    options.pop("target", None)
    if "calib" in options:
        options["calib_samples"] = calib_samples
    curve, t0 = Curve(name, label), time.perf_counter()
    for lv in levels:
        if lv >= 1.0:
            curve.points.append(Point(lv, 1.0, base, None, "unpruned"))
            continue
        print(f"{name} at {lv:g} of the FLOPs ...", file=sys.stderr, flush=True)
        how = dict(target_flops=lv) if target else dict(ratio=ratios[lv][0])
        accs, exacts, kept = [], [], 1.0
        for seed in SEEDS if name == "random" else [0]:
            result = graphprune.prune(model, seed=seed, latency=False, **how, **options)
            r = result.report
            kept = r.flops_after / r.flops_before
            accs.append(top1(result.model, test, limit))
            exacts.append(bool(r.exact.checked and r.exact.passed))
        note = f"min {min(accs):.3f} max {max(accs):.3f}" if len(accs) > 1 else ""
        curve.points.append(Point(lv, kept, float(np.mean(accs)), all(exacts), note))
    curve.seconds = time.perf_counter() - t0
    return curve


def layer_curve(model, name: str, levels, calib, test, limit, base) -> Curve:
    """Remove 1, 2, ... residual blocks (by the method's criterion) until the MACs fall below the lowest level."""
    label, criterion = LAYER_METHODS[name]
    curve, t0 = Curve(name, label), time.perf_counter()
    curve.points.append(Point(1.0, 1.0, base, None, "unpruned"))
    for blocks in range(1, 16):
        print(f"{name}, {blocks} blocks ...", file=sys.stderr, flush=True)
        try:
            result = graphprune.prune_layers(model, blocks, criterion, calib=str(calib.path), latency=False)
        except InputError:  # fewer removable blocks than asked
            break
        r = result.report
        kept = r.flops_after / r.flops_before
        level = min(levels, key=lambda lv: abs(lv - kept))
        exact = bool(r.exact.checked and r.exact.passed)
        curve.points.append(Point(level, kept, top1(result.model, test, limit), exact, f"{blocks} blocks"))
        if kept < min(levels):
            break
    curve.seconds = time.perf_counter() - t0
    return curve


def torch_curve(levels, test: Dataset, limit, onnx_macs: int) -> Curve:
    """Torch-Pruning's magnitude (L2) pruner on the trained torch model at ratios matched to
    each level (MACs by torch_pruning's counter), no fine-tuning; accuracy in torch."""
    curve, t0 = Curve("torch-pruning", TORCH["torch-pruning"]), time.perf_counter()
    try:
        import copy

        import torch
        import torch_pruning as tp

        from models.examples.digits.net import load_trained
    except ImportError:
        curve.missing = "not installed (pip install -e '.[bench]')"
        return curve
    torch.set_num_threads(1)
    trained = load_trained()
    example = torch.zeros(1, 1, 8, 8)
    with np.load(test.files[0]) as npz:
        n = len(npz["labels"]) if limit is None else limit
        x, y = torch.from_numpy(npz["input"][:n]), npz["labels"][:n]
    macs0 = tp.utils.count_ops_and_params(trained, example)[0]
    curve.note = f"unpruned MACs: torch_pruning counts {int(macs0)}, graphprune {onnx_macs}"
    if abs(macs0 - onnx_macs) > 0.01 * onnx_macs:  # fractions of different totals would not compare
        curve.missing = curve.note + ": more than 1% apart, not compared"
        return curve

    def pruned(ratio: float):
        net = copy.deepcopy(trained)
        if ratio > 0:
            pruner = tp.pruner.MetaPruner(
                net,
                example,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=ratio,
                ignored_layers=[net.fc],
            )
            pruner.step()
        return net

    def kept(ratio: float) -> float:
        return float(tp.utils.count_ops_and_params(pruned(ratio), example)[0]) / float(macs0)

    for lv in levels:
        ratio, k = (0.0, 1.0) if lv >= 1.0 else bisect(kept, lv)
        net = pruned(ratio)  # built with autograd on: Torch-Pruning traces through it
        with torch.no_grad():
            acc = float((net(x).argmax(1).numpy() == y).mean())
        curve.points.append(Point(lv, k, acc, None, f"ratio {ratio:.3f}"))
    curve.seconds = time.perf_counter() - t0
    return curve


def sparsity_sweep(
    model, calib, calib_samples, test, limit, configs=SPARSITY_CONFIGS, criteria=SPARSITY_CRITERIA
) -> list[SparsePoint]:
    """The sparsity pass at each (pattern, fraction) of ``configs`` by each criterion (the data
    criteria on ``calib``), validated; accuracy on ``test``."""
    out = []
    for pattern, fraction in configs:
        for criterion in criteria:
            print(f"sparsity {pattern} {fraction:g} by {criterion} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            data = {} if criterion == "magnitude" else dict(calib=calib, calib_samples=calib_samples)
            result = graphprune.prune(
                model,
                pass_="sparsity",
                pattern=pattern,
                sparsity=None if ":" in pattern else fraction,
                sparsity_criterion=criterion,
                latency=False,
                **data,
            )
            r, p = result.report, result.report.prune
            out.append(
                SparsePoint(
                    pattern,
                    criterion,
                    fraction,
                    1.0 - p["sparsity"]["of_all_weights"],
                    top1(result.model, test, limit),
                    bool(r.exact.checked and r.exact.passed),
                    p["zip_bytes_after"] / p["zip_bytes_before"],
                    time.perf_counter() - t0,
                )
            )
    return out


SPARSITY_CELLS = (
    "cells: top-1 %; '!' = exactness failed; non-zero weights = fraction of all float weights left"
    " non-zero; zip size = zipped model after / before (deflate)"
)


def sparsity_table(points: list[SparsePoint]) -> str:
    """Rows = (pattern, fraction zeroed), columns = criteria, cells = top-1 %; then what every
    criterion shares at that row: non-zero weights, zipped size, MACs (dense: unchanged)."""
    criteria = list(dict.fromkeys(p.criterion for p in points))
    rows = []
    for key in dict.fromkeys((p.pattern, p.sparsity) for p in points):
        ps = {p.criterion: p for p in points if (p.pattern, p.sparsity) == key}
        cells = [f"{100 * ps[c].accuracy:.1f}" + ("" if ps[c].exact else "!") if c in ps else "-" for c in criteria]
        first = next(iter(ps.values()))
        rows.append((f"{key[0]} {key[1]:.0%}", *cells, f"{first.nonzero:.3f}", f"{first.zip_ratio:.3f}", "1.000"))
    header = ("sparsity pattern", *criteria, "non-zero weights", "zip size", "MACs kept")
    return grid(header, rows)


def sweep(
    levels: list[float] = LEVELS,
    methods: list[str] = METHODS,
    *,
    calib_samples: int | None = None,
    test_limit: int | None = None,
    model_path: str | None = None,
    calib_path: str | None = None,
    test_path: str | None = None,
) -> Sweep:
    """Measure every method at every level, on the bundled digits model unless paths are given
    (Torch-Pruning is then skipped: its torch model is the digits one)."""
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; choose from {', '.join(ALL_METHODS)}")
    bundled = model_path is None
    model = graphprune.load_model(str(model_path or digits.MODEL))
    test, calib = open_dataset(test_path or digits.TEST), open_dataset(calib_path or digits.CALIB)
    base = top1(model, test, test_limit)
    uniform = any(m in RATIO_METHODS and not RATIO_METHODS[m][1].get("target") for m in methods)
    ratios = shared_ratios(model, levels if uniform else [])
    sens = None
    if any(RATIO_METHODS.get(m, ("", {}))[1].get("sensitivity") for m in methods):
        print("measuring sensitivity on the calibration split ...", file=sys.stderr, flush=True)
        n = calib.n_samples if calib_samples is None else calib_samples
        sens = measure_sensitivity(model, analyze(model), calib, samples=n, labels="labels")
    curves = []
    sparse: list[SparsePoint] = []
    for name in methods:
        if name in SPARSITY:
            sparse = sparsity_sweep(model, calib, calib_samples, test, test_limit)
        elif name in RATIO_METHODS:
            args = (model, name, levels, ratios, calib, calib_samples, test, test_limit, base, sens)
            curves.append(ratio_curve(*args))
        elif name in LAYER_METHODS:
            curves.append(layer_curve(model, name, levels, calib, test, test_limit, base))
        elif not bundled:
            curves.append(Curve(name, TORCH[name], missing="only for the bundled digits model"))
        else:
            curves.append(torch_curve(levels, test, test_limit, cost_of(model).flops))
    n_test = test.n_samples if test_limit is None else min(test_limit, test.n_samples)
    n_calib = calib.n_samples if calib_samples is None else min(calib_samples, calib.n_samples)
    return Sweep(base, n_test, n_calib, ratios, curves, sparse)


def table(s: Sweep, levels: list[float]) -> str:
    """Rows = methods, columns = FLOPs levels, cells = top-1 % (with the level reached when it
    differs from the column by more than 0.02, and "!" when exactness failed)."""
    rows = []
    for c in s.curves:
        if not c.points:
            rows.append((c.label, *(["-"] * len(levels)), c.missing))
            continue
        cells = []
        for lv in levels:
            ps = [p for p in c.points if p.level == lv]
            cell = " / ".join(
                f"{100 * p.accuracy:.1f}"
                + ("" if abs(p.flops_kept - lv) <= 0.02 else f" @{p.flops_kept:.2f}")
                + ("!" if p.exact is False else "")
                for p in ps
            )
            cells.append(cell or "-")
        exact = [p.exact for p in c.points if p.exact is not None]
        rows.append((c.label, *cells, "" if not exact else ("yes" if all(exact) else "NO"), f"{c.seconds:.0f}"))
    header = ("method / FLOPs kept", *(f"{lv:.0%}" for lv in levels), "exact", "seconds")
    rows = [r if len(r) == len(header) else (*r[:-1], "", r[-1]) for r in rows]
    return grid(header, rows)


def plot(s: Sweep, path: str) -> None:
    """Accuracy against FLOPs kept, one line per method, a dashed line at 95% of the original."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>PX*h"
    for i, c in enumerate(x for x in s.curves if x.points):
        pts = sorted(c.points, key=lambda p: -p.flops_kept)
        style = dict(color=colors[(2 * i) % 20 + (2 * i) // 20], marker=markers[i % len(markers)])
        if c.method == "torch-pruning":
            style = dict(color="black", marker="o", linestyle=":", linewidth=2)
        elif c.method in LAYER_METHODS:
            style["linestyle"] = "-."
        ax.plot([p.flops_kept for p in pts], [100 * p.accuracy for p in pts], label=c.label, **style)
    ax.axhline(95 * s.accuracy_original, linestyle="--", color="grey", label="95% of the original")
    ax.set_xlabel("fraction of MACs kept")
    ax.set_ylabel(f"top-1 accuracy, % ({s.test_samples} test samples)")
    ax.set_title("digits CNN: accuracy vs FLOPs kept, pruned without fine-tuning")
    ax.invert_xaxis()
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", nargs="+", type=float, default=LEVELS, help="fractions of FLOPs to keep")
    ap.add_argument(
        "--methods",
        nargs="+",
        default=METHODS,
        choices=ALL_METHODS,
        metavar="METHOD",
        help=f"default: {' '.join(METHODS)}; also: {' '.join(EXTRA_METHODS)}",
    )
    ap.add_argument("--model", help="another ONNX model (default: the bundled digits CNN)")
    ap.add_argument("--calib", help="its calibration .npz (keys: input names)")
    ap.add_argument("--test", help="its test .npz (keys: input names and labels)")
    ap.add_argument("--out", default="accuracy_vs_flops.png", help="plot file (needs matplotlib)")
    ap.add_argument("--json", help="also write the numbers as JSON")
    ap.add_argument("--quick", action="store_true", help="64 calibration samples, levels 1.0 0.7 0.5 0.3")
    args = ap.parse_args(argv)
    levels = [1.0, 0.7, 0.5, 0.3] if args.quick and args.levels == LEVELS else sorted(args.levels, reverse=True)
    t0 = time.perf_counter()
    if (args.model is None) != (args.calib is None) or (args.model is None) != (args.test is None):
        ap.error("--model, --calib and --test go together")
    s = sweep(
        levels,
        args.methods,
        calib_samples=64 if args.quick else None,
        model_path=args.model,
        calib_path=args.calib,
        test_path=args.test,
    )
    print(
        f"{args.model or 'digits CNN'}, unpruned top-1 {100 * s.accuracy_original:.2f}% "
        f"on {s.test_samples} test samples; {s.calib_samples} calibration samples; no fine-tuning"
    )
    if s.ratios:
        shared = ", ".join(f"{lv:.0%}: {r:.3f} (reaches {k:.3f})" for lv, (r, k) in s.ratios.items())
        print(f"uniform ratio per group, shared by the ratio-based methods (same channels cut per group): {shared}")
    if s.curves:
        print(table(s, levels))
        print(
            "cells: top-1 %; '@x' = FLOPs fraction reached when off the column; '!' = exactness failed; "
            "random = mean over seeds " + ", ".join(map(str, SEEDS))
        )
    for c in s.curves:
        if (c.method in LAYER_METHODS or c.method in ("random", "torch-pruning")) and c.points:
            print(
                f"{c.label}: "
                + "; ".join(
                    f"{p.flops_kept:.3f} -> {100 * p.accuracy:.1f}%" + (f" ({p.note})" if p.note else "")
                    for p in c.points
                )
            )
        for text in (c.note, c.missing):
            if text:
                print(f"{c.label}: {text}")
    if s.sparsity:
        print("\nsparsity pass (zeros written into Conv/Gemm weights, shapes kept; MACs unchanged in dense kernels):")
        print(sparsity_table(s.sparsity))
        print(SPARSITY_CELLS)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        try:
            plot(s, args.out)
            print(f"plot: {args.out}")
        except ImportError:
            print("plot: matplotlib not installed (pip install -e '.[plot]')")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**asdict(s), "ratios": {str(k): v for k, v in s.ratios.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
