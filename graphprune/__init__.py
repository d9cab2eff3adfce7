"""graphprune: structured pruning of exported ONNX models.

Remove whole filters, channels and the tensors coupled to them directly in the ONNX
graph, with numerical proof that the surgery did what the plan says::

    import graphprune
    result = graphprune.prune("model.onnx", ratio=0.5, criterion="l2")
    assert result.report.passed
    graphprune.save(result.model, "small.onnx")
"""

from .api import PruneResult, analyze, load_model, prune, save, validate
from .dependency import DependencyGraph, Group, Member
from .errors import GraphpruneError, InputError, ValidationFailed
from .passes import FilterPruning, PassResult, Pipeline
from .plan import Plan
from .report import Report

__version__ = "0.1.0"

__all__ = [
    "DependencyGraph",
    "FilterPruning",
    "GraphpruneError",
    "Group",
    "InputError",
    "Member",
    "PassResult",
    "Pipeline",
    "Plan",
    "PruneResult",
    "Report",
    "ValidationFailed",
    "analyze",
    "load_model",
    "prune",
    "save",
    "validate",
]
