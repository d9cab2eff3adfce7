"""What the commands share (``cli`` and ``cli_many``): reading the flags several take and
speaking to the terminal (``-q``, progress)."""

from __future__ import annotations

import sys

from .errors import InputError


def check_latency_runs(args) -> None:
    if args.latency_runs is not None and args.latency_runs < 1:
        raise InputError(f"--latency-runs must be a positive integer, got {args.latency_runs}")


def quiet_progress(args) -> None:
    """Progress bars (calibration, timing) follow -q; else they draw on a terminal only."""
    from . import progress

    progress.ENABLED = False if getattr(args, "quiet", False) else None


def say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def input_shapes(args) -> dict:
    """``--input-shape NAME:D1,D2,...`` flags as {name: dims}; a name given twice is an error."""
    from .ir.input_sizes import parse_input_shape

    shapes: dict = {}
    for text in args.input_shape:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise InputError(f"--input-shape {name}: given twice")
        shapes[name] = dims
    return shapes
