"""What ``graphprune inspect`` shows: the groups of a model, as rows and as JSON."""

from __future__ import annotations

from typing import Any

from .dependency import DependencyGraph, Group, body_notes
from .report import grid


def producers(deps: DependencyGraph, group: Group) -> list[str]:
    """Names of the nodes whose weights make the group's channels."""
    mv = deps.view
    names = []
    for m in group.weights("out"):
        for i, _ in mv.weight_readers(m.tensor):
            if mv.node_names[i] not in names:
                names.append(mv.node_names[i])
    return names


def blocks(deps: DependencyGraph) -> list[dict[str, Any]]:
    """The removable residual blocks ``y = x + f(x)`` (``prune --pass layer``), with their share
    of the model's MACs."""
    from .blocks import find_blocks
    from .cost import count_flops

    mv = deps.view
    found = find_blocks(mv.model, mv)
    if not found:
        return []
    total = max(1, count_flops(mv.model, mv.shapes)[0])
    return [{**b.to_json(), "macs_share": b.macs / total} for b in found]


def describe(deps: DependencyGraph) -> dict[str, Any]:
    """The JSON form of ``inspect``."""
    groups = []
    for g in deps.groups:
        groups.append(
            {
                "id": g.id,
                "label": g.label,
                "size": g.size,
                "unit": g.unit,
                **({"head_size": g.facts["heads"]} if "heads" in g.facts else {}),
                "prunable": g.prunable,
                "reasons": g.reasons,
                "producers": producers(deps, g),
                "members": [
                    {
                        "tensor": m.tensor,
                        "axis": m.axis,
                        "kind": m.kind,
                        "role": m.role,
                        "entries_per_index": int(m.indices.shape[1]),
                    }
                    for m in g.members
                ],
            }
        )
    return {
        "nodes": len(deps.view.nodes),
        "groups_total": len(deps.groups),
        "groups_prunable": len(deps.prunable_groups()),
        "groups_blocked": len(deps.blocked_groups()),
        "prunable_channels": int(sum(g.size for g in deps.prunable_groups())),
        "blocked_reasons": deps.blocked_counts(),
        "groups": groups,
        "blocks": blocks(deps),
        "notes": body_notes(deps.model),
    }


def table(deps: DependencyGraph) -> str:
    rows = []
    for g in deps.groups:
        prods = producers(deps, g)
        shown = ", ".join(prods[:2]) + (f" +{len(prods) - 2}" if len(prods) > 2 else "")
        status = (
            "prunable"
            if g.prunable
            else "blocked: " + g.reasons[0] + (f" (+{len(g.reasons) - 1} more)" if len(g.reasons) > 1 else "")
        )
        rows.append((g.id, g.describe_size, g.unit, len(g.members), shown or "-", status))
    summary = describe(deps)
    foot = (
        f"{summary['groups_total']} groups: {summary['groups_prunable']} prunable"
        f" ({summary['prunable_channels']} channels), {summary['groups_blocked']} blocked"
    )
    table = grid(("group", "size", "unit", "members", "made by", "status"), rows)
    if summary["blocked_reasons"]:
        counts = ", ".join(f"{k} ({v})" for k, v in summary["blocked_reasons"].items())
        table += f"\n\nblocked groups by rule: {counts}"
    found = summary["blocks"]
    if found:
        block_rows = [
            (b["id"], b["add"], f"{b['x']} -> {b['y']}", b["params"], f"{100 * b['macs_share']:.1f}%") for b in found
        ]
        table += f"\n\n{len(found)} residual blocks y = x + f(x), removable with --pass layer:\n"
        table += grid(("block", "add", "x -> y", "params", "MACs"), block_rows)
    notes = "".join(f"\nnote: {n}" for n in summary["notes"])
    return table + "\n" + foot + notes
