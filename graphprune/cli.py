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
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from .criteria import CRITERIA

    p = _Parser(prog="graphprune", description="Structured pruning of ONNX models, with proof.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    i = sub.add_parser("inspect", help="show the channel groups: size, members, prunable or why not")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--html", metavar="OUT.html", help="also write a page that draws the groups on the op graph")

    pr = sub.add_parser("prune", help="prune a model and validate the result")
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
        " latency snaps channel counts to the steps of measured per-layer latency curves",
    )
    pr.add_argument("--latency-table", metavar="PATH", help="latency table file (default: ~/.cache/graphprune/)")
    pr.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency tables (default 1)")
    pr.add_argument("--criterion", default="l2", help=f"one of {', '.join(sorted(CRITERIA))} (default l2)")
    pr.add_argument(
        "--global",
        dest="global_threshold",
        action="store_true",
        help="one threshold over all groups' normalised scores instead of a uniform ratio",
    )
    pr.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of N")
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
    pr.add_argument("--plan", help="apply this plan (JSON) instead of --ratio/--criterion")
    pr.add_argument("--save-plan", help="write the plan that was applied (JSON)")
    pr.add_argument("--report", help="write the report (JSON)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the random criterion and inputs")
    pr.add_argument("--no-validate", action="store_true", help="skip validation (faster)")
    pr.add_argument("--no-latency", action="store_true", help="validate but do not time onnxruntime")
    pr.add_argument("--force", action="store_true", help="overwrite an existing output")
    pr.add_argument("--keep-failed", action="store_true", help="write the output even if validation fails")
    pr.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    v = sub.add_parser("validate", help="validate a pruned model against its original")
    v.add_argument("original")
    v.add_argument("pruned")
    v.add_argument("--plan", help="the plan used (default: the one graphprune stored in the pruned model)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--no-latency", action="store_true", help="do not time onnxruntime")
    return p


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return _main(argv, debug)
    finally:
        if as_command:
            # The work is done (or abandoned cleanly): a Ctrl-C while the interpreter shuts
            # down must not turn a finished run into a death by SIGINT.
            with contextlib.suppress(KeyboardInterrupt):
                signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv: list[str], debug: bool) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        return {"inspect": _inspect, "prune": _prune, "validate": _validate}[args.command](args)
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
        io = sys.modules.get("graphprune.io")
        since = getattr(args, "committed_before", None)
        written = io.committed()[since:] if io is not None and since is not None else []
        if written:  # the interrupt came after the output was renamed into place
            names = ", ".join(str(p) for p in written)
            print(f"graphprune: interrupted; already written completely: {names}", file=sys.stderr)
        else:
            print("graphprune: interrupted; nothing was written", file=sys.stderr)
        return 130
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


def _inspect(args) -> int:
    from . import api, io
    from .inspect import describe, table

    deps = api.analyze(args.model)
    if args.html:
        from .html import render

        io.write_text_atomic(args.html, render(deps, title=Path(args.model).name))
    if args.json:
        print(json.dumps({"model": str(args.model), **describe(deps)}, indent=1))
    else:
        print(table(deps))
    return EXIT_OK


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _prune(args) -> int:
    from . import api, io
    from .passes.filter import FilterPruning

    args.committed_before = len(io.committed())  # what an interrupt finds written is this run's
    src, out = Path(args.model), Path(args.output)
    if out.exists() and src.exists() and os.path.samefile(src, out):
        raise InputError(f"{out}: output is the input file; choose another -o")
    if out.exists() and not args.force:
        raise InputError(f"{out}: output exists; use --force to overwrite")
    if out.is_dir():
        raise InputError(f"{out}: output is a directory")
    targets = [f for f in ("target_flops", "target_params", "target_latency") if getattr(args, f) is not None]
    if args.ratio is not None and targets:
        raise InputError(f"graphprune prune: --ratio and --{targets[0].replace('_', '-')} cannot be combined")
    if args.plan and targets:
        raise InputError(f"graphprune prune: --plan and --{targets[0].replace('_', '-')} cannot be combined")
    if args.objective and not targets:
        raise InputError("graphprune prune: --objective needs --target-flops, --target-params or --target-latency")
    if args.ratio is None:
        args.ratio = 0.5
    # Check the flags before the (possibly long) load.
    FilterPruning(
        ratio=args.ratio,
        target_flops=args.target_flops,
        target_params=args.target_params,
        target_latency=args.target_latency,
        objective=args.objective,
        threads=args.threads,
        criterion=args.criterion,
        round_to=args.round_to,
        min_keep=args.min_keep,
        plan={} if args.plan else None,
    )
    t0 = time.perf_counter()
    _say(args, f"loading {src} ...")
    model = api.load_model(src)
    steps = "analyzing, pruning" + (
        "" if args.no_validate else ", validating (checker, onnxruntime, exactness, fidelity)"
    )
    _say(args, f"{steps} ({len(model.graph.node)} nodes) ...")
    result = api.prune(
        model,
        ratio=args.ratio,
        criterion=args.criterion,
        global_threshold=args.global_threshold,
        round_to=args.round_to,
        min_keep=args.min_keep,
        ignore=tuple(args.ignore),
        plan=args.plan,
        seed=args.seed,
        units=tuple(args.unit),
        target_flops=args.target_flops,
        target_params=args.target_params,
        target_latency=args.target_latency,
        objective=args.objective,
        latency_table=args.latency_table,
        threads=args.threads,
        progress=None if args.quiet else (lambda msg: _say(args, msg)),
        validate=not args.no_validate,
        latency=not args.no_latency,
        inplace=args.no_validate,  # nothing needs the original afterwards: save a copy
    )
    report = result.report
    report.file_bytes_before = src.stat().st_size
    failed = report.validated and not report.passed
    if not failed or args.keep_failed:
        written = io.save(result.model, out, external_data=True if io.had_external_data(src) else None)
        report.file_bytes_after = written.stat().st_size
    if args.save_plan:
        result.plan.save(args.save_plan, result.deps, model=str(src))
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


def _failure(report) -> str:
    if not report.checker["passed"]:
        return f"checker: {report.checker['error']}"
    if not report.runtime["passed"]:
        return f"onnxruntime: {report.runtime['error']}"
    return f"exactness: max relative difference {report.exact.max_rel_diff:.2e} over 1e-4"


def _validate(args) -> int:
    from . import api

    report = api.validate(args.original, args.pruned, plan=args.plan, latency=not args.no_latency)
    report.file_bytes_before = Path(args.original).stat().st_size
    report.file_bytes_after = Path(args.pruned).stat().st_size
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.table())
    if not report.passed:
        raise ValidationFailed(_failure(report))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
