"""What a search shows and writes: the front table, and OUTDIR.

OUTDIR holds every front model as ``<id>.onnx`` with its plan ``<id>.plan.json``,
``front.json`` (the front's trials, best first, with the baseline and the latency note),
``search.png`` (metric against MACs and against latency, the front highlighted; needs
matplotlib, else skipped with a note) and ``trials.html`` (a self-contained page of every
trial, sortable, with no external resources).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .run import SearchResult


def front_table(result: SearchResult) -> str:
    """The front, best first, one row per trial."""
    by_id = {t.id: t for t in result.trials}
    name = "top-1" if result.objective == "accuracy" else "cosine"
    head = f"{'id':<10}  {name:>8}  {'MACs':>6}  {'params':>6}  {'latency*':>8}  configuration"
    rows = [head]
    for tid in result.front:
        t = by_id[tid]
        rows.append(
            f"{t.id:<10}  {t.metric:>8.4f}  {t.macs_ratio:>6.3f}  {t.params_ratio:>6.3f}  "
            f"{_num(t.latency_ratio):>8}  {describe(t.config)}"
        )
    done = sum(t.status == "done" for t in result.trials)
    failed = sum(t.status == "failed" for t in result.trials)
    base = f"original {name} {result.baseline:.4f}; " if result.objective == "accuracy" else ""
    text = (
        f"Pareto front: {len(result.front)} of the {done} trials done ({failed} failed); {base}ratios to the original\n"
    )
    text += "\n".join(rows)
    text += "\n* latency of the front timed again alone after the search (median of interleaved runs)"
    return text


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def describe(config: dict) -> str:
    """A configuration in the prune command's words."""
    parts = [f"--pass {config['pass']}"]
    if config.get("remove_blocks"):
        parts = [f"--pass layer {config['pass']} --remove-blocks {config['remove_blocks']}"]
    if config["pass"] == "channel":  # its criterion ranks groups no calibrated consumer reads
        parts.append(f"--ratio {config['ratio']} --criterion {config['criterion']}")
    else:
        parts.append(f"--target-flops {config['target_flops']} --criterion {config['criterion']}")
        if config.get("target_at_most"):
            parts.append("--target-at-most")
        if config["compensate"] != "none":
            parts.append(f"--compensate {config['compensate']}")
        if config.get("sensitivity"):
            parts.append("--sensitivity SENS.json")
    parts.append(f"--round-to {config['round_to']}")
    if config.get("units"):
        parts.append("--unit " + " ".join(config["units"]))
    return " ".join(parts)


def write_outdir(result: SearchResult, out: str | Path) -> list[str]:
    """Write OUTDIR; returns notes (a part skipped, and why)."""
    from ..ir import files as io

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_id = {t.id: t for t in result.trials}
    for tid in result.front:
        io.save(result.models[tid], out / f"{tid}.onnx")
        plan = {"config": by_id[tid].config, "command": describe(by_id[tid].config), "plan": by_id[tid].plan}
        io.write_text_atomic(out / f"{tid}.plan.json", json.dumps(plan, indent=1) + "\n")
    front = {
        "objective": result.objective,
        "baseline": result.baseline,
        "front": [by_id[tid].to_json() for tid in result.front],
        "latency_note": result.to_json()["latency_note"],
    }
    io.write_text_atomic(out / "front.json", json.dumps(front, indent=1) + "\n")
    io.write_text_atomic(out / "trials.html", trials_html(result))
    notes = []
    try:
        plot(result, out / "search.png")
    except ImportError:
        notes.append("search.png skipped: plotting needs matplotlib (pip install 'graphprune[plot]')")
    return notes


def plot(result: SearchResult, path: Path) -> None:
    """Metric against MACs and against latency, every done trial, the front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..ir.files import atomic_path

    done = [t for t in result.trials if t.status == "done"]
    on = set(result.front)
    name = "top-1 accuracy" if result.objective == "accuracy" else "cosine to the original"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in ((axes[0], "macs_ratio", "MACs kept"), (axes[1], "latency_ratio", "latency ratio")):
        rest = [t for t in done if t.id not in on and getattr(t, key) is not None]
        fr = sorted((t for t in done if t.id in on and getattr(t, key) is not None), key=lambda t: getattr(t, key))
        ax.scatter([getattr(t, key) for t in rest], [t.metric for t in rest], c="tab:gray", s=18, label="trial")
        style = "o-" if key == "macs_ratio" else "o"  # the front is a line in MACs, points in latency
        ax.plot([getattr(t, key) for t in fr], [t.metric for t in fr], style, c="tab:red", label="front")
        tied: dict[tuple, list[str]] = {}  # front members at one point (ties) share one label
        for t in fr:
            tied.setdefault((getattr(t, key), t.metric), []).append(t.id[:6])
        for k, ((x, y), ids) in enumerate(tied.items()):  # above and below in turn: near points stay legible
            ax.annotate(
                ", ".join(ids), (x, y), fontsize=7, xytext=(3, 4 if k % 2 == 0 else -11), textcoords="offset points"
            )
        if result.objective == "accuracy":
            ax.axhline(result.baseline, ls="--", c="tab:blue", lw=0.8, label="original")
        ax.set_xlabel(label + " (of the original)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(name)
    axes[1].set_title("latency: front timed alone, others beside other trials", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"graphprune search: {len(done)} trials, {len(result.front)} on the front")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def trials_html(result: SearchResult) -> str:
    """A self-contained page of every trial (inline CSS and script; works offline)."""
    on = set(result.front)
    cols = ["id", "status", "metric", "macs_ratio", "params_ratio", "latency_ratio", "seconds", "configuration"]
    rows = []
    for t in result.trials:
        cells = [
            t.id + (" ★" if t.id in on else ""),
            t.status,
            _num(t.metric),
            _num(t.macs_ratio),
            _num(t.params_ratio),
            _num(t.latency_ratio),
            "-" if t.seconds is None else f"{t.seconds:.1f}",
            describe(t.config) + (f" — {t.error}" if t.error else ""),
        ]
        cls = "front" if t.id in on else t.status
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th onclick='sortBy({k})'>{html.escape(c)}</th>" for k, c in enumerate(cols))
    name = "top-1 accuracy" if result.objective == "accuracy" else "cosine to the original"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>graphprune search</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; }}
th {{ cursor: pointer; background: #f3f3f3; }}
tr.front {{ background: #ffe9e6; font-weight: 600; }}
tr.failed {{ color: #999; }}
</style></head><body>
<h1>graphprune search</h1>
<p>{len(result.trials)} trials; metric: {html.escape(name)} (original {result.baseline:.4f});
{len(result.front)} on the Pareto front (★, highlighted). Ratios are to the original.
{html.escape(result.to_json()["latency_note"])}. Click a column to sort.</p>
<table id="t"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<script>
function sortBy(k) {{
  const body = document.querySelector('#t tbody');
  const rows = Array.from(body.rows);
  const key = r => {{ const v = r.cells[k].textContent; const n = parseFloat(v); return isNaN(n) ? v : n; }};
  const asc = body.dataset.k == k ? body.dataset.asc != '1' : true;
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  body.dataset.k = k; body.dataset.asc = asc ? '1' : '0';
  rows.forEach(r => body.appendChild(r));
}}
</script>
</body></html>
"""
