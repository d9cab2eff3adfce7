"""``graphprune inspect --html``: a self-contained page that draws the groups on the op graph.

Contract under test: the page parses, has an SVG drawing (well-formed XML) and a row per
group, names every op type and every blocked reason, escapes names, loads nothing from
the network, stays small for real models, and is written by the CLI.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import onnx
import pytest

import graphprune
from graphprune import html as page_html
from models import builders, zoo


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(f"{tag} {name}={value}")
        if tag == "link":
            self.external.append("link")


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    p.close()
    return p


def svg_of(page: str) -> ET.Element:
    start = page.index('<svg id="graph"')
    end = page.index("</svg>", start) + len("</svg>")
    return ET.fromstring(page[start:end])


def check_page(deps: graphprune.DependencyGraph, page: str) -> _Tags:
    tags = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert "svg" in tags.tags and "table" in tags.tags and "script" in tags.tags
    assert tags.external == []  # offline: nothing to fetch
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    for g in deps.groups:
        assert f'<tr id="g{g.id}" data-gid="{g.id}"' in page
    for g in deps.blocked_groups():
        assert html.escape(g.reasons[0]) in page
    for op in {n.op_type for n in deps.view.nodes}:
        assert html.escape(op) in page
    return tags


@pytest.fixture(scope="module")
def resnet50_deps():
    return graphprune.analyze(onnx.load(str(zoo.skeleton_path("resnet50"))))


def test_residual_net_page_draws_every_node_and_lists_every_group():
    deps = graphprune.analyze(builders.residual_net())
    page = page_html.render(deps, "residual_net.onnx")
    check_page(deps, page)
    svg = svg_of(page)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    boxes = [g for g in svg.iter(f"{ns}g") if "n" in g.get("class", "").split()]
    ops = [b for b in boxes if "op" in b.get("class", "").split()]
    assert len(ops) == len(deps.view.nodes)
    # every group that a node touches lights it up, and the stream of the stem is one colour
    stem = deps.group_of("conv1.weight", 0)
    lit = [b for b in ops if str(stem.id) in b.get("data-g", "").split()]
    assert len(lit) >= 4  # conv1, bn1, relu, the block's convs and Add
    assert page.count(f"s{stem.id}") >= 3  # edges carrying the stream, in its colour
    assert "<h1>residual_net.onnx</h1>" in page
    summary = f"<b>{len(deps.prunable_groups()):,}</b><span>prunable groups</span>"
    assert summary in page


def test_dense_block_concat_shows_its_segments_in_channel_order():
    deps = graphprune.analyze(builders.dense_block(channels=24, growth=8, layers=3))
    page = page_html.render(deps, "dense_block")
    check_page(deps, page)
    svg_of(page)
    stem = deps.group_of("features.conv0.weight", 0)
    layer1 = deps.group_of("features.denseblock1.denselayer1.conv2.weight", 0)
    # The last concat's box is striped: stem (24 channels) first, then layer 1 (8)
    assert re.search(rf'<rect class="f{stem.id}" x="0\.0"[^>]*/><rect class="f{layer1.id}"', page)


def test_names_are_escaped():
    model = builders.residual_net(blocks=1)
    model.graph.node[0].name = '<script>alert("x")</script>&'
    deps = graphprune.analyze(model)
    page = page_html.render(deps, "<b>model</b>")
    assert "<script>alert" not in page and "<b>model</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    check_page(deps, page)
    svg_of(page)


def test_blocked_reason_of_an_unknown_op_is_shown():
    model = builders.residual_net(blocks=1)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Mystery", "custom"
    model.opset_import.append(onnx.helper.make_opsetid("custom", 1))
    deps = graphprune.analyze(model)
    reasons = [r for g in deps.blocked_groups() for r in g.reasons if "no rule for custom.Mystery" in r]
    assert reasons
    page = page_html.render(deps, "custom")
    check_page(deps, page)
    assert html.escape(reasons[0]) in page
    assert 'class="hat"' in page  # blocked groups are hatched in the drawing


def test_resnet50_page_is_small(resnet50_deps):
    page = page_html.render(resnet50_deps, "resnet50")
    check_page(resnet50_deps, page)
    svg_of(page)
    assert len(page.encode()) < 2_000_000


def test_large_graph_draws_only_the_nodes_of_groups():
    deps = graphprune.analyze(onnx.load(str(zoo.skeleton_path("swin_t"))))  # ~6000 nodes
    assert len(deps.view.nodes) > page_html.MAX_DRAWN
    page = page_html.render(deps, "swin_t")
    check_page(deps, page)
    svg = svg_of(page)
    ns = "{http://www.w3.org/2000/svg}"
    drawn = [g for g in svg.iter(f"{ns}g") if "op" in g.get("class", "").split()]
    assert 0 < len(drawn) <= page_html.MAX_DRAWN
    assert "only the" in page and "through nodes not drawn" in page
    assert len(page.encode()) < 2_000_000


def test_too_large_graph_keeps_the_table(monkeypatch):
    deps = graphprune.analyze(builders.residual_net())
    monkeypatch.setattr(page_html, "MAX_DRAWN", 5)
    page = page_html.render(deps, "big")
    tags = parse(page)
    assert '<svg id="graph"' not in page and "table" in tags.tags
    assert "too large to draw" in page
    for g in deps.groups:
        assert f'data-gid="{g.id}"' in page


def test_cli_writes_the_page(run_cli, tiny_model_path, tmp_path):
    out = tmp_path / "sub" / "deps.html"
    code, stdout, err = run_cli("inspect", tiny_model_path, "--html", out)
    assert code == 0, err
    assert out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<svg id="graph"' in text
    assert "model.onnx" in text
    assert "groups:" in stdout  # the table is still printed
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no leftovers

    code, stdout, err = run_cli("inspect", tiny_model_path, "--json", "--html", out, "--force")  # it exists now
    assert code == 0, err
    assert json.loads(stdout)["groups_total"] > 0  # stdout stays pure JSON
