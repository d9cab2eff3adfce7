"""graphprune search (issue 14): trials, store, resume after SIGKILL, determinism, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.cli import main
from graphprune.search.front import pareto
from graphprune.search.store import Trial
from models import builders

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "pass": ["filter", "channel"],
    "criterion": ["l2", "activation"],
    "compensate": ["lstsq", "none"],
    "target_flops": [0.5, 0.75],
    "round_to": [1],
    "remove_blocks": [0],
}


def _labelled(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from graphprune.validation.contract import run

    return np.array([run(model, {"input": x[i : i + 1]})[0].argmax() for i in range(len(x))])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small residual classifier, calibration and test data labelled by its own predictions."""
    d = tmp_path_factory.mktemp("search")
    m = builders.residual_net(width=8, blocks=2, num_classes=4, input_shape=[1, 3, 8, 8])
    onnx.save(m, d / "tiny.onnx")
    rng = np.random.default_rng(0)
    for name, n in (("calib", 16), ("test", 24)):
        x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
        np.savez(d / f"{name}.npz", input=x, labels=_labelled(m, x))
    (d / "space.json").write_text(json.dumps(SPACE))
    return d


def _args(d: Path, store: Path, out: Path, *more: str) -> list[str]:
    return [
        "search",
        str(d / "tiny.onnx"),
        "--calib",
        str(d / "calib.npz"),
        "--data",
        str(d / "test.npz"),
        "--labels",
        "--space",
        str(d / "space.json"),
        "--store",
        str(store),
        "--out",
        str(out),
        *more,
    ]


def _rows(store: Path) -> list[tuple]:
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return con.execute("SELECT id, status, metric, macs_ratio, runs, finishes FROM trials ORDER BY seq").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory):
    """One small search with two workers, its --json output and its folders."""
    d = tmp_path_factory.mktemp("run")
    store, out = d / "runs.db", d / "out"
    json_path = d / "result.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(_args(tiny, store, out, "--trials", "10", "--workers", "2", "--json", "-q")) == 0
    json_path.write_text(buf.getvalue())
    return json.loads(buf.getvalue()), store, out


def test_search_json_lists_every_trial_with_the_contract_keys(searched):
    result, store, _ = searched
    keys = {"id", "config", "status", "metric", "macs_ratio", "params_ratio", "latency_ratio", "seconds", "error"}
    assert len(result["trials"]) == 10
    assert all(set(t) == keys for t in result["trials"])
    assert result["ran_now"] == 10
    done = [t for t in result["trials"] if t["status"] == "done"]
    assert len(done) >= 5
    assert all(t["macs_ratio"] < 1 and t["params_ratio"] < 1 and t["latency_ratio"] > 0 for t in done)
    assert all(t["error"] for t in result["trials"] if t["status"] == "failed")
    assert [r[0] for r in _rows(store)] == [t["id"] for t in result["trials"]]


def test_each_worker_loads_the_model_once_for_all_its_trials(searched):
    _, store, _ = searched
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    timings = [json.loads(r[0]) for r in con.execute("SELECT timings FROM trials")]
    con.close()
    assert len(timings) == 10 and all(t["worker_loads"] == 1 for t in timings)
    assert len({t["worker_pid"] for t in timings}) <= 2


def test_search_front_is_the_pareto_front_of_done_trials(searched):
    result, _, _ = searched
    trials = [Trial(t["id"], 0, 0, t["config"], t["status"], t["metric"], t["macs_ratio"]) for t in result["trials"]]
    expected = pareto([t for t in trials if t.status == "done"])
    assert result["front"] == [t.id for t in expected]
    metrics = [t["metric"] for t in result["trials"] if t["id"] in result["front"]]
    assert max(metrics) == max(t["metric"] for t in result["trials"] if t["status"] == "done")


