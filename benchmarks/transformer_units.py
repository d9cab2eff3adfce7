"""Per zoo transformer and unit: what pruning at ratio 0.5 removes, and whether it is exact.

python -m benchmarks.transformer_units [--models vit_b_16 swin_t convnext_tiny]
"""

from __future__ import annotations

import argparse
import sys

import graphprune
from graphprune.report import grid
from models import zoo

UNITS = (("heads",), ("mlp",), ("heads", "mlp"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["vit_b_16", "swin_t", "convnext_tiny"])
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args(argv)
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
