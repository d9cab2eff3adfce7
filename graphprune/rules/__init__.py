"""The op-rule registry: one small rule per op type.

A rule reads one node and declares, through a :class:`RuleContext`, which of its tensors'
axes ("dims") must lose the same entries (couplings with an index map), which weight
axes are producers or consumers of a channel, and which dims it cannot handle. A rule
never edits the graph. An op without a rule declares nothing, so every dim it touches
is blocked with the reason "no rule for <op>".

A *rewriter* (optional, per op type) runs during surgery and updates what slicing
tensors cannot: attributes and shape constants (Conv ``group``, Split sizes, Reshape
shapes, Slice bounds).

Users teach graphprune ops of their own (a custom domain, an onnxruntime contrib op) with
:func:`register_rule`, the same contract as the built-in rules, for a range of the domain's
opset versions; registered rules take precedence over built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx

from ..ir.graph import ModelView

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

DEFAULT_DOMAINS = ("", "ai.onnx")

# The built-in rules of the default ONNX domain, by op type (filled by the rule modules).
RULES: dict[str, Rule] = {}
REWRITERS: dict[str, Rewriter] = {}
# Built-in rules of other domains (onnxruntime's com.microsoft ops), by (domain, op type).
DOMAIN_RULES: dict[tuple[str, str], Rule] = {}
DOMAIN_REWRITERS: dict[tuple[str, str], Rewriter] = {}


@dataclass(frozen=True)
class Registered:
    """A rule registered through :func:`register_rule`, for the opsets of its domain it covers."""

    rule: Rule
    rewriter: Rewriter | None = None
    since_version: int | None = None  # first opset version of the domain it applies to
    until_version: int | None = None  # last one (inclusive)

    def covers(self, version: int | None) -> bool:
        if version is None:  # the model does not import the domain: only an unbounded rule applies
            return self.since_version is None and self.until_version is None
        return (self.since_version is None or version >= self.since_version) and (
            self.until_version is None or version <= self.until_version
        )


# Rules registered through the public API, by (domain, op type); newest registration first.
# They take precedence over the built-in ones, so a user can also replace a built-in rule.
REGISTERED: dict[tuple[str, str], list[Registered]] = {}


def rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    """Register ``fn`` as the built-in coupling rule of ``op_types`` (of ``domain``, default ONNX)."""

    def register(fn: Rule) -> Rule:
        for op in op_types:
            if _domain(domain):
                DOMAIN_RULES[(_domain(domain), op)] = fn
            else:
                RULES[op] = fn
        return fn

    return register


def rewriter(*op_types: str, domain: str = "") -> Callable[[Rewriter], Rewriter]:
    """Register ``fn`` as the built-in surgery rewriter of ``op_types`` (of ``domain``)."""

    def register(fn: Rewriter) -> Rewriter:
        for op in op_types:
            if _domain(domain):
                DOMAIN_REWRITERS[(_domain(domain), op)] = fn
            else:
                REWRITERS[op] = fn
        return fn

    return register


def register_rule(
    domain: str,
    op_type: str,
    rule: Rule,
    *,
    rewriter: Rewriter | None = None,
    since_version: int | None = None,
    until_version: int | None = None,
) -> Callable[[], None]:
    """Teach graphprune an op: ``rule`` declares its couplings the way the built-in rules do
    (see :class:`RuleContext`), ``rewriter`` updates its attributes or constant inputs after
    removal (see :class:`SurgeryContext`), for the opset versions ``since_version`` ..
    ``until_version`` (inclusive; None: unbounded) of ``domain`` that the model imports.

    ``domain`` is the node's domain (``""`` for the default ONNX domain, e.g.
    ``"com.microsoft"`` or a custom one). A registered rule takes precedence over a built-in
    rule of the same op. Returns a function that removes the registration again.
    """
    if not op_type:
        raise ValueError("register_rule needs an op type")
    if not callable(rule) or (rewriter is not None and not callable(rewriter)):
        raise TypeError("register_rule: rule and rewriter must be callables")
    if since_version is not None and until_version is not None and since_version > until_version:
        raise ValueError(f"register_rule: since_version {since_version} is after until_version {until_version}")
    key = (_domain(domain), op_type)
    entry = Registered(rule, rewriter, since_version, until_version)
    REGISTERED.setdefault(key, []).insert(0, entry)

    def unregister() -> None:
        entries = REGISTERED.get(key, [])
        if entry in entries:
            entries.remove(entry)
        if not entries:
            REGISTERED.pop(key, None)

    return unregister


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """The opset version each domain of ``model`` imports (the default domain under ``""``)."""
    return {_domain(imp.domain): imp.version for imp in model.opset_import}


def _domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


def _registered(node: onnx.NodeProto, versions: dict[str, int] | None) -> Registered | None:
    domain = _domain(node.domain)
    for entry in REGISTERED.get((domain, node.op_type), ()):
        if entry.covers(None if versions is None else versions.get(domain)):
            return entry
    return None


def rule_for(node: onnx.NodeProto, versions: dict[str, int] | None = None) -> Rule | None:
    """The rule of ``node``: a registered one for its domain and opset (``versions``, from
    :func:`opsets`), else the built-in one of the default domain, else None."""
    entry = _registered(node, versions)
    if entry is not None:
        return entry.rule
    if node.domain not in DEFAULT_DOMAINS:
        return DOMAIN_RULES.get((node.domain, node.op_type))
    return RULES.get(node.op_type)


def rewriter_for(node: onnx.NodeProto, versions: dict[str, int] | None = None) -> Rewriter | None:
    entry = _registered(node, versions)
    if entry is not None:
        return entry.rewriter
    if node.domain not in DEFAULT_DOMAINS:
        return DOMAIN_REWRITERS.get((node.domain, node.op_type))
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
from . import attention, contrib, conv, elementwise, linear, norm, pool, qoperator, quant, reduce, shape  # noqa: E402,F401
