"""Top-1 accuracy of the bundled digits CNN pruned by data-free criteria, on its test split.

python -m benchmarks.digits_accuracy [--criteria l2 random] [--ratios 0.2 0.25 0.3 0.35] [--seeds 0 1 2]
                                    [--json OUT.json]

For each criterion and uniform ratio: the MACs and parameters kept, both as measured by the
report, and the pruned model's top-1 accuracy on ``digits_test.npz`` (497 samples) next to
the original's, measured in the same run by ``graphprune.validate(data=..., labels=True)``.
``random`` runs once per seed (one row each); the other criteria do not use the seed.
The baseline that post-training (data-driven) methods must beat at the same MACs.
"""

from __future__ import annotations

import argparse
import json
import sys

import graphprune
from graphprune.data import open_dataset
from graphprune.report import grid
from models.examples import digits


def measure(test, criterion: str, ratio: float, seed: int, round_to: int) -> dict:
    """Prune the example at ``ratio`` by ``criterion``; MACs, params and accuracy kept."""
    pruned = graphprune.prune(
        str(digits.MODEL), ratio=ratio, criterion=criterion, round_to=round_to, seed=seed, latency=False
    )
    r = graphprune.validate(str(digits.MODEL), pruned.model, data=test, labels=True, latency=False)
    a = r.accuracy
    return {
        "criterion": criterion,
        "ratio": ratio,
        "seed": seed,
        "flops_kept": r.flops_after / r.flops_before,
        "params_kept": r.params_after / r.params_before,
        "accuracy_original": a.original,
        "accuracy_pruned": a.pruned,
        "accuracy_kept": a.pruned / a.original,
        "exact": bool(r.exact.checked and r.exact.passed),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criteria", nargs="+", default=["l2", "random"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.25, 0.3, 0.35])
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the random criterion")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    test = open_dataset(digits.TEST)
    rows, records = [], []
    for criterion in args.criteria:
        for ratio in args.ratios:
            for seed in args.seeds if criterion == "random" else [0]:
                print(f"{criterion} at ratio {ratio} (seed {seed}) ...", file=sys.stderr, flush=True)
                record = measure(test, criterion, ratio, seed, args.round_to)
                records.append(record)
                rows.append(
                    (
                        criterion if criterion != "random" else f"random (seed {seed})",
                        f"{ratio:g}",
                        f"{record['flops_kept']:.3f}",
                        f"{record['params_kept']:.3f}",
                        f"{record['accuracy_original']:.4f}",
                        f"{record['accuracy_pruned']:.4f}",
                        f"{record['accuracy_kept']:.3f}",
                        "yes" if record["exact"] else "NO",
                    )
                )
    header = ("criterion", "ratio", "MACs kept", "params kept", "top-1 original", "top-1 pruned", "kept", "exact")
    print(grid(header, rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"samples": test.n_samples, "rows": records}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
