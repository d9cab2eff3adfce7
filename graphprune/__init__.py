"""graphprune: structured pruning of exported ONNX models.

Remove whole filters, channels and the tensors coupled to them directly in the ONNX
graph, with numerical proof that the surgery did what the plan says::

    import graphprune
    result = graphprune.prune("model.onnx", ratio=0.5, criterion="l2")
    assert result.report.passed
    graphprune.save(result.model, "small.onnx")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import GraphpruneError, InputError, ValidationFailed

__version__ = "0.1.0"

# The public API is imported on first use: ``import graphprune`` (and the CLI's start-up)
# stays fast, and an interrupt during start-up reaches the CLI's handler.
_LAZY = {
    "PruneResult": "api",
    "analyze": "api",
    "load_model": "api",
    "prune": "api",
    "prune_layers": "api",
    "prune_many": "tie",
    "run_passes": "api",
    "PipelineResult": "api",
    "save": "api",
    "validate": "api",
    "DependencyGraph": "analysis.dependency",
    "Group": "analysis.dependency",
    "Member": "analysis.dependency",
    "ChannelPruning": "passes",
    "FilterPruning": "passes",
    "LayerPruning": "passes",
    "SparsityPruning": "passes",
    "PassResult": "passes",
    "Pipeline": "api",
    "Plan": "analysis.plan",
    "Report": "present.report",
    "register_rule": "rules",
}

if TYPE_CHECKING:
    from .analysis.dependency import DependencyGraph, Group, Member
    from .analysis.plan import Plan
    from .api import (
        Pipeline,
        PipelineResult,
        PruneResult,
        analyze,
        load_model,
        prune,
        prune_layers,
        run_passes,
        save,
        validate,
    )
    from .passes import ChannelPruning, FilterPruning, LayerPruning, PassResult, SparsityPruning
    from .present.report import Report
    from .rules import register_rule
    from .tie import prune_many


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ChannelPruning",
    "DependencyGraph",
    "FilterPruning",
    "GraphpruneError",
    "Group",
    "InputError",
    "LayerPruning",
    "Member",
    "PassResult",
    "Pipeline",
    "PipelineResult",
    "Plan",
    "PruneResult",
    "Report",
    "SparsityPruning",
    "ValidationFailed",
    "analyze",
    "load_model",
    "prune",
    "prune_layers",
    "prune_many",
    "register_rule",
    "run_passes",
    "save",
    "validate",
]
