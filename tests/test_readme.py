"""The README's Python example runs as written, and its commands are the ones CI uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_readme_main_command_prunes_the_bundled_example(tmp_path):
    cmd = re.search(r"<!-- main-command -->\n```\n(.*?)\n```", README, flags=re.S).group(1)
    prune = cmd.split("&&", 1)[1].strip().split()
    assert prune[:2] == ["graphprune", "prune"]
    out = tmp_path / "pruned.onnx"
    args = [a if a != "tiny_resnet.pruned.onnx" else str(out) for a in prune[1:]]
    args = [a if a != "report.json" else str(tmp_path / "report.json") for a in args]
    args = [str(ROOT / a) if a.startswith("models/") else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "graphprune.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and (tmp_path / "report.json").exists()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci
    assert re.search(r"<!-- test-command -->\n```\n(pip install -e \"\.\[test\]\" && pytest)\n```", README)
