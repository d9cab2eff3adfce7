"""Speed and memory of graphprune against the cost of simply loading and saving the model.

Run from the repository root::

    python -m benchmarks.speed [--models resnet50 densenet121] [--repeats 3] [--json OUT]

For each zoo model, materialized once into a temporary folder (nothing is kept), the same
run measures on the same file:

1. baseline: ``onnx.load(path)`` + ``onnx.save(model, out)`` in this process;
2. ``analysis+plan+surgery`` in memory: ``dependency.analyze(model)`` then
   ``FilterPruning(ratio=0.5, criterion="l2").run(model, deps)`` on an already loaded
   ModelProto (no validation, no saving), interleaved repeat by repeat with onnxsim's
   ``apply_structured_pruning(copy, sparsity=0.5)`` on a copy made outside the clock (it edits
   its argument in place) when onnxsim is installed (``pip install -e ".[bench]"``); the
   parameters each leaves are in the JSON;
3. ``graphprune prune --no-validate`` file to file, in a child process (raw wall time),
   next to the start-up of a child that only imports ``graphprune`` and ``onnx``;
4. ``graphprune prune`` with validation, with and without ``--no-latency`` (their ratio is the
   cost of the default latency timing; target <= 2x);
5. the peak RSS of the children of 3 and 4, of a child doing the baseline load+save, and
   of a child that only imports graphprune, onnx and onnxruntime (the interpreter floor).

Children run ``graphprune.cli.main(argv)`` exactly as the ``graphprune`` console script
does, through a small ``python -c`` wrapper that afterwards records the child's own peak
RSS. The peak is ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: on Linux a
child's ``ru_maxrss`` (from ``getrusage(RUSAGE_SELF)`` or ``os.wait4``) keeps the high-water
mark of the memory it was forked from across ``exec``, so it would report at least this
benchmark's own peak (which holds the models). Both are written to the JSON.

Every step is also measured in CPU time (user+sys: ``time.process_time`` in this process, the
children's own rusage), and the targets' ratios are shown in CPU time too: on a shared machine
under load, wall time is mostly waiting for a core.

The targets (from the issue) are shown next to the ratios and marked met / not met; nothing
fails. Timing lines are medians over ``--repeats`` (the minimum is in the JSON).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent

# Targets from the issue: time ratios to load+save, peak memory as a multiple of the file.
TARGET_SURGERY = 0.5
TARGET_NO_VALIDATE = 1.5
TARGET_MEMORY = 2.0
TARGET_VS_ONNXSIM = 1.0  # in-memory analysis+plan+surgery over onnxsim's apply_structured_pruning
TARGET_LATENCY_OVERHEAD = 2.0  # prune (default latency timing) over prune --no-latency

MB = 1 << 20
CHILD_STEPS = ("load_save_child", "prune_no_validate", "prune", "prune_no_latency")
FLOOR = "import graphprune.cli + api"  # the interpreter floor of the CLI children (what main() imports)

# The child wrapper: argv = [result.json, mode, *args]. "cli" runs graphprune.cli.main(args)
# like the console script; "loadsave" is the baseline; "import" only imports modules.
_CHILD = r"""
import json, sys
out, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
rc = 0
if mode == "cli":
    from graphprune.cli import main
    rc = main(args)
elif mode == "loadsave":
    import onnx
    onnx.save(onnx.load(args[0]), args[1])
elif mode == "import":
    import importlib
    for name in args:
        importlib.import_module(name)
else:
    raise SystemExit("unknown mode " + mode)
import resource
hwm = None
try:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
except OSError:
    pass
ru = resource.getrusage(resource.RUSAGE_SELF)
with open(out, "w") as f:
    json.dump({"rc": rc, "vmhwm_kb": hwm, "ru_maxrss_kb": ru.ru_maxrss,
               "cpu_s": ru.ru_utime + ru.ru_stime}, f)