def test_search_outdir_holds_valid_front_models_that_measure_as_stored(searched, tiny):
    result, _, out = searched
    by_id = {t["id"]: t for t in result["trials"]}
    assert json.loads((out / "front.json").read_text())["front"][0]["id"] == result["front"][0]
    page = (out / "trials.html").read_text()
    assert all(t["id"] in page for t in result["trials"]) and "<script src" not in page
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for tid in result["front"]:
        assert json.loads((out / f"{tid}.plan.json").read_text())["config"] == by_id[tid]["config"]
        report = graphprune.validate(
            tiny / "tiny.onnx", out / f"{tid}.onnx", data=tiny / "test.npz", labels=True, latency=False
        )
        assert report.passed
        assert report.accuracy.pruned == pytest.approx(by_id[tid]["metric"], abs=1e-12)
        assert report.flops_after / report.flops_before == pytest.approx(by_id[tid]["macs_ratio"], rel=1e-9)


def test_same_seed_gives_the_same_trials_and_metrics_with_one_worker(searched, tiny, tmp_path, capsys):
    result, _, _ = searched
    assert main(_args(tiny, tmp_path / "again.db", tmp_path / "out", "--trials", "10", "--workers", "1", "--json")) == 0
    again = json.loads(capsys.readouterr().out)
    pick = ("id", "config", "status", "metric", "macs_ratio", "params_ratio")
    assert [{k: t[k] for k in pick} for t in again["trials"]] == [{k: t[k] for k in pick} for t in result["trials"]]
    assert again["front"] == result["front"]


def test_resumed_search_runs_nothing_again(searched, tiny, capsys):
    result, store, out = searched
    assert main(_args(tiny, store, out, "--trials", "10", "--workers", "2", "--json")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ran_now"] == 0
    assert [t["metric"] for t in again["trials"]] == [t["metric"] for t in result["trials"]]
    assert all(r[4] == 1 and r[5] == 1 for r in _rows(store))


def test_sigkilled_search_resumes_without_running_a_finished_trial_twice(tiny, tmp_path):
    store, out = tmp_path / "runs.db", tmp_path / "out"
    cmd = [sys.executable, "-m", "graphprune.cli", *_args(tiny, store, out, "--trials", "6", "--workers", "1", "-q")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    finished_before: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    finished_before = {r[0] for r in _rows(store) if r[1] in ("done", "failed")}
                except sqlite3.Error:
                    pass
                if len(finished_before) >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the search ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.0)  # the orphaned worker notices its search is gone and exits
    finished_before = {r[0] for r in _rows(store) if r[1] in ("done", "failed")}
    assert 2 <= len(finished_before) < 6
    rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = _rows(store)
    assert len(rows) == 6 and all(r[1] in ("done", "failed") for r in rows)
    assert all(r[5] == 1 for r in rows), "a trial's result was recorded twice"
    assert all(r[4] == 1 for r in rows if r[0] in finished_before), "a finished trial was started again"


def test_a_claimed_trial_is_taken_over_only_when_its_claim_lapses(tmp_path):
    import socket

    from graphprune.search.store import Store, owner_token

    db = Store(tmp_path / "runs.db", "sha", "m.onnx")
    db.add("t1", 0, {"pass": "filter"})
    mine, other = owner_token(), owner_token()
    assert db.claim("t1", mine) == 1
    assert db.claim("t1", other) is None  # held, its lease running
    db.renew(mine)
    db.con.execute("UPDATE trials SET lease = 0")  # not renewed for a lease: lapsed
    assert db.claim("t1", other) == 2
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()}:{int(gone.stdout)}:0000"
    db.con.execute("UPDATE trials SET owner = ?, lease = 1e18", (dead,))  # a SIGKILLed search of this host
    assert db.claim("t1", mine) == 3
    assert not db.finish("t1", 2, {"status": "done", "metric": 0.5})  # the replaced attempt cannot record
    assert db.finish("t1", 3, {"status": "done", "metric": 0.9})
    assert db.claim("t1", other) is None and db.get("t1").metric == 0.9
    db.close()


