"""Out-of-core pruning of external-data models: memory bounded by a fraction of the weights,
and the same result as pruning in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.edit.surgery import _sliced
from graphprune.errors import InputError
from graphprune.ir import files as io
from graphprune.ir import weights
from graphprune.validation.contract import run
from models.llm_mlp import reference_output, weight_bytes, write_mlp_stack

REPO_ROOT = Path(__file__).resolve().parents[1]

# The child prunes like the console script, then prints its own peak RSS (VmHWM, kB): a
# child's ru_maxrss would carry the test process's high-water mark across exec.
_CHILD = r"""
import sys
from graphprune.cli import main
rc = main(sys.argv[1:])
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
sys.exit(rc)
"""


def _removed_ffn(path: Path) -> dict[int, np.ndarray]:
    """Layer -> FFN entries the plan stored in a pruned model removed."""
    model = onnx.load(str(path), load_external_data=False)
    plan = json.loads(next(p.value for p in model.metadata_props if p.key == "graphprune.plan"))
    out = {}
    for entry in plan["groups"]:
        layer = int(entry["anchor"].split(".")[1])
        assert (entry["anchor"].endswith("up.weight") and entry["axis"] == 1) or (
            entry["anchor"].endswith("down.weight") and entry["axis"] == 0
        )
        out[layer] = np.asarray(entry["remove"])
    return out


def _masked_output(path: Path, removed: dict[int, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The original MLP stack with the removed FFN entries zeroed, computed with numpy."""
    base = path.parent
    model = onnx.load(str(path), load_external_data=False)
    w = {}
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        w[t.name] = np.memmap(base / info["location"], np.float16, "r", int(info["offset"]), tuple(t.dims))
    x = x.astype(np.float32)
    for i in range(len(w) // 2):
        h = np.maximum(x @ np.asarray(w[f"layers.{i}.mlp.up.weight"], np.float32), 0)
        h[..., removed[i]] = 0
        x = x + h @ np.asarray(w[f"layers.{i}.mlp.down.weight"], np.float32)
    return x


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_a_512mb_float16_model_prunes_in_under_a_quarter_of_its_weights_and_correctly(tmp_path):
    # 8 layers of 2048 x 8192: weights dominate the analysis (whose memory grows with the widths,
    # not the weights) as they do in a real LLM; the bound holds without subtracting the
    # interpreter's import floor (about 58 MB of the ~108 MB measured).
    layers, hidden, ffn = 8, 2048, 8192
    src = write_mlp_stack(tmp_path / "src", layers=layers, hidden=hidden, ffn=ffn)
    out = tmp_path / "out" / "pruned.onnx"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    argv = ["prune", str(src), "-o", str(out), "--ratio", "0.5", "--no-validate", "-q"]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.strip().splitlines()[-1]) * 1024
    total = weight_bytes(layers, hidden, ffn)
    assert peak <= 0.25 * total, f"peak RSS {peak / 2**20:.0f} MB is {peak / total:.1%} of the weights"

    pruned = onnx.load(str(out), load_external_data=False)
    dims = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert dims["layers.0.mlp.up.weight"] == (hidden, ffn // 2)
    assert dims[f"layers.{layers - 1}.mlp.down.weight"] == (ffn // 2, hidden)
    assert (out.parent / "pruned.onnx.data").stat().st_size < 0.51 * total

    x = np.random.default_rng(1).standard_normal((1, 4, hidden)).astype(np.float16)
    got = run(str(out), {"input": x})[0].astype(np.float32)
    mine = reference_output(out, x)  # numpy on the pruned file
    expected = _masked_output(src, _removed_ffn(out), x)  # numpy on the original, channels zeroed
    scale = float(np.abs(expected).max())
    assert float(np.abs(mine - expected).max()) / scale < 1e-5  # the slicing is exact
    assert float(np.abs(got - expected).max()) / scale < 1e-2  # onnxruntime rounds to float16 per op


def _small_external(folder: Path, dtype=np.float32) -> Path:
    return write_mlp_stack(folder, layers=3, hidden=32, ffn=96, tokens=2, dtype=dtype, seed=3)


def test_lazy_pruning_writes_what_pruning_in_memory_writes(tmp_path):
    src = _small_external(tmp_path / "src")
    in_memory = graphprune.prune(onnx.load(str(src)), ratio=0.5, validate=False)
    lazy = graphprune.prune(src, ratio=0.5, validate=False)
    assert weights.has_lazy(lazy.model) and not weights.has_lazy(in_memory.model)
    assert lazy.plan.to_json(lazy.deps) == in_memory.plan.to_json(in_memory.deps)
    a = io.save(in_memory.model, tmp_path / "a" / "m.onnx", external_data=True)
    b = io.save(lazy.model, tmp_path / "b" / "m.onnx", external_data=True)
    ta = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(a)).graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(b)).graph.initializer}
    assert ta.keys() == tb.keys()
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name])
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 2, 32)).astype(np.float32)}
    np.testing.assert_array_equal(run(str(a), feeds)[0], run(str(b), feeds)[0])


