"""The zoo coverage table: every architecture, both exporters, pruned at ratio 0.5.

``python -m models.coverage`` prints the table; ``--update-docs`` writes it into
docs/zoo.md between the coverage markers. The docs' table comes only from here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import graphprune
from graphprune.objectives.cost import cost_of
from graphprune.present.report import grid
from models import zoo

#: The classic-exporter CNNs the core issue covers; the transformers come later.
CNNS = (
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg16_bn", "alexnet",
    "squeezenet1_1", "googlenet", "inception_v3", "densenet121", "mobilenet_v2",
    "mobilenet_v3_large", "mnasnet1_0", "shufflenet_v2_x1_0", "efficientnet_b0",
    "regnet_y_400mf", "fcn_resnet50", "deeplabv3_mobilenet_v3_large",
)  # fmt: skip

START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "zoo.md"


@dataclass
class Row:
    model: str
    exporter: str
    groups: int
    prunable: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    exact: bool
    max_rel_diff: float
    blocked_by: str
    seconds: float
    unknown_nodes: int = 0  # nodes the MAC counter skipped for lack of inferred shapes


def measure(name: str, exporter: str, ratio: float = 0.5) -> Row:
    """Prune one zoo model at ``ratio`` with full validation (no latency)."""
    t0 = time.perf_counter()
    model = zoo.load(name, exporter)
    result = graphprune.prune(model, ratio=ratio, latency=False)
    r = result.report
    reasons = {k: v for k, v in result.deps.blocked_counts().items() if k not in ("graph input", "graph output")}
    blocked_by = ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return Row(
        model=name,
        exporter=exporter,
        groups=len(result.deps.groups),
        prunable=len(result.deps.prunable_groups()),
        params_before=r.params_before,
        params_after=r.params_after,
        flops_before=r.flops_before,
        flops_after=r.flops_after,
        exact=bool(r.passed and r.exact.checked and r.exact.passed),
        max_rel_diff=r.exact.max_rel_diff if r.exact.max_rel_diff is not None else float("nan"),
        blocked_by=blocked_by or "-",
        seconds=time.perf_counter() - t0,
        unknown_nodes=cost_of(model).unknown_nodes,
    )


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.2f}G"


def markdown(rows: list[Row]) -> str:
    head = (
        "| model | exporter | groups | prunable | params before → after | MACs before → after | exact at 0.5 |"
        " blocked groups by reason |\n|---|---|---:|---:|---|---|---|---|\n"
    )
    lines = [
        f"| {r.model} | {r.exporter} | {r.groups} | {r.prunable} | {_m(r.params_before)} → {_m(r.params_after)}"
        f" | {_m(r.flops_before)} → {_m(r.flops_after)}{_unknown(r)} | {'yes' if r.exact else 'NO'}"
        f" ({r.max_rel_diff:.1e}) | {r.blocked_by} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _unknown(r: Row) -> str:
    return f" ({r.unknown_nodes} nodes without inferred shapes, not counted)" if r.unknown_nodes else ""


def update_doc(text: str, doc: Path) -> None:
    content = doc.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{doc}: coverage markers not found")
    before, rest = content.split(START, 1)
    _, after = rest.split(END, 1)
    doc.write_text(before + START + "\n" + text + END + after)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="default: every zoo model")
    ap.add_argument("--exporters", nargs="*", default=["torchscript", "dynamo"])
    ap.add_argument("--update-docs", "--update-readme", dest="update_docs", action="store_true", help=f"rewrite {DOC}")
    args = ap.parse_args(argv)
    names = args.models or zoo.names()
    rows = []
    for i, name in enumerate(names, 1):
        for exp in args.exporters:
            if exp not in zoo.exporters(name):
                continue
            print(f"[{i}/{len(names)}] {name} ({exp}) ...", file=sys.stderr, flush=True)
            rows.append(measure(name, exp))
    print(
        grid(
            ("model", "exporter", "groups", "prunable", "params", "MACs", "exact", "s"),
            [
                (
                    r.model,
                    r.exporter,
                    r.groups,
                    r.prunable,
                    f"{_m(r.params_before)}->{_m(r.params_after)}",
                    f"{_m(r.flops_before)}->{_m(r.flops_after)}",
                    "yes" if r.exact else "NO",
                    f"{r.seconds:.1f}",
                )
                for r in rows
            ],
        )
    )
    if args.update_docs:
        update_doc(markdown(rows), DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
