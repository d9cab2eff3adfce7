"""The op-rule registry: one small rule per op type.

A rule reads one node and declares, through a :class:`RuleContext`, which of its tensors'
axes ("dims") must lose the same entries (couplings with an index map), which weight
axes are producers or consumers of a channel, and which dims it cannot handle. A rule
never edits the graph. An op without a rule declares nothing, so every dim it touches
is blocked with the reason "no rule for <op>".

A *rewriter* (optional, per op type) runs during surgery and updates what slicing
tensors cannot: attributes and shape constants (Conv ``group``, Split sizes, Reshape
shapes, Slice bounds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import onnx

from ..graph import ModelView

Dim = tuple[str, int]  # (tensor name, axis >= 0)


class RuleContext(Protocol):
    """What a rule may ask and declare while it reads one node."""

    view: ModelView

    def dim(self, tensor: str, axis: int) -> Dim | None:
        """The dim ``axis`` of ``tensor`` (negative axes allowed); None if its rank is unknown."""

    def virtual(self, label: str, size: int) -> Dim:
        """A dim of no tensor, e.g. the groups of a grouped Conv."""

    def identity(self, a: Dim | None, b: Dim | None) -> None:
        """``a[i]`` and ``b[i]`` are removed together."""

    def segment(self, part: Dim | None, whole: Dim | None, offset: int) -> None:
        """``part[i]`` is ``whole[offset + i]`` (Concat inputs, Split outputs)."""

    def block(self, coarse: Dim | None, fine: Dim | None, k: int) -> None:
        """``coarse[i]`` owns ``fine[i*k : (i+1)*k]`` (Flatten, heads, group units)."""

    def contract(self, d: Dim | None) -> None:
        """The current node sums over data input dim ``d`` (Conv input channels, the K of
        a matrix product): a removed entry then contributes nothing. The masked reference
        of validation zeroes the entry right there."""

    def strided(self, coarse: Dim | None, fine: Dim | None, outer: int, inner: int) -> None:
        """``fine`` is ``[outer, len(coarse), inner]`` flattened: ``coarse[i]`` owns
        ``fine[o*len*inner + i*inner + r]`` for every ``o``, ``r`` (the heads of a packed QKV)."""

    def tag(self, d: Dim | None, key: str, value) -> None:
        """Attach a fact to a dim for reports (e.g. ``heads``: the head size)."""

    def inexact_ok(self, d: Dim | None, reason: str) -> bool:
        """The node cannot preserve the function if ``d`` loses entries (a normalisation over
        it). True if the analysis allows that (the group is then marked inexact), else the
        dim is forbidden with ``reason`` and False is returned."""

    def role(self, d: Dim | None, role: str) -> None:
        """Mark a weight dim: "out" (makes the channel), "in" (reads it), "param"."""

    def forbid(self, d: Dim | None, reason: str) -> None:
        """The dim cannot lose entries; ``reason`` says why, for the user. It reads best
        starting with the op type ("Softmax over axis 1, the pruned axis"); the node's name
        is added in front."""

    def attr(self, name: str, default=None):
        """An attribute of the current node, as a Python value."""

    def shape(self, tensor: str) -> tuple | None: ...

    def value(self, tensor: str) -> np.ndarray | None: ...


class SurgeryContext(Protocol):
    """What a rewriter may ask and do while surgery updates one node."""

    view: ModelView
    model: onnx.ModelProto  # the model being rewritten (its nodes are in the view's order)

    def removed(self, tensor: str, axis: int) -> np.ndarray:
        """Sorted indices removed from ``tensor``'s ``axis`` (empty if none)."""

    def old_shape(self, tensor: str) -> tuple | None: ...

    def new_shape(self, tensor: str) -> tuple | None: ...

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None: ...

    def set_constant_input(self, node: onnx.NodeProto, position: int, value: np.ndarray) -> None:
        """Replace a constant input of ``node`` (a new initializer if the old one is shared)."""

    def current_value(self, name: str) -> np.ndarray | None:
        """The value of a constant as surgery has left it so far (rewrites included)."""


Rule = Callable[[onnx.NodeProto, RuleContext], None]
Rewriter = Callable[[onnx.NodeProto, SurgeryContext], None]

RULES: dict[str, Rule] = {}
REWRITERS: dict[str, Rewriter] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the coupling rule of ``op_types`` (default ONNX domain)."""

    def register(fn: Rule) -> Rule:
        for op in op_types:
            RULES[op] = fn
        return fn

    return register


def rewriter(*op_types: str) -> Callable[[Rewriter], Rewriter]:
    """Register ``fn`` as the surgery rewriter of ``op_types``."""

    def register(fn: Rewriter) -> Rewriter:
        for op in op_types:
            REWRITERS[op] = fn
        return fn

    return register


def rule_for(node: onnx.NodeProto) -> Rule | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return RULES.get(node.op_type)


def rewriter_for(node: onnx.NodeProto) -> Rewriter | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return REWRITERS.get(node.op_type)


def couple_all_axes(ctx: RuleContext, a: str, b: str) -> None:
    """Identity on every axis of two tensors of the same shape (unary ops)."""
    rank = _rank(ctx, a)
    if rank is None or rank != _rank(ctx, b):
        return
    for ax in range(rank):
        ctx.identity(ctx.dim(a, ax), ctx.dim(b, ax))


def _rank(ctx: RuleContext, tensor: str) -> int | None:
    s = ctx.shape(tensor)
    return None if s is None else len(s)


# Importing the rule modules fills the registry.
from . import conv, elementwise, linear, norm, pool, quant, reduce, shape  # noqa: E402,F401
