"""Passes: the units of work, each a ``ModelProto -> PassResult`` step.

The contract (one for every pass):

1. A pass is a frozen dataclass: its fields are its options, declared once (with their help
   text in ``field(metadata=...)``); the CLI's flags and :func:`graphprune.prune`'s keywords
   are made from them (:mod:`graphprune.options`).
2. ``pass_(model, context=None) -> PassResult``: the transformed model, the record of what the
   pass did (``report``, ``plan``) and how its exactness is proven (``reference``: the model the
   result must equal, built independently from the pass's input). Exactness is each pass's
   postcondition; :func:`graphprune.validation.contract.check_steps` checks it, for one step or a
   pipeline of them alike.
3. ``pass_.apply(model)`` is the same step as a plain ``ModelProto -> ModelProto`` function,
   for pipelines of model transforms (onnxslim/onnxsim style).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import onnx

if TYPE_CHECKING:
    from ..analysis.dependency import DependencyGraph
    from ..analysis.plan import Plan
    from ..ir.input_sizes import InputSizes
    from ..validation.contract import Reference


@dataclass
class PassContext:
    """What a caller may already have for a pass's input: its analysis (``deps``, reused instead
    of analysing again), the sizes of its symbolic input dims (``sizes``, for costs and targets),
    and whether the input may be edited in place (``inplace``: nothing needs it afterwards)."""

    deps: DependencyGraph | None = None
    sizes: InputSizes | None = None
    inplace: bool = False


@dataclass
class PassResult:
    """What a pass returns: the model, what it did, and how that is proven.

    ``plan`` is the removals over the groups of ``deps`` (the analysis of ``reference.base``;
    empty for passes that remove no group entries, such as the layer pass). ``reference`` builds
    the model ``model`` must equal on any input; None when the step is not function-preserving
    (``skipped_groups`` says which groups made it so, and fidelity measures what they cost).
    ``record`` is the step's plan as stored in the model's metadata (JSON-able)."""

    model: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None
    deps: DependencyGraph | None = None
    reference: Reference | None = None
    skipped_groups: list[str] = field(default_factory=list)
    record: dict | None = None
    name: str = ""  # the pass's name in reports (its class name)
    changed: bool | None = None  # whether the model changed; None: it did if the plan or blocks say so
    violations: list[str] = field(default_factory=list)  # postconditions the pass found broken (fail exactness)

    @property
    def removed_anything(self) -> bool:
        """Whether the step changed the model (entries of a group, blocks, or what ``changed`` says)."""
        if self.changed is not None:
            return self.changed
        return bool(self.plan is not None and self.plan.total_removed) or bool(self.report.get("blocks_removed"))


class Pass(Protocol):
    def __call__(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult: ...


class TransformMixin:
    """Gives a pass ``apply``: the same step as a plain ``ModelProto -> ModelProto`` function."""

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return self(model).model  # type: ignore[operator]


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
    "PassContext",
    "PassResult",
    "SparsityPruning",
]
