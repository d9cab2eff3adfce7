"""Does a default prune make the model faster? The bundled digits CNN, before and after
``graphprune prune`` with its default flags, timed at batch 32.

python -m benchmarks.default_speed [--ratios 0.3 0.5] [--rounds 30] [--runs 5] [--batch 32] [--json OUT.json]

Each pruned model is made by the command line itself (``graphprune prune MODEL -o OUT --ratio R
--no-validate -q``: the defaults a new user gets, channel counts of convolutions on this
machine's channel step) and, for contrast, with ``--round-to 1`` (the ratio as asked, the
default before issue 13). The models' batch axis is made symbolic (the example fixes it to 1)
and every model runs at ``--batch`` in interleaved rounds (one burst of ``--runs`` runs of each
model per round, so a shared machine's load falls on all alike); a model's ratio is the median
over rounds of its time over the original's in the same round. Below 1.0: faster than the
original.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from graphprune.cli import main as cli
from graphprune.ir.runtime import options, ort
from graphprune.objectives.cost import cost_of
from graphprune.objectives.hardware import channel_step
from graphprune.present.report import grid

DIGITS = Path(__file__).resolve().parents[1] / "models" / "examples" / "digits" / "digits_cnn.onnx"


def batched(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a symbolic batch axis on its inputs and outputs (shapes inside re-inferred)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    return model


def session(model: onnx.ModelProto):
    so = options(threads=1)
    so.graph_optimization_level = ort().GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort().InferenceSession(batched(model).SerializeToString(), so, providers=["CPUExecutionProvider"])


def prune(src: Path, out: Path, flags: list[str]) -> onnx.ModelProto:
    code = cli(["prune", str(src), "-o", str(out), "--no-validate", "-q", "--force", *flags])
    if code != 0:
        raise SystemExit(f"graphprune prune {' '.join(flags)} exited {code}")
    return onnx.load(str(out))


def ratios_by_round(models: dict[str, onnx.ModelProto], batch: int, rounds: int, runs: int) -> dict[str, list[float]]:
    """Per model, its time over the original's in each interleaved round."""
    sessions = {k: session(m) for k, m in models.items()}
    x = np.random.default_rng(0).standard_normal((batch, 1, 8, 8)).astype(np.float32)
    name = next(iter(models.values())).graph.input[0].name
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(None, {name: x})
    out: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        times = {}
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(runs):
                s.run(None, {name: x})
            times[k] = time.perf_counter() - t
        for k in sessions:
            out[k].append(times[k] / times["original"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DIGITS)
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.3, 0.5])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5, help="runs of each model per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    original = onnx.load(str(args.model))
    flops = cost_of(original).flops
    models = {"original": original}
    with tempfile.TemporaryDirectory(prefix="graphprune-speed-") as tmp:
        for r in args.ratios:
            models[f"--ratio {r}"] = prune(args.model, Path(tmp) / f"d{r}.onnx", ["--ratio", str(r)])
            models[f"--ratio {r} --round-to 1"] = prune(
                args.model, Path(tmp) / f"e{r}.onnx", ["--ratio", str(r), "--round-to", "1"]
            )
    print(
        f"timing {len(models)} models at batch {args.batch}, {args.rounds} rounds of {args.runs} runs", file=sys.stderr
    )
    by_round = ratios_by_round(models, args.batch, args.rounds, args.runs)
    step = channel_step()
    rows, results = [], []
    for k, m in models.items():
        if k == "original":
            continue
        kept = cost_of(m).flops / flops
        ratio = statistics.median(by_round[k])
        q1, _, q3 = statistics.quantiles(by_round[k], n=4)
        rows.append((k, f"{kept:.3f}", f"{ratio:.3f}", f"{q1:.3f}-{q3:.3f}", "faster" if ratio < 1 else "SLOWER"))
        results.append({"flags": k, "macs_kept": kept, "latency_ratio": ratio, "iqr": [q1, q3]})
    print(
        f"{args.model.name}, batch {args.batch}, channel step {step.step} ({step.source}); latency over the original's:"
    )
    print(grid(("prune flags", "MACs kept", "latency ratio (median)", "interquartile", ""), rows))
    if args.json:
        args.json.write_text(
            json.dumps({"batch": args.batch, "channel_step": step.to_json(), "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
