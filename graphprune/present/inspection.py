"""What ``graphprune inspect`` shows: the groups of a model, as rows and as JSON.

A model of more than :data:`REPEATS_FROM` groups is shown per repeated layer in the
terminal: groups made by the same node of consecutive layers (``/layers.{i}/mlp/up_proj``,
``blocks.{i}.conv1``) with the same size, unit and status are one row,
``layers.0-11: mlp/up_proj/MatMul`` with ``×12``. ``--json`` always lists every group.
"""

from __future__ import annotations

import re
from typing import Any

from ..analysis.dependency import DependencyGraph, Group
from ..ir.input_sizes import declared
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
    from ..analysis.blocks import find_blocks
    from ..objectives.cost import count_flops, node_macs
    from ..planning.cost_model import sample_shapes

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
    ``--input-shape`` or :mod:`graphprune.ir.input_sizes`'s defaults; None when every dim is fixed)."""
    from ..objectives.cost import cost_of
    from ..planning.cost_model import sample_shapes

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
        "notes": list(deps.notes) + io_note(deps),
        "nothing_prunable": deps.why_nothing() or None,
        "groups": groups,
        "blocks": blocks(deps),
        **costs(deps),
    }


def io_note(deps: DependencyGraph) -> list[str]:
    """A note when groups are blocked only by graph inputs/outputs paired as carried state (a
    KV cache's past and present): ``prune --allow-io-change`` would prune them."""
    from ..analysis.iochange import paired_io

    paired = paired_io(deps)[0]
    if not paired:
        return []
    n = len(paired)
    return [
        f"{n} group{'s are' if n > 1 else ' is'} blocked only by graph inputs/outputs paired as carried state"
        " (past -> present, e.g. a KV cache): prune --allow-io-change prunes them, changing those shapes"
    ]


REPEATS_FROM = 40  # groups; above this the terminal table folds repeated layers
_LAYER = re.compile(r"(?:^|/)([A-Za-z_][\w]*)\.(\d+)(?=[/.])")  # layers.3/ or blocks.3.


def _layer_of(name: str) -> tuple[str, int, str] | None:
    """``/layers.3/mlp/up_proj/MatMul`` -> ("layers", 3, "mlp/up_proj/MatMul"); None without a layer index."""
    m = _LAYER.search(name)
    if m is None:
        return None
    return m.group(1), int(m.group(2)), name[m.end() :].lstrip("/.")


def _layer_of_all(names: list[str]) -> tuple[str, int, str] | None:
    """The one layer every name is in, and what the names are within it."""
    found = [_layer_of(n) for n in names]
    if not found or any(f is None or f[:2] != found[0][:2] for f in found):
        return None
    rests = [f[2] for f in found]
    return found[0][0], found[0][1], ", ".join(rests[:2]) + (f" +{len(rests) - 2}" if len(rests) > 2 else "")


def _fold_layers(rows: list[tuple], layers: list, same: tuple[int, ...], fold) -> list[tuple]:
    """Rows of the same thing in 3 or more layers (equal in the columns ``same``) as one row
    ``fold(rows, "layers.0-11: what")``, where the first of them was."""
    out: list[tuple] = []
    runs: dict[tuple, list[int]] = {}
    order: list[tuple | int] = []
    for k, (row, layer) in enumerate(zip(rows, layers)):
        if layer is None:
            order.append(k)
            continue
        key = (layer[0], layer[2], *(row[c] for c in same))
        if key not in runs:
            runs[key] = []
            order.append(key)
        runs[key].append(k)
    for entry in order:
        if isinstance(entry, int):
            out.append(rows[entry])
            continue
        ks = runs[entry]
        if len(ks) < 3:
            out += [rows[k] for k in ks]
            continue
        idx = sorted(layers[k][1] for k in ks)
        span = f"{idx[0]}-{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) else f"{idx[0]},{idx[1]},…,{idx[-1]}"
        out.append(fold([rows[k] for k in ks], f"{entry[0]}.{span}: {entry[1]}"))
    return out


def _group_run(rows: list[tuple], where: str) -> tuple:
    members = sorted({r[3] for r in rows})
    members_text = str(members[0]) if len(members) == 1 else f"{members[0]}-{members[-1]}"
    first = rows[0]
    return (f"{first[0]}… ×{len(rows)}", first[1], first[2], members_text, where, first[5])


def _block_run(rows: list[tuple], where: str) -> tuple:
    first = rows[0]
    return (f"{first[0]}… ×{len(rows)}", where, "(each layer's)", first[3], f"{first[4]} each")


def table(deps: DependencyGraph) -> str:
    rows, layers = [], []
    for g in deps.groups:
        prods = producers(deps, g)
        shown = ", ".join(prods[:2]) + (f" +{len(prods) - 2}" if len(prods) > 2 else "")
        status = (
            "prunable"
            if g.prunable
            else "blocked: " + g.reasons[0] + (f" (+{len(g.reasons) - 1} more)" if len(g.reasons) > 1 else "")
        )
        rows.append((g.id, g.describe_size, g.unit, len(g.members), shown or "-", status))
        layers.append(_layer_of_all(prods))
    if len(rows) > REPEATS_FROM:
        rows = _fold_layers(rows, layers, (1, 2, 5), _group_run)
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
        if len(block_rows) > REPEATS_FROM // 2:
            block_rows = _fold_layers(block_rows, [_layer_of(b["add"]) for b in found], (3, 4), _block_run)
        table += f"\n\n{len(found)} residual blocks y = x + f(x), removable with --pass layer:\n"
        table += grid(("block", "add", "x -> y", "params", "MACs"), block_rows)
    shown = ""
    if summary["assumed_shapes"]:
        shown = " at " + ", ".join(f"{k} {'x'.join(map(str, d))}" for k, d in summary["assumed_shapes"].items())
    table += f"\n\n{summary['params']} parameters, {summary['macs_per_sample']} MACs per sample{shown}"
    if not summary["groups_total"]:
        foot = summary["nothing_prunable"]  # never "0 groups" without why
    return table + "\n" + foot
