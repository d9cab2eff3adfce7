"""Real-world variety: the forms exported models take besides a clean opset-17 float32 graph.

Every variant (see ``models/variants.py``) must prune at ratio 0.5 into a model that passes
the checker, runs, and equals the masked reference (exactness); then each variant has its
own property: opsets are kept, half-precision weights keep their type, per-channel
quantization parameters are sliced with their weight, dynamic dims stay dynamic, graph
outputs block, a shared weight is one group, initializers listed as inputs are weights,
Constant nodes are sliced, and control-flow bodies are never touched.
"""

from __future__ import annotations

from functools import cache

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import graphprune
from graphprune.analysis.plan import removed_entries
from graphprune.ir.graph import opset_of
from graphprune.planning.criteria import score_groups
from graphprune.validation.contract import masked_reference, rel_diff, run
from models import builders, variants

RATIO = 0.5


def prune(model: onnx.ModelProto, **kwargs):
    return graphprune.prune(model, ratio=RATIO, latency=False, **kwargs)


def assert_exact(result) -> None:
    report = result.report
    assert report.checker["passed"], report.checker["error"]
    assert report.runtime["passed"], report.runtime["error"]
    assert report.exact.checked, report.exact.note
    assert report.exact.passed, report.exact.max_rel_diff


def inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def plan_entries(result) -> dict[tuple[str, int], list[int]]:
    return {(e["anchor"], e["axis"]): e["remove"] for e in result.plan.to_json(result.deps)["groups"]}


BASES = {
    **builders.BUILDERS,
    "flatten_gemm_matmul": lambda: builders.flatten_gemm(head="matmul"),
}


@cache
def base(name: str) -> bytes:
    """A builder model, serialized once (tests parse their own copy)."""
    return BASES[name]().SerializeToString()


def fresh(name: str) -> onnx.ModelProto:
    return onnx.load_from_string(base(name))


# ------------------------------------------------------------------------------ opsets

NEWEST_ORT_OPSET = variants.newest_ort_opset()
OPSETS = list(range(11, NEWEST_ORT_OPSET + 1))

# Opset-11 starting points: the version converter cannot take BatchNormalization below 15,
# so these are built at 11 and converted up.
OPSET11_BASES = {
    "split_chunk": lambda: builders.split_chunk(split_form="attribute"),
    "conv_chain": lambda: variants.build_at_opset(
        builders.conv_chain, 11, activations=["relu6", "leaky_relu", "sigmoid", "prelu"]
    ),
    **{
        name: (lambda name=name: variants.build_at_opset(builders.BUILDERS[name], 11))
        for name in (
            "residual_net",
            "dense_block",
            "inception_block",
            "squeeze_excite",
            "depthwise_separable",
            "flatten_gemm",
            "grouped_conv",
            "convtranspose_decoder",
        )
    },
    "flatten_gemm_matmul": lambda: variants.build_at_opset(builders.flatten_gemm, 11, head="matmul"),
}


@cache
def opset11(name: str) -> bytes:
    return OPSET11_BASES[name]().SerializeToString()


def test_newest_ort_opset_is_known_to_onnx_and_runs():
    # onnxruntime 1.32 with onnx 1.23: both stop at opset 28 (29 is refused by ORT).
    assert 21 <= NEWEST_ORT_OPSET <= onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", sorted(OPSET11_BASES))
def test_every_opset_prunes_exactly_and_keeps_its_opset(name, opset):
    model = variants.to_opset(onnx.load_from_string(opset11(name)), opset)
    assert opset_of(model) == opset
    result = prune(model)
    assert_exact(result)
    assert result.report.groups_pruned > 0
    assert result.report.params_after < result.report.params_before
    assert opset_of(result.model) == opset
    assert result.model.ir_version == model.ir_version
    assert [(i.domain, i.version) for i in result.model.opset_import] == [
        (i.domain, i.version) for i in model.opset_import
    ]


# ------------------------------------------------------------------------------ float16 / bfloat16

LOW_PRECISION = {"float16": (variants.to_float16, np.float16), "bfloat16": (variants.to_bfloat16, ml_dtypes.bfloat16)}
LOW_BASES = [
    "conv_chain",
    "residual_net",
    "dense_block",
    "depthwise_separable",
    "flatten_gemm",
    "flatten_gemm_matmul",
    "pad_and_pool",
]


