"""``graphprune sensitivity --executor ray``: the groups shared out over Ray workers.

The model and calibration files' bytes go once into Ray's object store; shard ``k`` of ``n``
analyses the model again (the same groups, in the same order) and measures the groups at
positions ``k, k + n, ...`` in a session with every mask inserted, as the single process does,
so the merged result equals the single-process one (:func:`graphprune.planning.sensitivity.merge_shards`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .executors import check_executor, check_ray_files, init_ray


def measure_on_ray(
    model_path: str | os.PathLike,
    calib: str | os.PathLike,
    *,
    workers: int,
    address: str | None = None,
    input_map: dict | None = None,
    **options,
):
    """:func:`graphprune.planning.sensitivity.measure` over ``workers`` shards on Ray."""
    check_executor("ray")
    check_ray_files(model_path, calib)
    import ray

    from ..planning.sensitivity import merge_shards

    started = init_ray(workers, address)
    try:
        model_ref = ray.put(Path(model_path).read_bytes())
        calib_ref = ray.put(Path(calib).read_bytes())
        task = ray.remote(num_cpus=1)(_shard)
        refs = [task.remote(model_ref, calib_ref, (k, workers), dict(input_map or {}), options) for k in range(workers)]
        return merge_shards(ray.get(refs))
    finally:
        if started:
            ray.shutdown()


def _shard(model: bytes, calib: bytes, shard: tuple[int, int], input_map: dict, options: dict):
    import tempfile

    import onnx

    from ..analysis.dependency import analyze
    from ..calibration.datasets import open_dataset
    from ..planning.sensitivity import measure

    with tempfile.TemporaryDirectory(prefix="graphprune-ray-") as d:
        path = os.path.join(d, "calib.npz")
        Path(path).write_bytes(calib)
        proto = onnx.load_from_string(model)
        deps = analyze(proto, inexact="hidden" in options.get("units", ()))
        return measure(proto, deps, open_dataset(path, input_map), shard=shard, **options)