def test_validating_an_external_data_model_runs_onnxruntime_on_files_and_leaves_nothing_behind(tmp_path):
    src = _small_external(tmp_path / "src")
    result = graphprune.prune(src, ratio=0.5, latency=True)
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.exact.max_rel_diff < 1e-6
    out = graphprune.save(result.model, tmp_path / "out" / "m.onnx")
    assert (tmp_path / "out" / "m.onnx.data").exists()
    later = graphprune.validate(src, out, latency=False)
    assert later.exact.passed
    assert sorted(p.name for p in src.parent.iterdir()) == ["mlp_stack.onnx", "mlp_stack.onnx.data"]


def test_a_plan_applies_to_an_external_data_model_from_the_command_line(tmp_path, run_cli):
    src = _small_external(tmp_path / "src", dtype=np.float16)
    first, again, plan = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx", tmp_path / "plan.json"
    code, _, err = run_cli("prune", src, "-o", first, "--ratio", "0.5", "--save-plan", plan, "--no-latency", "-q")
    assert code == 0, err
    code, _, err = run_cli("prune", src, "-o", again, "--plan", plan, "--no-validate", "-q")
    assert code == 0, err
    assert (first.parent / "m.onnx.data").read_bytes() == (again.parent / "m.onnx.data").read_bytes()
    code, out, err = run_cli("inspect", src, "--json")
    assert code == 0, err
    assert json.loads(out)["groups_prunable"] == 3


def test_bfloat16_weights_are_sliced_on_disk_as_in_memory(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    value = np.arange(60, dtype=np.float32).reshape(6, 10).astype(ml_dtypes.bfloat16)
    t = helper.make_tensor("w", TensorProto.BFLOAT16, value.shape, value.view(np.uint16).tobytes(), raw=True)
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)],
            "g",
            [],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 10])],
            [t],
        )
    )
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    lazy = io.load(tmp_path / "m.onnx", lazy=True)
    tensor = lazy.graph.initializer[0]
    np.testing.assert_array_equal(np.asarray(weights.array(tensor)), value)
    removed = {0: np.array([1, 4]), 1: np.array([0, 3, 9])}
    weights.slice_lazy(tensor, removed)
    assert tuple(tensor.dims) == (4, 7)
    out = io.save(lazy, tmp_path / "o" / "m.onnx", external_data=True)
    back = numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])
    np.testing.assert_array_equal(back.astype(np.float32), _sliced(value, removed).astype(np.float32))


def test_external_data_that_ends_early_is_a_clear_error(tmp_path):
    src = _small_external(tmp_path)
    data = src.parent / "mlp_stack.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(InputError, match="runs past the end of 'mlp_stack.onnx.data'"):
        io.load(src, lazy=True)


