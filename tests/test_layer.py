"""The layer pass: residual blocks y = x + f(x) found, ranked and removed, with proof."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import InputError, api
from graphprune.analysis.blocks import find_blocks, remove_blocks
from graphprune.edit.masking import zeroed_reference_bytes
from graphprune.objectives.cost import cost_of, random_feeds
from graphprune.passes import FilterPruning, LayerPruning
from graphprune.passes.filter import PLAN_METADATA_KEY, get_metadata
from graphprune.passes.layer import LAYER_PLAN_KEY, lowest, score_blocks
from graphprune.validation.contract import run
from models import builders, transformers, zoo


@functools.cache
def zoo_model(name: str, exporter: str = "torchscript") -> onnx.ModelProto:
    """A zoo model loaded once for this module (nothing here modifies it)."""
    return zoo.load(name, exporter)


def adds(model: onnx.ModelProto) -> list[str]:
    return [b.add for b in find_blocks(model)]


def calib_file(model: onnx.ModelProto, path: Path, n: int = 6) -> Path:
    """``n`` seeded random samples of every input, as an .npz file."""
    feeds = [random_feeds(model, seed=s) for s in range(n)]
    np.savez(path, **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
    return path


def zero_initializers(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    for t in model.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    return model


# -------------------------------------------------------------------------- discovery


def test_identity_shortcuts_are_blocks_and_projection_shortcuts_are_not():
    # blocks 0, 2, 4 have identity shortcuts; 1 and 3 downsample with a 1x1 conv projection
    assert adds(builders.residual_net(blocks=5)) == ["/layer1/0/Add", "/layer2/1/Add", "/layer3/1/Add"]


def test_inverted_residuals_with_a_shortcut_are_blocks():
    # features.2 changes width and stride: no Add; features.1 and features.3 have one
    blocks = find_blocks(builders.depthwise_separable())
    assert [b.add for b in blocks] == ["/features/1/Add", "/features/3/Add"]
    assert all(len(b.nodes) == 8 for b in blocks)  # expand conv-bn-relu6, dw conv-bn-relu6, project conv-bn


def test_pre_norm_encoder_has_an_attention_and_an_mlp_block():
    model = transformers.encoder_block(norm="pre")
    attn, mlp = find_blocks(model)
    assert (attn.x, attn.add) == ("input", "/layers.0/Add")
    assert mlp.x == attn.y
    names = {b.add: {model.graph.node[k].name for k in b.nodes} for b in (attn, mlp)}
    assert any("out_proj" in n for n in names[attn.add]) and not any("fc2" in n for n in names[attn.add])
    assert any("fc2" in n for n in names[mlp.add]) and any("norm2" in n for n in names[mlp.add])


@pytest.mark.parametrize(
    ("name", "exporter", "expected"),
    [
        ("resnet50", "torchscript", 12),  # 16 bottlenecks, 4 with a projection shortcut
        ("resnet50", "dynamo", 12),
        ("mobilenet_v2", "torchscript", 10),
        ("vit_b_16", "torchscript", 24),  # 12 layers x (attention, MLP)
        ("vit_b_16", "dynamo", 24),
    ],
)
def test_zoo_block_counts(name, exporter, expected):
    blocks = find_blocks(zoo_model(name, exporter))
    assert len(blocks) == expected
    assert all(b.params > 0 and b.macs > 0 for b in blocks)


def test_vit_attention_block_takes_the_shape_readers_of_its_own_tensors():
    # torchscript's MultiheadAttention reads Shape() of tensors inside the block: they go with it
    model = zoo_model("vit_b_16")
    attn = find_blocks(model)[0]
    ops = {model.graph.node[k].op_type for k in attn.nodes}
    assert {"LayerNormalization", "Softmax", "Shape"} <= ops
    # in/out projections, ln_1, and the [1.0] that torchscript's scale arithmetic divides by
    assert attn.params == 768 * 2304 + 2304 + 768 * 768 + 768 + 2 * 768 + 1


def nested_model() -> onnx.ModelProto:
    """y = x + c(u) where u = t + b(t) and t = a(x): the inner block sits inside the outer one."""
    rng = np.random.default_rng(0)

    def conv(name: str, inp: str, out: str) -> onnx.NodeProto:
        return helper.make_node("Conv", [inp, name], [out], name=name, pads=[1, 1, 1, 1])

    weights = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2, n) for n in "abc"]
    nodes = [
        conv("a", "x", "t"),
        conv("b", "t", "bt"),
        helper.make_node("Add", ["t", "bt"], ["u"], name="inner"),
        conv("c", "u", "cu"),
        helper.make_node("Add", ["x", "cu"], ["y"], name="outer"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "nested", [vi[0]], [vi[1]], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nested_blocks_are_both_found_and_only_one_can_go():
    model = nested_model()
    blocks = find_blocks(model)
    assert [b.add for b in blocks] == ["inner", "outer"]
    outer = blocks[1]
    assert blocks[0].add_index in outer.nodes
    with pytest.raises(InputError, match="only 1 of the 2 do not nest"):
        lowest(blocks, np.array([0.0, 1.0]), 2)
    pruned = remove_blocks(model, blocks)  # both asked for: the outer one covers the inner
    assert [n.name for n in pruned.graph.node] == ["outer"] and pruned.graph.node[0].op_type == "Identity"


def test_an_add_without_weights_is_not_a_block():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [vi[0]], [vi[1]]))
    assert find_blocks(model) == []


# -------------------------------------------------------------------------- removal


@pytest.mark.parametrize(
    "make",
    [
        lambda: builders.residual_net(blocks=5),
        builders.depthwise_separable,
        transformers.encoder_block,
        lambda: transformers.encoder_block(layernorm="decomposed", qkv="packed_split"),
        transformers.tiny_vit,
        transformers.convnext_stage,
    ],
)
def test_removal_equals_the_zeroed_reference_and_validates(make):
    model = make()
    result = api.prune_layers(model, remove_blocks=2, latency=False)
    report = result.report
    assert report.passed and report.exact.checked
    assert report.exact.max_rel_diff <= 1e-4
    assert report.flops_after < report.flops_before and report.params_after < report.params_before
    removed = report.prune["blocks_removed"]
    assert len(removed) == 2
    assert report.params_before - report.params_after == sum(b["params"] for b in removed)
    # names stay stable: every node left is one the original had
    assert {n.name for n in result.model.graph.node} <= {n.name for n in model.graph.node}


def test_removed_block_equals_original_with_its_last_weights_zeroed():
    # Independent of the reference builder: zero layer2.1's last BatchNormalization (f(x) = 0).
    model = builders.residual_net(blocks=5)
    block = next(b for b in find_blocks(model) if b.add == "/layer2/1/Add")
    pruned = remove_blocks(model, [block])
    zeroed = zero_initializers(
        onnx.ModelProto.FromString(model.SerializeToString()), ["layer2.1.bn2.weight", "layer2.1.bn2.bias"]
    )
    feeds = random_feeds(model, seed=3)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(zeroed, feeds)[0], rtol=1e-5, atol=1e-6)
    assert not any(t.name.startswith("layer2.1.") for t in pruned.graph.initializer)


def test_a_block_whose_output_is_a_graph_output_keeps_the_output_name():
    model = transformers.decoder_block()
    mlp = find_blocks(model)[-1]
    assert mlp.y == "output"
    result = api.run_passes(model, [LayerPruning(plan={"blocks": [{"add": mlp.add}]})], latency=False)
    assert [o.name for o in result.model.graph.output] == ["output"]
    last = result.model.graph.node[-1]
    assert (last.op_type, list(last.input), list(last.output)) == ("Identity", [mlp.x], ["output"])
    assert result.report.passed and result.report.exact.max_rel_diff <= 1e-4


def test_removing_every_block_of_an_encoder_leaves_the_identity():
    model = transformers.encoder_block()
    pruned = api.prune_layers(model, remove_blocks=2, latency=False).model
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(pruned, feeds)[0], feeds["input"])
    assert len(pruned.graph.initializer) == 0


def test_the_reference_leaves_the_original_untouched():
    model = builders.residual_net(blocks=5)
    before = model.SerializeToString()
    zeroed_reference_bytes(model, find_blocks(model))
    assert model.SerializeToString() == before


def test_more_blocks_than_the_model_has_is_a_clear_error():
    with pytest.raises(InputError, match="cannot remove 4 blocks: the model has 3 removable residual blocks"):
        api.prune_layers(builders.residual_net(blocks=5), remove_blocks=4)


def test_influence_without_data_is_a_usage_error():
    with pytest.raises(InputError, match="needs calibration data"):
        LayerPruning(remove_blocks=1, criterion="influence")


# -------------------------------------------------------------------------- criteria


@pytest.mark.parametrize("criterion", ["influence", "weight-norm"])
def test_a_block_whose_f_is_zero_ranks_lowest(criterion, tmp_path):
    model = zero_initializers(builders.residual_net(blocks=5), ["layer2.1.bn2.weight", "layer2.1.bn2.bias"])
    blocks = find_blocks(model)
    scores = score_blocks(model, blocks, criterion, calib=calib_file(model, tmp_path / "calib.npz"))
    assert blocks[int(np.argmin(scores))].add == "/layer2/1/Add"
    assert scores.min() == pytest.approx(0.0, abs=1e-12)
    assert (np.delete(scores, np.argmin(scores)) > 0.01).all()


def test_influence_is_one_minus_the_mean_cosine_of_x_and_y(tmp_path):
    model = transformers.encoder_block()
    data = calib_file(model, tmp_path / "calib.npz", n=3)
    attn = find_blocks(model)[0]
    score = score_blocks(model, [attn], "influence", calib=data)[0]
    attn_only = remove_blocks(model, [find_blocks(model)[1]])  # its output is the attention block's y
    cosines = []
    for seed in range(3):
        feeds = random_feeds(model, seed=seed)
        x, y = (np.asarray(a, np.float64).ravel() for a in (feeds["input"], run(attn_only, feeds)[0]))
        cosines.append(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    assert score == pytest.approx(1 - np.mean(cosines), rel=1e-5)


# -------------------------------------------------------------------------- pipeline, plan, CLI


def test_layer_then_filter_checks_exactness_per_step(tmp_path):
    model = builders.residual_net(blocks=5)
    result = api.run_passes(model, [LayerPruning(remove_blocks=1), FilterPruning(ratio=0.5)], latency=False)
    assert [s["pass"] for s in result.steps] == ["LayerPruning", "FilterPruning"]
    assert all(s["exact"]["checked"] and s["exact"]["passed"] for s in result.steps)
    assert result.report.passed and result.report.fidelity.cosine is not None
    # the plans address their own step's input: kept together, none left where validate would misapply it
    assert get_metadata(result.model, PLAN_METADATA_KEY) is None
    assert get_metadata(result.model, LAYER_PLAN_KEY) is None
    stored = json.loads(get_metadata(result.model, "graphprune.pipeline"))
    assert [s["pass"] for s in stored["steps"]] == ["LayerPruning", "FilterPruning"]


def test_validate_reads_the_stored_layer_plan():
    model = builders.residual_net(blocks=5)
    pruned = api.prune_layers(model, remove_blocks=2, validate=False).model
    plan = json.loads(get_metadata(pruned, LAYER_PLAN_KEY))
    assert [b["add"] for b in plan["blocks"]] == ["/layer1/0/Add", "/layer2/1/Add"]
    report = api.validate(model, pruned, latency=False)
    assert report.passed and report.exact.checked and report.exact.max_rel_diff <= 1e-4


def test_cli_prunes_blocks_and_inspect_lists_them(run_cli, tmp_path):
    model = builders.residual_net(blocks=5)
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    code, out, err = run_cli("inspect", src, "--json")
    assert code == 0, err
    listed = json.loads(out)["blocks"]
    assert [b["add"] for b in listed] == adds(model)
    assert all(0 < b["macs_share"] < 1 for b in listed)
    data = calib_file(model, tmp_path / "calib.npz")
    out_path, report_path = tmp_path / "small.onnx", tmp_path / "report.json"
    code, _, err = run_cli(
        "prune", src, "-o", out_path, "--pass", "layer", "--remove-blocks", "1", "--calib", data,
        "--report", report_path, "--no-latency", "-q",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["blocks_found"] == 3
    assert report["passes"][0]["criterion"] == "influence"  # the default when --calib is given
    assert len(report["blocks_removed"]) == 1
    assert cost_of(onnx.load(out_path)).flops == report["flops_after"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pass", "layer"], "--pass layer needs --remove-blocks N"),
        (["--pass", "layer", "--remove-blocks", "9"], "cannot remove 9 blocks"),
        (["--pass", "layer", "--remove-blocks", "1", "--block-criterion", "influence"], "needs calibration data"),
        (["--remove-blocks", "1"], "--remove-blocks needs --pass layer"),
    ],
)
def test_cli_layer_usage_errors_are_one_line(run_cli, tiny_model_path, tmp_path, argv, message):
    code, out, err = run_cli("prune", tiny_model_path, "-o", tmp_path / "out.onnx", "-q", *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out.onnx").exists()


# -------------------------------------------------------------------------- the trained digits CNN


@pytest.mark.parametrize(("criterion", "blocks", "at_least"), [("influence", 1, 0.99), ("weight-norm", 2, 0.96)])
def test_digits_keeps_its_accuracy_without_its_least_important_blocks(criterion, blocks, at_least):
    # measured: one block (0.80 of the MACs) by either criterion keeps 99.60% (the original's);
    # two by weight-norm (0.61 of the MACs) keep 96.98%, where uniform l2 filter pruning at
    # 0.66 of the MACs keeps 64.39% (README, benchmarks/accuracy_vs_flops)
    from graphprune.validation.evaluate import evaluate
    from models.examples import digits

    model = onnx.load(digits.MODEL)
    result = api.prune_layers(model, blocks, criterion, calib=digits.CALIB, latency=False)
    assert result.report.passed and result.report.exact.checked
    assert result.report.flops_after / result.report.flops_before < 1 - 0.19 * blocks
    acc = evaluate(model, result.model, digits.TEST, labels="labels").accuracy
    assert acc.original == pytest.approx(digits.summary()["accuracy"]["test"])
    assert acc.pruned >= at_least


def test_prune_layers_takes_an_opened_dataset(tmp_path):
    import graphprune
    from graphprune.calibration.datasets import input_specs, open_dataset

    model = builders.residual_net(width=8, blocks=3)
    spec = input_specs(model)[0]
    np.savez(tmp_path / "c.npz", **{spec.name: np.random.default_rng(0).normal(size=[4, *spec.shape[1:]]).astype("f4")})
    by_path = graphprune.prune_layers(model, 1, calib=tmp_path / "c.npz", latency=False)
    by_dataset = graphprune.prune_layers(model, 1, calib=open_dataset(tmp_path / "c.npz"), latency=False)
    assert by_dataset.report.prune["blocks_removed"] == by_path.report.prune["blocks_removed"]
