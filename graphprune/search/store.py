"""The trial store of ``graphprune search``: one SQLite file, one row per trial.

Rules:
1. The store belongs to one model: its ``meta`` table keeps the SHA-256 of the model file's
   bytes, and opening it for another model is an ``InputError`` that changes nothing (the
   check is read-only; a new store is created only when the file does not exist).
2. A row holds the configuration, status (``pending``, ``running``, ``done``, ``failed``),
   the metrics, the time taken and what it was made of, the error and the plan.
3. Resuming: ``done`` and ``failed`` trials are final and never run again; ``running`` ones
   (the run was killed) are run again once their claim has lapsed (rule 5). ``runs`` counts
   starts and ``finishes`` counts results recorded, so a test can see that nothing ran twice.
4. Several processes write at once: WAL journal, a busy timeout, one short transaction per
   write. A result is recorded only by the attempt that holds the trial (``runs`` equal to
   the attempt's number), so a worker orphaned by a killed search cannot overwrite the
   result of the run that replaced it.
5. A search claims a trial before running it: in one ``BEGIN IMMEDIATE`` transaction a
   trial that is not final and not held is set ``running`` with the search's ``owner`` token
   (host, process id, random) and a ``lease`` time :data:`LEASE_SECONDS` ahead, which the
   search renews while it runs (:meth:`Store.renew`). A claim lapses when its lease has
   passed, or at once when its owner is a process of this host that no longer exists (a
   SIGKILLed search); another search then takes the trial over. So two searches on one store
   never run a trial at the same time, and each sees the other's results.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
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
    updated REAL,
    owner TEXT,
    lease REAL
);
"""
CLAIM_COLUMNS = {"owner": "TEXT", "lease": "REAL"}  # added to a store made before claims (rule 5)
FINAL = ("done", "failed")
LEASE_SECONDS = 30.0  # a claim not renewed for this long lapses (rule 5)


def owner_token() -> str:
    """A search's claim token: its host, process id and a random part (rule 5)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _owner_gone(owner: str) -> bool:
    """Whether ``owner`` was a process of this host that no longer exists."""
    try:
        host, pid, _ = owner.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname() or pid_n == os.getpid():
        return False
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


def _lapsed(owner: str | None, lease: float | None, now: float) -> bool:
    return owner is None or lease is None or lease < now or _owner_gone(owner)


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
        if _being_created(p):  # another search is creating it: Store checks again inside its transaction
            return
        raise InputError(f"{p}: not a graphprune search store ({exc})") from None
    if row is None:
        raise InputError(f"{p}: not a graphprune search store (no model recorded)")
    if row[0] != model_key:
        was = name[0] if name else "another model"
        raise InputError(
            f"{p}: store of another model ({was}, sha256 {row[0][:12]}); {model_name} has sha256"
            f" {model_key[:12]}: use a new --store"
        )


def _being_created(p: Path) -> bool:
    """Whether ``p`` is an SQLite file without any table yet (a store another search is creating)."""
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=60.0)
        try:
            return con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


class Store:
    """An open store (rule 1 checked by :func:`check_store` before it is opened for writing)."""

    def __init__(
        self, path: str | os.PathLike, model_key: str | None = None, model_name: str = "", settings: str | None = None
    ):
        """Open (or create) the store; with ``model_key``, refuse another model's store (rule 1)
        and record the model, and with ``settings``, the search's settings when none are kept.
        Schema, columns added since (rule 5) and those records are one transaction, so searches
        opening one new store at once see a whole store or none."""
        self.path = Path(path)
        if model_key is not None:
            check_store(self.path, model_key, model_name)
        self.con = _connect(self.path)
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.con.execute(statement)
            have = {r[1] for r in self.con.execute("PRAGMA table_info(trials)")}
            for column, kind in CLAIM_COLUMNS.items():
                if column not in have:
                    self.con.execute(f"ALTER TABLE trials ADD COLUMN {column} {kind}")
            if model_key is not None:
                self._meta_default("model_sha256", model_key)
                self._meta_default("model", model_name)
                if self.meta("model_sha256") != model_key:  # another model's search created it meanwhile
                    raise InputError(f"{self.path}: store of another model; {model_name} is not it: use a new --store")
            if settings is not None:
                self._meta_default("settings", settings)
                if self.meta("settings") != settings:
                    raise InputError(f"{self.path}: store of a search with other settings: use a new --store")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            self.con.close()
            raise

    def close(self) -> None:
        self.con.close()

    def _meta_default(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add(self, tid: str, round_no: int, config: dict) -> None:
        """A proposed trial, pending, numbered after the stored ones (kept as it is when the id
        is already stored, by this search or another on the same store)."""
        self.con.execute(
            "INSERT OR IGNORE INTO trials (id, seq, round, config, status, updated)"
            " SELECT ?, COALESCE(MAX(seq) + 1, 0), ?, ?, 'pending', ? FROM trials",
            (tid, round_no, json.dumps(config, sort_keys=True), time.time()),
        )

    def claim(self, tid: str, owner: str) -> int | None:
        """Claim a trial for ``owner`` (rule 5): the attempt's number (rule 4), or None when the
        trial is final or held by a claim that has not lapsed."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            row = self.con.execute("SELECT status, owner, lease FROM trials WHERE id = ?", (tid,)).fetchone()
            if row is None or row[0] in FINAL or (row[0] == "running" and not _lapsed(row[1], row[2], now)):
                self.con.execute("COMMIT")
                return None
            self.con.execute(
                "UPDATE trials SET status = 'running', runs = runs + 1, owner = ?, lease = ?, updated = ? WHERE id = ?",
                (owner, now + LEASE_SECONDS, now, tid),
            )
            (runs,) = self.con.execute("SELECT runs FROM trials WHERE id = ?", (tid,)).fetchone()
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return int(runs)

    def renew(self, owner: str) -> None:
        """Move the lease of every trial ``owner`` is running :data:`LEASE_SECONDS` ahead."""
        self.con.execute(
            "UPDATE trials SET lease = ? WHERE owner = ? AND status = 'running'", (time.time() + LEASE_SECONDS, owner)
        )

    def status(self, tid: str) -> str | None:
        row = self.con.execute("SELECT status FROM trials WHERE id = ?", (tid,)).fetchone()
        return row[0] if row else None

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
