"""What pruning KV heads buys a decoder with a KV cache: cache size and decode-step latency.

python -m benchmarks.kv_heads [--layers 8] [--hidden 512] [--heads 16] [--kv-heads 8] [--ratio 0.5]
                             [--past 128 512] [--rounds 15] [--runs 5] [--fused] [--json OUT.json]

Builds :func:`models.kv_decoder.kv_decoder` (random weights; ``--fused``: com.microsoft
GroupQueryAttention), prunes its KV heads with ``allow_io_change=True, uniform_heads=True,
units=("heads",)`` (validated: exactness against the masked reference), then times one decode
step (batch 1, one new token) of both models after a past of each ``--past`` length, in
interleaved rounds (one burst of ``--runs`` runs of each model per round, so a shared machine's
load falls on both alike); the ratio is the median over rounds of the pruned step's time over
the original's. The cache ratio is the bytes of ``present.*`` after the step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnx

import graphprune
from graphprune.ir.runtime import options, ort
from graphprune.present.report import grid
from models.kv_decoder import kv_decoder


def _feeds(layers: int, kv: int, d: int, past: int, vocab: int, heads_kept=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, vocab, (1, 1)).astype(np.int64),
        "attention_mask": np.ones((1, past + 1), np.int64),
        "position_ids": np.full((1, 1), past, np.int64),
    }
    for i in range(layers):
        for kind in ("key", "value"):
            cache = rng.standard_normal((1, kv, past, d)).astype(np.float32)
            feeds[f"past_key_values.{i}.{kind}"] = cache if heads_kept is None else cache[:, heads_kept[i]]
    return feeds


def _session(model: onnx.ModelProto):
    so = options()
    so.intra_op_num_threads = 1
    return ort().InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--past", type=int, nargs="+", default=[128, 512])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--fused", action="store_true", help="attention as com.microsoft GroupQueryAttention")
    p.add_argument("--json", metavar="OUT.json")
    args = p.parse_args(argv)

    d = args.hidden // args.heads
    positions = max(args.past) + 2
    model = kv_decoder(
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        kv_heads=args.kv_heads,
        ffn=args.ffn,
        vocab=args.vocab,
        max_positions=positions,
        fused=args.fused,
    )
    feeds = _feeds(args.layers, args.kv_heads, d, min(args.past), args.vocab)
    t0 = time.perf_counter()
    result = graphprune.prune(
        model,
        ratio=args.ratio,
        units=("heads",),
        allow_io_change=True,
        uniform_heads=True,
        latency=False,
        feeds=feeds,
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
    )
    took = time.perf_counter() - t0
    r = result.report
    assert r.passed, r.table()
    kept = [
        np.setdiff1d(np.arange(args.kv_heads), c["removed"])
        for c in r.prune["io_changes"]
        if c["name"].startswith("past_key_values.") and c["name"].endswith(".key")
    ]
    rows, out = [], []
    for past in args.past:
        full = _feeds(args.layers, args.kv_heads, d, past, args.vocab)
        small = _feeds(args.layers, args.kv_heads, d, past, args.vocab, kept)
        sessions = [_session(model), _session(result.model)]
        outs = [s.run(None, f) for s, f in zip(sessions, (full, small))]
        names = [o.name for o in sessions[0].get_outputs()]
        cache = [sum(a.nbytes for n, a in zip(names, o) if n.startswith("present.")) for o in outs]
        times: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for k, (s, f) in enumerate(zip(sessions, (full, small))):
                t = time.perf_counter()
                for _ in range(args.runs):
                    s.run(None, f)
                times[k].append((time.perf_counter() - t) / args.runs * 1000)
        ratio = statistics.median(b / a for a, b in zip(times[0], times[1]))
        before, after = statistics.median(times[0]), statistics.median(times[1])
        rows.append(
            (
                past,
                f"{cache[0] / 2**20:.2f} MB",
                f"{cache[1] / 2**20:.2f} MB",
                f"{before:.2f}",
                f"{after:.2f}",
                f"{ratio:.3f}",
            )
        )
        out.append({"past": past, "cache_bytes": cache, "ms": [before, after], "ratio": ratio})
    print(
        f"kv_decoder layers {args.layers}, hidden {args.hidden}, heads {args.heads}/{args.kv_heads} kv"
        f"{' (GroupQueryAttention)' if args.fused else ''}: pruned to num_key_value_heads"
        f" {r.prune['num_key_value_heads']}, num_attention_heads {r.prune['num_attention_heads']} in {took:.1f}s;"
        f" params {r.params_after / r.params_before:.3f}, MACs {r.flops_after / r.flops_before:.3f},"
        f" exact max rel diff {r.exact.max_rel_diff:.1e}"
    )
    print(grid(("past", "cache before", "cache after", "ms before", "ms after", "step ratio"), rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "report": r.to_dict(), "steps": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
