"""``graphprune prune A.onnx B.onnx ... -o OUTDIR [--tie]``: the command line of graphprune.tie.

Rules:
1. Each model is written as ``OUTDIR/<its file name>`` (OUTDIR made if missing); two inputs of
   one name, an output that is its input, or an existing output without ``--force`` are refused
   before any work.
2. Several models take the flags of a data-free ratio prune (``--ratio``, ``--criterion``,
   ``--round-to``, ``--min-keep``, ``--ignore``, ``--unit``, ``--seed``, the validation and
   latency flags, ``--input-shape`` for whichever files have that input, ``--report``,
   ``--force``, ``--keep-failed``); the others (plans, targets, calibration data, other passes)
   are refused with a usage error.
3. Every file is validated against its own original; if one fails, nothing is written (unless
   ``--keep-failed``). If no file lost anything, nothing is written. Otherwise every file is
   written, those left whole as they were, so that OUTDIR holds the complete set, and all are
   renamed into place together (:func:`graphprune.ir.files.save_all`).
4. ``--report`` writes ``{"tie": bool, "notes": [...], "files": [{"model", "output", ...the
   single-model report's keys..., "tied": [...]}]}``.

Errors are raised (``InputError``, ``ValidationFailed``); cli.py turns them into exit codes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .cli_shared import check_latency_runs, input_shapes, quiet_progress, say
from .errors import InputError, ValidationFailed

REFUSED = (
    "plan",
    "save_plan",
    "target_flops",
    "target_params",
    "target_latency",
    "objective",
    "sensitivity",
    "latency_table",
    "latency_model",
    "calib",
    "calib_samples",
    "batch_size",
    "compensate",
    "selection",
    "remove_blocks",
    "block_criterion",
)


def check_flags(args) -> None:
    """Rule 2: a usage error for the first flag several models do not take."""
    if args.tie and len(args.model) < 2:
        raise InputError("prune: --tie needs two or more models")
    given = [k for k in REFUSED if getattr(args, k, None) is not None]
    given += ["global"] if args.global_threshold else []
    given += ["input_map"] if args.input_map else []
    given += ["pass"] if list(args.passes) != ["filter"] else []
    if given:
        raise InputError(
            f"prune: --{given[0].replace('_', '-')} takes one model; several models are pruned by --ratio"
            " and a data-free --criterion"
        )


def outputs(args) -> tuple[list[Path], list[Path]]:
    """Rule 1: the inputs and their outputs in OUTDIR, or ``InputError``."""
    from .tie import file_names

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is not a directory; with several models -o names the folder to write them in")
    srcs = [Path(m) for m in args.model]
    dsts = [out / name for name in file_names(srcs)]
    for src, dst in zip(srcs, dsts, strict=True):
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            raise InputError(f"{dst}: output is the input file; choose another -o")
        if dst.exists() and not args.force:
            raise InputError(f"{dst}: output exists; use --force to overwrite")
    return srcs, dsts


# the filter pass's options several models take (the flags' declarations: graphprune.options)
_TAKEN = ("ratio", "criterion", "round_to", "min_keep", "ignore", "units", "seed")


def prune_files(args) -> None:
    from . import api
    from .ir import files as io
    from .options import from_args
    from .passes import PASSES
    from .tie import prune_many

    check_flags(args)
    srcs, dsts = outputs(args)
    check_latency_runs(args)
    quiet_progress(args)
    args.committed_before = len(io.committed())
    t0 = time.perf_counter()
    models = []
    for src in srcs:  # every file loads (and its error names it) before any work
        say(args, f"loading {src} ...")
        models.append(api.load_model(src))
    say(args, f"pruning {len(models)} models {'with one tied plan' if args.tie else 'each on its own'} ...")
    result = prune_many(
        models,
        tie=args.tie,
        names=[d.name for d in dsts],
        **{k: v for k, v in from_args(args, "filter", PASSES).items() if k in _TAKEN},
        validate=not args.no_validate,
        latency=not args.no_latency,
        input_shapes=input_shapes(args),
        latency_runs=args.latency_runs,
    )
    reports = [r.report for r in result.results]
    for src, report in zip(srcs, reports, strict=True):
        report.file_bytes_before = src.stat().st_size
    if all(r.plan.total_removed == 0 for r in result.results):
        why = "; ".join(
            f"{n}: {r.report.prune.get('nothing_pruned', '')}" for n, r in zip(result.names, result.results)
        )
        print(f"graphprune: nothing to prune in {len(srcs)} models ({why}); nothing written", file=sys.stderr)
        return
    failed = [(n, r) for n, r in zip(result.names, reports, strict=True) if r.validated and not r.passed]
    if not failed or args.keep_failed:
        written = io.save_all(
            [
                (r.model, dst, True if io.had_external_data(src) else None)
                for r, src, dst in zip(result.results, srcs, dsts)
            ]
        )
        for report, path in zip(reports, written, strict=True):
            report.file_bytes_after = path.stat().st_size
    if args.report:
        body = {
            "tie": bool(args.tie),
            "notes": result.notes,
            "files": [
                {"model": str(src), "output": str(dst), **report.to_dict()}
                for src, dst, report in zip(srcs, dsts, reports, strict=True)
            ],
        }
        io.write_text_atomic(args.report, json.dumps(body, indent=1) + "\n")
    if not args.quiet:
        for name, report in zip(result.names, reports, strict=True):
            print(f"{name}:")
            print(report.table())
        for line in tied_lines(result):
            print(line)
        for note in result.notes:
            print(f"note: {note}")
        state = f"wrote {len(dsts)} files to {args.output}" if not failed or args.keep_failed else "nothing written"
        print(f"{state} in {time.perf_counter() - t0:.1f}s")
    if failed:
        name, report = failed[0]
        raise ValidationFailed(f"{name}: {report.why_failed()}" + ("" if args.keep_failed else "; nothing written"))


def tied_lines(result) -> list[str]:
    """One line per tied group: its anchors in each file and what it lost, or why it stayed whole."""
    lines = []
    for j in result.tied:
        where = "; ".join(f"{f}: {', '.join(a)}" for f, a in j["anchors"].items())
        what = f"{j['removed']} of {j['size']} removed" if j["prunable"] else f"kept whole: {j['reason']}"
        lines.append(f"tied ({', '.join(j['matched_by'])}) {where}: {what}")
    return lines
