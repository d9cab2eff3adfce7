"""``inspect --html`` pages driven in a real browser: Debian's chromium through Playwright.

Contract under test: pages load offline without console errors; hovering a row lights its
group, clicking a node pins it and Escape unpins; a click on a box expands it in place (its nodes
drawn in the same view, nothing overlapping) and a click on its frame folds it; shift-click opens
its own view and "up" comes back;
search jumps to a node, a tensor or a weight; a group's view holds its nodes and their
neighbours; wheel zooms and drag pans; the table sorts; the default view of a large model
has readable text (at least 9 px high on screen). Skipped, with the reason, where Playwright
or the chromium binary is missing (``apt-get install chromium``; never ``playwright install``).

The docs' screenshots (``docs/img/inspect_{swin_t,decoder_20k}_{default,expanded,pinned}.png``)
come from this suite: ``GRAPHPRUNE_DOC_SHOTS=docs/img python -m pytest tests/test_html_browser.py``
(the 20k-node decoder takes about 20 s to analyse and write, so the default run shoots a
1,500-node one into a temporary folder instead). The OCR recogniser's are not a test's: it is not
in the repository (``python -m benchmarks.html_view --nodes --model ocr=PATH --shots docs/img
--prefix inspect_``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
import pytest

import graphprune
from graphprune.present import html_page as page_html
from models import zoo

playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium (apt-get install chromium)", allow_module_level=True)

DIGITS = "models/examples/digits/digits_cnn.onnx"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Opened:
    def __init__(self, page, errors, requests):
        self.page, self.errors, self.requests = page, errors, requests

    def state(self) -> dict:
        return self.page.evaluate("graphprune.state()")

    def js(self, expr: str):
        return self.page.evaluate(expr)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Written pages, by name: the digits CNN and swin_t (6170 nodes)."""
    out = tmp_path_factory.mktemp("pages")
    paths = {}
    for name, model in [("digits", onnx.load(DIGITS)), ("swin_t", onnx.load(str(zoo.skeleton_path("swin_t"))))]:
        deps = graphprune.analyze(model)
        path = out / f"{name}.html"
        path.write_text(page_html.render(deps, name), encoding="utf-8")
        paths[name] = path
    return paths


@pytest.fixture
def open_page(browser, pages):
    opened = []

    def go(name: str) -> Opened:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(pages[name].as_uri())
        page.wait_for_selector("html[data-ready]", timeout=30000)
        opened.append(page)
        return Opened(page, errors, requests)

    yield go
    for p in opened:
        p.close()


def test_digits_page_loads_offline_without_console_errors(open_page):
    o = open_page("digits")
    assert o.errors == []
    assert all(u.startswith("file://") for u in o.requests)  # nothing fetched from the network
    assert o.js("document.querySelectorAll('#vp .n.op').length") > 10


def test_hovering_a_row_lights_its_group_and_clicking_a_node_pins_it(open_page):
    o = open_page("digits")
    gid = o.js("+document.querySelector('tr.ok[data-gid]').dataset.gid")
    o.page.hover(f"#g{gid} td.num")
    assert o.js("document.getElementById('graph').classList.contains('focus')")
    assert o.js("document.querySelectorAll('#vp .n.on').length") >= 2
    node = o.page.query_selector("#vp .n.op.on")
    node.click()
    assert o.state()["pinned"] is not None
    o.page.keyboard.press("Escape")
    assert o.state()["pinned"] is None
    assert o.errors == []


def test_large_model_default_view_has_readable_text(open_page, tmp_path):
    o = open_page("swin_t")
    heights = o.js(
        "(() => { const b = document.getElementById('scroll').getBoundingClientRect();"
        " return [...document.querySelectorAll('#vp text')].map(t => t.getBoundingClientRect())"
        ".filter(r => r.bottom > b.top && r.top < b.bottom && r.right > b.left && r.left < b.right)"
        ".map(r => r.height); })()"
    )
    assert heights and min(heights) >= 9
    o.page.screenshot(path=str(tmp_path / "swin_t_default.png"))
    assert (tmp_path / "swin_t_default.png").stat().st_size > 10_000
    assert o.errors == []


