"""One search trial: prune with the trial's options, validate, measure on TEST.

Rules:
1. A :class:`Worker` loads the model and indexes the data once; every trial it runs reuses
   them (an executor builds one per worker process or Ray actor, never one per trial).
2. A trial prunes through :func:`graphprune.api.prune` (or :func:`graphprune.api.run_passes`
   when residual blocks go first), with validation: a result that fails the checker,
   onnxruntime or exactness is ``failed`` with the reason, and so is an option the model
   refuses (``InputError``); an unexpected exception (a bug) fails the trial with its type and
   message instead of ending the search. Only a validated model is measured.
3. The metric is the pruned model's top-1 accuracy on TEST with labels, else the cosine of its
   outputs to the original's on TEST. MACs and parameters are per sample, as the report counts
   them; latency is the median of interleaved onnxruntime runs of both models on TEST's first
   batch (noisy while other trials run: the search times the front again alone at the end).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

LATENCY_RUNS = 10
_LOADS = 0  # Workers built in this process: one per worker process or actor (rule 1)


@dataclass
class Worker:
    """The model and data one worker keeps between trials (rule 1)."""

    model_path: str
    calib: str
    test: str
    labels: str | None = None
    objective: str = "fidelity"
    input_map: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        from .. import api
        from ..calibration.datasets import open_dataset

        global _LOADS
        _LOADS += 1
        t = time.perf_counter()
        self.model = api.load_model(self.model_path)
        self.calib_ds = open_dataset(self.calib, self.input_map)
        self.test_ds = open_dataset(self.test, self.input_map)
        self.feeds = api.first_batch(self.model, self.test_ds, 32)
        self.load_seconds = time.perf_counter() - t

    def run(self, config: dict) -> dict:
        """The trial's result: ``status``, ``metric``, ratios, ``seconds``, ``timings``, ``error``, ``plan``."""
        from ..errors import GraphpruneError

        t0 = time.perf_counter()
        timings: dict[str, float] = {"worker_pid": os.getpid(), "worker_loads": _LOADS}
        try:
            pruned, report, plan = self.prune(config, timings)
        except GraphpruneError as exc:
            return _failed(f"refused: {exc}", t0, timings)
        except Exception as exc:  # a bug in one trial must not end a search of hours: recorded, reported
            return _failed(
                f"internal error ({type(exc).__name__}: {exc}); this is a bug, please report it", t0, timings
            )
        if not report.passed:
            return _failed(report.why_failed(), t0, timings)
        if not (report.prune.get("channels_removed") or report.prune.get("blocks_removed") or plan):
            return _failed(report.prune.get("nothing_pruned") or "nothing pruned", t0, timings)
        t = time.perf_counter()
        metric = self.measure(pruned)
        timings["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        latency = self.latency_ratio(pruned)
        timings["latency"] = time.perf_counter() - t
        return {
            "status": "done",
            "metric": metric,
            "macs_ratio": report.flops_after / report.flops_before if report.flops_before else None,
            "params_ratio": report.params_after / report.params_before if report.params_before else None,
            "latency_ratio": latency,
            "seconds": time.perf_counter() - t0,
            "timings": timings,
            "error": None,
            "plan": plan,
        }

    def prune(self, config: dict, timings: dict):
        """The pruned model, its report and plan, for ``config`` (timed into ``timings``)."""
        from .. import api
        from ..passes.layer import LayerPruning

        t = time.perf_counter()
        options = dict(
            criterion=config["criterion"],
            round_to=config["round_to"],
            units=tuple(config["units"]),
            calib=self.calib_ds,
            seed=self.seed,
        )
        if config["pass"] == "channel":
            options["ratio"] = config["ratio"]
        else:
            options.update(target_flops=config["target_flops"], target_at_most=config.get("target_at_most", False))
            if config["compensate"] != "none":
                options["compensate"] = config["compensate"]
        if config.get("sensitivity"):
            options["sensitivity"] = self.sensitivity()
        blocks = config.get("remove_blocks", 0)
        if blocks:
            step = LayerPruning(remove_blocks=blocks, criterion="influence", calib=self.calib_ds)
            result = api.run_passes(
                self.model, [step, api.make_pass(config["pass"], **options)], latency=False, feeds=self.feeds
            )
            timings["prune_validate"] = time.perf_counter() - t
            return result.model, result.report, result.plans
        result = api.prune(self.model, pass_=config["pass"], latency=False, feeds=self.feeds, **options)
        timings["prune_validate"] = time.perf_counter() - t
        return result.model, result.report, result.plan.to_json(result.deps) if result.plan.total_removed else None

    def sensitivity(self):
        """Each group's measured drop on the calibration data (top-1 when it has the labels,
        else cosine), measured once per worker, when a trial first needs it."""
        if getattr(self, "_sensitivity", None) is None:
            from ..analysis.dependency import analyze
            from ..planning.sensitivity import measure

            labelled = self.labels is not None and all(self.labels in keys for keys in self.calib_ds.keys)
            self._sensitivity = measure(
                self.model, analyze(self.model), self.calib_ds, labels=self.labels if labelled else None
            )
        return self._sensitivity

    def measure(self, pruned: onnx.ModelProto) -> float:
        """The metric of ``pruned`` on TEST (rule 3)."""
        from ..validation.evaluate import evaluate

        ev = evaluate(self.model, pruned, self.test_ds, labels=self.labels)
        if self.objective == "accuracy":
            return float(ev.accuracy.pruned)
        return float(ev.fidelity.cosine)

    def baseline(self) -> float:
        """The original's metric on TEST (1.0 for fidelity)."""
        from ..validation.evaluate import evaluate

        if self.objective != "accuracy":
            return 1.0
        return float(evaluate(self.model, self.model, self.test_ds, labels=self.labels).accuracy.original)

    def latency_ratio(self, pruned: onnx.ModelProto, rounds: int = LATENCY_RUNS) -> float:
        """Median over ``rounds`` of the pruned model's time over the original's, run alternately."""
        from ..ir.runtime import session

        a, b = session(self.model, optimization="all"), session(pruned, optimization="all")
        feeds = {k: v for k, v in self.feeds.items() if k in {i.name for i in a.get_inputs()}}
        for s in (a, b):
            s.run(None, feeds)
        ratios = []
        for _ in range(rounds):
            t = time.perf_counter()
            a.run(None, feeds)
            ta = time.perf_counter() - t
            t = time.perf_counter()
            b.run(None, feeds)
            tb = time.perf_counter() - t
            ratios.append(tb / ta if ta > 0 else 1.0)
        return float(np.median(ratios))


def _failed(error: str, t0: float, timings: dict) -> dict:
    return {"status": "failed", "error": error, "seconds": time.perf_counter() - t0, "timings": timings}
