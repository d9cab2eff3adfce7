"""The search loop: propose, run, record, resume.

Rules:
1. Every input is checked before the store is opened for writing: the executor (and Ray
   being installed), the space, the model, the data, the labels, the store's model (its
   content hash) and the settings the store was made with (space, seed, objective, data).
2. Trials are proposed in rounds (``space`` rule 3): the design, then refinements around the
   front of the finished trials. A round's stored trials that are final are not run again;
   pending and running ones are, ``workers`` at a time.
3. At the end every front model is built again in this process (the same options give the
   same model, validated again) and timed alone against the original, so its latency ratio
   is not disturbed by the trials that ran beside it; the result says so.
4. Several searches may share a store (same model and settings): each claims a trial before
   running it (``store`` rule 5) and renews its claims from a heartbeat thread while it runs;
   a trial another search holds is waited for, not run, and its result counts for both. So
   the rounds, and the trials in them, are the same as one search alone would run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from . import front as front_mod
from .executors import check_executor, make_executor
from .space import Space, design, load_space, refine, trial_id
from .store import FINAL, LEASE_SECONDS, Store, Trial, model_hash, owner_token

RETIME_ROUNDS = 30
POLL_SECONDS = 0.5  # how often a search waiting on another search's trials looks again (rule 4)


@dataclass
class SearchResult:
    """What ``graphprune search`` reports (``to_json`` is its ``--json``)."""

    trials: list[Trial]
    front: list[str]
    ran_now: int
    baseline: float
    objective: str
    retimed: list[str] = field(default_factory=list)
    models: dict[str, object] = field(default_factory=dict)  # front id -> pruned ModelProto

    def to_json(self) -> dict:
        return {
            "trials": [t.to_json() for t in self.trials],
            "front": self.front,
            "ran_now": self.ran_now,
            "objective": self.objective,
            "baseline": self.baseline,
            "latency_note": (
                f"latency_ratio of the {len(self.retimed)} front trials was timed again alone after the search"
                " (median of interleaved runs against the original); the others' were timed beside other trials"
            ),
        }


def search(
    model: str | os.PathLike,
    *,
    calib: str | os.PathLike,
    data: str | os.PathLike,
    store: str | os.PathLike,
    trials: int,
    labels: str | None = None,
    space: str | os.PathLike | Space | None = None,
    workers: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    objective: str | None = None,
    max_latency: float | None = None,
    max_flops: float | None = None,
    seed: int = 0,
    input_map: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search the pruning configurations of ``model`` (rules 1-3); results in ``store``."""
    from .. import api
    from ..calibration.datasets import open_dataset
    from ..validation.evaluate import check_labels

    check_executor(executor)
    if ray_address and executor != "ray":
        raise InputError("search: --ray-address needs --executor ray")
    sp = space if isinstance(space, Space) else load_space(space)
    if trials < 1:
        raise InputError(f"--trials must be a positive integer, got {trials}")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"--workers must be a positive integer, got {workers}")
    if max_latency is not None and max_flops is not None:
        raise InputError("search: --max-latency and --max-flops cannot be combined")
    for name, v in (("--max-latency", max_latency), ("--max-flops", max_flops)):
        if v is not None and not v > 0:
            raise InputError(f"{name} must be a positive ratio to the original, got {v}")
    objective = objective or ("accuracy" if labels else "fidelity")
    if objective not in ("accuracy", "fidelity"):
        raise InputError(f"unknown objective {objective!r}; choose from accuracy, fidelity")
    if objective == "accuracy" and not labels:
        raise InputError("--objective accuracy needs --labels: the class labels of --data")
    api.load_model(model)  # a clear error for a file that is not a model
    open_dataset(calib, input_map)
    test = open_dataset(data, input_map)
    if labels:
        check_labels(test, labels)
    key = model_hash(model)
    settings = json.dumps(
        {
            "space": sp.to_json(),
            "seed": seed,
            "objective": objective,
            "labels": labels,
            "calib": str(Path(calib).resolve()),
            "data": str(Path(data).resolve()),
        },
        sort_keys=True,
    )
    _check_settings(store, key, Path(model).name, settings)
    db = Store(store, key, Path(model).name, settings)
    say = progress or (lambda msg: None)
    worker_args = dict(
        model_path=str(Path(model).resolve()),
        calib=str(Path(calib).resolve()),
        test=str(Path(data).resolve()),
        labels=labels,
        objective=objective,
        input_map=dict(input_map or {}),
        seed=seed,
    )
    ran_now = 0
    ex = None
    owner = owner_token()
    heartbeat = _Heartbeat(store, owner)
    try:
        round_no, proposals = 0, design(sp, seed)[:trials]
        sequence: list[str] = []
        while proposals:
            for c in proposals:
                tid = trial_id(c)
                db.add(tid, round_no, c)
                sequence.append(tid)
            todo = [t for t in db.trials() if t.id in set(sequence) and t.status not in FINAL]
            if todo:
                if ex is None:
                    say(f"starting {workers} {executor} worker{'s' if workers > 1 else ''} ...")
                    ex = make_executor(executor, worker_args, str(store), workers, ray_address)
                ran_now += _run_round(db, ex, todo, workers, sequence, trials, say, max_flops, max_latency, owner)
            done = [t for t in db.trials() if t.id in set(sequence)]
            if len(sequence) >= trials:
                break
            round_no += 1
            fr = _front(done, max_flops, max_latency) or front_mod.pareto(front_mod.feasible(done))
            proposals = refine(sp, [t.config for t in fr], set(sequence), seed, round_no)
            proposals = proposals[: trials - len(sequence)]
    finally:
        heartbeat.stop()
        if ex is not None:
            ex.close()
    final = [t for t in db.trials() if t.id in set(sequence)]
    fr = _front(final, max_flops, max_latency)
    say(f"rebuilding and timing the {len(fr)} front models alone ...")
    from .trial import Worker

    w = Worker(**worker_args)
    models = {}
    for t in fr:
        pruned, report, _ = w.prune(t.config, {})
        if not report.passed:  # the same options gave a model that fails now: say so, keep the row
            raise RuntimeError(f"trial {t.id} passed in the search but its rebuild failed validation")
        models[t.id] = pruned
        db.set_latency(t.id, w.latency_ratio(pruned, rounds=RETIME_ROUNDS))
    baseline = w.baseline()
    final = [t for t in db.trials() if t.id in set(sequence)]
    db.close()
    order = {tid: k for k, tid in enumerate(sequence)}
    final.sort(key=lambda t: order[t.id])
    return SearchResult(
        trials=final,
        front=[t.id for t in fr],
        ran_now=ran_now,
        baseline=baseline,
        objective=objective,
        retimed=[t.id for t in fr],
        models=models,
    )