def test_a_box_expands_in_place_and_a_click_on_its_frame_folds_it(open_page, tmp_path):
    o = open_page("swin_t")
    ops = o.js("document.querySelectorAll('#vp .n.op').length")
    boxes = o.js("document.querySelectorAll('#vp .n.blk').length")
    ref = o.js("graphprune.current().items[+document.querySelector('#vp .n.blk').dataset.i].ref")
    o.page.click("#vp .n.blk")
    assert o.state()["view"] == 0  # same view, no breadcrumb step
    assert o.js(f"document.querySelectorAll('#vp .xf[data-f=\"{ref}\"]').length") == 1
    inner = o.js(f"graphprune.views[{ref}].items.filter(it => it.kind !== 2 && it.kind !== 3).length")
    now = o.js("document.querySelectorAll('#vp .n.op').length + document.querySelectorAll('#vp .n.blk').length")
    assert now == ops + boxes - 1 + inner  # the box's contents drawn in its place
    # nothing overlaps: boxes of one layer keep apart
    assert o.js(
        "(() => { const c = graphprune.current(), by = {};"
        " c.items.forEach(it => (by[it.layer] = by[it.layer] || []).push(it));"
        " return Object.values(by).every(r => r.sort((a, b) => a.x - b.x).every((it, i) => !i ||"
        " r[i - 1].x + r[i - 1].w / 2 <= it.x - it.w / 2 + 0.5)); })()"
    )
    inside = ref
    for _ in range(3):  # a box inside, expanded too, down to nodes
        j = o.js(
            f"graphprune.current().items.findIndex(it => it.kind === 1 && graphprune.views[it.ref].p === {inside})"
        )
        if j < 0:
            break
        inside = o.js(f"graphprune.current().items[{j}].ref")
        o.page.click(f'#vp .n.blk[data-i="{j}"]')
    assert o.js("document.querySelectorAll('#vp .xf').length") >= 2 or inside == ref
    k = o.js(  # a node inside the box, not one of the model view's own
        "(() => { const own = new Set(graphprune.views[0].items.filter(it => it.kind === 0).map(it => it.ref));"
        " return graphprune.current().items.filter(it => it.kind === 0 && !own.has(it.ref)).pop().ref; })()"
    )
    o.js(f"graphprune.jump({k})")
    assert o.state()["view"] == 0  # found here, not in the box's own view
    o.page.click("[data-zoom=fit]")
    o.page.screenshot(path=str(tmp_path / "swin_t_in_place.png"))
    o.page.click(f'#vp .xf[data-f="{ref}"] text', position={"x": 4, "y": 6})  # its "− label" heading
    assert o.js("document.querySelectorAll('#vp .xf').length") == 0
    assert o.js("document.querySelectorAll('#vp .n.op').length") == ops
    assert o.errors == []


def test_a_box_opens_its_view_and_up_comes_back(open_page, tmp_path):
    o = open_page("swin_t")
    assert o.state()["view"] == 0
    o.page.click("#vp .n.blk", modifiers=["Shift"])
    inner = o.state()["view"]
    assert inner != 0
    assert o.js("document.querySelectorAll('#crumbs a').length") >= 1  # the way back
    o.page.screenshot(path=str(tmp_path / "swin_t_expanded.png"))
    o.page.click("#up")
    assert o.state()["view"] == o.js(f"graphprune.views[{inner}].p")
    assert o.errors == []


def test_search_jumps_to_a_node_a_tensor_and_a_weight(open_page):
    o = open_page("swin_t")
    target = "/features/features.5/features.5.3/mlp/mlp.0/MatMul"
    for query in [target, target + "_output_0", "onnx::MatMul_"]:
        o.page.fill("#find", query)
        o.page.press("#find", "Enter")
        view = o.state()["view"]
        assert view != 0, query
        assert o.js("document.querySelectorAll('#vp .n.hit').length") == 1
    o.page.fill("#find", target)
    o.page.press("#find", "Enter")
    hit = o.js("document.querySelector('#vp .n.hit title').textContent")
    assert hit.startswith(target + " (MatMul)")
    chain = o.js("[...document.querySelectorAll('#crumbs a, #crumbs b')].map(e => e.textContent).join('/')")
    assert "features.5" in chain
    o.page.fill("#find", "no such name anywhere")
    o.page.press("#find", "Enter")
    assert o.js("document.getElementById('found').textContent") == "no match"
    assert o.errors == []


def test_a_groups_view_shows_its_nodes_and_their_neighbours(open_page):
    o = open_page("swin_t")
    gid = o.js("+document.querySelector('tr.ok[data-gid]').dataset.gid")
    o.page.click(f"#g{gid} button.gv")
    assert o.state()["view"] == -1 and o.state()["pinned"] == gid
    drawn = o.js("document.querySelectorAll('#vp .n.op').length")
    lit = o.js("document.querySelectorAll('#vp .n.op.on').length")
    assert 0 < lit < drawn  # members lit, neighbours drawn around them
    assert o.errors == []


