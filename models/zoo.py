"""The architecture zoo: torchvision models exported to ONNX, stored as skeletons.

``models/zoo_data`` holds, per model, ``manifest.json`` plus for each exporter
(``torchscript``, ``dynamo``) a skeleton graph ``<model>.<exporter>.skel.onnx`` and a sidecar
``<model>.<exporter>.skel.json``. A skeleton is the complete exported graph except that
large float tensors (initializers, and ``Constant`` node values) keep their ``dims`` and
``data_type`` but have no data. The sidecar has ``{"format": "onnx-skeleton-v1",
"threshold": N, "tensors": {KEY: {"where", "mean", "std", "min", "max"}}}`` with KEY the
initializer name or the Constant node's output name.

:func:`load` refills each stripped tensor from its statistics, with its own generator
``np.random.default_rng([seed, zlib.crc32(KEY)])``:

* BatchNormalization running variances (input 4): Uniform(min, max), so they stay positive;
* tensors with ``std == 0``: the constant ``mean``;
* everything else: Normal(mean, std), not clipped.

Values are random; only the graphs are realistic.

CLI::

    python -m models.zoo NAME OUT.onnx [--exporter torchscript|dynamo] [--seed N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

__all__ = [
    "DATA_DIR",
    "exporters",
    "input_shape",
    "load",
    "manifest",
    "names",
    "output_shape",
    "skeleton_path",
    "stats_path",
]

DATA_DIR = pathlib.Path(__file__).resolve().parent / "zoo_data"
SKELETON_FORMAT = "onnx-skeleton-v1"

_FLOAT_DTYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
}


@functools.lru_cache(maxsize=1)
def _index() -> tuple[dict, ...]:
    with open(DATA_DIR / "index.json", encoding="utf-8") as f:
        return tuple(json.load(f)["models"])


def names() -> list[str]:
    """All model names in the zoo, sorted."""
    return sorted({row["name"] for row in _index()})


@functools.cache
def _manifest_text(name: str) -> str:
    if name not in names():
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(names())}")
    return (DATA_DIR / name / "manifest.json").read_text(encoding="utf-8")


def manifest(name: str) -> dict:
    """The model's ``manifest.json`` (a fresh dict on every call)."""
    return json.loads(_manifest_text(name))


def _export(name: str, exporter: str) -> dict:
    for entry in manifest(name)["exports"]:
        if entry["exporter"] == exporter:
            if not entry.get("ok"):
                raise ValueError(
                    f"{name}: the {exporter} export failed ({entry.get('error_stage')}: {entry.get('error')})"
                )
            return entry
    raise KeyError(f"{name}: no export by {exporter!r}; available: {exporters(name)}")


def exporters(name: str) -> list[str]:
    """The exporters whose export of ``name`` succeeded (``ok`` is true)."""
    return [e["exporter"] for e in manifest(name)["exports"] if e.get("ok")]


def skeleton_path(name: str, exporter: str = "torchscript") -> pathlib.Path:
    """Path of the skeleton ``.skel.onnx`` file."""
    return DATA_DIR / name / _export(name, exporter)["files"]["skeleton"]


def stats_path(name: str, exporter: str = "torchscript") -> pathlib.Path:
    """Path of the sidecar ``.skel.json`` statistics file."""
    return DATA_DIR / name / _export(name, exporter)["files"]["stats"]


def input_shape(name: str, exporter: str = "torchscript") -> list[int]:
    """Shape of the (first) graph input, e.g. ``[1, 3, 224, 224]``."""
    return list(_export(name, exporter)["inputs"][0]["shape"])


def output_shape(name: str, exporter: str = "torchscript") -> list[int]:
    """Shape of the (first) graph output as run in onnxruntime, e.g. ``[1, 1000]``."""
    return list(_export(name, exporter)["outputs"][0]["shape"])