sys.exit(rc)
"""


# --------------------------------------------------------------------------- measuring


def _summary(values: list[float]) -> dict:
    return {
        "runs": values,
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def _child(mode: str, args: list[str], workdir: Path, timeout: float) -> dict:
    """Run the wrapper in a child: wall time, exit code, its own peak RSS, stderr on failure."""
    result_path = workdir / "child-result.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _CHILD, str(result_path), mode, *args]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - t0
    info = {"wall_s": wall, "rc": proc.returncode, "vmhwm_kb": None, "ru_maxrss_kb": None}
    if result_path.exists():
        info.update(json.loads(result_path.read_text()))
    info["rc"] = proc.returncode
    if proc.returncode != 0:
        info["stderr"] = proc.stderr.decode(errors="replace").strip()[-2000:]
    return info


def _children(runs: list[dict]) -> dict:
    """Times (median/min) and peak RSS (max over runs) of repeated child runs."""
    ok = [r for r in runs if r["rc"] == 0]
    hwm = [r["vmhwm_kb"] * 1024 for r in ok if r.get("vmhwm_kb") is not None]
    maxrss = [r["ru_maxrss_kb"] * 1024 for r in ok if r.get("ru_maxrss_kb") is not None]
    return {
        "time_s": _summary([r["wall_s"] for r in ok]),
        # user+sys of the child (all its threads): what a loaded shared machine changes least
        "cpu_s": _summary([r["cpu_s"] for r in ok if r.get("cpu_s") is not None]),
        "peak_rss_bytes": max(hwm) if hwm else None,
        "peak_rss_bytes_runs": hwm,
        "ru_maxrss_bytes_runs": maxrss,
        "errors": [r.get("stderr", "") for r in runs if r["rc"] != 0],
        "exit_codes": [r["rc"] for r in runs],
    }


def measure_imports(workdir: Path, repeats: int, timeout: float) -> dict:
    """Start-up and memory floor of children that only import things."""
    variants = {
        "import onnx": ["onnx"],
        "import graphprune, onnx": ["graphprune", "onnx"],
        # graphprune imports its API lazily; the CLI's real start-up is the whole stack
        "import graphprune.cli + api": ["graphprune.cli", "graphprune.api"],
        "import graphprune, onnx, onnxruntime": ["graphprune", "onnx", "onnxruntime"],
    }
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(repeats):
        for label, mods in variants.items():
            runs[label].append(_child("import", mods, workdir, timeout))
    return {label: _children(r) for label, r in runs.items()}


def measure_model(
    name: str,
    exporter: str,
    seed: int,
    repeats: int,
    ratio: float,
    criterion: str,
    timeout: float,
    tmp_root: str | None,
) -> dict:
    from graphprune.analysis.dependency import analyze
    from graphprune.passes.filter import FilterPruning

    with tempfile.TemporaryDirectory(prefix=f"gp-speed-{name}-", dir=tmp_root) as tmp:
        tmp = Path(tmp)
        path = tmp / f"{name}.onnx"
        _materialize(name, exporter, seed, path)
        size = path.stat().st_size
        res: dict = {"model": name, "exporter": exporter, "seed": seed, "file_bytes": size}

        # 1. baseline: load + save, in this process.
        out = tmp / "resaved.onnx"
        times, cpu = [], []
        for _ in range(repeats):
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            m = onnx.load(str(path))
            onnx.save(m, str(out))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            del m
        res["load_save_s"] = _summary(times)
        res["load_save_cpu_s"] = _summary(cpu)
        out.unlink(missing_ok=True)

        # 2. analysis + plan + surgery on a loaded model, in memory.
        model = onnx.load(str(path))
        res["nodes"] = len(model.graph.node)
        res["initializers"] = len(model.graph.initializer)
        res["params_before"] = _params(model)
        simplifier = _onnxsim()
        total, t_analyze, t_run, t_sim, cpu, cpu_sim = [], [], [], [], [], []
        for _ in range(repeats):
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            deps = analyze(model)
            t1 = time.perf_counter()
            pruned, plan, details = FilterPruning(ratio=ratio, criterion=criterion).run(model, deps)
            t2 = time.perf_counter()
            cpu.append(time.process_time() - c0)
            total.append(t2 - t0)
            t_analyze.append(t1 - t0)
            t_run.append(t2 - t1)
            res["prune_details"] = {k: v for k, v in details.items() if isinstance(v, (int, float, str))}
            res["pruned_bytes_in_memory"] = pruned.ByteSize()
            res["params_after"] = _params(pruned)
            del deps, pruned, plan, details
            if simplifier is not None:  # same repeat, same machine load
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                gc.collect()
                t0, c0 = time.perf_counter(), time.process_time()
                sim_out = simplifier.apply_structured_pruning(copy, sparsity=ratio)
                t_sim.append(time.perf_counter() - t0)
                cpu_sim.append(time.process_time() - c0)
                res["onnxsim_params_after"] = _params(sim_out)
                del copy, sim_out
        res["surgery_s"] = _summary(total)
        res["surgery_cpu_s"] = _summary(cpu)
        res["surgery_analyze_s"] = _summary(t_analyze)
        res["surgery_plan_and_apply_s"] = _summary(t_run)
        if simplifier is not None:
            res["onnxsim_s"] = _summary(t_sim)
            res["onnxsim_cpu_s"] = _summary(cpu_sim)
            res["onnxsim_version"] = getattr(simplifier, "__version__", "?")
        del model
        gc.collect()

        # 3-5. children: baseline load+save, and the CLI three ways (time and peak RSS each run).
        pruned_path = tmp / "pruned.onnx"
        common = [
            "prune",
            str(path),
            "-o",
            str(pruned_path),
            "--ratio",
            str(ratio),
            "--criterion",
            criterion,
            "-q",
            "--force",
        ]
        variants = {
            "load_save_child": ("loadsave", [str(path), str(out)]),
            "prune_no_validate": ("cli", [*common, "--no-validate"]),
            "prune": ("cli", common),
            "prune_no_latency": ("cli", [*common, "--no-latency"]),
        }
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        for _ in range(repeats):
            for key, (mode, args) in variants.items():
                runs[key].append(_child(mode, args, tmp, timeout))
                if key.startswith("prune") and pruned_path.exists():
                    res["pruned_file_bytes"] = pruned_path.stat().st_size
                    pruned_path.unlink()
        for key, r in runs.items():
            res[key] = _children(r)
    return res


def _onnxsim():
    """onnxsim, if installed and it has ``apply_structured_pruning``; else None."""
    try:
        import onnxsim
    except ImportError:
        return None
    return onnxsim if hasattr(onnxsim, "apply_structured_pruning") else None


def _params(model: onnx.ModelProto) -> int:
    """Elements of the main graph's initializers (what a structured pruner shrinks)."""
    total = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        total += n
    return total


