"""Analysis and pruning time against graph size: residual nets of 1k, 5k and 20k nodes.

    python -m benchmarks.graph_size [--nodes 1000 5000 20000]

Prints seconds per 1000 nodes for each step; a step whose cost per node grows with the
graph is quadratic somewhere. Models are generated in memory (nothing is written).
"""

from __future__ import annotations

import argparse
import sys
import time

import onnx

from graphprune.analysis.blocks import find_blocks
from graphprune.analysis.dependency import analyze
from graphprune.edit.surgery import apply_plan
from graphprune.passes.filter import FilterPruning
from graphprune.present.report import grid
from models.builders import _Builder


def residual_stack(target_nodes: int, width: int = 8, size: int = 8) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-BN + residual Add + Relu blocks (7 nodes each) until ``target_nodes``."""
    b = _Builder(0, input_shape=(1, width, size, size))
    x = b.input
    for i in range(max(1, target_nodes // 7)):
        y = b.conv(x, width, 3, name=f"blocks.{i}.conv1")
        y = b.act(b.bn(y, name=f"blocks.{i}.bn1"), "relu", name=f"blocks.{i}.relu1")
        y = b.bn(b.conv(y, width, 3, name=f"blocks.{i}.conv2"), name=f"blocks.{i}.bn2")
        x = b.act(b.add(x, y, name=f"blocks.{i}"), "relu", name=f"blocks.{i}.relu2")
    x = b.conv(x, 4, 1, name="head")
    return b.build(x, "residual_stack")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", nargs="*", type=int, default=[1000, 5000, 20000])
    args = ap.parse_args(argv)
    rows = []
    for n in args.nodes:
        print(f"{n} nodes ...", file=sys.stderr, flush=True)
        model = residual_stack(n)
        nodes = len(model.graph.node)
        t0 = time.perf_counter()
        deps = analyze(model)
        t1 = time.perf_counter()
        plan, _ = FilterPruning(ratio=0.5).choose(deps)
        t2 = time.perf_counter()
        apply_plan(model, deps, plan)
        t3 = time.perf_counter()
        find_blocks(model, deps.view)  # the layer pass's residual-block discovery
        t4 = time.perf_counter()
        per_k = 1000 / nodes
        rows.append(
            (
                nodes,
                len(deps.groups),
                f"{t1 - t0:.2f}",
                f"{(t1 - t0) * per_k:.3f}",
                f"{(t2 - t1) * per_k:.3f}",
                f"{(t3 - t2) * per_k:.3f}",
                f"{(t4 - t3) * per_k:.3f}",
            )
        )
    print(
        grid(("nodes", "groups", "analyze s", "analyze s/1k nodes", "plan s/1k", "surgery s/1k", "blocks s/1k"), rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
