"""The command line: the only place that knows about argv, files to write and exit codes.

Exit codes: 0 success, 1 validation failed, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .cli_shared import check_latency_runs, input_shapes, quiet_progress, say
from .errors import GraphpruneError, InputError, ValidationFailed

# The rest of graphprune (numpy, onnx, networkx) is imported inside main(), so that an
# interrupt while it loads is still answered with one line and exit 130.

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage dump becomes our one-line error
        command = self.prog.removeprefix("graphprune").strip()  # "graphprune: error:" is said once, by main
        if not command and message.endswith("required: command") and self._subparsers is not None:
            # bare `graphprune`: argparse names only the missing "command"; say which there are
            names = sorted(_subcommands(self))
            message = (
                f"no command given: one of {', '.join(names)}"
                " (graphprune --help says what each does; graphprune COMMAND --help lists its flags)"
            )
        raise InputError(f"{command}: {message}" if command else message)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers by name (argparse has no public walk)."""
    return parser._subparsers._group_actions[0].choices  # noqa: SLF001


def _input_map_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-map",
        action="append",
        default=[],
        metavar="KEY=INPUT",
        help="feed the model's input INPUT from the data's array KEY (repeatable; default: keys equal input names)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .options import add_flags
    from .passes import PASSES

    p = _Parser(prog="graphprune", description="Structured pruning of ONNX models, with proof.")
    p.add_argument("--version", action="version", version=f"graphprune {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    # global flags are accepted after the subcommand too (SUPPRESS: absent there keeps the top level's)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    i = sub.add_parser("inspect", parents=[common], help="show the channel groups: size, members, prunable or why not")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument(
        "--html",
        metavar="OUT.html",
        help="also write a page that draws the groups on the op graph (a directory: DIR/<model>.html)",
    )
    i.add_argument("--force", action="store_true", help="overwrite an existing --html page")
    i.add_argument("-q", "--quiet", action="store_true", help="print only the table (or the JSON)")
    i.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2,...",
        help="sizes of an input with symbolic dims (repeatable), for costs per sample and validation inputs",
    )

    pr = sub.add_parser("prune", parents=[common], help="prune a model and validate the result")
    pr.add_argument("model", nargs="+", help="the model; several: files pruned together, written into -o (a folder)")
    pr.add_argument(
        "-o", "--output", required=True, help="where to write the pruned model (several models: the folder for them)"
    )
    pr.add_argument(
        "--tie",
        action="store_true",
        help="several models: one plan across the weights they share (same name, or same values when renamed);"
        " without it each file is pruned on its own",
    )
    pr.add_argument(
        "--pass",
        dest="passes",
        nargs="+",
        default=["filter"],
        choices=list(PASSES),
        help="passes to run, in order (default: filter). filter: remove output filters ranked by --criterion;"
        " channel: choose consumers' input channels by reconstruction error on --calib data and refit their"
        " weights (implies --compensate lstsq); layer: remove whole residual blocks y = x + f(x); sparsity: write"
        " zeros into weights by --pattern and --sparsity (alone)",
    )
    pr.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2,...",
        help="sizes of an input with symbolic dims (repeatable), for costs per sample and validation inputs",
    )
    add_flags(pr, PASSES)  # every pass option, declared once on its pass (graphprune.options)
    pr.add_argument("--save-plan", help="write the plan that was applied (JSON)")
    pr.add_argument("--report", help="write the report (JSON)")
    pr.add_argument("--no-validate", action="store_true", help="skip validation (faster)")
    pr.add_argument("--no-latency", action="store_true", help="validate but do not time onnxruntime")
    pr.add_argument(
        "--latency-runs",
        type=int,
        metavar="N",
        help="timed runs per model for the report's latency (default: 20, fewer once they took 2 s, at least 3)",
    )
    _input_map_flag(pr)
    pr.add_argument("--force", action="store_true", help="overwrite an existing output")
    pr.add_argument("--keep-failed", action="store_true", help="write the output even if validation fails")
    pr.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    se = sub.add_parser(
        "sensitivity", parents=[common], help="measure what pruning each group alone costs, on calibration data"
    )
    se.add_argument("model")
    se.add_argument("--calib", required=True, metavar="DATA", help=".npz (keys: input names) or a folder of them")
    se.add_argument("-o", "--output", required=True, metavar="OUT.json", help="where to write the result (JSON)")
    se.add_argument("--plot", metavar="OUT.png", help="also draw it (PNG; needs matplotlib)")
    se.add_argument(
        "--labels",
        nargs="?",
        const="labels",
        metavar="KEY",
        help="measure top-1 accuracy against this key of the data (default key: labels) instead of cosine",
    )
    se.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="fractions to remove")
    se.add_argument("--criterion", default="l2", help="which indices each ratio removes (default l2)")
    se.add_argument("--samples", type=int, default=128, help="calibration samples to run (default 128)")
    se.add_argument("--batch-size", type=int, default=32, metavar="N", help="samples per run (default 32)")
    se.add_argument("--unit", nargs="+", default=[], choices=["heads", "mlp", "channels", "hidden"])
    se.add_argument("--no-blocks", action="store_true", help="skip the residual blocks (layer pass)")
    se.add_argument("--force", action="store_true", help="overwrite existing outputs")
    se.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    se.add_argument("--executor", default="local", help="local (this process, default) or ray (groups shared out)")
    se.add_argument("--workers", type=int, metavar="W", help="--executor ray: shards (default: the machine's cores)")
    se.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (auto: a running one)")
    _input_map_flag(se)

    sr = sub.add_parser(
        "search", parents=[common], help="search pruning configurations for the best metric per MAC (resumable)"
    )
    sr.add_argument("model")
    sr.add_argument("--calib", required=True, metavar="CALIB", help="calibration data (.npz or a folder of them)")
    sr.add_argument("--data", required=True, metavar="TEST", help="evaluation data each trial is measured on")
    sr.add_argument(
        "--labels",
        nargs="?",
        const="labels",
        metavar="KEY",
        help="measure top-1 accuracy against this key of TEST (default key: labels) instead of fidelity",
    )
    sr.add_argument("--space", metavar="SPACE.json", help="option lists replacing the default space's")
    sr.add_argument("--trials", type=int, required=True, metavar="N", help="trials in the search")
    sr.add_argument("--workers", type=int, metavar="W", help="trials at a time (default: the machine's cores)")
    sr.add_argument("--executor", default="local", help="local (a process pool, default) or ray")
    sr.add_argument(
        "--ray-address", metavar="ADDR", help="Ray cluster to join (auto: a running one; default: start a local Ray)"
    )
    sr.add_argument(
        "--store", required=True, metavar="RUNS.db", help="SQLite store of the trials (resumed if it exists)"
    )
    sr.add_argument(
        "--out", required=True, metavar="DIR", help="where the front's models, front.json, plot and page go"
    )
    sr.add_argument(
        "--objective", choices=["accuracy", "fidelity"], help="the metric (default: accuracy with --labels)"
    )
    limit = sr.add_mutually_exclusive_group()
    limit.add_argument("--max-latency", type=float, metavar="L", help="front only: latency ratio at most L")
    limit.add_argument("--max-flops", type=float, metavar="F", help="front only: MACs ratio at most F")
    sr.add_argument("--seed", type=int, default=0, help="seed of the design and refinement (default 0)")
    sr.add_argument("--json", action="store_true", help="print the trials and front as JSON")
    sr.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _input_map_flag(sr)

    v = sub.add_parser("validate", parents=[common], help="validate a pruned model against its original")
    v.add_argument("original")
    v.add_argument("pruned")
    v.add_argument("--plan", help="the plan used (default: the one graphprune stored in the pruned model)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--no-latency", action="store_true", help="do not time onnxruntime")
    v.add_argument(
        "--latency-runs", type=int, metavar="N", help="timed runs per model (default: 20, fewer once they took 2 s)"
    )
    v.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but errors (the exit code says the verdict)"
    )
    _input_map_flag(v)
    v.add_argument(
        "--data",
        metavar="DATA",
        help="measure fidelity on this .npz file (or folder of them, keyed by input names), not random inputs",
    )
    v.add_argument(
        "--labels",
        nargs="?",
        const="labels",
        metavar="KEY",
        help="also report both models' top-1 accuracy, with the class labels of --data under KEY (default 'labels')",
    )
    v.add_argument("--batch-size", type=int, default=32, metavar="N", help="samples per run on --data (default 32)")
    v.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2,...",
        help="sizes of an input with symbolic dims (repeatable), for costs per sample and validation inputs",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return _main(argv, debug)
    except KeyboardInterrupt:
        # arrived between the end of _main (which handles its own) and here: the work is over,
        # so say what it wrote rather than die by SIGINT without a word
        return _interrupted(0)
    finally:
        if as_command:
            # The work is done (or abandoned cleanly): a Ctrl-C while the interpreter shuts
            # down must not turn a finished run into a death by SIGINT.
            with contextlib.suppress(KeyboardInterrupt):
                signal.signal(signal.SIGINT, signal.SIG_IGN)