def _materialize(name: str, exporter: str, seed: int, path: Path) -> None:
    from models import zoo

    model = zoo.load(name, exporter=exporter, seed=seed)
    onnx.save(model, str(path))
    del model
    gc.collect()


# --------------------------------------------------------------------------- profiling


def profile_model(
    name: str,
    exporter: str,
    seed: int,
    ratio: float,
    criterion: str,
    top: int,
    tmp_root: str | None,
) -> str:
    """cProfile (cumulative time) of the in-memory step and of ``prune --no-validate``."""
    from graphprune.analysis.dependency import analyze
    from graphprune.passes.filter import FilterPruning

    parts = []
    with tempfile.TemporaryDirectory(prefix=f"gp-prof-{name}-", dir=tmp_root) as tmp:
        tmp = Path(tmp)
        path = tmp / f"{name}.onnx"
        _materialize(name, exporter, seed, path)
        model = onnx.load(str(path))
        prof = cProfile.Profile()
        prof.enable()
        deps = analyze(model)
        FilterPruning(ratio=ratio, criterion=criterion).run(model, deps)
        prof.disable()
        parts.append(f"== {name}: analysis+plan+surgery in memory (cProfile, by cumulative time)")
        parts.append(_stats_text(pstats.Stats(prof), top))

        stats_file = tmp / "cli.prof"
        cmd = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(stats_file),
            "-m",
            "graphprune.cli",
            "prune",
            str(path),
            "-o",
            str(tmp / "pruned.onnx"),
            "--ratio",
            str(ratio),
            "--criterion",
            criterion,
            "--no-validate",
            "-q",
            "--force",
        ]
        subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
        parts.append(f"== {name}: graphprune prune --no-validate in a child (cProfile, by cumulative time)")
        parts.append(_stats_text(pstats.Stats(str(stats_file)), top) if stats_file.exists() else "(no profile)")
    return "\n".join(parts)


