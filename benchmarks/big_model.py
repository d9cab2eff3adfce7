"""Out-of-core pruning of a model that barely fits: time and peak memory against load+save.

Run from the repository root::

    python -m benchmarks.big_model [--layers 24 --hidden 4096 --ffn 11008] [--dir DIR] [--validate] [--json OUT]

The model is an LLM's MLP stack in float16 with external data (``models.llm_mlp``; the
default is 24 layers of 4096 x 11008, 4.33 GB of weights), written into a temporary folder
(under ``--dir`` if given) that is removed afterwards. On that one file the same run measures,
each in a child process:

1. baseline: ``onnx.load(path)`` + ``onnx.save(model, out, save_as_external_data=True)``;
2. ``graphprune prune MODEL -o OUT --ratio 0.5 --no-validate``;
3. with ``--validate``, also ``graphprune prune MODEL -o OUT --ratio 0.5 --no-latency``
   (checker, onnxruntime, exactness and fidelity: onnxruntime holds the weights itself).

For each: wall time (measured here, interpreter start included) and the child's peak RSS,
``VmHWM`` from its own ``/proc/self/status`` (a child's ``ru_maxrss`` would carry the
high-water mark of the process it was forked from across ``exec``). Ratios: peak RSS / weight
bytes and time / load+save, with the issue's targets (RSS <= 25% of the weights, time <= 1.0x
load+save) marked met or not. The source file is read once before the timed runs so that every
run finds it in the page cache alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RSS = 0.25  # of the weight bytes
TARGET_TIME = 1.0  # of load+save
MB = 1 << 20

# argv = [mode, *args]: "cli" runs graphprune.cli.main(args) like the console script,
# "loadsave" is the baseline. Prints the child's peak RSS (kB) as the last line of stderr.
_CHILD = r"""
import sys
mode, args = sys.argv[1], sys.argv[2:]
rc = 0
if mode == "cli":
    from graphprune.cli import main
    rc = main(args)
elif mode == "loadsave":
    import os, onnx
    model = onnx.load(args[0])
    onnx.save(model, args[1], save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(args[1]) + ".data")
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(f"peak_rss_kb {hwm}", file=sys.stderr)
sys.exit(rc)
"""


def run_child(mode: str, *args: str) -> dict:
    """Wall time and peak RSS of one child process (an error if it fails)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    peak = int(proc.stderr.strip().splitlines()[-1].split()[1]) * 1024
    return {"seconds": wall, "peak_rss_bytes": peak}


def read_through(path: Path) -> None:
    """Read a file once (into the page cache), so that no timed run pays the first read alone."""
    with open(path, "rb") as f:
        while f.read(64 * MB):
            pass


def main(argv: list[str] | None = None) -> int:
    from models.llm_mlp import weight_bytes, write_mlp_stack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--dir", help="folder for the temporary model (default: the system's temp folder)")
    ap.add_argument("--validate", action="store_true", help="also time graphprune prune with validation")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    weights = weight_bytes(args.layers, args.hidden, args.ffn)
    tmp = Path(tempfile.mkdtemp(prefix="graphprune-big-", dir=args.dir))
    try:
        free = shutil.disk_usage(tmp).free
        if free < 3 * weights:
            raise SystemExit(f"{tmp}: {free / MB:.0f} MB free, the run needs about {3 * weights / MB:.0f} MB")
        t0 = time.perf_counter()
        src = write_mlp_stack(tmp / "src", layers=args.layers, hidden=args.hidden, ffn=args.ffn)
        print(
            f"model: {args.layers} layers x {args.hidden} x {args.ffn} float16, {weights / MB:.0f} MB of weights"
            f" (written in {time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        read_through(src.parent / (src.name + ".data"))
        (tmp / "ls").mkdir()
        results = {"load+save": run_child("loadsave", str(src), str(tmp / "ls" / "copy.onnx"))}
        shutil.rmtree(tmp / "ls", ignore_errors=True)
        common = [str(src), "--ratio", "0.5", "--force", "-q"]
        results["prune --no-validate"] = run_child(
            "cli", "prune", *common, "-o", str(tmp / "p" / "p.onnx"), "--no-validate"
        )
        pruned_bytes = sum(f.stat().st_size for f in (tmp / "p").iterdir())
        shutil.rmtree(tmp / "p", ignore_errors=True)
        if args.validate:
            results["prune (validated)"] = run_child(
                "cli", "prune", *common, "-o", str(tmp / "v" / "v.onnx"), "--no-latency"
            )
            shutil.rmtree(tmp / "v", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = results["load+save"]["seconds"]
    print(f"{'step':<22} {'time':>8} {'/ load+save':>12} {'peak RSS':>10} {'/ weights':>10}")
    for name, r in results.items():
        r["time_ratio"] = r["seconds"] / base
        r["rss_ratio"] = r["peak_rss_bytes"] / weights
        print(
            f"{name:<22} {r['seconds']:>7.1f}s {r['time_ratio']:>11.2f}x {r['peak_rss_bytes'] / MB:>8.0f}MB"
            f" {r['rss_ratio']:>9.1%}"
        )
    main_run = results["prune --no-validate"]
    rss_ok, time_ok = main_run["rss_ratio"] <= TARGET_RSS, main_run["time_ratio"] <= TARGET_TIME
    print(
        f"targets for prune --no-validate: peak RSS <= {TARGET_RSS:.0%} of weights: {'met' if rss_ok else 'NOT met'};"
        f" time <= {TARGET_TIME:.1f}x load+save: {'met' if time_ok else 'NOT met'}"
    )
    print(f"pruned output: {pruned_bytes / MB:.0f} MB ({pruned_bytes / weights:.1%} of the weights)")
    if args.json:
        summary = {
            "layers": args.layers,
            "hidden": args.hidden,
            "ffn": args.ffn,
            "weight_bytes": weights,
            "pruned_bytes": pruned_bytes,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