DIGITS = ROOT / "models" / "examples" / "digits"
CHEAP_SPACE = {  # filter trials without calibration or sensitivity: a few seconds each on the digits CNN
    "pass": ["filter"],
    "criterion": ["l2", "fpgm"],
    "compensate": ["none"],
    "target_flops": [0.5, 0.6, 0.75],
    "round_to": [8],
    "remove_blocks": [0],
    "sensitivity": [False],
}


def test_two_searches_on_one_store_run_every_trial_once_and_share_the_results(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps(CHEAP_SPACE))
    store = tmp_path / "runs.db"

    def command(k: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "graphprune.cli",
            "search",
            str(DIGITS / "digits_cnn.onnx"),
            "--calib",
            str(DIGITS / "digits_calib.npz"),
            "--data",
            str(DIGITS / "digits_test.npz"),
            "--labels",
            "--space",
            str(tmp_path / "space.json"),
            "--trials",
            "4",
            "--workers",
            "1",
            "--store",
            str(store),
            "--out",
            str(tmp_path / f"out{k}"),
            "--json",
            "-q",
        ]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(command(k), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    rows = _rows(store)
    assert len(rows) == 4 and all(r[1] in ("done", "failed") for r in rows)
    assert all(r[4] == 1 for r in rows), "a trial was started by both searches"
    assert all(r[5] == 1 for r in rows), "a trial's result was recorded twice"
    assert first["ran_now"] + second["ran_now"] == 4  # each ran its share, none lost
    pick = ("id", "config", "status", "metric", "macs_ratio")
    assert [{k: t[k] for k in pick} for t in first["trials"]] == [{k: t[k] for k in pick} for t in second["trials"]]
    assert first["front"] == second["front"]


def _store_state(store: Path) -> tuple[bytes, list]:
    return store.read_bytes(), _rows(store)


@pytest.mark.parametrize(
    "change, message",
    [
        (("--executor", "spark"), "unknown executor 'spark'"),
        (("--ray-address", "auto"), "--ray-address needs --executor ray"),
        (("--space", "BADSPACE"), "unknown criterion"),
        (("MODEL", "OTHER"), "store of another model"),
        (("--executor", "ray", "NO-RAY"), "pip install 'graphprune[ray]'"),
    ],
)
def test_bad_input_is_one_line_exit_2_store_untouched(searched, tiny, tmp_path, capsys, monkeypatch, change, message):
    _, store, out = searched
    before = _store_state(store)
    if change[-1] == "NO-RAY":
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
        change = change[:-1]
    args = _args(tiny, store, out, "--trials", "10")
    if change[0] == "--space":
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"criterion": ["l2", "l7"]}))
        args[args.index("--space") + 1] = str(bad)
    elif change[0] == "MODEL":
        other = builders.residual_net(width=8, blocks=2, num_classes=4, input_shape=[1, 3, 8, 8], seed=1)
        onnx.save(other, tmp_path / "other.onnx")
        args[1] = str(tmp_path / "other.onnx")
    else:
        args += list(change)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert _store_state(store) == before


def test_ray_executor_without_ray_is_one_line_exit_2(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    store = tmp_path / "runs.db"
    assert main(_args(tiny, store, tmp_path / "out", "--trials", "2", "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'graphprune[ray]'" in err
    assert not store.exists()


def test_ray_executor_gives_the_local_executors_trials_and_metrics(searched, tiny, tmp_path, capsys):
    pytest.importorskip("ray")
    result, _, _ = searched
    args = _args(tiny, tmp_path / "ray.db", tmp_path / "out", "--trials", "10", "--workers", "2", "--json", "-q")
    assert main([*args, "--executor", "ray"]) == 0  # a local Ray started with num_cpus=2, then shut down
    on_ray = json.loads(capsys.readouterr().out)
    pick = ("id", "config", "status", "metric", "macs_ratio", "params_ratio", "error")
    assert [{k: t[k] for k in pick} for t in on_ray["trials"]] == [{k: t[k] for k in pick} for t in result["trials"]]
    assert on_ray["front"] == result["front"] and on_ray["ran_now"] == 10
