"""A cost model of a plan: MACs and parameters as a function of the units each group loses.

Target allocation evaluates the cost of many candidate plans, so cost here is arithmetic on
dim sizes, never surgery or shape inference. Rules:
1. A *dim* is one axis of one tensor that is a member of a prunable group. Its size after
   pruning is ``base - sum_g width(g, dim) * removed[g]``: each unit group ``g`` loses takes
   its member's entries (a head of 64 takes 64) off that axis. A concat output is a dim of
   several groups, each owning its segment.
2. A counted node's MACs are a product of tensor dims (see :mod:`graphprune.objectives.cost`): Conv is
   ``elems(Y) * prod(W.shape[1:])``, MatMul ``elems(Y) * K``, elementwise ops ``elems(Y)``...
   The dims that are group members vary, the others are a constant factor. Ops whose MACs are
   not such a product (Einsum, RNNs) keep their original count.
3. A float initializer's parameters are the product of its dims, in the same way.
4. At zero removal the model equals :func:`graphprune.objectives.cost.cost_of` by construction; after
   surgery it equals ``cost_of`` of the pruned model for every op of rule 2 (tests check it).
5. Shapes are per sample (:func:`sample_shapes`): a dynamic batch is 1 and other symbolic input
   dims take the sizes :mod:`graphprune.ir.input_sizes` resolves, so a dynamic model has costs too.

Everything is vectorised over a batch of removal vectors (rows), so allocation can price
every candidate count of a group in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..analysis.dependency import DependencyGraph
from ..ir.weights import FLOAT_TYPES
from ..objectives.cost import (
    _CONV_OPS,
    _ELEMENTWISE_OPS,
    _GLOBAL_POOL_OPS,
    _MATMUL_OPS,
    _POOL_OPS,
    _REDUCE_OPS,
    _attr,
    cost_of,
)

Dim = tuple[str, int]


@dataclass
class _Terms:
    """Products of dims: term ``t`` is ``const[t] * prod(size[dims[t, :]])`` (padding dims
    point at a size-1 slot)."""

    const: np.ndarray  # float64 [T]
    dims: np.ndarray  # int64 [T, K]

    def value(self, sizes: np.ndarray) -> np.ndarray:
        """Sum of the terms for each row of ``sizes`` ([B, D+1], last column all ones)."""
        if len(self.const) == 0:
            return np.zeros(sizes.shape[0])
        return (sizes[:, self.dims].prod(axis=2) * self.const).sum(axis=1)


def sample_shapes(deps: DependencyGraph) -> dict:
    """The shapes costs are counted at: ``deps.sample_shapes`` (per sample, symbolic input dims
    resolved by :mod:`graphprune.ir.input_sizes`), computed with the defaults if the caller left it None;
    the analysis's own shapes when the model has no symbolic input dim."""
    if deps.sample_shapes is None:
        from ..ir.input_sizes import count_shapes, resolve

        deps.sample_shapes = count_shapes(deps.model, resolve(deps.model)) or deps.view.shapes
    return deps.sample_shapes


