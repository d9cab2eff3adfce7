"""The README's Python example runs as written, and its commands are the ones CI uses."""

from __future__ import annotations

import json
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


def test_readme_main_command_prunes_the_bundled_example_and_reports_its_accuracy(tmp_path):
    cmd = re.search(r"<!-- main-command -->\n```\n(.*?)\n```", README, flags=re.S).group(1)
    install, *steps = [part.strip().split() for part in cmd.split("&&")]
    assert install[:2] == ["pip", "install"]
    assert [s[:2] for s in steps] == [["graphprune", "prune"], ["graphprune", "validate"]]
    files = {"digits.pruned.onnx": tmp_path / "pruned.onnx", "report.json": tmp_path / "report.json"}
    outputs = []
    for step in steps:
        args = [str(files.get(a, ROOT / a if a.startswith("models/") else a)) for a in step[1:]]
        proc = subprocess.run([sys.executable, "-m", "graphprune.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert all(path.exists() for path in files.values())
    # the accuracy the README states for the bundled model, and a measured one for the pruned
    found = re.search(
        r"top-1 accuracy \(497 samples, labels 'labels'\): original 0\.9960, pruned (0\.\d{4})", outputs[1]
    )
    assert found and float(found.group(1)) >= 0.95 * 0.9960  # the bar, at half the MACs
    report = json.loads(files["report.json"].read_text())
    assert 0.45 < report["flops_after"] / report["flops_before"] < 0.55


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci
    assert re.search(r"<!-- test-command -->\n```\n(pip install -e \"\.\[test\]\" && pytest)\n```", README)