def test_wheel_zooms_and_drag_pans(open_page):
    o = open_page("digits")
    before = o.state()
    box = o.page.query_selector("#scroll").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    o.page.mouse.move(cx, cy)
    o.page.mouse.wheel(0, -300)
    o.page.wait_for_timeout(50)
    assert o.state()["s"] > before["s"]
    mid = o.state()
    o.page.mouse.move(cx, cy)
    o.page.mouse.down()
    o.page.mouse.move(cx + 80, cy + 40, steps=4)
    o.page.mouse.up()
    after = o.state()
    assert after["tx"] == pytest.approx(mid["tx"] + 80) and after["ty"] == pytest.approx(mid["ty"] + 40)
    o.page.keyboard.press("ArrowLeft")  # keys act on the drawing under the pointer
    assert o.state()["tx"] == pytest.approx(after["tx"] + 60)
    o.page.keyboard.press("0")  # fit again
    assert o.state()["s"] == pytest.approx(before["s"])
    o.page.mouse.click(5, 5)  # elsewhere on the page the keys are the page's
    o.page.keyboard.press("ArrowLeft")
    assert o.state()["s"] == pytest.approx(before["s"]) and o.state()["tx"] == pytest.approx(before["tx"])


def test_the_table_sorts_by_size(open_page):
    o = open_page("swin_t")
    o.page.click("th[data-sort=size]")
    sizes = o.js("[...document.querySelectorAll('tr[data-gid]:not(.folded)')].map(r => +r.dataset.size)")
    assert sizes == sorted(sizes, reverse=True)
    o.page.click("th[data-sort=size]")
    sizes = o.js("[...document.querySelectorAll('tr[data-gid]:not(.folded)')].map(r => +r.dataset.size)")
    assert sizes == sorted(sizes)


def test_clicking_a_row_pins_its_group_and_shows_its_nodes(open_page):
    o = open_page("swin_t")
    gid = o.js(
        "+[...document.querySelectorAll('tr.ok[data-gid]')].sort((a, b) => b.dataset.size - a.dataset.size)[0]"
        ".dataset.gid"
    )
    o.page.click(f"#g{gid} td.made")
    assert o.state()["pinned"] == gid and o.state()["view"] != 0  # went into the box that holds it
    assert o.js("document.querySelectorAll('#vp .n.op.on').length") > 0  # its nodes, lit
    assert o.errors == []


class _B:  # what benchmarks.html_view.shots() needs of its Browser
    def __init__(self, page):
        self.page = page


def _shoot(browser, html: str, out: Path, stem: str) -> list[Path]:
    path = out / f"{stem}.html"
    path.write_text(html, encoding="utf-8")
    from benchmarks.html_view import shots

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("html[data-ready]", timeout=60000)
    try:
        taken = shots(_B(page), out, stem)
    finally:
        page.close()
        path.unlink()
    assert [p.name for p in taken] == [f"{stem}_{k}.png" for k in ("default", "expanded", "pinned")]
    assert all(10_000 < p.stat().st_size < 250_000 for p in taken)
    assert errors == []
    return taken


def test_synthetic_decoder_screenshots(browser, tmp_path):
    """Default view, one block expanded in place and one group pinned of a ~1500-node decoder, as PNGs."""
    from benchmarks.html_view import decoder_stack

    _shoot(browser, page_html.render(graphprune.analyze(decoder_stack(1500)), "decoder"), tmp_path, "decoder")


@pytest.mark.skipif(not os.environ.get("GRAPHPRUNE_DOC_SHOTS"), reason="set GRAPHPRUNE_DOC_SHOTS=docs/img to shoot")
def test_doc_screenshots(browser, pages):
    """The docs' PNGs of swin_t and a 20k-node decoder, into $GRAPHPRUNE_DOC_SHOTS."""
    from benchmarks.html_view import decoder_stack

    out = Path(os.environ["GRAPHPRUNE_DOC_SHOTS"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _shoot(browser, pages["swin_t"].read_text(encoding="utf-8"), out, "inspect_swin_t")
    decoder = graphprune.analyze(decoder_stack(20000))
    _shoot(browser, page_html.render(decoder, "decoder_20k"), out, "inspect_decoder_20k")