@pytest.mark.parametrize("qkv", ["separate", "packed_split"])
def test_a_model_with_every_tensor_external_prunes_heads_and_mlp_as_in_memory(tmp_path, qkv):
    # size_threshold=0: the Reshape shapes and Split sizes are external too; the rules read
    # them through the lazy store, and the surgery rewrites them inline.
    from models.transformers import encoder_block

    model = encoder_block(qkv=qkv)
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving with external data empties the tensors of what it saves
    onnx.save_model(saved, src, save_as_external_data=True, location="m.data", size_threshold=0)
    in_memory = graphprune.prune(model, ratio=0.5, latency=False)
    lazy = graphprune.prune(src, ratio=0.5, latency=False)
    assert lazy.report.exact.passed and lazy.report.exact.max_rel_diff < 1e-5
    assert lazy.plan.to_json(lazy.deps) == in_memory.plan.to_json(in_memory.deps)
    assert {g.unit for g in lazy.deps.prunable_groups()} == {"heads", "mlp"}
    out = graphprune.save(lazy.model, tmp_path / "out" / "m.onnx")
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)}
    np.testing.assert_allclose(run(str(out), feeds)[0], run(in_memory.model, feeds)[0], rtol=0, atol=1e-6)


def test_a_float16_model_is_exact_to_a_few_float16_ulps_and_a_wrong_plan_still_fails(tmp_path):
    src = write_mlp_stack(tmp_path / "src", layers=4, hidden=64, ffn=256, tokens=4, seed=5)
    result = graphprune.prune(src, ratio=0.5, latency=False)
    assert result.report.exact.passed and result.report.exact.tolerance == 4 * 2.0**-10
    out = graphprune.save(result.model, tmp_path / "out" / "m.onnx")
    plan = result.plan.to_json(result.deps)
    for entry in plan["groups"]:  # the same number of entries, mostly other ones
        entry["remove"] = sorted(set(range(256)) - set(entry["remove"]))[: len(entry["remove"])]
    wrong = graphprune.validate(src, out, plan=plan, latency=False)
    assert wrong.exact.checked and not wrong.exact.passed and wrong.exact.max_rel_diff > 10 * wrong.exact.tolerance


def test_fpgm_scores_do_not_depend_on_the_blocks_it_reads(monkeypatch):
    from graphprune.analysis.dependency import analyze
    from graphprune.planning.criteria import ScoreContext, magnitude
    from models.transformers import encoder_block

    deps = analyze(encoder_block())
    whole = [magnitude.fpgm(g, deps, ScoreContext()) for g in deps.prunable_groups()]
    monkeypatch.setattr(magnitude, "_BLOCK", 50)  # filters and Gram rows a few at a time
    blocked = [magnitude.fpgm(g, deps, ScoreContext()) for g in deps.prunable_groups()]
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_external_data_in_a_subfolder_validates_from_the_model_folder(tmp_path):
    model = onnx.load(str(_small_external(tmp_path / "gen")))
    src = tmp_path / "src" / "m.onnx"
    (src.parent / "weights").mkdir(parents=True)
    onnx.save_model(model, src, save_as_external_data=True, location="weights/w.bin", size_threshold=0)
    result = graphprune.prune(src, ratio=0.5, latency=False)
    assert result.report.exact.checked and result.report.exact.passed
    assert sorted(p.name for p in src.parent.iterdir()) == ["m.onnx", "weights"]


@pytest.mark.parametrize("flag", ["--no-validate", "--no-latency"])  # streamed, or a validated spill renamed
def test_an_output_whose_data_file_is_the_inputs_weights_is_refused(tmp_path, run_cli, flag):
    model = onnx.load(str(_small_external(tmp_path / "gen")))
    src = tmp_path / "m.onnx"
    onnx.save_model(model, src, save_as_external_data=True, location="out.onnx.data", size_threshold=0)
    before = (tmp_path / "out.onnx.data").read_bytes()
    code, _, err = run_cli("prune", src, "-o", tmp_path / "out.onnx", flag, "-q")
    assert code == 2 and "out.onnx.data holds the input's weights" in err
    assert (tmp_path / "out.onnx.data").read_bytes() == before and not (tmp_path / "out.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.onnx", "out.onnx.data"]


def test_validate_on_data_and_sensitivity_run_on_an_external_data_model(tmp_path, run_cli):
    src = _small_external(tmp_path / "src")
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((6, 2, 32)).astype(np.float32))
    out = tmp_path / "out" / "m.onnx"
    code, _, err = run_cli("prune", src, "-o", out, "--ratio", "0.5", "--no-latency", "-q")
    assert code == 0, err
    code, text, err = run_cli("validate", src, out, "--data", data, "--json", "--no-latency")
    assert code == 0, err
    report = json.loads(text)
    assert report["exact"]["passed"] and report["fidelity"]["samples"] == 6
    code, _, err = run_cli("sensitivity", src, "--calib", data, "-o", tmp_path / "s.json", "-q")
    assert code == 0, err
    assert len(json.loads((tmp_path / "s.json").read_text())["groups"]) == 3
    assert sorted(p.name for p in src.parent.iterdir()) == ["mlp_stack.onnx", "mlp_stack.onnx.data"]


