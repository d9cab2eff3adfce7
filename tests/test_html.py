"""``graphprune inspect --html``: a self-contained page that draws the groups on the op graph.

Contract under test: the page parses, carries the drawing's data (every drawn node in one
view, no view too large to read) and a row per group, names every op type and every blocked
reason, escapes names, loads nothing from the network, stays small for real models, and is
written by the CLI. What the browser does with it: tests/test_html_browser.py.
"""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

import onnx
import pytest

import graphprune
from graphprune.present import html_page as page_html
from graphprune.present.inspection import describe
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


def data_of(page: str) -> dict:
    tag = '<script type="application/json" id="gp-data">'
    start = page.index(tag) + len(tag)
    return json.loads(page[start : page.index("</script>", start)])


def op_items(view: dict) -> list[int]:
    it = view["i"]
    return [it[j + 1] for j in range(0, len(it), 4) if it[j] == page_html.OP]


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
    data = data_of(page)
    assert len(data["views"]) == 1  # small: one view, nothing folded
    assert sorted(op_items(data["views"][0])) == list(range(len(deps.view.nodes)))
    # every group that a node touches lights it up, and the stream of the stem is one colour
    stem = deps.group_of("conv1.weight", 0)
    lit = [n for n in data["nodes"] if stem.id in n[4]]
    assert len(lit) >= 4  # conv1, bn1, relu, the block's convs and Add
    carrying = [t for t in data["tensors"] if t[2][:1] == [stem.id]]
    assert len(carrying) >= 3  # edges carrying the stream, in its colour
    assert "<h1>residual_net.onnx</h1>" in page
    summary = f"<b>{len(deps.prunable_groups()):,}</b><span>prunable groups</span>"
    assert summary in page


def test_dense_block_concat_shows_its_segments_in_channel_order():
    deps = graphprune.analyze(builders.dense_block(channels=24, growth=8, layers=3))
    page = page_html.render(deps, "dense_block")
    check_page(deps, page)
    stem = deps.group_of("features.conv0.weight", 0)
    layer1 = deps.group_of("features.denseblock1.denselayer1.conv2.weight", 0)
    # The last concat's box is striped: stem (24 channels) first, then layer 1 (8)
    concats = [n for n in data_of(page)["nodes"] if n[1] == "Concat"]
    assert concats[-1][3][:4] == [stem.id, 24, layer1.id, 8]


def test_names_are_escaped():
    model = builders.residual_net(blocks=1)
    model.graph.node[0].name = '<script>alert("x")</script>&'
    deps = graphprune.analyze(model)
    page = page_html.render(deps, "<b>model</b>")
    assert "<script>alert" not in page and "<b>model</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    check_page(deps, page)
    assert data_of(page)["nodes"][0][0] == '<script>alert("x")</script>&'  # the data keeps the name


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
    assert data_of(page)["blocked"] == sorted(g.id for g in deps.blocked_groups())  # hatched in the drawing


def test_resnet50_page_is_small(resnet50_deps):
    page = page_html.render(resnet50_deps, "resnet50")
    check_page(resnet50_deps, page)
    assert len(page.encode()) < 2_000_000


def test_large_graph_is_folded_into_small_views_that_hold_every_node():
    deps = graphprune.analyze(onnx.load(str(zoo.skeleton_path("swin_t"))))  # ~6000 nodes
    page = page_html.render(deps, "swin_t")
    check_page(deps, page)
    data = data_of(page)
    drawn = [k for v in data["views"] for k in op_items(v)]
    assert sorted(drawn) == list(range(len(data["nodes"])))  # every drawn node, once
    assert len(data["nodes"]) > page_html.FLAT_MAX
    for v in data["views"]:
        children = sum(1 for j in range(0, len(v["i"]), 4) if v["i"][j] in (page_html.OP, page_html.BLOCK))
        assert children <= page_html.MAX_ITEMS
    labels = {v["l"] for v in data["views"]}
    assert any(label.startswith("features.1") for label in labels)  # exporter scopes are boxes
    assert len(page.encode()) < 500 * len(deps.view.nodes)
    # NHWC: the MLP's output is coloured by its prunable channels (axis 3), not the blocked H axis
    mlp = next(n for n in data["nodes"] if n[0] == "/features/features.7/features.7.0/mlp/mlp.0/MatMul")
    assert mlp[3] and mlp[3][0] not in data["blocked"] and mlp[2] == "3072"


def test_a_graph_without_scopes_is_cut_where_few_tensors_cross():
    from benchmarks.graph_size import residual_stack

    deps = graphprune.analyze(residual_stack(700))
    data = data_of(page_html.render(deps, "stack"))
    root = data["views"][0]
    assert 1 < len(op_items(root)) + sum(1 for j in range(0, len(root["i"]), 4) if root["i"][j] == page_html.BLOCK)
    # each chunk starts where one tensor crosses: a chunk's first node is a conv of a block or the head
    first_ops = {data["nodes"][min(op_items(v) or [0])][1] for v in data["views"][1:] if op_items(v)}
    assert first_ops <= {"Conv", "Relu", "Add"}


def test_single_constant_groups_are_folded_under_their_owner():
    deps = graphprune.analyze(builders.residual_net())
    summary = describe(deps)
    trivial = {"id": 999, "members": [{"tensor": "bn1.weight", "axis": 0, "kind": "constant"}]}
    summary["groups"].append(trivial)
    owners = page_html._owners(deps, summary, page_html._Index(deps))
    bn1 = next(i for i, n in enumerate(deps.view.nodes) if "bn1.weight" in n.input)
    out = deps.view.nodes[bn1].output[0]
    assert owners == {999: page_html._Index(deps).channel_groups(out)[0][0]}


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


def test_a_graph_of_only_constants_says_there_is_nothing_to_draw():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    const = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    deps = graphprune.analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    page = page_html.render(deps, "constants")
    assert "no nodes to draw" in page
    assert data_of(page)["views"][0]["i"] == []
