"""The pass contract (issue 13): one way in for every pass, one validator, options declared once.

Each test states one property: every pass returns a result that carries its own proof; the
validator judges a step by that proof, alone or in a pipeline, and catches a step that breaks
it; a pass written outside the package runs through the same pipeline; every option the CLI
and the API take comes from one declaration on a pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import numpy as np
import onnx
import pytest

import graphprune
from graphprune import InputError, ValidationFailed, api
from graphprune.objectives.cost import random_feeds
from graphprune.options import add_flags, flags, from_args
from graphprune.passes import PASSES, ChannelPruning, FilterPruning, LayerPruning, PassContext, PassResult
from graphprune.validation.contract import Reference, Step, check_steps, run
from models import builders


def _calib(model: onnx.ModelProto, n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = model.graph.input[0]
    dims = [d.dim_value for d in x.type.tensor_type.shape.dim]
    return {x.name: rng.standard_normal((n, *dims[1:])).astype(np.float32)}


@pytest.mark.parametrize(
    "make",
    [
        lambda m, calib: FilterPruning(ratio=0.5),
        lambda m, calib: FilterPruning(ratio=0.5, compensate="lstsq", calib=calib),
        lambda m, calib: ChannelPruning(ratio=0.5, calib=calib),
        lambda m, calib: LayerPruning(remove_blocks=1),
    ],
    ids=["filter", "filter-lstsq", "channel", "layer"],
)
def test_every_pass_returns_its_model_with_the_reference_that_proves_it(make, tmp_path):
    model = builders.residual_net(blocks=3)
    path = tmp_path / "calib.npz"
    np.savez(path, **_calib(model))
    result = make(model, str(path))(model)
    assert isinstance(result, PassResult) and result.reference is not None
    assert result.removed_anything and result.record
    feeds = random_feeds(model)
    pruned_out = run(result.model, feeds)
    reference_out = run(result.reference(), feeds)
    original_out = run(model, feeds)
    scale = max(float(np.abs(o).max()) for o in original_out)
    assert max(float(np.abs(p - r).max()) for p, r in zip(pruned_out, reference_out)) <= 1e-4 * scale
    # the proof is not trivially the result: the original differs from it
    assert max(float(np.abs(p - o).max()) for p, o in zip(pruned_out, original_out)) > 1e-3 * scale


def test_a_pass_given_its_input_analysis_does_not_analyse_again(monkeypatch):
    model = builders.residual_net(blocks=2)
    deps = graphprune.analyze(model)
    import graphprune.passes.filter as filter_module

    monkeypatch.setattr(filter_module, "analyze", lambda *a, **k: pytest.fail("analysed again"))
    result = FilterPruning(ratio=0.5)(model, PassContext(deps=deps))
    assert result.deps is deps and result.plan.total_removed > 0


def test_the_validator_judges_each_step_of_a_pipeline_by_its_own_reference():
    model = builders.residual_net(blocks=3)
    first = FilterPruning(ratio=0.5)(model)
    second = LayerPruning(remove_blocks=1)(first.model)
    steps = [
        Step(model, first.model, first.reference),
        Step(first.model, second.model, second.reference),
    ]
    v = check_steps(model, steps, feeds=random_feeds(model))
    assert v.passed and len(v.steps) == 2 and all(e.checked and e.passed for e in v.steps)
    # a step whose result is not what its reference says fails, even though the run works
    wrong = Step(first.model, second.model, first.reference)  # the first step's proof for the second
    bad = check_steps(model, [steps[0], wrong], feeds=random_feeds(model))
    assert bad.runtime_ok and bad.checker_ok and not bad.passed
    assert bad.steps[0].passed and bad.steps[1].checked and not bad.steps[1].passed


@dataclasses.dataclass(frozen=True)
class _ZeroFirstFilter:
    """A pass written outside the package: zero the first filter of the first Conv (shapes kept).
    ``honest`` says whether its reference is its own result or (a bug) the unchanged input."""

    honest: bool = True

    def __call__(self, model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        conv = next(n for n in out.graph.node if n.op_type == "Conv")
        w = next(t for t in out.graph.initializer if t.name == conv.input[1])
        arr = onnx.numpy_helper.to_array(w).copy()
        arr[0] = 0
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        source = out if self.honest else model
        data = source.SerializeToString()
        return PassResult(out, {"zeroed": conv.name}, reference=Reference(model, lambda: data), record={"zeroed": 1})


def test_a_pass_from_outside_the_package_runs_through_the_same_pipeline_and_validator():
    model = builders.residual_net(blocks=2)
    result = api.run_passes(model, [FilterPruning(ratio=0.5), _ZeroFirstFilter()], latency=False)
    assert result.report.passed and [s["pass"] for s in result.steps] == ["FilterPruning", "_ZeroFirstFilter"]
    assert all(s["exact"]["checked"] and s["exact"]["passed"] for s in result.steps)
    liar = graphprune.Pipeline((FilterPruning(ratio=0.5), _ZeroFirstFilter(honest=False)))
    assert not liar(model).report.passed
    with pytest.raises(ValidationFailed):
        liar.apply(model)


def test_prune_with_the_layer_pass_through_the_api_validates_like_the_cli():
    model = builders.residual_net(blocks=4)
    result = graphprune.prune(model, pass_="layer", criterion="weight-norm", latency=False)
    assert result.report.passed and result.report.exact.checked
    assert len(result.report.prune["blocks_removed"]) == 1  # the pass's default: one block


# ------------------------------------------------------------------------- options declared once


def test_every_cli_prune_flag_of_a_pass_comes_from_one_field_declaration():
    from graphprune.cli import build_parser

    parser = build_parser()
    prune = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "prune")[1]
    cli_flags = {s for a in prune._actions for s in a.option_strings}
    for fl in flags(PASSES):
        assert fl.flag in cli_flags, fl.flag
        assert fl.help, f"{fl.flag} has no help"
        for pass_name, name in fl.fields:
            assert name in {f.name for f in dataclasses.fields(PASSES[pass_name])}


def test_flags_parse_into_the_options_of_the_pass_that_declares_them():
    parser = argparse.ArgumentParser()
    add_flags(parser, PASSES)
    args = parser.parse_args(["--ratio", "0.3", "--unit", "heads", "--block-criterion", "influence", "--global"])
    assert from_args(args, "filter", PASSES) == {
        "ratio": 0.3,
        "units": ("heads",),
        "global_threshold": True,
        "round_to": None,  # the CLI's default: convolution channels on the channel step
    }
    assert from_args(args, "layer", PASSES) == {"criterion": "influence"}


def test_prune_takes_every_declared_option_as_a_keyword_and_refuses_others():
    params = inspect.signature(graphprune.prune).parameters
    for cls in PASSES.values():
        for f in dataclasses.fields(cls):
            assert f.name in params, f.name
    model = builders.residual_net(blocks=2)
    with pytest.raises(InputError, match="unknown option 'ration'"):
        graphprune.prune(model, ration=0.5)
    with pytest.raises(InputError, match="the channel pass does not take target-flops"):
        graphprune.prune(model, pass_="channel", target_flops=0.5)
