"""What ``graphprune inspect`` shows: the groups of a model, as rows and as JSON."""

from __future__ import annotations

from typing import Any

from .dependency import DependencyGraph, Group
from .inputs import declared
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
    from .cost import count_flops, node_macs
    from .costmodel import sample_shapes

    mv = deps.view
    found = find_blocks(mv.model, mv)
    if not found:
        return []
    shapes = sample_shapes(deps)  # per sample: a dynamic model's blocks have MACs too
    total = max(1, count_flops(mv.model, shapes)[0])
    out = []
    for b in found:
        macs = sum(node_macs(mv.nodes[k], shapes) or 0 for k in (*b.nodes, b.add_index))
        out.append({**b.to_json(), "macs": macs, "macs_share": macs / total})
    return out


def costs(deps: DependencyGraph) -> dict[str, Any]:
    """Parameters and MACs per sample, and the input dims assumed for them (symbolic dims sized by
    ``--input-shape`` or :mod:`graphprune.inputs`'s defaults; None when every dim is fixed)."""
    from .cost import cost_of
    from .costmodel import sample_shapes

    shapes = sample_shapes(deps)
    cost = cost_of(deps.model, shapes)
    assumed = None
    if shapes is not deps.view.shapes:
        symbolic = [k for k, dims in declared(deps.model).items() if not all(isinstance(d, int) for d in dims)]
        assumed = {k: list(shapes[k]) for k in symbolic if k in shapes}
    return {"params": cost.params, "macs_per_sample": cost.flops, "assumed_shapes": assumed}


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
        # where analysis could not follow the model: weights outside any group, and notes
        "unanalysed": [{"tensor": t, "reasons": list(rs)} for t, rs in deps.unanalysed.items()],
        "unanalysed_reasons": deps.unanalysed_counts(),
        "notes": list(deps.notes),
        "nothing_prunable": deps.why_nothing() or None,
        "groups": groups,
        "blocks": blocks(deps),
        **costs(deps),
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
    if summary["unanalysed_reasons"]:
        counts = ", ".join(f"{k} ({v})" for k, v in summary["unanalysed_reasons"].items())
        table += f"\n\nweights outside any group, by reason: {counts}"
    if summary["notes"]:
        table += "\n\nnotes:\n" + "\n".join(f"- {n}" for n in summary["notes"])
    found = summary["blocks"]
    if found:
        block_rows = [
            (b["id"], b["add"], f"{b['x']} -> {b['y']}", b["params"], f"{100 * b['macs_share']:.1f}%") for b in found
        ]
        table += f"\n\n{len(found)} residual blocks y = x + f(x), removable with --pass layer:\n"
        table += grid(("block", "add", "x -> y", "params", "MACs"), block_rows)
    shown = ""
    if summary["assumed_shapes"]:
        shown = " at " + ", ".join(f"{k} {'x'.join(map(str, d))}" for k, d in summary["assumed_shapes"].items())
    table += f"\n\n{summary['params']} parameters, {summary['macs_per_sample']} MACs per sample{shown}"
    if not summary["groups_total"]:
        foot = summary["nothing_prunable"]  # never "0 groups" without why
    return table + "\n" + foot
