"""Per-layer latency tables, measured with onnxruntime on this machine, and the latency
model they give a plan.

Rules:
1. A *layer* is a Conv, a Gemm or a MatMul with a constant weight whose input or output
   channel axis belongs to a prunable group. Each is measured alone: a one-node model with
   the same op, attributes, spatial sizes and weight shape, with the channel counts on a grid
   (multiples of the runtime's channel block up to the full width, at most ``max_points`` of
   them, plus the full width: see :mod:`graphprune.objectives.hardware`):
   one curve over input channels (output full), one over output channels (input full); a
   grouped Conv (depthwise too) loses whole conv groups, so it has one curve over both (at
   multiples of its input channels per group). Latency is the median of ``repeats`` runs with
   ``threads`` intra-op threads, the points of a layer timed in interleaved rounds, less the
   cost of running an empty model; a curve is made non-decreasing (a count measured slower
   than a larger one is noise).
2. Layers with the same configuration (resnet repeats its blocks) are measured once.
3. The latency of a layer at ``(c_in, c_out)`` is ``T_in(c_in) * T_out(c_out) / T_full``
   (curves interpolated between grid points), times the measured/separable ratio of a third
   curve where both counts shrink together (at the same geometric-mean shrink), scaled to the
   layer's kernel time inside the whole model (onnxruntime's profile, matched by node or fused
   output name): alone, a layer also pays for layout changes the model does not. The model's latency is
   its measured latency, less the layers at full width (the rest, scaled by the MACs of the
   other ops: activations, pooling, layout changes follow activation sizes), plus the layers
   at their pruned widths.
4. A table is cached as JSON (written atomically), keyed by a hash of the graph's structure
   (ops, attributes, tensor names and shapes, not weight values), the machine, the
   onnxruntime version, the threads and the grid; a table whose key differs is measured again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..analysis.dependency import DependencyGraph
from ..ir.files import cache_dir
from .cost_model import CostModel

FORMAT = "graphprune-latency-v5"
Progress = Callable[[str], None]


def grid(width: int, max_points: int = 12, step: int = 8) -> list[int]:
    """Channel counts a curve is measured at: multiples of a stride (``step``, the runtime's
    channel block, or a multiple of it, so at most ``max_points`` counts; 1 for widths under
    two steps) below ``width``, and ``width``. On multiples of the block the measured points
    are where latency steps, not in between."""
    if width < 2 * step:
        stride = max(1, math.ceil(width / max_points))
    else:
        stride = step * math.ceil(width / (step * max_points))
    return [*range(stride, width, stride), width]


def machine() -> dict:
    """What a measurement depends on besides the model."""
    from ..ir.runtime import ort as _quiet_ort

    ort = _quiet_ort()  # its default logger set to fatal errors only (graphprune.ir.runtime)

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count(), "onnxruntime": ort.__version__}


def structure_hash(model: onnx.ModelProto) -> str:
    """A hash of what latency depends on: ops, attributes, names and shapes (not weight values)."""
    h = hashlib.sha256()
    g = model.graph
    for n in g.node:
        h.update(f"{n.domain}:{n.op_type}|{','.join(n.input)}|{','.join(n.output)}".encode())
        for a in n.attribute:
            h.update(a.SerializeToString())
    for t in g.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)}".encode())
    for vi in list(g.input) + list(g.output):
        h.update(vi.SerializeToString())
    return h.hexdigest()


# ---------------------------------------------------------------------------- layers


@dataclass
class Layer:
    """One measured node: where its channel axes are, and its curves (counts -> ms)."""

    node: str
    config: str  # JSON of what the measurement depends on; equal configs are measured once
    dim_in: tuple[str, int] | None  # the tensor axis of its input channels, if prunable
    dim_out: tuple[str, int] | None
    full_in: int
    full_out: int
    grouped: bool = False  # a grouped Conv: input and output channels shrink together (whole conv groups)
    per_group: int = 1  # its input channels per conv group
    curves: dict[str, dict[str, list]] = field(default_factory=dict)  # "in"/"out"/"both" -> counts, ms
    full_ms: float = 0.0
    context_ms: float | None = None  # its kernel time inside the whole model (profiled), if found
    outputs: tuple[str, ...] = ()  # its output and those of the ops onnxruntime may fuse into it


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: _jsonable(helper.get_attribute_value(a)) for a in node.attribute}


def _jsonable(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, int | float | str):
        return v
    return str(v)


def find_layers(deps: DependencyGraph, cm: CostModel) -> list[Layer]:
    """The layers of rule 1, with their configurations."""
    mv = deps.view
    out = []
    for i, node in enumerate(mv.nodes):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if len(node.input) < 2 or not mv.is_weight(node.input[1]):  # an initializer or a Constant node, maybe Cast
            continue
        x, w, y = node.input[0], node.input[1], node.output[0]
        xs, ws, ys = mv.shapes.get(x), mv.shapes.get(w), mv.shapes.get(y)
        if not xs or not ws or not ys or any(d is None for d in (*xs, *ws, *ys)):
            continue
        attrs = _attrs(node)
        if node.op_type == "Conv":
            ax_in, ax_out = (x, 1), (y, 1)
        elif node.op_type == "Gemm":
            if attrs.get("transA", 0) or len(xs) != 2:
                continue
            ax_in, ax_out = (x, 1), (y, 1)
        else:
            if len(ws) != 2:
                continue
            ax_in, ax_out = (x, len(xs) - 1), (y, len(ys) - 1)
        rin, rout = cm.dim_row(*ax_in), cm.dim_row(*ax_out)
        if rin is None and rout is None:
            continue
        grouped = node.op_type == "Conv" and attrs.get("group", 1) > 1
        has_bias = len(node.input) > 2 and bool(node.input[2])
        config = json.dumps(
            [node.op_type, attrs, list(xs), list(ws), has_bias, rin is not None, rout is not None], sort_keys=True
        )
        out.append(
            Layer(
                node=mv.node_names[i],
                config=config,
                dim_in=ax_in if rin is not None else None,
                dim_out=ax_out if rout is not None else None,
                full_in=int(xs[ax_in[1]]),
                full_out=int(ys[ax_out[1]]),
                grouped=grouped,
                per_group=int(ws[1]) if grouped else 1,
                outputs=_fusable_outputs(mv, y),
            )
        )
    return out


_FUSABLE = {"Relu", "Clip", "Add", "BatchNormalization", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu"}


def _fusable_outputs(mv, y: str) -> tuple[str, ...]:
    """``y`` and the outputs of the chain of single-consumer activations (and residual Adds)
    after it: onnxruntime names a fused conv by the last of them."""
    out = [y]
    for _ in range(3):
        users = mv.consumers.get(out[-1], [])
        if len(users) != 1 or mv.nodes[users[0][0]].op_type not in _FUSABLE:
            break
        out.append(mv.nodes[users[0][0]].output[0])
    return tuple(out)


def _in_context(model: onnx.ModelProto, layers: list[Layer], threads: int, runs: int) -> float:
    """Profile the whole model with onnxruntime: set each layer's ``context_ms`` (median kernel
    time of the node it became, matched by name) and return the model's median latency."""
    import tempfile

    from ..ir.runtime import session
    from ..objectives.cost import random_feeds

    by_name: dict[str, Layer] = {}
    for ly in layers:
        by_name[ly.node] = ly
        for t in ly.outputs:
            by_name[t] = ly
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(model, threads=threads, profile_prefix=os.path.join(tmp, "profile"))
        feeds = random_feeds(model)
        times = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    durations: dict[str, list[float]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        name = name[: -len("_kernel_time")]
        name = name[: -len("_nchwc")] if name.endswith("_nchwc") else name
        if name in by_name:
            durations.setdefault(name, []).append(e.get("dur", 0) / 1000.0)
    per_layer: dict[str, float] = {}
    for name, ds in durations.items():
        ly = by_name[name]
        per_layer[ly.node] = per_layer.get(ly.node, 0.0) + statistics.median(ds[1:] or ds)
    for ly in layers:
        ly.context_ms = per_layer.get(ly.node)
    return statistics.median(times[1:]) * 1000.0


def layer_model(layer_config: str, c_in: int, c_out: int) -> onnx.ModelProto:
    """A one-node model of a layer configuration with ``c_in`` input and ``c_out`` output channels."""
    op, attrs, xs, ws, has_bias, _, _ = json.loads(layer_config)
    attrs = dict(attrs)
    xs, ws = list(xs), list(ws)
    rng = np.random.default_rng(0)
    if op == "Conv":
        xs[1] = c_in
        if attrs.get("group", 1) > 1:  # grouped (depthwise too): whole conv groups go, in and out together
            groups = c_in // ws[1]
            ws[0] = groups * (ws[0] // attrs["group"])
            attrs["group"] = groups
        else:
            ws[0], ws[1] = c_out, c_in
        bias = [ws[0]]
    elif op == "Gemm":
        xs[1] = c_in
        ws = [c_out, c_in] if attrs.get("transB", 0) else [c_in, c_out]
        bias = [c_out]
    else:
        xs[-1] = c_in
        ws = [c_in, c_out]
        bias = []
    inits = [helper.make_tensor("W", TensorProto.FLOAT, ws, rng.standard_normal(ws).astype(np.float32).ravel())]
    inputs = ["X", "W"]
    if has_bias and bias:
        inits.append(helper.make_tensor("B", TensorProto.FLOAT, bias, np.zeros(bias, np.float32).ravel()))
        inputs.append("B")
    node = helper.make_node(op, inputs, ["Y"], **attrs)
    graph = helper.make_graph(
        [node],
        "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, xs)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def timing_sessions(models, threads: int, *, warmup: int = 1, feeds=None) -> list[tuple]:
    """An onnxruntime session per model for timing (``threads`` intra-op, one inter-op), each
    with its inputs (``feeds(session, model)``, default :func:`graphprune.objectives.cost.random_feeds`),
    run ``warmup`` times."""
    from ..ir.runtime import session
    from ..objectives.cost import random_feeds

    out = []
    for model in models:
        sess = session(model, threads=threads)
        inputs = feeds(sess, model) if feeds is not None else random_feeds(model)
        for _ in range(warmup):
            sess.run(None, inputs)
        out.append((sess, inputs))
    return out


def interleaved_ms(sessions: list[tuple], repeats: int) -> list[list[float]]:
    """Run times (ms) of each session, in interleaved rounds (one run of each per round): a
    pause of the process on a shared machine then spoils one run of a few models, not a whole
    measurement, and load drifts over all of them alike."""
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for (sess, inputs), out in zip(sessions, times):
            t = time.perf_counter()
            sess.run(None, inputs)
            out.append((time.perf_counter() - t) * 1000.0)
    return times


def _normal_feeds(sess, model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal(_dims(i)).astype(np.float32) for i in sess.get_inputs()}


def _run_ms(models: list[onnx.ModelProto], threads: int, repeats: int) -> list[float]:
    """Median latency (ms) of each model, timed in interleaved rounds."""
    sessions = timing_sessions(models, threads, warmup=1, feeds=_normal_feeds)
    return [statistics.median(t) for t in interleaved_ms(sessions, repeats)]


def _diagonal(grid_in: list[int], grid_out: list[int]) -> list[tuple[int, int]]:
    """Points where both channel counts shrink together: the k-th of n steps pairs the grid
    counts nearest ``k/n`` of each width."""
    n = min(len(grid_in), len(grid_out))
    pick = [
        (
            min(grid_in, key=lambda c: abs(c - k / n * grid_in[-1])),
            min(grid_out, key=lambda c: abs(c - k / n * grid_out[-1])),
        )
        for k in range(1, n + 1)
    ]
    return list(dict.fromkeys(pick))


def _monotone(ms: list[float]) -> list[float]:
    """A curve over increasing counts made non-decreasing from the top (each point at most the
    latency of any larger count): more channels are never faster, so a lower count measured
    slower is noise."""
    out = list(ms)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def _dims(arg) -> list[int]:
    return [d if isinstance(d, int) else 1 for d in arg.shape]


def _empty_model() -> onnx.ModelProto:
    node = helper.make_node("Identity", ["X"], ["Y"])
    graph = helper.make_graph(
        [node],
        "empty",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# ---------------------------------------------------------------------------- the table


@dataclass
class LatencyTable:
    """Measured curves of every layer, the whole model's latency, and what they depend on."""

    key: dict
    model_ms: float
    layers: list[Layer]
    measured: int = 0  # single-layer measurements made to build it (0 when read from the cache)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "key": self.key,
            "model_ms": self.model_ms,
            "layers": [
                {
                    "node": ly.node,
                    "config": ly.config,
                    "full_ms": ly.full_ms,
                    "context_ms": ly.context_ms,
                    "curves": ly.curves,
                }
                for ly in self.layers
            ],
        }


def table_key(model: onnx.ModelProto, threads: int, repeats: int, max_points: int, step: int = 8) -> dict:
    return {
        "graph": structure_hash(model),
        **machine(),
        "threads": threads,
        "repeats": repeats,
        "max_points": max_points,
        "step": step,
    }


def default_path(key: dict, prefix: str = "latency") -> Path:
    """The cache file of a table (of kind ``prefix``) with this key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{prefix}-{key['graph'][:12]}-{digest}.json"


def latency_table(
    deps: DependencyGraph,
    cm: CostModel,
    *,
    threads: int = 1,
    repeats: int = 7,
    max_points: int = 12,
    step: int | None = None,
    path: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """The latency table of ``deps.model``: read from ``path`` (default: the cache directory)
    when its key matches, else measured and written there. Grid points are multiples of
    ``step`` (default: this machine's channel block, :func:`graphprune.objectives.hardware.channel_step`)."""
    from ..ir.files import write_text_atomic
    from ..objectives.hardware import channel_step

    model = deps.model
    step = step or channel_step().step
    key = table_key(model, threads, repeats, max_points, step)
    file = Path(path) if path is not None else default_path(key)
    layers = find_layers(deps, cm)
    cached = read_cached(file)
    if cached is not None and cached.get("key") == key:
        by_node = {e["node"]: e for e in cached.get("layers", [])}
        if all(ly.node in by_node for ly in layers):
            for ly in layers:
                entry = by_node[ly.node]
                ly.curves, ly.full_ms, ly.context_ms = entry["curves"], entry["full_ms"], entry.get("context_ms")
            return LatencyTable(key, float(cached["model_ms"]), layers)
    say = progress or (lambda _msg: None)
    configs: dict[str, Layer] = {}
    for ly in layers:
        configs.setdefault(ly.config, ly)
    overhead = _run_ms([_empty_model()], threads, max(repeats, 15))[0]
    measured: dict[str, tuple[dict, float]] = {}
    count = 0
    started = time.perf_counter()
    for n, (config, ly) in enumerate(configs.items(), 1):
        full = (ly.full_in, ly.full_out)
        points: dict[str, list[tuple[int, int]]] = {}
        if ly.grouped:
            outs_per_in = ly.full_out / ly.full_in
            counts = grid(ly.full_in, max_points, math.lcm(step, ly.per_group))
            points["both"] = [(c, round(c * outs_per_in)) for c in counts if c % ly.per_group == 0]
        else:
            if ly.dim_in is not None:
                points["in"] = [(c, ly.full_out) for c in grid(ly.full_in, max_points, step)]
            if ly.dim_out is not None:
                points["out"] = [(ly.full_in, c) for c in grid(ly.full_out, max_points, step)]
            if ly.dim_in is not None and ly.dim_out is not None:
                points["diag"] = _diagonal(grid(ly.full_in, max_points, step), grid(ly.full_out, max_points, step))
        unique = list(dict.fromkeys([full, *(p for ps in points.values() for p in ps)]))
        times = _run_ms([layer_model(config, ci, co) for ci, co in unique], threads, repeats)
        at = {p: max(t - overhead, 1e-4) for p, t in zip(unique, times, strict=True)}
        curves = {}
        for axis, ps in points.items():
            curves[axis] = {
                "counts": [p[1] if axis == "out" else p[0] for p in ps],
                "ms": _monotone([at[p] for p in ps]),
            }
        if "diag" in curves:
            curves["diag"]["out_counts"] = [p[1] for p in points["diag"]]
        count += len(unique)
        measured[config] = (curves, at[full])
        say(f"latency table: {n}/{len(configs)} layer configs measured ({time.perf_counter() - started:.0f}s)")
    for ly in layers:
        ly.curves, ly.full_ms = measured[ly.config]
    model_ms = _in_context(model, layers, threads, max(repeats, 10))
    table = LatencyTable(key, model_ms, layers, measured=count)
    file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, json.dumps(table.to_json()) + "\n")
    return table


def read_cached(file: Path, fmt: str = FORMAT) -> dict | None:
    """A cached table's JSON if ``file`` holds one of format ``fmt`` (anything else: measure again)."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == fmt else None


# ---------------------------------------------------------------------------- the model


class LatencyModel:
    """Estimated latency (ms) of a plan, from a table and the cost model's dim sizes (rule 3)."""

    def __init__(self, table: LatencyTable, cm: CostModel):
        self.cm = cm
        self.table = table
        self.layers = []
        for ly in table.layers:
            rin = cm.dim_row(*ly.dim_in) if ly.dim_in else None
            rout = cm.dim_row(*ly.dim_out) if ly.dim_out else None
            # the curve's shape from the layer alone, its height from the layer in the model
            scale = ly.context_ms / ly.full_ms if ly.context_ms else 1.0
            self.layers.append((ly, rin, rout, scale))
        layers_full = sum(ly.full_ms * scale for ly, _, _, scale in self.layers)
        self.rest_ms = max(table.model_ms - layers_full, 0.0)
        self.full_ms = float(self.estimate(np.zeros((1, len(cm.group_ids))))[0])

    def estimate(self, removed: np.ndarray) -> np.ndarray:
        """Estimated latency in ms for each row of ``removed``."""
        sizes = self.cm.sizes(removed)
        total = self.rest_ms * self.cm.other_fraction(removed)
        for ly, rin, rout, scale in self.layers:
            c_in = sizes[:, rin] if rin is not None else np.full(sizes.shape[0], float(ly.full_in))
            c_out = sizes[:, rout] if rout is not None else np.full(sizes.shape[0], float(ly.full_out))
            if "both" in ly.curves:
                total += scale * _curve(ly.curves["both"], c_in)
                continue
            total += scale * self._separable(ly, c_in, c_out) * self._diagonal_factor(ly, c_in, c_out)
        return total

    @staticmethod
    def _separable(ly: Layer, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        t = np.full(np.shape(c_in), ly.full_ms)
        if "in" in ly.curves:
            t = t * _curve(ly.curves["in"], c_in) / ly.full_ms
        if "out" in ly.curves:
            t = t * _curve(ly.curves["out"], c_out) / ly.full_ms
        return t

    def _diagonal_factor(self, ly: Layer, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        """Measured / separable latency where both counts shrink together, at the same shrink
        (geometric mean of the two fractions): the product of the two curves misses the fixed
        costs a thin layer keeps."""
        diag = ly.curves.get("diag")
        if diag is None:
            return np.ones(np.shape(c_in))
        d_in, d_out = np.array(diag["counts"], float), np.array(diag["out_counts"], float)
        ratio = np.array(diag["ms"]) / self._separable(ly, d_in, d_out)
        shrink = np.sqrt(d_in / ly.full_in * d_out / ly.full_out)
        return np.interp(np.sqrt(c_in / ly.full_in * c_out / ly.full_out), shrink, ratio)

    def fraction(self, removed: np.ndarray) -> np.ndarray:
        """Estimated latency as a fraction of the unpruned model's."""
        return self.estimate(removed) / self.full_ms

    def grids(self, deps: DependencyGraph) -> dict[int, np.ndarray]:
        """Per group, the unit counts worth keeping: multiples of the table's channel step (the
        runtime's block: a count in between costs as much as the next multiple), and all of it."""
        out = {}
        step = int(self.table.key.get("step", 8))
        for gid in self.cm.group_ids:
            g = deps.groups[gid]
            w = max((m.indices.shape[1] for m in g.weights("out")), default=1)
            channels = np.append(np.arange(step, g.size * w, step), g.size * w)
            out[gid] = channels[channels % w == 0] // w
        return out


def _curve(curve: dict, c: np.ndarray) -> np.ndarray:
    return np.interp(c, curve["counts"], curve["ms"])


def compare_latency(
    a: onnx.ModelProto, b: onnx.ModelProto, *, threads: int = 1, repeats: int = 20, warmup: int = 3
) -> tuple[float, float]:
    """Median latency (ms) of two models measured in alternation, so that a shared machine's
    load drifts over both alike and their ratio stays meaningful."""
    first, second = interleaved_ms(timing_sessions((a, b), threads, warmup=warmup), repeats)
    return statistics.median(first), statistics.median(second)