def test_layer_and_filter_passes_run_on_an_external_data_model(tmp_path, run_cli):
    src = _small_external(tmp_path / "src", dtype=np.float16)
    out = tmp_path / "out" / "m.onnx"
    argv = ["prune", src, "-o", out, "--pass", "layer", "filter", "--remove-blocks", "1", "--no-latency", "--report"]
    code, _, err = run_cli(*argv, tmp_path / "r.json", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["exact"]["passed"] and len(report["blocks_removed"]) == 1
    pruned = onnx.load(str(out), load_external_data=False)
    assert len(pruned.graph.initializer) == 4  # two of the three MLP layers remain
    assert sorted(p.name for p in src.parent.iterdir()) == ["mlp_stack.onnx", "mlp_stack.onnx.data"]


def test_a_validated_prune_writes_the_pruned_weights_once_and_renames_them_into_the_output(
    tmp_path, run_cli, monkeypatch
):
    src = _small_external(tmp_path / "src", dtype=np.float16)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    streamed = []
    real = weights.write_weights  # every stream of weights into a data file goes through it
    monkeypatch.setattr(weights, "write_weights", lambda *a, **k: (streamed.append(a[1]), real(*a, **k))[1])
    out = tmp_path / "out" / "m.onnx"
    code, _, err = run_cli("prune", src, "-o", out, "--ratio", "0.5", "--no-latency", "-q")
    assert code == 0, err
    # one stream of the sliced weights: the spill near the output (its folder did not exist
    # yet: the nearest one that did), validated, then renamed
    assert len(streamed) == 1 and streamed[0].parent == tmp_path.resolve()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert not [p.name for p in scratch.iterdir() if "graphprune" in p.name]  # nothing of ours in TMPDIR
    unvalidated = tmp_path / "plain" / "m.onnx"
    code, _, err = run_cli("prune", src, "-o", unvalidated, "--ratio", "0.5", "--no-validate", "-q")
    assert code == 0, err
    assert (out.parent / "m.onnx.data").read_bytes() == (unvalidated.parent / "m.onnx.data").read_bytes()
    assert graphprune.validate(src, out, latency=False).exact.passed


def test_a_spill_that_cannot_be_renamed_is_copied_and_removed(tmp_path):
    src = _small_external(tmp_path / "src")
    result = graphprune.prune(src, ratio=0.5, latency=False)  # the API spills to TMPDIR
    (spill,) = weights.lazy_sources(result.model)
    assert weights.is_spill(spill) and spill.name.startswith(weights.SPILL_PREFIX)
    out = graphprune.save(result.model, tmp_path / "out" / "m.onnx")
    assert graphprune.validate(src, out, latency=False).exact.passed
    if spill.exists():  # another file system than the output's: copied, then the spill stays ours
        assert weights.is_spill(spill)
    else:  # renamed: the model in memory now reads the output's data file
        assert weights.lazy_sources(result.model) == {(out.parent / "m.onnx.data").resolve()}
    again = graphprune.save(result.model, tmp_path / "again" / "m.onnx")  # still a valid model
    assert (again.parent / "m.onnx.data").read_bytes() == (out.parent / "m.onnx.data").read_bytes()


def test_spills_left_unsaved_are_removed_when_the_process_ends(tmp_path):
    src = _small_external(tmp_path / "src")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = (
        "import graphprune, sys; r = graphprune.prune(sys.argv[1], ratio=0.5, latency=False);"
        " (spill,) = graphprune.ir.weights.lazy_sources(r.model); print(r.report.passed, spill, spill.exists())"
    )
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    passed, spill, existed = done.stdout.split()
    assert passed == "True" and existed == "True" and Path(spill).parent == scratch.resolve()
    assert not Path(spill).exists()
    assert not [p.name for p in scratch.iterdir() if "graphprune" in p.name]
