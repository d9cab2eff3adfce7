"""The reference in docs/ stays true: the CLI page is the parser's, links resolve, contracts stay documented."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from models import coverage

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_cli_reference_is_what_the_parser_gives():
    assert (DOCS / "cli.md").read_text() == _gen_cli().render(), "run python docs/gen_cli.py"


def test_cli_reference_documents_every_subcommand():
    text = (DOCS / "cli.md").read_text()
    for command in ("inspect", "prune", "validate", "sensitivity"):
        assert f"## graphprune {command}\n" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_readme_links_to_each_reference_page():
    readme = (ROOT / "README.md").read_text()
    for name in ("cli", "usage", "concepts", "validation", "data", "benchmarks", "zoo"):
        assert f"(docs/{name}.md" in readme


def test_zoo_table_is_between_the_coverage_markers_that_models_coverage_rewrites(tmp_path):
    assert coverage.DOC == DOCS / "zoo.md"
    text = coverage.DOC.read_text()
    assert text.count(coverage.START) == 1 and text.count(coverage.END) == 1
    table = text.split(coverage.START, 1)[1].split(coverage.END, 1)[0].lstrip("\n")
    assert table.startswith("| model | exporter |") and table.count("\n") > 20
    copy = tmp_path / "zoo.md"
    copy.write_text(text)
    coverage.update_doc(table, copy)
    assert copy.read_text() == text


# Report keys and flags the README named before the reference moved to docs/: each is a contract.
REPORT_KEYS = """
params_before params_after flops_before flops_after exact checked passed max_rel_diff skipped_groups tolerance
tolerance_steps quant_step max_step_diff float_max_rel_diff notes unanalysed_reasons fidelity cosine rel_l2
top1_agreement groups_pruned groups_blocked blocked blocked_reasons latency_ms_before/after file_bytes_before/after
checker runtime assumed_shapes assumed_shapes_from latency_batch round_to channel_step nothing_pruned
unanalysed nothing_prunable accuracy calibration compensate consumers skipped fallbacks target objective
reached latency_table reached_estimate latency_measured before_ms after_ms tries candidates allocation
blocks blocks_found blocks_removed target_of_original exact.note exact.skipped_groups exact.tolerance
graphprune.plan graphprune.history graphprune.layer_plan graphprune.pipeline metadata_props
""".split()
FLAGS = """
--json --html --force --input-shape --ratio --target-flops --target-params --target-latency --objective
--latency-table --latency-model --threads --criterion --global --unit --round-to --min-keep --ignore --plan
--save-plan --report --no-validate --no-latency --keep-failed --seed --latency-runs --input-map --pass --calib
--calib-samples --batch-size --compensate --selection --remove-blocks --block-criterion --sensitivity --data
--labels --plot --ratios --samples --no-blocks --debug --version
""".split()


@pytest.mark.parametrize("name", REPORT_KEYS + FLAGS)
def test_contract_named_in_the_old_readme_is_documented_in_docs(name):
    prose = "".join(p.read_text() for p in DOCS.glob("*.md") if p.name != "cli.md")  # not only the parser's help
    fenced = re.findall(r"```.*?```", prose, flags=re.S)  # the usage synopsis, examples
    spans = fenced + re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", prose, flags=re.S))
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    assert any(word.search(span) for span in spans), f"{name} is no longer documented in docs/"