def _stats_text(stats: pstats.Stats, top: int) -> str:
    buf = io.StringIO()
    stats.stream = buf
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    text = buf.getvalue()
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


# --------------------------------------------------------------------------- reporting


def _grid(header: tuple, rows: list[tuple]) -> str:
    try:
        from graphprune.present.report import grid

        return grid(header, rows)
    except Exception:  # the report module is not ours; fall back to a plain layout
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
            for r in [header, tuple("-" * w for w in widths), *rows]
        ]
        return "\n".join(lines)


def _met(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return "met" if value <= target else "NOT MET"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def derive(res: dict, imports: dict) -> dict:
    """Ratios and verdicts of one model's measurements (also written to the JSON)."""
    base = res["load_save_s"]["median"]
    # What a child pays before doing any work: graphprune.cli for the CLI, onnx for load+save.
    startup = {
        k: imports["import onnx" if k == "load_save_child" else "import graphprune.cli + api"]["time_s"]["median"]
        for k in CHILD_STEPS
    }
    floor = {k: imports["import onnx" if k == "load_save_child" else FLOOR]["peak_rss_bytes"] for k in CHILD_STEPS}
    size = res["file_bytes"]
    d: dict = {
        "baseline_s": base,
        "startup_s": startup,
        "floor_rss_bytes": floor,
        "time": {},
        "memory": {},
    }

    def ratio(t):
        return None if t is None or not base else t / base

    d["time"]["surgery"] = {"ratio": ratio(res["surgery_s"]["median"]), "target": TARGET_SURGERY}
    if "onnxsim_s" in res:
        sim = res["onnxsim_s"]["median"]
        d["vs_onnxsim"] = {
            "ratio": res["surgery_s"]["median"] / sim if sim else None,
            "ratio_of_min": res["surgery_s"]["min"] / res["onnxsim_s"]["min"] if res["onnxsim_s"]["min"] else None,
            "target": TARGET_VS_ONNXSIM,
        }
        d["vs_onnxsim"]["met"] = d["vs_onnxsim"]["ratio"] is not None and d["vs_onnxsim"]["ratio"] <= TARGET_VS_ONNXSIM
    d["cpu"] = _cpu_ratios(res, imports)
    with_latency, without = res["prune"]["time_s"]["median"], res["prune_no_latency"]["time_s"]["median"]
    over = None if with_latency is None or not without else with_latency / without
    d["latency_overhead"] = {
        "ratio": over,
        "target": TARGET_LATENCY_OVERHEAD,
        "met": over is not None and over <= TARGET_LATENCY_OVERHEAD,
    }
    for key in CHILD_STEPS:
        t = res[key]["time_s"]["median"]
        d["time"][key] = {
            "ratio": ratio(t),
            "ratio_without_startup": ratio(None if t is None or startup[key] is None else t - startup[key]),
            "target": TARGET_NO_VALIDATE if key == "prune_no_validate" else None,
        }
    for key in CHILD_STEPS:
        peak = res[key]["peak_rss_bytes"]
        net = None if peak is None or floor[key] is None else peak - floor[key]
        d["memory"][key] = {
            "peak_rss_bytes": peak,
            "peak_over_size": None if peak is None else peak / size,
            "net_rss_bytes": net,
            "net_over_size": None if net is None else net / size,
            "target": TARGET_MEMORY if key.startswith("prune") else None,
        }
    for v in d["time"].values():
        if v["target"] is not None:
            v["met"] = v["ratio"] is not None and v["ratio"] <= v["target"]
            if "ratio_without_startup" in v:
                r = v["ratio_without_startup"]
                v["met_without_startup"] = r is not None and r <= v["target"]
    for v in d["memory"].values():
        if v["target"] is not None:
            v["met"] = v["peak_over_size"] is not None and v["peak_over_size"] <= v["target"]
            v["met_without_floor"] = v["net_over_size"] is not None and v["net_over_size"] <= v["target"]
    return d


def _cpu_ratios(res: dict, imports: dict) -> dict:
    """The targets' ratios in CPU time (user+sys): on a shared machine under load, wall time is
    mostly waiting for a core, CPU time is the work done."""
    base = res["load_save_cpu_s"]["median"]
    floor = imports[FLOOR].get("cpu_s", {}).get("median")
    no_validate = res["prune_no_validate"].get("cpu_s", {}).get("median")
    with_latency = res["prune"].get("cpu_s", {}).get("median")
    without = res["prune_no_latency"].get("cpu_s", {}).get("median")
    out = {
        "load_save_s": base,
        "surgery_over_load_save": res["surgery_cpu_s"]["median"] / base if base else None,
        "prune_no_validate_over_load_save": (no_validate - floor) / base
        if base and no_validate is not None and floor is not None
        else None,
        "prune_over_prune_no_latency": with_latency / without if with_latency and without else None,
    }
    if "onnxsim_cpu_s" in res:
        out["surgery_over_onnxsim"] = res["surgery_cpu_s"]["median"] / res["onnxsim_cpu_s"]["median"]
    return out


def tables(results: list[dict], imports: dict) -> str:
    out = []
    st = imports
    out.append("Interpreter start-up and floor (children that only import; median time, peak RSS):")
    out.append(
        _grid(
            ("child", "time s", "peak RSS MB"),
            [
                (
                    label,
                    _s(v["time_s"]["median"]),
                    "-" if v["peak_rss_bytes"] is None else f"{v['peak_rss_bytes'] / MB:.1f}",
                )
                for label, v in st.items()
            ],
        )
    )
    out.append("")
    time_rows, mem_rows, info_rows = [], [], []
    labels = {
        "load_save_child": "load+save in a child (python -c)",
        "prune_no_validate": "graphprune prune --no-validate",
        "prune": "graphprune prune (validate+latency)",
        "prune_no_latency": "graphprune prune --no-latency",
    }
    for res in results:
        name = res["model"]
        if "error" in res:
            info_rows.append((name, "error: " + res["error"], "", "", "", ""))
            continue
        d = res["derived"]
        pd = res.get("prune_details", {})
        info_rows.append(
            (
                name,
                f"{res['file_bytes'] / MB:.1f}",
                res["nodes"],
                f"{res.get('pruned_file_bytes', 0) / MB:.1f}" if res.get("pruned_file_bytes") else "-",
                pd.get("groups_pruned", "-"),
                pd.get("channels_removed", "-"),
            )
        )
        base = res["load_save_s"]
        time_rows.append(
            (
                name,
                "load+save in process (baseline)",
                _s(base["median"]),
                _s(base["min"]),
                "1.00x",
                "-",
                "-",
                "-",
                "-",
            )
        )
        sv = d["time"]["surgery"]
        time_rows.append(
            (
                name,
                "analysis+plan+surgery in memory",
                _s(res["surgery_s"]["median"]),
                _s(res["surgery_s"]["min"]),
                _x(sv["ratio"]),
                "-",
                f"<= {TARGET_SURGERY}x",
                _met(sv["ratio"], TARGET_SURGERY),
                "-",
            )
        )
        time_rows.append(
            (
                name,
                "  of which analyze",
                _s(res["surgery_analyze_s"]["median"]),
                _s(res["surgery_analyze_s"]["min"]),
                _x(res["surgery_analyze_s"]["median"] / base["median"]),
                "-",
                "",
                "",
                "",
            )
        )
        time_rows.append(
            (
                name,
                "  of which FilterPruning.run",
                _s(res["surgery_plan_and_apply_s"]["median"]),
                _s(res["surgery_plan_and_apply_s"]["min"]),
                _x(res["surgery_plan_and_apply_s"]["median"] / base["median"]),
                "-",
                "",
                "",
                "",
            )
        )
        if "onnxsim_s" in res:
            vs = d["vs_onnxsim"]
            kept = res.get("onnxsim_params_after", 0) / max(res.get("params_before", 1), 1)
            time_rows.append(
                (
                    name,
                    f"onnxsim {res['onnxsim_version']} apply_structured_pruning (params kept {kept:.2f})",
                    _s(res["onnxsim_s"]["median"]),
                    _s(res["onnxsim_s"]["min"]),
                    _x(res["onnxsim_s"]["median"] / base["median"]),
                    "-",
                    "",
                    "",
                    "",
                )
            )
            ours_kept = res.get("params_after", 0) / max(res.get("params_before", 1), 1)
            time_rows.append(
                (
                    name,
                    f"  graphprune in memory / onnxsim (params kept {ours_kept:.2f})",
                    "-",
                    "-",
                    _x(vs["ratio"]),
                    "-",
                    f"<= {TARGET_VS_ONNXSIM}x onnxsim",
                    _met(vs["ratio"], TARGET_VS_ONNXSIM),
                    "-",
                )
            )
        for key, label in labels.items():
            t = res[key]["time_s"]
            v = d["time"][key]
            tgt = v["target"]
            if res[key]["errors"]:
                label += f" [exit {res[key]['exit_codes']}]"
            time_rows.append(
                (
                    name,
                    label,
                    _s(t["median"]),
                    _s(t["min"]),
                    _x(v["ratio"]),
                    _x(v["ratio_without_startup"]),
                    f"<= {tgt}x" if tgt else "",
                    _met(v["ratio"], tgt) if tgt else "",
                    _met(v["ratio_without_startup"], tgt) if tgt else "",
                )
            )
        for key, label in labels.items():
            m = d["memory"][key]
            tgt = m["target"]
            peak, net = m["peak_rss_bytes"], m["net_rss_bytes"]
            mem_rows.append(
                (
                    name,
                    label,
                    "-" if peak is None else f"{peak / MB:.1f}",
                    _x(m["peak_over_size"]),
                    "-" if net is None else f"{net / MB:.1f}",
                    _x(m["net_over_size"]),
                    f"<= {tgt}x size" if tgt else "",
                    _met(m["peak_over_size"], tgt) if tgt else "",
                    _met(m["net_over_size"], tgt) if tgt else "",
                )
            )
    over_rows = [
        (
            r["model"],
            _x(r["derived"]["latency_overhead"]["ratio"]),
            f"<= {TARGET_LATENCY_OVERHEAD}x",
            _met(r["derived"]["latency_overhead"]["ratio"], TARGET_LATENCY_OVERHEAD),
        )
        for r in results
        if "derived" in r
    ]
    out.append("Models:")
    out.append(
        _grid(
            ("model", "file MB", "nodes", "pruned file MB", "groups pruned", "channels removed"),
            info_rows,
        )
    )
    out.append("")
    out.append(
        "Time (median and min of repeats; ratio = median / median of in-process load+save;"
        " 'w/o start-up' subtracts the start-up of a child doing only `import graphprune.cli, graphprune.api`"
        " (`import onnx` for the load+save child):"
    )
    out.append(
        _grid(
            (
                "model",
                "step",
                "median s",
                "min s",
                "x load+save",
                "w/o start-up",
                "target",
                "raw",
                "w/o start-up",
            ),
            time_rows,
        )
    )
    out.append("")
    cpu_rows = []
    for r in results:
        if "derived" not in r:
            continue
        c = r["derived"]["cpu"]
        cpu_rows.append(
            (
                r["model"],
                _s(c["load_save_s"]),
                f"{_x(c['surgery_over_load_save'])} ({_met(c['surgery_over_load_save'], TARGET_SURGERY)})",
                f"{_x(c.get('surgery_over_onnxsim'))} ({_met(c.get('surgery_over_onnxsim'), TARGET_VS_ONNXSIM)})",
                f"{_x(c['prune_no_validate_over_load_save'])}"
                f" ({_met(c['prune_no_validate_over_load_save'], TARGET_NO_VALIDATE)})",
                f"{_x(c['prune_over_prune_no_latency'])}"
                f" ({_met(c['prune_over_prune_no_latency'], TARGET_LATENCY_OVERHEAD)})",
            )
        )
    out.append("CPU time (user+sys, medians; the children's minus the start-up child's for --no-validate):")
    out.append(
        _grid(
            (
                "model",
                "load+save s",
                f"in memory / load+save (<= {TARGET_SURGERY}x)",
                f"in memory / onnxsim (<= {TARGET_VS_ONNXSIM}x)",
                f"--no-validate / load+save (<= {TARGET_NO_VALIDATE}x)",
                f"prune / --no-latency (<= {TARGET_LATENCY_OVERHEAD}x)",
            ),
            cpu_rows,
        )
    )
    out.append("")
    out.append("Default latency timing: `graphprune prune` over `graphprune prune --no-latency` (median times):")
    out.append(_grid(("model", "ratio", "target", ""), over_rows))
    out.append("")
    out.append(
        "Peak memory (VmHWM of the child, max over repeats; net = minus the peak of a child"
        f" doing only `{FLOOR}` (`import onnx` for the load+save child);"
        " ratios to the model file size):"
    )
    out.append(
        _grid(
            (
                "model",
                "child",
                "peak MB",
                "peak/size",
                "net MB",
                "net/size",
                "target",
                "raw",
                "net",
            ),
            mem_rows,
        )
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "densenet121"], metavar="NAME")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--exporter", default="torchscript")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--criterion", default="l2")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    p.add_argument("--tmpdir", default=None, help="where the temporary model files go (default: system temp)")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print the top N cProfile entries (cumulative) of steps 2 and 3 per model",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "onnx": onnx.__version__,
        "repeats": args.repeats,
        "ratio": args.ratio,
        "criterion": args.criterion,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        meta["git"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or None
        )
    except OSError:
        meta["git"] = None

    with tempfile.TemporaryDirectory(prefix="gp-speed-imports-", dir=args.tmpdir) as tmp:
        print("measuring interpreter start-up and floor ...", file=sys.stderr, flush=True)
        imports = measure_imports(Path(tmp), args.repeats, args.timeout)

    results = []
    for name in args.models:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        try:
            res = measure_model(
                name,
                args.exporter,
                args.seed,
                args.repeats,
                args.ratio,
                args.criterion,
                args.timeout,
                args.tmpdir,
            )
            res["derived"] = derive(res, imports)
        except Exception as exc:  # a benchmark reports; one broken model should not hide the others
            res = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
        results.append(res)

    print(tables(results, imports))
    targets = (
        f"targets (from the issue): analysis+plan+surgery <= {TARGET_SURGERY}x load+save;"
        f" and <= {TARGET_VS_ONNXSIM}x onnxsim's apply_structured_pruning;"
        f" prune --no-validate <= {TARGET_NO_VALIDATE}x load+save; prune <= {TARGET_LATENCY_OVERHEAD}x"
        f" prune --no-latency; peak memory <= {TARGET_MEMORY}x model size"
    )
    if _onnxsim() is None:
        targets += "\n(onnxsim not installed: pip install -e '.[bench]' for its row)"
    print(targets)
    print(
        f"({meta['cpus']} CPUs, python {meta['python']}, onnx {meta['onnx']},"
        f" onnxruntime {meta.get('onnxruntime', '?')}, git {meta.get('git')},"
        f" repeats {args.repeats})"
    )

    if args.profile:
        for name in args.models:
            print()
            print(
                profile_model(
                    name,
                    args.exporter,
                    args.seed,
                    args.ratio,
                    args.criterion,
                    args.profile,
                    args.tmpdir,
                )
            )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": meta,
            "targets": {
                "surgery_over_load_save": TARGET_SURGERY,
                "prune_no_validate_over_load_save": TARGET_NO_VALIDATE,
                "peak_rss_over_file_size": TARGET_MEMORY,
                "surgery_over_onnxsim": TARGET_VS_ONNXSIM,
                "prune_over_prune_no_latency": TARGET_LATENCY_OVERHEAD,
            },
            "imports": imports,
            "models": results,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