def _models_first(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with the ONNX files that a flag taking several values would swallow moved before
    that flag: argparse reads ``prune --ignore conv1 model.onnx`` as two names to ignore and no
    model. Only ``.onnx`` paths move (a missing one then gets its own error); names, numbers and
    keys stay where they are."""
    greedy = {
        option
        for sub in _subcommands(parser).values()
        for action in sub._actions  # noqa: SLF001 (argparse has no public walk)
        if action.nargs in ("+", "*", "?") and action.option_strings
        for option in action.option_strings
    }
    out, k = list(argv), 0
    while k < len(out):
        if out[k] in greedy:
            j = k + 1
            while j < len(out) and not out[j].startswith("-"):
                if out[j].endswith(".onnx"):
                    out.insert(k, out.pop(j))  # before the flag
                    k += 1
                j += 1
        k += 1
    return out


def _main(argv: list[str], debug: bool) -> int:
    args = None
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(_models_first(parser, argv))
        except SystemExit as exc:  # --help, --version: printed, and done
            return EXIT_OK if exc.code in (0, None) else EXIT_INPUT
        commands = {"inspect": _inspect, "prune": _prune, "validate": _validate, "sensitivity": _sensitivity}
        commands["search"] = _search
        return commands[args.command](args)
    except InputError as exc:
        print(f"graphprune: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ValidationFailed as exc:
        print(f"graphprune: validation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except GraphpruneError as exc:
        print(f"graphprune: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return _interrupted(getattr(args, "committed_before", None))
    except Exception as exc:  # a bug: say so in one line, with the traceback only on request
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"graphprune: internal error ({type(exc).__name__}: {first}); this is a bug, please report it"
            " with the command and model (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INPUT


def _interrupted(since: int | None) -> int:
    """Say what an interrupted run wrote: this process's outputs committed after the first
    ``since`` (None: nothing, the run had not started writing)."""
    io = sys.modules.get("graphprune.ir.files")
    written = io.committed()[since:] if io is not None and since is not None else []
    if written:  # the interrupt came after the output was renamed into place
        names = ", ".join(str(p) for p in written)
        print(f"graphprune: interrupted; already written completely: {names}", file=sys.stderr)
    else:
        print("graphprune: interrupted; nothing was written", file=sys.stderr)
    return 130


def _inspect(args) -> int:
    from . import api
    from .ir import files as io
    from .present.inspection import describe, table

    quiet_progress(args)
    html = _html_path(args) if args.html else None  # refused before the analysis, not after it
    deps = api.analyze(args.model, input_shapes=input_shapes(args))
    if html is not None:
        from .present.html_page import render

        io.write_text_atomic(html, render(deps, title=Path(args.model).name))
        say(args, f"wrote {html}")  # stderr: stdout stays the table (or the JSON)
    if args.json:
        print(json.dumps({"model": str(args.model), **describe(deps)}, indent=1))
    else:
        print(table(deps))
    return EXIT_OK


def _html_path(args) -> Path:
    """Where ``inspect --html`` writes: the path given, or ``DIR/<model>.html`` for a directory;
    an existing page is replaced only with ``--force``."""
    path = Path(args.html)
    if path.is_dir():
        path = path / f"{Path(args.model).stem}.html"
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    if path.exists() and not args.force:
        raise InputError(f"{path}: exists; use --force to overwrite")
    return path


def _dataset(args, path):
    """The dataset at ``path`` with ``--input-map`` applied, opened (so a missing or unreadable
    file is reported before any analysis); None without ``path``."""
    if path is None:
        return None
    from .calibration.datasets import open_dataset

    return open_dataset(path, _input_map(args))


def _input_map(args) -> dict[str, str]:
    """``--input-map KEY=INPUT`` flags as {key: input}; a key or an input given twice is an error."""
    mapping: dict[str, str] = {}
    for text in getattr(args, "input_map", []):
        key, sep, name = text.partition("=")
        if not sep or not key or not name:
            raise InputError(f"--input-map {text}: expected KEY=INPUT (a data key, then the model's input name)")
        if key in mapping or name in mapping.values():
            raise InputError(f"--input-map {text}: {'key' if key in mapping else 'input'} mapped twice")
        mapping[key] = name
    return mapping


def _prune(args) -> int:
    from .ir.weights import spill_folder

    if len(args.model) > 1 or args.tie:
        from .cli_many import prune_files

        with spill_folder(Path(args.output).resolve()):
            prune_files(args)
        return EXIT_OK
    (args.model,) = args.model
    # a validated lazy model's pruned weights are written once, beside the output, and renamed into it
    with spill_folder(Path(args.output).resolve().parent):
        return _prune_to(args)


def _prune_to(args) -> int:
    from . import api
    from .ir import files as io

    args.committed_before = len(io.committed())  # what an interrupt finds written is this run's
    src, out = Path(args.model), Path(args.output)
    if out.is_dir():
        raise InputError(f"{out}: is a directory; -o names the pruned model's file")
    if out.exists() and src.exists() and os.path.samefile(src, out):
        raise InputError(f"{out}: output is the input file; choose another -o")
    if out.exists() and not args.force:
        raise InputError(f"{out}: output exists; use --force to overwrite")
    targets = _targets(args)
    if args.ratio is not None and targets:
        raise InputError(f"prune: --ratio and --{targets[0].replace('_', '-')} cannot be combined")
    if args.plan and targets:
        raise InputError(f"prune: --plan and --{targets[0].replace('_', '-')} cannot be combined")
    if args.plan and args.ratio is not None:
        raise InputError("prune: --plan and --ratio cannot be combined: the plan says what is removed")
    if args.objective and not targets:
        raise InputError("prune: --objective needs --target-flops, --target-params or --target-latency")
    if args.sensitivity and not targets:
        raise InputError("prune: --sensitivity needs --target-flops, --target-params or --target-latency")
    check_latency_runs(args)
    quiet_progress(args)
    if args.calib is not None:  # a missing or unreadable file is said before the (long) analysis
        dataset = _dataset(args, args.calib)
        args.calib = dataset if args.input_map else args.calib
    elif args.input_map:
        raise InputError("--input-map needs --calib: it maps the data's keys to the model's inputs")
    if "sparsity" in args.passes:
        return _prune_sparsity(args, src, out)
    if len(args.passes) > 1 or "layer" in args.passes or args.remove_blocks is not None:
        if targets and ("filter" not in args.passes or args.target_latency is not None):
            raise InputError(
                f"prune: --{targets[0].replace('_', '-')} needs a filter pass (alone, or after layer:"
                " --pass layer filter)"
            )
        return _prune_passes(args, src, out)
    (pass_name,) = args.passes
    # Check the flags before the (possibly long) load.
    _refuse_untaken_flags(args)
    api.make_pass(pass_name, **{**_pass_options(args, pass_name), "plan": {} if args.plan else None})
    t0 = time.perf_counter()
    say(args, f"loading {src} ...")
    model = api.load_model(src)
    steps = "analyzing, pruning" + (
        ""
        if args.no_validate
        else ", validating (checker, onnxruntime, exactness, fidelity" + ("" if args.no_latency else ", latency") + ")"
    )
    say(args, f"{steps} ({len(model.graph.node)} nodes) ...")
    result = api.prune(
        model,
        **_pass_options(args, pass_name),
        pass_=pass_name,
        validate=not args.no_validate,
        latency=not args.no_latency,
        inplace=args.no_validate,  # nothing needs the original afterwards: save a copy
        input_shapes=input_shapes(args),
        latency_runs=args.latency_runs,
    )
    if result.nothing_pruned:  # a copy of the input would pretend: say why, write nothing
        why = result.nothing_pruned
        print(f"graphprune: nothing to prune in {src}: {why}; nothing written", file=sys.stderr)
        return EXIT_OK
    return _write_outputs(
        args,
        src,
        out,
        result.model,
        result.report,
        t0,
        lambda path: result.plan.save(path, result.deps, model=str(src)),
    )


def _write_outputs(args, src: Path, out: Path, model, report, t0: float, save_plan) -> int:
    """The end of every prune: the model (unless validation failed), plan, report and table."""
    from .ir import files as io

    report.file_bytes_before = src.stat().st_size
    failed = report.validated and not report.passed
    if not failed or args.keep_failed:
        written = io.save(model, out, external_data=True if io.had_external_data(src) else None)
        report.file_bytes_after = written.stat().st_size
    if args.save_plan:
        save_plan(args.save_plan)
    if args.report:
        io.write_text_atomic(args.report, json.dumps(report.to_dict(), indent=1) + "\n")
    if not args.quiet:
        print(report.table())
        print(
            f"{'wrote ' + str(out) if not failed or args.keep_failed else 'nothing written'}"
            f" in {time.perf_counter() - t0:.1f}s"
        )
    if failed:
        raise ValidationFailed(report.why_failed() + ("" if args.keep_failed else "; output not written"))
    return EXIT_OK


def _prune_passes(args, src: Path, out: Path) -> int:
    """``prune --pass ...``: several passes in order, or the layer pass."""
    from . import api
    from .ir import files as io

    if "layer" in args.passes and args.remove_blocks is None:
        raise InputError("--pass layer needs --remove-blocks N")
    if "layer" not in args.passes:
        raise InputError("--remove-blocks needs --pass layer")
    if args.plan and "layer" in args.passes:
        raise InputError("--plan applies to the filter pass alone; it cannot be combined with --pass layer")
    # flags are checked before the (possibly long) load
    _refuse_untaken_flags(args)
    passes = [api.make_pass(name, **{**_pass_options(args, name), "plan": None}) for name in args.passes]
    t0 = time.perf_counter()
    say(args, f"loading {src} ...")
    model = api.load_model(src)
    say(args, f"running {' then '.join(args.passes)} ({len(model.graph.node)} nodes) ...")
    result = api.run_passes(
        model,
        passes,
        validate=not args.no_validate,
        latency=not args.no_latency,
        input_shapes=input_shapes(args),
        latency_runs=args.latency_runs,
    )
    if result.nothing_pruned:
        why = result.nothing_pruned
        print(f"graphprune: nothing to prune in {src}: {why}; nothing written", file=sys.stderr)
        return EXIT_OK
    plan = result.plans[0]["plan"] if len(result.plans) == 1 else {"steps": result.plans}

    def save_plan(path: str) -> None:
        io.write_text_atomic(path, json.dumps({**plan, "model": str(src)}, indent=1) + "\n")

    return _write_outputs(args, src, out, result.model, result.report, t0, save_plan)


def _refuse_untaken_flags(args) -> None:
    """A usage error for a pass option given that none of the passes asked for takes."""
    from .options import flags
    from .passes import PASSES

    for fl in flags(PASSES):
        if getattr(args, fl.dest, None) in (None, False, []):
            continue
        if not any(owner in args.passes for owner, _ in fl.fields):
            owners = " or ".join(f"--pass {o}" for o in dict.fromkeys(owner for owner, _ in fl.fields))
            raise InputError(f"prune: {fl.flag} needs {owners}")


def _pass_options(args, name: str) -> dict:
    """The options of pass ``name`` that the prune flags give (graphprune.options: declared on the pass)."""
    from .options import from_args
    from .passes import PASSES

    options = from_args(args, name, PASSES)
    if "progress" in {f.name for f in dataclasses.fields(PASSES[name])}:
        # only a target measures latency tables, whose progress is worth showing
        options["progress"] = None if args.quiet or not _targets(args) else (lambda msg: say(args, msg))
    return options


def _prune_sparsity(args, src: Path, out: Path) -> int:
    """``prune --pass sparsity``: zeros written into weights (alone: no other pass, no target)."""
    from . import api

    if len(args.passes) > 1:
        raise InputError("prune: --pass sparsity runs alone")
    for flag, given in (("--ratio", args.ratio), ("--plan", args.plan), ("--remove-blocks", args.remove_blocks)):
        if given is not None:
            raise InputError(f"prune: --pass sparsity does not take {flag} (the fraction zeroed is --sparsity)")
    if _targets(args):
        raise InputError(f"prune: --pass sparsity does not take --{_targets(args)[0].replace('_', '-')}")
    if args.save_plan:
        raise InputError("prune: --pass sparsity removes no channel: it has no plan to --save-plan")
    if args.criterion is not None:
        raise InputError(
            "prune: the sparsity pass ranks weights by --sparsity-criterion (magnitude, wanda, obs), not --criterion"
        )
    _refuse_untaken_flags(args)
    options = _pass_options(args, "sparsity")
    api.make_pass("sparsity", **options)  # usage errors before the (possibly long) load
    t0 = time.perf_counter()
    say(args, f"loading {src} ...")
    model = api.load_model(src)
    say(args, f"sparsifying ({len(model.graph.node)} nodes) ...")
    result = api.prune(
        model,
        **options,
        pass_="sparsity",
        validate=not args.no_validate,
        latency=not args.no_latency,
        input_shapes=input_shapes(args),
        latency_runs=args.latency_runs,
    )
    if result.nothing_pruned:
        print(f"graphprune: nothing to prune in {src}: {result.nothing_pruned}; nothing written", file=sys.stderr)
        return EXIT_OK
    return _write_outputs(args, src, out, result.model, result.report, t0, lambda path: None)


def _targets(args) -> list[str]:
    return [f for f in ("target_flops", "target_params", "target_latency") if getattr(args, f) is not None]


def _validate(args) -> int:
    from . import api

    if args.labels is not None and args.data is None:
        raise InputError("--labels needs --data: the labelled samples to measure accuracy on")
    if args.input_map and args.data is None:
        raise InputError("--input-map needs --data: it maps the data's keys to the model's inputs")
    check_latency_runs(args)
    quiet_progress(args)
    report = api.validate(
        args.original,
        args.pruned,
        plan=args.plan,
        latency=not args.no_latency,
        data=_dataset(args, args.data),
        labels=args.labels,
        batch_size=args.batch_size,
        input_shapes=input_shapes(args),
        latency_runs=args.latency_runs,
    )
    report.file_bytes_before = Path(args.original).stat().st_size
    report.file_bytes_after = Path(args.pruned).stat().st_size
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    elif not args.quiet:
        print(report.table())
    if not report.passed:
        raise ValidationFailed(report.why_failed())
    return EXIT_OK


def _sensitivity(args) -> int:
    from . import api
    from .analysis.dependency import analyze
    from .passes.finish import check_scope
    from .planning.criteria import CRITERIA
    from .planning.sensitivity import measure, plot

    for path in [args.output] + ([args.plot] if args.plot else []):
        if Path(path).is_dir():
            raise InputError(f"{path}: is a directory")
        if Path(path).exists() and not args.force:
            raise InputError(f"{path}: output exists; use --force to overwrite")
    if args.criterion not in CRITERIA:
        raise InputError(f"unknown criterion {args.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
    if args.samples < 1:
        raise InputError(f"samples must be a positive integer, got {args.samples}")
    from .search.executors import check_executor

    check_executor(args.executor)
    if args.executor != "ray" and (args.workers is not None or args.ray_address):
        raise InputError(
            f"sensitivity: --{'workers' if args.workers is not None else 'ray-address'} needs --executor ray"
        )
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be a positive integer, got {args.workers}")
    quiet_progress(args)
    dataset = _dataset(args, args.calib)
    model = api.load_model(args.model)
    deps = analyze(model, inexact="hidden" in args.unit)
    for note in check_scope(deps, (), tuple(args.unit)):  # no group of any unit asked for: an error
        say(args, f"note: {note}")
    say(args, f"measuring {len(deps.prunable_groups())} groups x {len(args.ratios)} ratios on {args.calib} ...")
    options = dict(
        ratios=tuple(args.ratios),
        criterion=args.criterion,
        samples=args.samples,
        labels=args.labels,
        batch_size=args.batch_size,
        units=tuple(args.unit),
        blocks=not args.no_blocks,
        name=Path(args.model).name,
    )
    if args.executor == "ray":  # the groups shared out over Ray workers; the same result
        from .search.sensitivity_ray import measure_on_ray

        workers = args.workers or os.cpu_count() or 1
        sens = measure_on_ray(
            args.model, args.calib, workers=workers, address=args.ray_address, input_map=_input_map(args), **options
        )
    else:
        sens = measure(model, deps, dataset, **options)
    sens.save(args.output)
    if args.plot:
        plot(sens, args.plot)
    if not args.quiet:
        print(sensitivity_table(sens))
        print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return EXIT_OK


def _search(args) -> int:
    from .search import search
    from .search.report import front_table, write_outdir

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"{args.out}: exists and is not a directory; --out names a folder")
    quiet_progress(args)
    result = search(
        args.model,
        calib=args.calib,
        data=args.data,
        store=args.store,
        trials=args.trials,
        labels=args.labels,
        space=args.space,
        workers=args.workers,
        executor=args.executor,
        ray_address=args.ray_address,
        objective=args.objective,
        max_latency=args.max_latency,
        max_flops=args.max_flops,
        seed=args.seed,
        input_map=_input_map(args),
        progress=None if args.quiet else (lambda msg: say(args, msg)),
    )
    for note in write_outdir(result, args.out):
        say(args, f"note: {note}")
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    elif not args.quiet:
        print(front_table(result))
        print(
            f"wrote the {len(result.front)} front models with their plans, front.json and the trials' pages"
            f" to {args.out}"
        )
    return EXIT_OK


def sensitivity_table(sens) -> str:
    head = "accuracy drop" if sens.metric == "accuracy" else "1 - cosine"
    base = f"baseline accuracy {sens.baseline:.4f}, " if sens.metric == "accuracy" else ""
    rows = [f"{'group':<48} {'unit':<8} {'size':>5}  " + "  ".join(f"{r:>7.2f}" for r in sens.ratios)]
    for g in sorted(sens.groups, key=lambda g: -g.drop[len(g.drop) // 2]):
        rows.append(f"{g.group[:48]:<48} {g.unit:<8} {g.size:>5}  " + "  ".join(f"{d:>7.4f}" for d in g.drop))
    text = f"{head} when each group alone loses a fraction ({base}{sens.samples} samples):\n" + "\n".join(rows)
    if sens.blocks:
        rows = [f"{'residual block (Add)':<48} {'x':<24} {'MACs':>10}  {'drop':>7}"]
        for b in sorted(sens.blocks, key=lambda b: -b.drop):
            rows.append(f"{b.block[:48]:<48} {b.x[:24]:<24} {b.macs:>10}  {b.drop:>7.4f}")
        text += f"\n\n{head} when each residual block alone is removed:\n" + "\n".join(rows)
    return text


if __name__ == "__main__":
    sys.exit(main())
