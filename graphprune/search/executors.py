"""Where trials run: a local process pool, or Ray.

Rules:
1. Both keep at most ``workers`` trials in flight and hand back results as they finish;
   each worker builds its :class:`~graphprune.search.trial.Worker` (model and data) once.
2. ``local``: spawned processes get the model and data by path (one machine, one file
   system); each records its own results in the store (several writers, store rule 4), and
   exits when the search that started it is gone (a killed search leaves no workers behind).
   Each runs numpy's BLAS on one thread: a worker has one core, as a Ray worker has.
3. ``ray``: ``ray.init(address=...)`` (``auto``: a running cluster), or a local Ray with
   ``workers`` CPUs when no address is given. The model and data files' bytes are put once
   into Ray's object store and every actor receives the references, so nodes without the
   files work too; the driver records the results.
4. Without Ray installed, ``ray`` is an ``InputError`` before anything is started or written.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from pathlib import Path

from ..errors import InputError

EXECUTORS = ("local", "ray")
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_WORKER = None  # the local worker process's Worker
_STORE = None


def check_executor(name: str) -> None:
    """Refuse an unknown executor, or ``ray`` without Ray installed (rule 4)."""
    if name not in EXECUTORS:
        raise InputError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InputError("--executor ray needs Ray: pip install 'graphprune[ray]'") from None


def _init_local(worker_args: dict, store_path: str, parent: int) -> None:
    global _WORKER, _STORE
    from .store import Store
    from .trial import Worker

    def watch() -> None:  # rule 2: an orphan (its search was killed) stops
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    _WORKER = Worker(**worker_args)
    _STORE = Store(store_path)


def _ready() -> int:
    return os.getpid()


def _run_local(tid: str, attempt: int, config: dict) -> tuple[str, int, dict, bool]:
    result = _WORKER.run(config)
    recorded = _STORE.finish(tid, attempt, result)
    return tid, attempt, result, recorded


class LocalExecutor:
    """A pool of spawned processes (rule 2)."""

    records = True  # workers write their own results

    def __init__(self, worker_args: dict, store_path: str, workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_local,
            initargs=(worker_args, store_path, os.getpid()),
        )
        self.workers = workers
        # every worker is started now, with one BLAS/OpenMP thread (it has one core, as a Ray
        # worker has): numpy's threads fighting over the cores made lstsq trials 2-3x slower
        saved = {k: os.environ.get(k) for k in ONE_THREAD}
        os.environ.update(dict.fromkeys(ONE_THREAD, "1"))
        try:
            cf.wait([self.pool.submit(_ready) for _ in range(workers)])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def submit(self, tid: str, attempt: int, config: dict):
        return self.pool.submit(_run_local, tid, attempt, config)

    def wait(self, handles: list, timeout: float | None = None) -> tuple[list, list]:
        """``(finished results, handles still running)``; blocks until one finishes, or
        ``timeout`` seconds pass (then nothing may have finished)."""
        done, rest = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [h.result() for h in done], list(rest)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def check_ray_files(model: str | os.PathLike, *data: str | os.PathLike) -> None:
    """Ray gets each file's bytes: a model with external data, or a folder of data, is refused
    before Ray starts (the model must have been loaded in this process, as the search does)."""
    from ..ir.files import had_external_data

    if had_external_data(model):
        raise InputError(f"{model}: --executor ray sends the model as one file; external data is not supported yet")
    for p in data:
        if Path(p).is_dir():
            raise InputError(f"{p}: --executor ray sends data as one file; a folder of .npz is not supported yet")


def init_ray(workers: int, address: str | None) -> bool:
    """Join ``address`` (``auto``: a running cluster) or start a local Ray with ``workers``
    CPUs (rule 3); True if this call started it (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return True
    # a local Ray runs the graphprune this driver imported, wherever it is installed
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=workers,
        logging_level="ERROR",
        log_to_driver=False,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    return True


class RayExecutor:
    """Ray actors, one per worker, fed by reference from the object store (rule 3)."""

    records = False  # the driver writes: workers may be on machines without the store

    def __init__(self, worker_args: dict, workers: int, address: str | None = None):
        import ray

        check_ray_files(worker_args["model_path"], worker_args["calib"], worker_args["test"])
        self.ray = ray
        self.started = init_ray(workers, address)
        files = {k: worker_args[k] for k in ("model_path", "calib", "test")}
        refs = {k: ray.put(Path(p).read_bytes()) for k, p in files.items()}  # once, shared by every actor
        rest = {k: v for k, v in worker_args.items() if k not in files}
        actor = ray.remote(num_cpus=1)(_RayWorker)
        self.actors = [actor.remote(refs["model_path"], refs["calib"], refs["test"], rest) for _ in range(workers)]
        self.idle = list(self.actors)
        self.busy: dict = {}
        self.workers = workers

    def submit(self, tid: str, attempt: int, config: dict):
        actor = self.idle.pop()
        ref = actor.run.remote(tid, attempt, config)
        self.busy[ref] = actor
        return ref

    def wait(self, handles: list, timeout: float | None = None) -> tuple[list, list]:
        done, rest = self.ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            self.idle.append(self.busy.pop(ref))
            out.append(self.ray.get(ref))
        return out, list(rest)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


class _RayWorker:
    """A Ray actor holding one :class:`Worker`; the files' bytes arrive once, by reference."""

    def __init__(self, model: bytes, calib: bytes, test: bytes, rest: dict):
        import tempfile

        from .trial import Worker

        self.dir = tempfile.mkdtemp(prefix="graphprune-ray-")
        paths = {}
        for key, data, name in (
            ("model_path", model, "model.onnx"),
            ("calib", calib, "calib.npz"),
            ("test", test, "test.npz"),
        ):
            paths[key] = os.path.join(self.dir, name)
            Path(paths[key]).write_bytes(data)
        self.worker = Worker(**paths, **rest)

    def run(self, tid: str, attempt: int, config: dict) -> tuple[str, int, dict, bool]:
        return tid, attempt, self.worker.run(config), False


def make_executor(name: str, worker_args: dict, store_path: str, workers: int, address: str | None = None):
    check_executor(name)
    if name == "ray":
        return RayExecutor(worker_args, workers, address)
    return LocalExecutor(worker_args, store_path, workers)