def _check_settings(store, key: str, name: str, settings: str) -> None:
    """Refuse, read-only, a store of another model or made with other settings (rule 1)."""
    import sqlite3

    from .store import check_store

    check_store(store, key, name)
    if not Path(store).exists():
        return
    try:
        con = sqlite3.connect(f"file:{Path(store)}?mode=ro", uri=True, timeout=60.0)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:  # check_store passed it: another search is creating it (Store checks again)
        return
    if row is not None and row[0] != settings:
        old, new = json.loads(row[0]), json.loads(settings)
        diff = [k for k in new if old.get(k) != new[k]]
        raise InputError(
            f"{store}: store of a search with other settings ({', '.join(diff)} differ); resume with the same"
            " space, seed, objective and data, or use a new --store"
        )


def _front(trials: list[Trial], max_flops, max_latency) -> list[Trial]:
    return front_mod.pareto(front_mod.feasible(trials, max_flops, max_latency))


class _Heartbeat:
    """Renews the leases of the trials ``owner`` runs, from a thread with its own connection
    (rule 4), every quarter of :data:`LEASE_SECONDS`."""

    def __init__(self, path, owner: str):
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(path, owner), daemon=True)
        self.thread.start()

    def _beat(self, path, owner: str) -> None:
        db = Store(path)
        try:
            while not self.done.wait(LEASE_SECONDS / 4):
                db.renew(owner)
        finally:
            db.close()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _run_round(
    db: Store, ex, todo: list[Trial], workers: int, sequence, total: int, say, max_flops, max_latency, owner: str
) -> int:
    """Run ``todo`` with at most ``workers`` in flight, claiming each trial first and waiting
    for those another search holds (rule 4); the number of results this search recorded."""
    queue = list(todo)
    running: list = []
    ran = 0
    while queue or running:
        for t in list(queue):
            if len(running) >= workers:
                break
            attempt = db.claim(t.id, owner)
            if attempt is not None:
                queue.remove(t)
                running.append(ex.submit(t.id, attempt, t.config))
            elif db.status(t.id) in FINAL:  # another search finished it
                queue.remove(t)
        if not running:
            if queue:  # the rest are held by another search: wait for them
                time.sleep(POLL_SECONDS)
            continue
        # with a free worker and trials held elsewhere, look again soon: their claim may lapse
        results, running = ex.wait(running, timeout=POLL_SECONDS if queue else None)
        for tid, attempt, result, recorded in results:
            if not ex.records:
                recorded = db.finish(tid, attempt, result)
            ran += bool(recorded)
        if results:
            say(_progress_line(db, sequence, total, len(running), max_flops, max_latency))
    return ran


def _progress_line(db: Store, sequence, total: int, running: int, max_flops, max_latency) -> str:
    """Trials done, running and failed of the ``total`` asked for (``--trials``; a search whose
    refinement runs out of new configurations ends before it), and the best so far."""
    ids = set(sequence)
    rows = [t for t in db.trials() if t.id in ids]
    done = sum(t.status == "done" for t in rows)
    failed = sum(t.status == "failed" for t in rows)
    fr = _front(rows, max_flops, max_latency)
    best = ""
    if fr:
        b = fr[0]
        best = f"; best so far {b.metric:.4f} at {b.macs_ratio:.3f} of the MACs ({b.id})"
    return f"trials done {done}, running {running}, failed {failed} of {total}{best}"
