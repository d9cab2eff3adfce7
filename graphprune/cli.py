"""The command line: the only place that knows about argv, files to write and exit codes.

Exit codes: 0 success, 1 validation failed, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .errors import GraphpruneError, InputError, ValidationFailed

# The rest of graphprune (numpy, onnx, networkx) is imported inside main(), so that an
# interrupt while it loads is still answered with one line and exit 130.

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage dump becomes our one-line error
        command = self.prog.removeprefix("graphprune").strip()  # "graphprune: error:" is said once, by main
        raise InputError(f"{command}: {message}" if command else message)


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
    from .criteria import CRITERIA
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
    i.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2,...",
        help="sizes of an input with symbolic dims (repeatable), for costs per sample and validation inputs",
    )

    pr = sub.add_parser("prune", parents=[common], help="prune a model and validate the result")
    pr.add_argument("model")
    pr.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    pr.add_argument("--ratio", type=float, default=None, help="fraction of each group to remove (default 0.5)")
    pr.add_argument("--target-flops", type=float, metavar="F", help="keep this fraction of the MACs (0<F<1)")
    pr.add_argument("--target-params", type=float, metavar="P", help="keep this fraction of the parameters (0<P<1)")
    pr.add_argument(
        "--target-latency",
        type=float,
        metavar="L",
        help="keep this fraction of the onnxruntime latency measured on this machine (0<L<1)",
    )
    pr.add_argument(
        "--objective",
        choices=["flops", "params", "latency"],
        help="what allocation to a target credits a removed channel with saving (default: the target's metric);"
        " latency keeps channel counts on this machine's channel step (the onnxruntime kernels' block) and,"
        " with a FLOPs/params target, applies the faster of two timed allocations",
    )
    pr.add_argument(
        "--sensitivity",
        metavar="SENS.json",
        help="allocate to the target by the drops `graphprune sensitivity` measured per group (which channels"
        " go within a group still follows --criterion)",
    )
    pr.add_argument("--latency-table", metavar="PATH", help="latency table file (default: ~/.cache/graphprune/)")
    pr.add_argument(
        "--latency-model",
        choices=["layer", "model"],
        help="latency for --objective/--target-latency: per-layer curves (layer, default) or the whole model"
        " timed with each group pruned alone (model)",
    )
    pr.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency tables (default 1)")
    pr.add_argument("--criterion", default="l2", help=f"one of {', '.join(sorted(CRITERIA))} (default l2)")
    pr.add_argument(
        "--global",
        dest="global_threshold",
        action="store_true",
        help="one threshold over all groups' normalised scores instead of a uniform ratio",
    )
    pr.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep channel counts multiples of N (default: this machine's channel step, the onnxruntime kernels'"
        " block, for convolution channels; 1 for mlp and heads; --round-to 1 for exact ratios)",
    )
    pr.add_argument("--min-keep", type=int, default=1, help="keep at least N entries per group")
    pr.add_argument(
        "--ignore",
        nargs="+",
        default=[],
        metavar="NAME",
        help="protect layers: node or tensor names (glob patterns allowed)",
    )
    pr.add_argument(
        "--unit",
        nargs="+",
        default=[],
        choices=["heads", "mlp", "channels", "hidden"],
        help="prune only these units: attention heads, mlp neurons (matrix products), conv channels (default:"
        " these three); 'hidden' also prunes a transformer's residual width through its LayerNorms, which"
        " is not function-preserving: it is reported as inexact and measured by fidelity",
    )
    pr.add_argument(
        "--pass",
        dest="passes",
        nargs="+",
        default=["filter"],
        choices=list(PASSES),
        help="passes to run, in order (default: filter). filter: remove output filters ranked by --criterion;"
        " channel: choose consumers' input channels by reconstruction error on --calib data and refit their"
        " weights (implies --compensate lstsq); layer: remove whole residual blocks y = x + f(x)",
    )
    pr.add_argument("--remove-blocks", type=int, metavar="N", help="layer pass: how many residual blocks to remove")
    pr.add_argument(
        "--block-criterion",
        choices=["influence", "weight-norm"],
        help="layer pass: how blocks are ranked (default: influence with --calib, weight-norm without)",
    )
    pr.add_argument(
        "--calib",
        metavar="DATA",
        help="calibration data: an .npz file (keys = the model's input names, samples on axis 0) or a folder of"
        " them; needed by the data criteria, --compensate, --pass channel and the influence block criterion;"
        " fidelity is measured on it",
    )
    pr.add_argument("--calib-samples", type=int, metavar="N", help="use at most N samples of --calib")
    pr.add_argument("--batch-size", type=int, metavar="N", help="samples per onnxruntime run on --calib (default 32)")
    pr.add_argument(
        "--compensate",
        choices=["none", "bias", "lstsq", "obs"],
        help="fold the removed channels' contribution into their consumers: bias (their mean), lstsq (least-squares"
        " refit of the kept weights), obs (the optimal brain surgeon update: the refit damped toward the original"
        " weights); needs --calib (default none; obs for --criterion obs/dcp, lstsq for --pass channel)",
    )
    pr.add_argument(
        "--sequential",
        action="store_true",
        help="refit the consumers stage by stage in topological order on the pruned model's own inputs, so each"
        " layer repairs the error of those before it (one pass over --calib per stage; any --compensate but none)",
    )
    pr.add_argument(
        "--labels",
        nargs="?",
        const="labels",
        metavar="KEY",
        help="--criterion dcp: the class labels of --calib under KEY (default 'labels'); samples the classifier is"
        " close to getting wrong weigh more in the statistics",
    )
    pr.add_argument(
        "--selection",
        choices=["greedy", "lasso"],
        help="--pass channel: ThiNet greedy selection (default) or He et al. LASSO",
    )
    pr.add_argument("--plan", help="apply this plan (JSON) instead of --ratio/--criterion")
    pr.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2,...",
        help="sizes of an input with symbolic dims (repeatable), for costs per sample and validation inputs",
    )
    pr.add_argument("--save-plan", help="write the plan that was applied (JSON)")
    pr.add_argument("--report", help="write the report (JSON)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the random criterion and inputs")
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
    se.add_argument("--batch-size", type=int, default=32, help="samples per run (default 32)")
    se.add_argument("--unit", nargs="+", default=[], choices=["heads", "mlp", "channels", "hidden"])
    se.add_argument("--no-blocks", action="store_true", help="skip the residual blocks (layer pass)")
    se.add_argument("--force", action="store_true", help="overwrite existing outputs")
    se.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _input_map_flag(se)

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
    v.add_argument("--batch-size", type=int, default=32, help="samples per run on --data (default 32)")
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


def _main(argv: list[str], debug: bool) -> int:
    args = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version: printed, and done
            return EXIT_OK if exc.code in (0, None) else EXIT_INPUT
        commands = {"inspect": _inspect, "prune": _prune, "validate": _validate, "sensitivity": _sensitivity}
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
    io = sys.modules.get("graphprune.io")
    written = io.committed()[since:] if io is not None and since is not None else []
    if written:  # the interrupt came after the output was renamed into place
        names = ", ".join(str(p) for p in written)
        print(f"graphprune: interrupted; already written completely: {names}", file=sys.stderr)
    else:
        print("graphprune: interrupted; nothing was written", file=sys.stderr)
    return 130


def _inspect(args) -> int:
    from . import api, io
    from .inspect import describe, table

    html = _html_path(args) if args.html else None  # refused before the analysis, not after it
    deps = api.analyze(args.model, input_shapes=_input_shapes(args))
    if html is not None:
        from .html import render

        io.write_text_atomic(html, render(deps, title=Path(args.model).name))
        print(f"wrote {html}", file=sys.stderr)  # stdout stays the table (or the JSON)
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
    from .data import open_dataset

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


def _check_latency_runs(args) -> None:
    if args.latency_runs is not None and args.latency_runs < 1:
        raise InputError(f"--latency-runs must be a positive integer, got {args.latency_runs}")


def _quiet_progress(args) -> None:
    """Progress bars (calibration, timing) follow -q; else they draw on a terminal only."""
    from . import progress

    progress.ENABLED = False if getattr(args, "quiet", False) else None


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _prune(args) -> int:
    from .weights import spill_folder

    # a validated lazy model's pruned weights are written once, beside the output, and renamed into it
    with spill_folder(Path(args.output).resolve().parent):
        return _prune_to(args)


def _prune_to(args) -> int:
    from . import api, io

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
    _check_latency_runs(args)
    _quiet_progress(args)
    if args.calib is not None:  # a missing or unreadable file is said before the (long) analysis
        dataset = _dataset(args, args.calib)
        args.calib = dataset if args.input_map else args.calib
    elif args.input_map:
        raise InputError("--input-map needs --calib: it maps the data's keys to the model's inputs")
    if args.ratio is None:
        args.ratio = 0.5
    if len(args.passes) > 1 or "layer" in args.passes or args.remove_blocks is not None:
        if targets and ("filter" not in args.passes or args.target_latency is not None):
            raise InputError(
                f"prune: --{targets[0].replace('_', '-')} needs a filter pass (alone, or after layer:"
                " --pass layer filter)"
            )
        return _prune_passes(args, src, out)
    (pass_name,) = args.passes
    # Check the flags before the (possibly long) load.
    api.make_pass(pass_name, **_pass_options(args, plan={} if args.plan else None))
    t0 = time.perf_counter()
    _say(args, f"loading {src} ...")
    model = api.load_model(src)
    steps = "analyzing, pruning" + (
        ""
        if args.no_validate
        else ", validating (checker, onnxruntime, exactness, fidelity" + ("" if args.no_latency else ", latency") + ")"
    )
    _say(args, f"{steps} ({len(model.graph.node)} nodes) ...")
    result = api.prune(
        model,
        **_pass_options(args, plan=args.plan),
        pass_=pass_name,
        validate=not args.no_validate,
        latency=not args.no_latency,
        inplace=args.no_validate,  # nothing needs the original afterwards: save a copy
        input_shapes=_input_shapes(args),
        latency_runs=args.latency_runs,
    )
    if result.plan.total_removed == 0:  # a copy of the input would pretend: say why, write nothing
        why = result.report.prune["nothing_pruned"]
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
    from . import io

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
        raise ValidationFailed(_failure(report) + ("" if args.keep_failed else "; output not written"))
    return EXIT_OK


def _prune_passes(args, src: Path, out: Path) -> int:
    """``prune --pass ...``: several passes in order, or the layer pass."""
    from . import api, io
    from .passes.layer import LayerPruning

    if "layer" in args.passes and args.remove_blocks is None:
        raise InputError("--pass layer needs --remove-blocks N")
    if "layer" not in args.passes:
        raise InputError("--remove-blocks needs --pass layer")
    if args.plan and "layer" in args.passes:
        raise InputError("--plan applies to the filter pass alone; it cannot be combined with --pass layer")
    if args.block_criterion is None:
        args.block_criterion = "influence" if args.calib else "weight-norm"
    passes = []
    for name in args.passes:  # flags are checked before the (possibly long) load
        if name == "layer":
            passes.append(
                LayerPruning(remove_blocks=args.remove_blocks, criterion=args.block_criterion, calib=args.calib)
            )
        else:
            passes.append(api.make_pass(name, **_pass_options(args, plan=None)))
    t0 = time.perf_counter()
    _say(args, f"loading {src} ...")
    model = api.load_model(src)
    _say(args, f"running {' then '.join(args.passes)} ({len(model.graph.node)} nodes) ...")
    result = api.run_passes(
        model,
        passes,
        validate=not args.no_validate,
        latency=not args.no_latency,
        input_shapes=_input_shapes(args),
        latency_runs=args.latency_runs,
    )
    if not result.report.prune.get("channels_removed") and not result.report.prune.get("blocks_removed"):
        why = (
            "; ".join(s["nothing_pruned"] for s in result.steps if "nothing_pruned" in s) or "no step removed anything"
        )
        print(f"graphprune: nothing to prune in {src}: {why}; nothing written", file=sys.stderr)
        return EXIT_OK
    plan = result.plans[0]["plan"] if len(result.plans) == 1 else {"steps": result.plans}

    def save_plan(path: str) -> None:
        io.write_text_atomic(path, json.dumps({**plan, "model": str(src)}, indent=1) + "\n")

    return _write_outputs(args, src, out, result.model, result.report, t0, save_plan)


def _pass_options(args, plan) -> dict:
    """The pass options the prune flags give (None: the pass's default)."""
    return dict(
        ratio=args.ratio,
        criterion=args.criterion,
        global_threshold=args.global_threshold,
        round_to=args.round_to,
        min_keep=args.min_keep,
        ignore=tuple(args.ignore),
        plan=plan,
        seed=args.seed,
        units=tuple(args.unit),
        calib=args.calib,
        calib_samples=args.calib_samples,
        batch_size=args.batch_size,
        compensate=args.compensate,
        selection=args.selection,
        target_flops=args.target_flops,
        target_params=args.target_params,
        target_latency=args.target_latency,
        objective=args.objective,
        latency_table=args.latency_table,
        latency_model=args.latency_model,
        threads=args.threads,
        # only a target measures latency tables, whose progress is worth showing
        progress=None if args.quiet or not _targets(args) else (lambda msg: _say(args, msg)),
        sensitivity=args.sensitivity,
        sequential=args.sequential,
        labels=args.labels,
    )


def _input_shapes(args) -> dict:
    """``--input-shape NAME:D1,D2,...`` flags as {name: dims}; a name given twice is an error."""
    from .inputs import parse_input_shape

    shapes: dict = {}
    for text in args.input_shape:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise InputError(f"--input-shape {name}: given twice")
        shapes[name] = dims
    return shapes


def _targets(args) -> list[str]:
    return [f for f in ("target_flops", "target_params", "target_latency") if getattr(args, f) is not None]


def _failure(report) -> str:
    if not report.checker["passed"]:
        return f"checker: {report.checker['error']}"
    if not report.runtime["passed"]:
        return f"onnxruntime: {report.runtime['error']}"
    e = report.exact
    if e.float_max_rel_diff is not None and e.note.startswith("with fake quantization bypassed"):
        return f"exactness: {e.note}"  # a quantized graph whose outputs stayed within their steps
    return f"exactness: max relative difference {e.max_rel_diff:.2e} over {e.tolerance:.0e}"


def _validate(args) -> int:
    from . import api

    if args.labels is not None and args.data is None:
        raise InputError("--labels needs --data: the labelled samples to measure accuracy on")
    if args.input_map and args.data is None:
        raise InputError("--input-map needs --data: it maps the data's keys to the model's inputs")
    _check_latency_runs(args)
    _quiet_progress(args)
    report = api.validate(
        args.original,
        args.pruned,
        plan=args.plan,
        latency=not args.no_latency,
        data=_dataset(args, args.data),
        labels=args.labels,
        batch_size=args.batch_size,
        input_shapes=_input_shapes(args),
        latency_runs=args.latency_runs,
    )
    report.file_bytes_before = Path(args.original).stat().st_size
    report.file_bytes_after = Path(args.pruned).stat().st_size
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    elif not args.quiet:
        print(report.table())
    if not report.passed:
        raise ValidationFailed(_failure(report))
    return EXIT_OK


def _sensitivity(args) -> int:
    from . import api
    from .criteria import CRITERIA
    from .dependency import analyze
    from .passes.finish import check_scope
    from .sensitivity import measure, plot

    for path in [args.output] + ([args.plot] if args.plot else []):
        if Path(path).is_dir():
            raise InputError(f"{path}: is a directory")
        if Path(path).exists() and not args.force:
            raise InputError(f"{path}: output exists; use --force to overwrite")
    if args.criterion not in CRITERIA:
        raise InputError(f"unknown criterion {args.criterion!r}; choose from {', '.join(sorted(CRITERIA))}")
    if args.samples < 1:
        raise InputError(f"samples must be a positive integer, got {args.samples}")
    _quiet_progress(args)
    dataset = _dataset(args, args.calib)
    model = api.load_model(args.model)
    deps = analyze(model, inexact="hidden" in args.unit)
    for note in check_scope(deps, (), tuple(args.unit)):  # no group of any unit asked for: an error
        _say(args, f"note: {note}")
    _say(args, f"measuring {len(deps.prunable_groups())} groups x {len(args.ratios)} ratios on {args.calib} ...")
    sens = measure(
        model,
        deps,
        dataset,
        ratios=tuple(args.ratios),
        criterion=args.criterion,
        samples=args.samples,
        labels=args.labels,
        batch_size=args.batch_size,
        units=tuple(args.unit),
        blocks=not args.no_blocks,
        name=Path(args.model).name,
    )
    sens.save(args.output)
    if args.plot:
        plot(sens, args.plot)
    if not args.quiet:
        print(sensitivity_table(sens))
        print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
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