@pytest.mark.parametrize("name", LOW_BASES)
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
def test_low_precision_weights_prune_exactly_and_keep_their_type(dtype, name):
    convert, _ = LOW_PRECISION[dtype]
    model = convert(fresh(name))
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.BFLOAT16
    low = {n for n, t in inits(model).items() if t.data_type == elem}
    assert low, "the variant stores no weight in low precision"
    result = prune(model)
    assert_exact(result)
    assert result.report.groups_pruned > 0
    assert result.report.params_after < result.report.params_before
    after = inits(result.model)
    for n in low:
        assert after[n].data_type == elem, n
    shrunk = [n for n in low if list(after[n].dims) != list(inits(model)[n].dims)]
    assert shrunk, "no low-precision weight was sliced"
    scores, _ = score_groups(result.deps, "l2")
    assert scores and all(np.all(np.isfinite(s)) for s in scores.values())


@pytest.mark.parametrize("name", LOW_BASES)
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
def test_low_precision_plan_is_the_float32_plan_of_the_rounded_weights(dtype, name):
    # Scores are computed in float32 from the stored values: the plan must be the one of
    # the float32 model holding the same (rounded) values. Weights read through a Cast
    # are still the weights that make and read the channels.
    convert, np_dtype = LOW_PRECISION[dtype]
    low = prune(convert(fresh(name)), validate=False)
    ref = prune(variants.rounded_weights(fresh(name), np_dtype), validate=False)
    assert plan_entries(low) == plan_entries(ref)


@pytest.mark.parametrize("name", LOW_BASES)
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
def test_low_precision_weights_keep_the_prunable_groups(dtype, name):
    # A MatMul or Gemm whose weight is read through a Cast still has a constant weight.
    convert, _ = LOW_PRECISION[dtype]
    low = graphprune.analyze(convert(fresh(name)))
    ref = graphprune.analyze(fresh(name))
    blocked = [(g.label, g.reasons[:1]) for g in low.blocked_groups() if g.label not in {r.label for r in ref.groups}]
    assert len(low.prunable_groups()) == len(ref.prunable_groups()), blocked


@pytest.mark.parametrize("name", LOW_BASES)
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
def test_low_precision_weights_add_no_blocked_groups(dtype, name):
    # The Cast in front of a weight copies all of its axes, but a kernel's height and width
    # are no channels: the analysis must not report them as blocked groups (the float32
    # model has none of them).
    convert, _ = LOW_PRECISION[dtype]
    low = graphprune.analyze(convert(fresh(name)))
    ref = graphprune.analyze(fresh(name))
    ref_labels = {g.label for g in ref.groups}
    extra = [(g.label, g.reasons[:1]) for g in low.blocked_groups() if g.label not in ref_labels]
    assert not extra


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-scale", "fpgm", "random"])
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
def test_every_criterion_scores_low_precision_weights(dtype, criterion):
    # Every criterion reads the stored weights (in float32); none may crash, and bn-scale
    # finds the BatchNormalization of each group although its gamma is read through a Cast.
    convert, _ = LOW_PRECISION[dtype]
    result = prune(convert(fresh("residual_net")), criterion=criterion)
    assert_exact(result)
    assert result.report.groups_pruned > 0
    assert not result.report.prune.get("criterion_fallbacks"), result.report.prune["criterion_fallbacks"]


# ------------------------------------------------------------------------------ QDQ

QDQ_CASES = {
    "conv_chain": ("conv_chain", ("Conv",)),
    "residual_net": ("residual_net", ("Conv",)),
    "depthwise_separable": ("depthwise_separable", ("Conv",)),
    "grouped_conv": ("grouped_conv", ("Conv",)),
    "inception_block": ("inception_block", ("Conv",)),
    "dense_block": ("dense_block", ("Conv",)),
    "flatten_gemm_matmul+MatMul": ("flatten_gemm_matmul", ("Conv", "MatMul")),
}


def qdq(case: str) -> onnx.ModelProto:
    name, ops = QDQ_CASES[case]
    return variants.to_qdq(fresh(name), ops=ops)


