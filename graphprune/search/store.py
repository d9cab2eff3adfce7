"""The trial store of ``graphprune search``: one SQLite file, one row per trial.

Rules:
1. The store belongs to one model: its ``meta`` table keeps the SHA-256 of the model file's
   bytes, and opening it for another model is an ``InputError`` that changes nothing (the
   check is read-only; a new store is created only when the file does not exist).
2. A row holds the configuration, status (``pending``, ``running``, ``done``, ``failed``),
   the metrics, the time taken and what it was made of, the error and the plan.
3. Resuming: ``done`` and ``failed`` trials are final and never run again; ``running`` ones
   (the run was killed) are run again. ``runs`` counts starts and ``finishes`` counts
   results recorded, so a test can see that nothing ran twice.
4. Several processes write at once: WAL journal, a busy timeout, one short transaction per
   write. A result is recorded only by the attempt that holds the trial (``runs`` equal to
   the attempt's number), so a worker orphaned by a killed search cannot overwrite the
   result of the run that replaced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    round INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    metric REAL,
    macs_ratio REAL,
    params_ratio REAL,
    latency_ratio REAL,
    seconds REAL,
    timings TEXT,
    error TEXT,
    plan TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    finishes INTEGER NOT NULL DEFAULT 0,
    updated REAL
);
"""
FINAL = ("done", "failed")


def model_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a model file's bytes (its external data files are not read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Trial:
    """One row of the store."""

    id: str
    seq: int
    round: int
    config: dict
    status: str
    metric: float | None = None
    macs_ratio: float | None = None
    params_ratio: float | None = None
    latency_ratio: float | None = None
    seconds: float | None = None
    timings: dict | None = None
    error: str | None = None
    plan: dict | list | None = None
    runs: int = 0
    finishes: int = 0

    def to_json(self) -> dict:
        """The trial as ``search --json`` lists it."""
        keys = ("id", "config", "status", "metric", "macs_ratio", "params_ratio", "latency_ratio", "seconds", "error")
        return {k: getattr(self, k) for k in keys}


def _connect(path: str | os.PathLike) -> sqlite3.Connection:
    con = sqlite3.connect(os.fspath(path), timeout=60.0, isolation_level=None)
    con.execute("PRAGMA busy_timeout = 60000")
    return con


def check_store(path: str | os.PathLike, model_key: str, model_name: str) -> None:
    """Refuse (read-only) an existing file that is not a store of this model (rule 1)."""
    p = Path(path)
    if not p.exists():
        return
    if p.is_dir():
        raise InputError(f"{p}: is a directory; --store names an SQLite file")
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=60.0)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'model_sha256'").fetchone()
            name = con.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise InputError(f"{p}: not a graphprune search store ({exc})") from None
    if row is None:
        raise InputError(f"{p}: not a graphprune search store (no model recorded)")
    if row[0] != model_key:
        was = name[0] if name else "another model"
        raise InputError(
            f"{p}: store of another model ({was}, sha256 {row[0][:12]}); {model_name} has sha256"
            f" {model_key[:12]}: use a new --store"
        )


class Store:
    """An open store (rule 1 checked by :func:`check_store` before it is opened for writing)."""

    def __init__(self, path: str | os.PathLike, model_key: str | None = None, model_name: str = ""):
        self.path = Path(path)
        if model_key is not None:
            check_store(self.path, model_key, model_name)
        self.con = _connect(self.path)
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.executescript(SCHEMA)
        if model_key is not None:
            self._meta_default("model_sha256", model_key)
            self._meta_default("model", model_name)

    def close(self) -> None:
        self.con.close()

    def _meta_default(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add(self, tid: str, seq: int, round_no: int, config: dict) -> None:
        """A proposed trial, pending (kept as it is when the id is already stored)."""
        self.con.execute(
            "INSERT OR IGNORE INTO trials (id, seq, round, config, status, updated) VALUES (?, ?, ?, ?, 'pending', ?)",
            (tid, seq, round_no, json.dumps(config, sort_keys=True), time.time()),
        )

    def start(self, tid: str) -> int:
        """Mark a trial running; returns the attempt's number (rule 4)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            self.con.execute(
                "UPDATE trials SET status = 'running', runs = runs + 1, updated = ? WHERE id = ?", (time.time(), tid)
            )
            (runs,) = self.con.execute("SELECT runs FROM trials WHERE id = ?", (tid,)).fetchone()
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return int(runs)

    def finish(self, tid: str, attempt: int, result: dict) -> bool:
        """Record a result if ``attempt`` still holds the trial; False if a later run took it."""
        cur = self.con.execute(
            "UPDATE trials SET status = ?, metric = ?, macs_ratio = ?, params_ratio = ?, latency_ratio = ?,"
            " seconds = ?, timings = ?, error = ?, plan = ?, finishes = finishes + 1, updated = ?"
            " WHERE id = ? AND runs = ? AND status = 'running'",
            (
                result["status"],
                result.get("metric"),
                result.get("macs_ratio"),
                result.get("params_ratio"),
                result.get("latency_ratio"),
                result.get("seconds"),
                json.dumps(result.get("timings") or {}),
                result.get("error"),
                None if result.get("plan") is None else json.dumps(result["plan"]),
                time.time(),
                tid,
                attempt,
            ),
        )
        return cur.rowcount == 1

    def set_latency(self, tid: str, latency_ratio: float) -> None:
        self.con.execute("UPDATE trials SET latency_ratio = ? WHERE id = ?", (latency_ratio, tid))

    def trials(self) -> list[Trial]:
        rows = self.con.execute(
            "SELECT id, seq, round, config, status, metric, macs_ratio, params_ratio, latency_ratio, seconds,"
            " timings, error, plan, runs, finishes FROM trials ORDER BY seq"
        ).fetchall()
        out = []
        for r in rows:
            out.append(
                Trial(
                    id=r[0],
                    seq=r[1],
                    round=r[2],
                    config=json.loads(r[3]),
                    status=r[4],
                    metric=r[5],
                    macs_ratio=r[6],
                    params_ratio=r[7],
                    latency_ratio=r[8],
                    seconds=r[9],
                    timings=json.loads(r[10]) if r[10] else None,
                    error=r[11],
                    plan=json.loads(r[12]) if r[12] else None,
                    runs=r[13],
                    finishes=r[14],
                )
            )
        return out

    def get(self, tid: str) -> Trial | None:
        return next((t for t in self.trials() if t.id == tid), None)
