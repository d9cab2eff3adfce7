"""Size, write time and time to interactive of ``inspect --html`` pages, and their screenshots.

    python -m benchmarks.html_view [--nodes 1000 6000 20000] [--shots DIR [--prefix P]] [--model [NAME=]PATH ...]

Models: a synthetic Llama-style decoder of about N nodes per ``--nodes`` (the 6000-node one is
the zoo's swin_t skeleton when N is 6000), and any ``--model`` file. For each page: bytes per
model node, seconds to analyse and to write the page, and seconds from navigation until the
page's script has drawn its first view in Debian's Chromium, and the height of the smallest
label on screen at the default view (``/usr/bin/chromium``, driven by
Playwright; the browser column is left out when either is missing). With ``--shots DIR`` three
screenshots per model: the default view, one block expanded in place, one group pinned (the docs' are
``--nodes 6000 20000 --model ocr=ch_PP-OCRv4_rec_infer.onnx --shots docs/img --prefix inspect_``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import onnx

from graphprune.analysis.dependency import analyze
from graphprune.present.html_page import render
from graphprune.present.report import grid


def decoder_stack(target_nodes: int, embed: int = 32, heads: int = 8, kv_heads: int = 2, mlp: int = 48):
    """Llama-style pre-norm decoder layers ``layers.{i}`` (about 53 nodes each) until ``target_nodes``;
    node names carry the PyTorch exporter's scopes (``/layers.3/self_attn/q_proj/MatMul``)."""
    from models.transformers import _finish, _gqa_attention, _swiglu, _TransformerBuilder

    b = _TransformerBuilder(0, (1, 8, embed))
    x = b.input
    for i in range(max(1, target_nodes // 53)):
        name = f"layers.{i}"
        h = b.rms_norm(x, name=f"{name}.input_layernorm")
        x = b.add(x, _gqa_attention(b, h, heads, kv_heads, None, True, f"{name}.self_attn"), name=name)
        h = b.rms_norm(x, name=f"{name}.post_attention_layernorm")
        x = b.add(x, _swiglu(b, h, mlp, True, f"{name}.mlp"), name=name)
    return _finish(b, x, "decoder_stack")


def chromium() -> str | None:
    """The Debian chromium binary, if Playwright and it are both installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium page that opens files and reports console errors."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        self.page = self._browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: Path) -> float:
        """Seconds from navigation until the graph is drawn and the page answers."""
        t = time.perf_counter()
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("html[data-ready]", timeout=60000)
        self.page.evaluate("1")
        return time.perf_counter() - t

    def smallest_text(self) -> float:
        """Height in px of the smallest label visible in the graph pane."""
        return self.page.evaluate(
            "(() => { const b = document.getElementById('scroll').getBoundingClientRect();"
            " const h = [...document.querySelectorAll('#vp text')].map(t => t.getBoundingClientRect())"
            ".filter(r => r.bottom > b.top && r.top < b.bottom && r.right > b.left && r.left < b.right)"
            ".map(r => r.height); return h.length ? Math.min(...h) : 0; })()"
        )

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


# boxes of the view drawn, as [view id, ops, layer]
_BOXES = (
    "graphprune.current().items.filter(it => it.kind === 1).map(it => [it.ref, graphprune.views[it.ref].n, it.layer])"
)


def shots(b: Browser, out: Path, stem: str) -> list[Path]:
    """Default view; one block expanded in place (the first box of 15-300 ops from the top, expanding the
    first bigger box on the way down to one, at most three levels); the biggest prunable group pinned."""
    page = b.page
    paths = [out / f"{stem}_default.png", out / f"{stem}_expanded.png", out / f"{stem}_pinned.png"]
    page.evaluate("window.scrollTo(0, document.querySelector('main').offsetTop - 8)")
    page.screenshot(path=str(paths[0]))
    opened = None
    for _ in range(3):
        boxes = sorted(page.evaluate(_BOXES), key=lambda x: x[2])
        if not boxes:
            break
        fit = [x for x in boxes if 15 <= x[1] <= 300]
        opened = (fit or [x for x in boxes if x[1] > 300] or boxes)[0][0]
        page.evaluate(f"graphprune.expand({opened})")
        if fit:
            break
    if opened is not None:
        page.evaluate(f"graphprune.frame({opened})")
        page.wait_for_timeout(100)
        assert page.evaluate("document.querySelectorAll('#vp .xf').length"), "no block expanded in place"
    page.screenshot(path=str(paths[1]))
    gid = page.evaluate(
        "(() => { let best = null, n = -1; document.querySelectorAll('tr[data-gid]').forEach(r => {"
        " const s = +r.dataset.size; if (s > n && r.classList.contains('ok')) { n = s; best = +r.dataset.gid; } });"
        " return best; })()"
    )
    if gid is not None:
        page.evaluate(f"graphprune.pin({gid})")
        page.wait_for_timeout(100)
    page.evaluate("window.scrollTo(0, document.querySelector('main').offsetTop - 8)")
    page.screenshot(path=str(paths[2]))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", nargs="*", type=int, default=[1000, 6000, 20000])
    ap.add_argument("--model", nargs="*", default=[], help="ONNX files to measure too (NAME=PATH to name one)")
    ap.add_argument("--shots", help="folder for three screenshots per model")
    ap.add_argument("--prefix", default="", help="start of the screenshots' names (docs/img: inspect_)")
    args = ap.parse_args(argv)
    from models import zoo

    cases: list[tuple[str, onnx.ModelProto]] = []
    for n in args.nodes:
        if n == 6000:
            cases.append(("swin_t", onnx.load(str(zoo.skeleton_path("swin_t")))))
        else:
            cases.append((f"decoder_{n // 1000}k" if n % 1000 == 0 else f"decoder_{n}", decoder_stack(n)))
    for m in args.model:  # NAME=PATH names it
        name, _, path = m.rpartition("=")
        cases.append((name or Path(path).stem, onnx.load(path)))
    exe = chromium()
    browser = Browser(exe) if exe else None
    out = Path(args.shots) if args.shots else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in cases:
            t = time.perf_counter()
            deps = analyze(model)
            t_analyse = time.perf_counter() - t
            t = time.perf_counter()
            page = render(deps, name)
            t_write = time.perf_counter() - t
            path = Path(tmp) / f"{name}.html"
            path.write_text(page, encoding="utf-8")
            n = len(model.graph.node)
            size = len(page.encode())
            tti = text = ""
            if browser:
                browser.errors.clear()
                tti = f"{browser.open(path):.2f}"
                text = f"{browser.smallest_text():.1f}"
                if browser.errors:
                    tti += f" ({len(browser.errors)} console errors: {browser.errors[0]})"
                if out:
                    shots(browser, out, args.prefix + name)
            sizes = (f"{size / 1e6:.2f}", f"{size / n:.0f}")
            rows.append((name, n, *sizes, f"{t_analyse:.1f}", f"{t_write:.2f}", tti, text))
            print(f"{name}: done", file=sys.stderr)
    if browser:
        browser.close()
    print(grid(("model", "nodes", "page MB", "bytes/node", "analyse s", "write s", "interactive s", "text px"), rows))
    if not exe:
        print("\nno browser column: needs `pip install playwright` and Debian's chromium (apt-get install chromium)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