@pytest.mark.parametrize("case", sorted(QDQ_CASES))
def test_qdq_per_channel_parameters_are_sliced_with_the_weight(case):
    model = qdq(case)
    result = prune(model)
    assert_exact(result)
    report = result.report
    assert report.groups_pruned > 0
    assert report.params_after < report.params_before
    before, after = inits(model), inits(result.model)
    removed = removed_entries(result.deps, result.plan)
    sliced = 0
    for node in result.model.graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith("_quantized"):
            continue
        wq, scale, zp = node.input
        axis = next(a.i for a in node.attribute if a.name == "axis")
        n_out = after[wq].dims[axis]
        assert list(after[scale].dims) == [n_out] and list(after[zp].dims) == [n_out], wq
        assert after[wq].data_type == TensorProto.INT8 and after[zp].data_type == TensorProto.INT8
        want = numpy_helper.to_array(before[wq])
        for ax in range(want.ndim):
            want = np.delete(want, removed.get((wq, ax), np.zeros(0, np.int64)), axis=ax)
        np.testing.assert_array_equal(numpy_helper.to_array(after[wq]), want)
        gone = removed.get((wq, axis), np.zeros(0, np.int64))
        for param in (scale, zp):
            np.testing.assert_array_equal(
                numpy_helper.to_array(after[param]), np.delete(numpy_helper.to_array(before[param]), gone)
            )
        sliced += len(gone) > 0
    assert sliced > 0
    for per_tensor in ("act_scale", "act_zero_point"):
        assert after[per_tensor].SerializeToString() == before[per_tensor].SerializeToString()


@pytest.mark.parametrize("case", sorted(QDQ_CASES))
def test_qdq_weights_prune_like_float_weights(case):
    # A weight read through DequantizeLinear is still a weight: the channels that are
    # prunable in the float32 model are prunable in its QDQ form.
    name, _ = QDQ_CASES[case]
    quantized = graphprune.analyze(qdq(case))
    ref = graphprune.analyze(fresh(name))
    blocked = [(g.label, g.reasons[:1]) for g in quantized.blocked_groups()]
    assert len(quantized.prunable_groups()) == len(ref.prunable_groups()), blocked


FULL_QDQ_BASES = ["conv_chain", "residual_net", "depthwise_separable", "inception_block"]


@pytest.mark.parametrize("outputs", [False, True], ids=["inputs", "inputs+outputs"])
@pytest.mark.parametrize("name", FULL_QDQ_BASES)
def test_qdq_of_a_folded_model_prunes_exactly(name, outputs):
    # What quantizers produce: BatchNormalization folded into the Conv, Q/DQ on the Conv
    # inputs (and outputs). onnxruntime fuses DQ -> Conv (-> Relu) -> Q into QLinearConv;
    # the check must compare like with like, whatever the runtime fuses.
    model = variants.to_qdq(variants.fold_batchnorm(fresh(name)), outputs=outputs)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    result = prune(model)
    assert_exact(result)
    assert result.report.groups_pruned > 0
    assert result.report.params_after < result.report.params_before


# ------------------------------------------------------------------------------ dynamic dims