class CostModel:
    """MACs and parameters of ``deps.model`` after removing ``removed[i]`` units from group
    ``group_ids[i]`` (a vector, or a matrix with one plan per row)."""

    def __init__(self, deps: DependencyGraph, group_ids: list[int] | None = None):
        self.deps = deps
        self.shapes = sample_shapes(deps)
        ids = [g.id for g in deps.prunable_groups()] if group_ids is None else list(group_ids)
        self.group_ids = ids
        self.column = {gid: i for i, gid in enumerate(ids)}
        shapes = self.shapes
        coef: dict[Dim, dict[int, int]] = {}
        for gid in ids:
            for m in deps.groups[gid].members:
                if m.kind == "virtual" or m.tensor not in shapes:
                    continue
                per = coef.setdefault((m.tensor, m.axis), {})
                per[self.column[gid]] = per.get(self.column[gid], 0) + int(m.indices.shape[1])
        self.dims: list[Dim] = list(coef)
        self.row = {d: i for i, d in enumerate(self.dims)}
        self.base = np.array([shapes[t][a] for t, a in self.dims], dtype=np.float64)
        self.coef = np.zeros((len(self.dims), len(ids)), dtype=np.float64)
        for d, per in coef.items():
            for col, w in per.items():
                self.coef[self.row[d], col] = w
        base_cost = cost_of(deps.model, shapes)
        self.flops_before, self.params_before = base_cost.flops, base_cost.params
        flop_factors = self._flop_factors()
        self._flops = self._terms([f for f, _ in flop_factors])
        self._other = self._terms([f for f, op in flop_factors if op not in ("Conv", "Gemm", "MatMul")])
        self._params = self._terms(self._param_factors())
        full = self.sizes(np.zeros((1, len(ids))))
        self._flops0 = self._flops.value(full)[0]
        self._params0 = self._params.value(full)[0]
        self._other0 = self._other.value(full)[0]

    # ------------------------------------------------------------------ sizes
    def sizes(self, removed: np.ndarray) -> np.ndarray:
        """Dim sizes for each row of ``removed`` ([B, G]) as [B, D+1] (last column: 1)."""
        removed = np.atleast_2d(np.asarray(removed, dtype=np.float64))
        s = self.base[None, :] - removed @ self.coef.T
        return np.concatenate([s, np.ones((s.shape[0], 1))], axis=1)

    def dim_row(self, tensor: str, axis: int) -> int | None:
        """The row of a dim in :meth:`sizes`, or None when no modelled group touches it."""
        shape = self.shapes.get(tensor)
        if shape is None:
            return None
        return self.row.get((tensor, axis % len(shape)))

    # ------------------------------------------------------------------ costs
    def flops(self, removed: np.ndarray) -> np.ndarray:
        """MACs for each row of ``removed``."""
        return self.flops_before + self._flops.value(self.sizes(removed)) - self._flops0

    def params(self, removed: np.ndarray) -> np.ndarray:
        """Parameters for each row of ``removed``."""
        return self.params_before + self._params.value(self.sizes(removed)) - self._params0

    def other_fraction(self, removed: np.ndarray) -> np.ndarray:
        """The MACs of every op but Conv, Gemm and MatMul (activations, pooling, norms: work that
        follows activation sizes) as a fraction of the original's, for each row of ``removed``."""
        if not self._other0:
            return np.ones(np.atleast_2d(removed).shape[0])
        return self._other.value(self.sizes(removed)) / self._other0

    def removed_of(self, removals: dict[int, np.ndarray]) -> np.ndarray:
        """The removal vector of a plan's ``removals`` (group id -> removed indices)."""
        r = np.zeros(len(self.group_ids))
        for gid, idx in removals.items():
            if gid in self.column:
                r[self.column[gid]] = len(idx)
        return r

    # ------------------------------------------------------------------ building
    def _terms(self, factors: list[tuple[float, list[int]]]) -> _Terms:
        factors = [(c, rows) for c, rows in factors if rows and c]
        k = max((len(rows) for _, rows in factors), default=1)
        pad = len(self.dims)  # the ones column
        dims = np.full((len(factors), k), pad, dtype=np.int64)
        for t, (_, rows) in enumerate(factors):
            dims[t, : len(rows)] = rows
        return _Terms(np.array([c for c, _ in factors], dtype=np.float64), dims)

    def _split(self, tensor_axes: list[Dim], const: float = 1.0) -> tuple[float, list[int]] | None:
        """``const * prod(dims)`` as (constant factor, rows of the varying dims)."""
        shapes = self.shapes
        rows = []
        for t, a in tensor_axes:
            s = shapes.get(t)
            if s is None or any(d is None for d in s):
                return None
            r = self.row.get((t, a))
            if r is None:
                const *= int(s[a])
            else:
                rows.append(r)
        return const, rows

    def _all(self, tensor: str) -> list[Dim]:
        s = self.shapes.get(tensor) or ()
        return [(tensor, a) for a in range(len(s))]

    def _flop_factors(self) -> list[tuple[tuple[float, list[int]], str]]:
        shapes = self.shapes
        out = []
        for node in self.deps.view.nodes:
            if node.domain not in ("", "ai.onnx"):
                continue
            op = node.op_type
            dims: list[Dim] | None = None
            const = 1.0
            if op in _CONV_OPS or op == "ConvTranspose":
                w = node.input[_CONV_OPS.get(op, (0, 1))[1]]
                act = node.output[0] if op != "ConvTranspose" else node.input[0]
                dims = self._all(act) + self._all(w)[1:]
            elif op == "Gemm":
                a = node.input[0]
                dims = self._all(node.output[0]) + [(a, 0 if _attr(node, "transA", 0) else 1)]
            elif op in _MATMUL_OPS:
                a = node.input[_MATMUL_OPS[op][0]]
                s = shapes.get(a)
                if s:
                    dims = self._all(node.output[0]) + [(a, len(s) - 1)]
            elif op in _POOL_OPS:
                dims = self._all(node.output[0])
                const = float(math.prod(_attr(node, "kernel_shape", None) or [0]))
            elif op in _GLOBAL_POOL_OPS or op in _REDUCE_OPS:
                dims = self._all(node.input[0])
            elif op in _ELEMENTWISE_OPS:
                dims = self._all(node.output[0])
            if not dims:
                continue
            split = self._split(dims, const)
            if split is not None:
                out.append((split, op))
        return out

    def _param_factors(self) -> list[tuple[float, list[int]]]:
        mv = self.deps.view
        g = mv.model.graph
        dequantized = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input}
        out = []
        for name, t in mv.initializers.items():
            if t.data_type in FLOAT_TYPES or (name in dequantized and t.dims):
                split = self._split([(name, a) for a in range(len(t.dims))])
                if split is not None:
                    out.append(split)
        for name, i in mv.constant_nodes.items():
            node = mv.nodes[i]
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type in FLOAT_TYPES and self._all(name):
                split = self._split(self._all(name))
                if split is not None:
                    out.append(split)
        return out


__all__ = ["CostModel"]
