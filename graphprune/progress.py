"""A progress bar on stderr for long work (calibration batches, latency tables, sensitivity).

It draws only when stderr is a terminal (or when forced), so logs and pipes stay clean, and
it never raises: a progress bar must not break the work it reports on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

ENABLED: bool | None = None  # None: draw when stderr is a terminal; the CLI's -q sets False


def progress(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` while drawing ``label [####----] i/total`` on stderr."""
    draw = ENABLED if ENABLED is not None else _isatty()
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    start = last = time.monotonic()
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            now = time.monotonic()
            if draw and (now - last > 0.1 or done == total):
                last = now
                _draw(label, done, total, now - start)
    finally:
        if draw and done:
            try:
                sys.stderr.write("\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


def _draw(label: str, done: int, total: int | None, elapsed: float) -> None:
    if total:
        width = 24
        fill = int(width * min(done, total) / total)
        bar = f"[{'#' * fill}{'-' * (width - fill)}] {done}/{total}"
    else:
        bar = f"{done}"
    try:
        sys.stderr.write(f"\r{label} {bar} {elapsed:.0f}s")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