DYNAMIC_CASES = {
    name: True
    for name in (
        "conv_chain",
        "residual_net",
        "dense_block",
        "inception_block",
        "split_chunk",
        "squeeze_excite",
        "depthwise_separable",
        "grouped_conv",
        "unet",
    )
}
DYNAMIC_CASES["flatten_gemm"] = False  # Flatten -> Gemm needs the spatial size: batch only


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", sorted(DYNAMIC_CASES))
def test_dynamic_batch_and_spatial_dims_stay_dynamic(name):
    spatial = DYNAMIC_CASES[name]
    model = variants.with_dynamic_dims(fresh(name), spatial=spatial)
    result = prune(model)
    assert_exact(result)
    assert result.report.groups_pruned > 0
    assert [_dims(v) for v in result.model.graph.input] == [_dims(v) for v in model.graph.input]
    assert [_dims(v) for v in result.model.graph.output] == [_dims(v) for v in model.graph.output]
    assert _dims(result.model.graph.input[0])[0] == "batch"
    assert ("height" in _dims(result.model.graph.input[0])) == spatial

    so = ort.SessionOptions()
    so.log_severity_level = 3
    pruned = ort.InferenceSession(result.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref_model = masked_reference(model, result.deps, result.plan)
    ref = ort.InferenceSession(ref_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        for size in (32, 48) if spatial else (32,):
            x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            got = pruned.run(None, {"input": x})
            want = ref.run(None, {"input": x})
            assert got[0].shape == want[0].shape and got[0].shape[0] == batch
            assert rel_diff(got, want) <= 1e-4, (batch, size)


# ------------------------------------------------------------------------------ several inputs and outputs


def test_multi_io_blocks_both_outputs_and_prunes_the_rest_exactly():
    model = variants.multi_io()
    result = prune(model)
    assert_exact(result)
    deps = result.deps
    for out in ("embedding", "segmentation"):
        group = deps.group_of(out, 1)
        assert group is not None and not group.prunable, out
        assert any(out in r and "output" in r for r in group.reasons), group.reasons
    assert not deps.group_of("fuse.0.conv.weight", 0).prunable  # its output is "embedding"
    before, after = inits(model), inits(result.model)
    for kept in ("fuse.0.conv.weight", "seg.1.weight"):
        assert after[kept].dims[0] == before[kept].dims[0], kept
    for pruned in ("rgb.0.conv.weight", "rgb.1.conv.weight", "depth.0.conv.weight", "seg.0.conv.weight"):
        assert after[pruned].dims[0] == before[pruned].dims[0] // 2, pruned
    # the fuse conv reads the concat of both inputs' branches: it lost both segments' columns
    assert after["fuse.0.conv.weight"].dims[1] == (16 + 8) // 2
    assert [_dims(v) for v in result.model.graph.output] == [_dims(v) for v in model.graph.output]
    assert [v.name for v in result.model.graph.input] == ["image", "depth"]


# ------------------------------------------------------------------------------ shared weight


def test_shared_weight_is_one_group_and_both_convs_lose_the_same_filters():
    model = variants.shared_weight()
    deps = graphprune.analyze(model)
    group = deps.group_of("shared.weight", 0)
    assert group is not None and group.prunable
    outs = {m.tensor for m in group.members}
    assert {"/branch_a/Conv_output_0", "/branch_b/Conv_output_0"} <= outs
    assert {"branch_a.bn.weight", "branch_b.bn.weight"} <= outs
    result = prune(model)
    assert_exact(result)
    after = inits(result.model)
    assert after["shared.weight"].dims[0] == 8
    convs = [n for n in result.model.graph.node if n.name in ("/branch_a/Conv", "/branch_b/Conv")]
    assert [n.input[1] for n in convs] == ["shared.weight", "shared.weight"]  # still one tensor
    assert after["branch_a.bn.weight"].dims[0] == after["branch_b.bn.weight"].dims[0] == 8
    assert after["mix.conv.weight"].dims[1] == 16  # both concat segments lost 8 columns


# ------------------------------------------------------------------------------ initializers listed as inputs

# Exporters before IR version 4 listed every initializer in graph.input as well (a default
# that a caller may override). graphprune treats such a tensor as a weight, and that is the
# right call: these models come from exporters that listed everything, nobody feeds the
# weights of an inference model, and treating them as graph inputs would block every
# channel of the model. The price is that the pruned model's overridable inputs change
# shape (a caller who did feed a full-size weight would be refused by onnxruntime, not
# silently given wrong results). What must hold is that the declarations follow the
# sliced initializers; for IR < 4 they must stay listed.
INIT_INPUT_CASES = {
    "conv_chain": lambda: variants.initializers_as_inputs(builders.conv_chain()),
    "residual_net": lambda: variants.initializers_as_inputs(builders.residual_net()),
    "split_chunk_ir3": lambda: variants.initializers_as_inputs(builders.split_chunk(split_form="attribute"), 3),
}


@pytest.mark.parametrize("case", sorted(INIT_INPUT_CASES))
def test_initializers_listed_as_inputs_are_weights_and_prune_exactly(case):
    model = INIT_INPUT_CASES[case]()
    deps = graphprune.analyze(model)
    assert len(deps.prunable_groups()) > 0
    result = prune(model)
    assert_exact(result)
    after = inits(result.model)
    declared = {vi.name: _dims(vi) for vi in result.model.graph.input}
    for name, t in after.items():
        if name in declared:
            assert declared[name] == list(t.dims), name
    if model.ir_version < 4:
        assert set(after) <= set(declared)


# ------------------------------------------------------------------------------ Constant nodes

CONSTANT_BASES = ["conv_chain", "residual_net", "split_chunk", "flatten_gemm_matmul", "unet", "depthwise_separable"]


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
    return values


@pytest.mark.parametrize("name", CONSTANT_BASES)
def test_constant_nodes_are_sliced_like_initializers(name):
    model = variants.constants_as_nodes(fresh(name))
    assert not model.graph.initializer
    result = prune(model)
    assert_exact(result)
    assert result.report.groups_pruned > 0
    reference = prune(fresh(name), validate=False)
    assert plan_entries(result) == plan_entries(reference)
    # every node reads the same values as in the pruned initializer model (weights sliced,
    # shape constants such as Split sizes and Reshape shapes rewritten)
    got, want = _constant_values(result.model), _constant_values(reference.model)
    n_constants = len(model.graph.node) - len(fresh(name).graph.node)  # they come first
    for node, ref_node in zip(result.model.graph.node[n_constants:], reference.model.graph.node):
        assert node.op_type == ref_node.op_type
        for a, b in zip(node.input, ref_node.input):
            if b in want:
                np.testing.assert_array_equal(got[a], want[b], err_msg=f"{node.name} input {a}")
    weights = [t.name for t in fresh(name).graph.initializer if t.data_type == TensorProto.FLOAT]
    sliced = [n for n in weights if got[n].shape != numpy_helper.to_array(inits(fresh(name))[n]).shape]
    assert sliced, "no Constant weight was sliced"
    for n in weights:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)


@pytest.mark.parametrize("name", ["split_chunk", "flatten_gemm_matmul"])
def test_rewritten_constant_nodes_leave_no_dead_nodes(name):
    # Split sizes and Reshape shapes held by Constant nodes are rewritten; a Constant that
    # no node reads any more is dead weight in the pruned model.
    result = prune(variants.constants_as_nodes(fresh(name)), validate=False)
    g = result.model.graph
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    dead = [n.output[0] for n in g.node if n.op_type == "Constant" and n.output[0] not in read]
    assert not dead, dead


# ------------------------------------------------------------------------------ control flow

CONTROL_FLOW = {
    "If": variants.with_if,
    "If_outer_weight": lambda: variants.with_if(outer_weight=True),
    "Loop": variants.with_loop,
    "Scan": variants.with_scan,
}


@pytest.mark.parametrize("case", sorted(CONTROL_FLOW))
def test_control_flow_blocks_what_enters_it_and_keeps_its_bodies(case):
    model = CONTROL_FLOW[case]()
    kind = case.split("_")[0]
    node = next(n for n in model.graph.node if n.op_type == kind)
    deps = graphprune.analyze(model)
    entering = deps.group_of("mid.conv.weight", 0)  # makes the tensor the node reads
    leaving = deps.group_of(node.output[0], 1)
    for group in (entering, leaving):
        assert group is not None and not group.prunable
        assert any(node.name in r for r in group.reasons), group.reasons
    bodies = {(n, a): g.SerializeToString() for n, a, g in variants.subgraphs(model)}
    assert bodies

    result = prune(model)
    assert_exact(result)
    assert {(n, a): g.SerializeToString() for n, a, g in variants.subgraphs(result.model)} == bodies
    if kind == "If":  # validation ran one branch (a random condition): check both
        reference = masked_reference(model, result.deps, result.plan)
        x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
        for flag in (True, False):
            feeds = {"input": x, "use_relu": np.array(flag)}
            assert rel_diff(run(result.model, feeds), run(reference, feeds)) <= 1e-4, flag
    before, after = inits(model), inits(result.model)
    assert after["mid.conv.weight"].dims[0] == before["mid.conv.weight"].dims[0]
    assert after["after.conv.weight"].dims[1] == before["after.conv.weight"].dims[1]
    assert after["stem.conv.weight"].dims[0] == before["stem.conv.weight"].dims[0] // 2
    if case == "If_outer_weight":
        # a weight read inside a subgraph is blocked even where the main graph reads it
        assert after["after.conv.weight"].dims == before["after.conv.weight"].dims
        group = deps.group_of("after.conv.weight", 0)
        assert not group.prunable and any(node.name in r for r in group.reasons), group.reasons
    else:
        assert after["after.conv.weight"].dims[0] == before["after.conv.weight"].dims[0] // 2