# ---------------------------------------------------------------------------- refilling


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) nested in it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _has_data(t: TensorProto) -> bool:
    return bool(
        t.raw_data
        or t.float_data
        or t.double_data
        or t.int32_data
        or t.int64_data
        or t.uint64_data
        or t.string_data
        or t.data_location == TensorProto.EXTERNAL
    )


def _is_stripped(t: TensorProto) -> bool:
    return len(t.dims) > 0 and int(np.prod(t.dims)) > 0 and not _has_data(t)


def _stripped_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """(key, tensor) for every stripped initializer and Constant ``value`` in all graphs."""
    for graph in _graphs(model.graph):
        for t in graph.initializer:
            if _is_stripped(t):
                yield t.name, t
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and _is_stripped(attr.t):
                        yield node.output[0], attr.t


def _bn_variances(model: onnx.ModelProto) -> set[str]:
    return {
        node.input[4]
        for graph in _graphs(model.graph)
        for node in graph.node
        if node.op_type == "BatchNormalization" and len(node.input) > 4
    }


def _draw(key: str, stats: dict, shape: tuple[int, ...], dtype, uniform: bool, seed: int):
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    mean, std = float(stats["mean"]), float(stats["std"])
    work = np.float64 if dtype == np.float64 else np.float32
    if uniform:
        values = rng.uniform(float(stats["min"]), float(stats["max"]), size=shape).astype(work)
    elif std == 0.0:
        values = np.full(shape, mean, dtype=work)
    else:
        values = rng.standard_normal(size=shape, dtype=work)
        values *= work(std)
        values += work(mean)
    return values.astype(dtype, copy=False)


def materialize(model: onnx.ModelProto, stats: dict, seed: int = 0) -> onnx.ModelProto:
    """Refill, in place, every stripped tensor of a skeleton ``model`` from ``stats``
    (the parsed sidecar JSON). Returns ``model``.

    Each tensor has its own generator, so the result does not depend on the order of
    drawing; draws run in a few threads (numpy releases the GIL while filling arrays).
    """
    if stats.get("format") != SKELETON_FORMAT:
        raise ValueError(f"unsupported skeleton format {stats.get('format')!r}")
    table = stats["tensors"]
    variances = _bn_variances(model)
    jobs = []
    for key, tensor in _stripped_tensors(model):
        if key not in table:
            raise KeyError(f"stripped tensor {key!r} has no statistics")
        dtype = _FLOAT_DTYPES.get(tensor.data_type)
        if dtype is None:
            raise TypeError(f"{key!r}: cannot refill a tensor of type {TensorProto.DataType.Name(tensor.data_type)}")
        jobs.append((tensor, (key, table[key], tuple(tensor.dims), dtype, key in variances, seed)))

    def draw_bytes(args) -> bytes:
        values = _draw(*args)
        return values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()

    workers = max(1, min(4, os.cpu_count() or 1, len(jobs)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (tensor, _), data in zip(jobs, pool.map(draw_bytes, [a for _, a in jobs]), strict=True):
            tensor.raw_data = data
    return model


def load(name: str, exporter: str = "torchscript", seed: int = 0) -> onnx.ModelProto:
    """Load zoo model ``name`` as exported by ``exporter`` with every stripped tensor refilled.

    Deterministic for a given ``seed``. The result passes ``onnx.checker.check_model`` and
    runs in onnxruntime.
    """
    model = onnx.load(str(skeleton_path(name, exporter)))
    with open(stats_path(name, exporter), encoding="utf-8") as f:
        stats = json.load(f)
    return materialize(model, stats, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.zoo", description="Write a materialized zoo model.")
    parser.add_argument("name", help=f"one of: {', '.join(names())}")
    parser.add_argument("out", type=pathlib.Path, help="output .onnx path")
    parser.add_argument("--exporter", default="torchscript", help="torchscript (default) or dynamo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        model = load(args.name, args.exporter, args.seed)
    except (KeyError, ValueError) as e:
        parser.error(str(e.args[0] if e.args else e))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
