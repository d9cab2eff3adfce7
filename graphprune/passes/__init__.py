"""Passes: user-facing ``ModelProto -> ModelProto`` steps.

Each pass is a frozen dataclass (its configuration) whose ``__call__(model)`` returns a
:class:`PassResult`; ``pass_.apply`` is the plain ``ModelProto -> ModelProto`` function for
pipelines of model transforms (onnxslim/onnxsim style). A :class:`Pipeline` runs passes
in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx


@dataclass
class PassResult:
    """The transformed model and what the pass did."""

    model: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneOutcome:
    """A pruning pass's full result, for validation: ``plan`` applies to ``deps``, the
    analysis of ``reference`` (the original, or the original with compensated weights),
    from which the exact reference is built."""

    pruned: onnx.ModelProto
    plan: Any  # Plan
    deps: Any  # DependencyGraph
    reference: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)


class Pass(Protocol):
    def __call__(self, model: onnx.ModelProto) -> PassResult: ...


class TransformMixin:
    """Gives a pass ``apply``: the same step as a plain ``ModelProto -> ModelProto`` function."""

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return self(model).model  # type: ignore[operator]


@dataclass(frozen=True)
class Pipeline(TransformMixin):
    """Run passes in order; the report holds each pass's report under its class name."""

    passes: tuple[Pass, ...]

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        reports = []
        for p in self.passes:
            result = p(model)
            model = result.model
            reports.append({"pass": type(p).__name__, **result.report})
        return PassResult(model, {"passes": reports})


from .channel import ChannelPruning  # noqa: E402
from .filter import FilterPruning  # noqa: E402
from .layer import LayerPruning  # noqa: E402
from .sparsity import SparsityPruning  # noqa: E402

# ``--pass NAME``: one line per pass. The CLI and ``graphprune.prune`` give each pass the
# options its dataclass has fields for.
PASSES: dict[str, type] = {
    "filter": FilterPruning,
    "channel": ChannelPruning,
    "layer": LayerPruning,
    "sparsity": SparsityPruning,
}

__all__ = [
    "PASSES",
    "ChannelPruning",
    "FilterPruning",
    "LayerPruning",
    "Pass",
    "PassResult",
    "Pipeline",
    "PruneOutcome",
    "SparsityPruning",
]
