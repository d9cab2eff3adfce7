"""Shared fixtures: a small model on disk, two ways of running the command line, and a wrong
surgery to catch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphprune.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_bytes() -> bytes:
    """A small residual network (two blocks, one of them downsampling), serialized once."""
    from models.builders import residual_net

    return residual_net(width=16, blocks=2, seed=0).SerializeToString()


@pytest.fixture
def tiny_model_path(tmp_path: Path, tiny_model_bytes: bytes) -> Path:
    """``tmp_path / "model.onnx"``: a residual_net saved for this test only."""
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_model_bytes)
    return path


def _argv(args) -> list[str]:
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = args[0]
    return [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv)`` (or ``run_cli([...])``): ``graphprune.cli.main`` in-process.

    Returns ``(exit_code, stdout, stderr)``.
    """

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()  # drop whatever an earlier step printed
        code = main(_argv(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def run_cli_subprocess():
    """``run_cli_subprocess(*argv, cwd=None)``: ``python -m graphprune.cli`` in a real process.

    Returns ``(exit_code, stdout, stderr)``.
    """

    def run(*args, cwd: str | os.PathLike | None = None, timeout: float = 120):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-m", "graphprune.cli", *_argv(args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=timeout,
        )
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.fixture
def swap_first_conv_inputs():
    """``swap(model)``: a copy of ``model`` with input channels 0 and 1 of its first Conv weight
    reading more than two channels swapped, a wrong surgery exactness must catch."""
    import onnx
    from onnx import numpy_helper

    def swap(model):
        wrong = onnx.ModelProto()
        wrong.CopyFrom(model)
        t = next(x for x in wrong.graph.initializer if len(x.dims) == 4 and x.dims[1] > 2)
        w = numpy_helper.to_array(t).copy()
        w[:, [0, 1]] = w[:, [1, 0]]
        t.CopyFrom(numpy_helper.from_array(w, t.name))
        return wrong

    return swap
