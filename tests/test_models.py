"""Tests for ``models/``: the synthetic builders, the bundled example and the zoo loader."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import builders, zoo
from models.builders import BUILDERS, random_input
from models.examples import make_examples

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def run(model: onnx.ModelProto | bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def declared_shape(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def has_data(t: TensorProto) -> bool:
    # HasField, not truthiness: reading raw_data would copy hundreds of MB.
    fields = ("float_data", "double_data", "int32_data", "int64_data")
    return t.HasField("raw_data") or any(len(getattr(t, f)) for f in fields)


def opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------------------- builders

# (builder name, kwargs, expected output shape)
BUILDER_CASES = [
    ("conv_chain", {}, [1, 4, 32, 32]),
    ("residual_net", {}, [1, 10]),
    ("dense_block", {}, [1, 10]),
    ("inception_block", {}, [1, 10]),
    ("split_chunk", {}, [1, 8, 16, 16]),
    ("split_chunk", {"split_form": "attribute"}, [1, 8, 16, 16]),
    ("squeeze_excite", {}, [1, 10]),
    ("squeeze_excite", {"gate": "hardsigmoid"}, [1, 10]),
    ("depthwise_separable", {}, [1, 10]),
    ("flatten_gemm", {}, [1, 10]),
    ("flatten_gemm", {"head": "matmul"}, [1, 10]),
    ("unet", {}, [1, 3, 32, 32]),
    ("convtranspose_decoder", {}, [1, 3, 32, 32]),
    ("grouped_conv", {}, [1, 10]),
    ("pad_and_pool", {}, [1, 10]),
    ("conv_chain", {"channels": (4, 8, 8, 8, 8, 8, 4), "seed": 3}, [1, 4, 32, 32]),
    ("residual_net", {"width": 8, "blocks": 4, "input_shape": (1, 3, 64, 64)}, [1, 10]),
    ("dense_block", {"channels": 16, "growth": 4, "layers": 3}, [1, 10]),
    ("grouped_conv", {"groups": 8}, [1, 10]),
    ("unet", {"depth": 3}, [1, 3, 32, 32]),
]


def _case_id(case) -> str:
    name, kwargs, _ = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items()).replace(" ", "")


def test_builders_table_complete():
    assert set(BUILDERS) == {
        "conv_chain",
        "residual_net",
        "dense_block",
        "inception_block",
        "split_chunk",
        "squeeze_excite",
        "depthwise_separable",
        "flatten_gemm",
        "unet",
        "convtranspose_decoder",
        "grouped_conv",
        "pad_and_pool",
    }
    assert {c[0] for c in BUILDER_CASES} == set(BUILDERS)
    for name, fn in BUILDERS.items():
        assert fn is getattr(builders, name)


@pytest.mark.parametrize("case", BUILDER_CASES, ids=_case_id)
def test_builder_checks_and_runs(case):
    name, kwargs, expected = case
    model = BUILDERS[name](**kwargs)
    assert isinstance(model, onnx.ModelProto)
    data = model.SerializeToString()
    onnx.checker.check_model(data, full_check=True)
    assert model.ir_version == 8
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    allowed = (TensorProto.FLOAT, TensorProto.INT64)
    assert all(t.data_type in allowed for t in model.graph.initializer)
    assert declared_shape(model.graph.output[0]) == expected

    feed = random_input(model)
    assert list(feed) == ["input"] and feed["input"].dtype == np.float32
    (out,) = run(data, feed)
    assert list(out.shape) == expected
    assert np.isfinite(out).all()
    assert out.std() > 1e-3  # not collapsed to a constant


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_seeded(name):
    fn = BUILDERS[name]
    a, b, c = fn(), fn(seed=0), fn(seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()
    assert [n.name for n in a.graph.node] == [n.name for n in c.graph.node]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_naming_and_bn(name):
    model = BUILDERS[name]()
    node_names = [n.name for n in model.graph.node]
    assert len(set(node_names)) == len(node_names)
    for node in model.graph.node:  # PyTorch style: /layer1/0/conv1/Conv
        assert re.fullmatch(rf"(/[\w.]+)*/{node.op_type}(_\d+)?", node.name), node.name
    weights = inits(model)
    assert all(" " not in k and not k.startswith("onnx::") for k in weights)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs
    for conv in convs:
        assert conv.input[1].endswith(".weight")
        assert weights[conv.input[1]].std() > 0
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns, "BatchNormalization must stay unfolded"
    for bn in bns:
        scale, bias, mean, var = (weights[i] for i in bn.input[1:5])
        assert bn.input[4].endswith(".running_var")
        assert (var > 0).all() and var.std() > 0
        assert scale.std() > 0 and bias.std() > 0 and mean.std() > 0


def test_conv_bias_mixed():
    with_bias = without = 0
    for fn in BUILDERS.values():
        for n in fn().graph.node:
            if n.op_type in ("Conv", "ConvTranspose"):
                if len(n.input) > 2:
                    with_bias += 1
                else:
                    without += 1
    assert with_bias > 5 and without > 5
    cc = builders.conv_chain()
    assert {len(n.input) for n in cc.graph.node if n.op_type == "Conv"} == {2, 3}


def test_conv_chain_activations():
    model = builders.conv_chain()
    ops = op_types(model)
    assert {"Relu", "LeakyRelu", "Sigmoid", "HardSwish", "Clip", "PRelu"} <= ops
    weights = inits(model)
    (prelu,) = [n for n in model.graph.node if n.op_type == "PRelu"]
    slope = weights[prelu.input[1]]
    assert slope.ndim == 3 and slope.shape[1:] == (1, 1) and slope.shape[0] > 1
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    assert len(clip.input) == 3
    assert float(weights[clip.input[1]]) == 0.0 and float(weights[clip.input[2]]) == 6.0
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert [weights[c.input[1]].shape[0] for c in convs] == [8, 16, 16, 8, 4]
    explicit = builders.conv_chain(channels=(8, 8), activations=("relu", "prelu"))
    assert {"Relu", "PRelu"} <= op_types(explicit) and "Sigmoid" not in op_types(explicit)


def test_residual_net_shortcuts():
    model = builders.residual_net()
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 3
    producers = {o: n for n in model.graph.node for o in n.output}
    kinds = []
    for add in adds:
        ops = {producers[i].op_type for i in add.input}
        kinds.append("projection" if ops == {"BatchNormalization"} else "identity")
    assert kinds.count("identity") >= 1 and kinds.count("projection") >= 1
    weights = inits(model)
    proj = weights["layer2.0.downsample.0.weight"]
    assert proj.shape == (32, 16, 1, 1)
    ds = next(n for n in model.graph.node if n.input[1:2] == ["layer2.0.downsample.0.weight"])
    strides = next(a for a in ds.attribute if a.name == "strides")
    assert helper.get_attribute_value(strides) == [2, 2]
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert any(a.name == "transB" and a.i == 1 for a in gemm.attribute)
    assert {"GlobalAveragePool", "Flatten", "Gemm"} <= op_types(model)


def test_dense_block_concats():
    model = builders.dense_block(channels=24, growth=8, layers=4)
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert [len(c.input) for c in concats] == [2, 3, 4, 5]
    assert all(c.attribute[0].name == "axis" and c.attribute[0].i == 1 for c in concats)
    assert inits(model)["features.transition1.conv.weight"].shape == (28, 56, 1, 1)
    assert "AveragePool" in op_types(model)


def test_inception_branches():
    model = builders.inception_block()
    (concat,) = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concat.input) == 4
    kernels = {
        tuple(helper.get_attribute_value(a))
        for n in model.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "kernel_shape"
    }
    assert {(1, 1), (3, 3), (5, 5)} <= kernels
    (pool,) = [n for n in model.graph.node if n.op_type == "MaxPool"]
    attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["kernel_shape"] == [3, 3] and attrs["strides"] == [1, 1]


@pytest.mark.parametrize("form", ["input", "attribute"])
def test_split_forms(form):
    model = builders.split_chunk(split_form=form)
    (split,) = [n for n in model.graph.node if n.op_type == "Split"]
    attrs = {a.name: helper.get_attribute_value(a) for a in split.attribute}
    assert attrs["axis"] == 1 and len(split.output) == 2
    if form == "input":
        assert opset(model) == 17 and "split" not in attrs
        assert inits(model)[split.input[1]].tolist() == [8, 8]
    else:
        assert opset(model) == 11 and attrs["split"] == [8, 8] and len(split.input) == 1
    (concat,) = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concat.input) == 4  # two halves + n=2 bottleneck outputs
    with pytest.raises(ValueError):
        builders.split_chunk(split_form="nope")


def test_squeeze_excite_structure():
    model = builders.squeeze_excite()
    assert opset(model) == 17
    (rm,) = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    attrs = {a.name: helper.get_attribute_value(a) for a in rm.attribute}
    assert attrs == {"axes": [2, 3], "keepdims": 1} and len(rm.input) == 1
    assert {"Mul", "Sigmoid"} <= op_types(model)
    assert "HardSigmoid" in op_types(builders.squeeze_excite(gate="hardsigmoid"))


def test_depthwise_structure():
    model = builders.depthwise_separable()
    weights = inits(model)
    grouped = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            if group > 1:
                grouped.append((group, weights[n.input[1]].shape))
    assert any(g == shape[0] and shape[1] == 1 for g, shape in grouped)  # plain depthwise
    assert any(shape[0] == 2 * g and shape[1] == 1 for g, shape in grouped)  # multiplier 2
    assert len([n for n in model.graph.node if n.op_type == "Add"]) == 2
    assert "Clip" in op_types(model)


def test_flatten_gemm_heads():
    gemm = builders.flatten_gemm()
    assert {"Flatten", "Gemm"} <= op_types(gemm)
    flat = next(n for n in gemm.graph.node if n.op_type == "Flatten")
    assert inits(gemm)["classifier.0.weight"].shape == (32, 16 * 4 * 4)
    assert flat.attribute[0].i == 1
    mm = builders.flatten_gemm(head="matmul")
    assert {"Reshape", "MatMul", "Add"} <= op_types(mm) and "Gemm" not in op_types(mm)
    w = inits(mm)
    assert w["flatten.shape"].tolist() == [1, -1]
    assert w["classifier.0.weight"].shape == (256, 32)


def test_unet_and_decoder_structure():
    u = builders.unet()
    resizes = [n for n in u.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 2
    assert all(inits(u)[r.input[2]].tolist() == [1, 1, 2, 2] and r.input[1] == "" for r in resizes)
    d = builders.convtranspose_decoder()
    cts = [n for n in d.graph.node if n.op_type == "ConvTranspose"]
    assert [len(n.input) for n in cts] == [2, 3]
    w = inits(d)
    assert w[cts[0].input[1]].shape == (32, 16, 4, 4)
    assert w[cts[1].input[1]].shape == (16, 4, 4, 4)  # group 2: [C_in, C_out/group, k, k]


def test_grouped_conv_structure():
    model = builders.grouped_conv(groups=4)
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in model.graph.node if n.op_type == "Conv"]
    assert 4 in groups
    assert inits(model)["layer1.0.conv2.weight"].shape == (32, 8, 3, 3)
    assert "Add" in op_types(model)


def test_pad_and_pool_ops():
    model = builders.pad_and_pool()
    assert opset(model) == 18
    assert {
        "Pad",
        "AveragePool",
        "GlobalMaxPool",
        "InstanceNormalization",
        "Tanh",
        "Softplus",
        "Mish",
        "Dropout",
        "Identity",
        "Cast",
        "Unsqueeze",
        "Squeeze",
        "Transpose",
    } <= op_types(model)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert inits(model)[pad.input[1]].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert [helper.get_attribute_value(t.attribute[0]) for t in transposes] == [[0, 1, 3, 2]] * 2


def test_random_input_skips_initializers():
    model = builders.conv_chain()
    # Old exporters list initializers as graph inputs too: they must not get a feed.
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims)))
    feed = random_input(model, seed=5)
    assert list(feed) == ["input"] and feed["input"].shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(feed["input"], random_input(model, seed=5)["input"])
    assert not np.array_equal(feed["input"], random_input(model, seed=6)["input"])


# ---------------------------------------------------------------------------- example


def test_example_is_up_to_date():
    path = make_examples.HERE / "tiny_resnet.onnx"
    assert path.exists(), "run python -m models.examples.make_examples"
    assert path.stat().st_size < 400_000
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert declared_shape(model.graph.input[0]) == [1, 3, 64, 64]
    fresh = make_examples.examples()["tiny_resnet.onnx"]
    assert path.read_bytes() == fresh.SerializeToString(), "regenerate the bundled examples"
    (out,) = run(model, random_input(model))
    assert out.shape == (1, 10) and np.isfinite(out).all()


def test_make_examples_main(tmp_path):
    assert make_examples.main([str(tmp_path)]) == 0
    assert (tmp_path / "tiny_resnet.onnx").stat().st_size > 0


# ---------------------------------------------------------------------------- zoo

ZOO_MODELS = [
    "alexnet", "convnext_tiny", "deeplabv3_mobilenet_v3_large", "densenet121",
    "efficientnet_b0", "fcn_resnet50", "googlenet", "inception_v3", "mnasnet1_0",
    "mobilenet_v2", "mobilenet_v3_large", "regnet_y_400mf", "resnet18", "resnet50",
    "resnext50_32x4d", "shufflenet_v2_x1_0", "squeezenet1_1", "swin_t", "vgg16_bn",
    "vit_b_16", "wide_resnet50_2",
]  # fmt: skip
# Loaded and checked but not run in onnxruntime, to keep this file near a minute on 2 cores:
# the transformers and the 520x520 segmentation models (slow), and the three CNNs with over
# 50M parameters (alexnet, vgg16_bn, wide_resnet50_2: session creation alone takes seconds).
# Running everything takes about 75-90 s instead of about 55 s.
NOT_RUN = {
    "vit_b_16", "swin_t", "convnext_tiny", "fcn_resnet50", "deeplabv3_mobilenet_v3_large",
    "alexnet", "vgg16_bn", "wide_resnet50_2",
}  # fmt: skip
ZOO_CASES = [(name, exporter) for name in zoo.names() for exporter in zoo.exporters(name)]


def test_zoo_catalogue():
    assert zoo.names() == ZOO_MODELS
    assert zoo.DATA_DIR.is_dir() and "shared" not in zoo.DATA_DIR.parts
    with open(zoo.DATA_DIR / "index.json") as f:
        index = json.load(f)["models"]
    for row in index:
        exports = zoo.manifest(row["name"])["exports"]
        entry = next(e for e in exports if e["exporter"] == row["exporter"])
        assert entry["ok"] == row["ok"]
        if row["ok"]:
            assert row["exporter"] in zoo.exporters(row["name"])
            assert zoo.skeleton_path(row["name"], row["exporter"]) == zoo.DATA_DIR / row["skeleton"]
            assert zoo.skeleton_path(row["name"], row["exporter"]).is_file()
            assert zoo.stats_path(row["name"], row["exporter"]).is_file()
    assert len(ZOO_CASES) == 42
    assert zoo.input_shape("inception_v3") == [1, 3, 299, 299]
    assert zoo.input_shape("resnet18", "dynamo") == [1, 3, 224, 224]
    assert zoo.output_shape("fcn_resnet50") == [1, 21, 520, 520]
    m = zoo.manifest("resnet18")
    m["name"] = "changed"
    assert zoo.manifest("resnet18")["name"] == "resnet18"
    with pytest.raises(KeyError):
        zoo.manifest("resnet1000")
    with pytest.raises(KeyError):
        zoo.skeleton_path("resnet18", "tflite")


@pytest.mark.parametrize(("name", "exporter"), ZOO_CASES, ids=[f"{n}-{e}" for n, e in ZOO_CASES])
def test_zoo_load(name, exporter):
    entry = next(e for e in zoo.manifest(name)["exports"] if e["exporter"] == exporter)
    model = zoo.load(name, exporter)

    floats = [t for t in model.graph.initializer if t.data_type in FLOAT_TYPES]
    assert sum(int(np.prod(t.dims)) for t in floats) == entry["param_count"]
    assert len(model.graph.initializer) == entry["num_initializers"]
    for t in model.graph.initializer:
        if t.dims and int(np.prod(t.dims)) > 0:
            assert has_data(t), t.name
    assert [i.name for i in model.graph.input] == [i["name"] for i in entry["inputs"]]

    data = model.SerializeToString()
    del model, floats
    onnx.checker.check_model(data)
    if name in NOT_RUN:
        return
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal(zoo.input_shape(name, exporter))}
    outputs = session.run(None, {k: v.astype(np.float32) for k, v in feed.items()})
    assert [list(o.shape) for o in outputs] == [o["shape"] for o in entry["outputs"]]
    assert all(np.isfinite(o).all() for o in outputs)


def test_zoo_refill_rules():
    """Same seed: same bytes; other seed: other values; BN variances positive; stats honoured."""
    a = zoo.load("densenet121", "torchscript", seed=0)
    again = zoo.load("densenet121", "torchscript", seed=0)
    assert a.SerializeToString() == again.SerializeToString()
    b = zoo.load("densenet121", "torchscript", seed=1)
    with open(zoo.stats_path("densenet121")) as f:
        stats = json.load(f)["tensors"]
    wa, wb = inits(a), inits(b)
    variances = {n.input[4] for n in a.graph.node if n.op_type == "BatchNormalization"}
    stripped_vars = variances & set(stats)
    assert stripped_vars, "densenet121 should have stripped BN variances"
    for key in stripped_vars:
        v = wa[key]
        assert (v > 0).all()
        assert v.min() >= stats[key]["min"] - 1e-6 and v.max() <= stats[key]["max"] + 1e-6
    for key, s in stats.items():
        assert wa[key].dtype == np.float32
        assert not np.array_equal(wa[key], wb[key])
        if key not in variances and wa[key].size > 10_000:
            assert abs(wa[key].mean() - s["mean"]) < 0.05 * s["std"] + 1e-6
            assert abs(wa[key].std() - s["std"]) < 0.05 * s["std"] + 1e-6


def test_zoo_constant_std_zero():
    # swin_t/dynamo has stripped all-zero tensors (std 0): they must be refilled exactly.
    with open(zoo.stats_path("swin_t", "dynamo")) as f:
        stats = json.load(f)["tensors"]
    zero = [k for k, s in stats.items() if s["std"] == 0]
    assert zero
    weights = inits(zoo.load("swin_t", "dynamo", seed=3))
    for key in zero:
        assert (weights[key] == stats[key]["mean"]).all()


def test_zoo_refills_constant_nodes_and_subgraphs():
    """The zoo has no stripped Constant nodes or subgraphs; check the loader on a synthetic one."""
    shape = (20, 20)

    def stripped(name: str, dtype: int) -> TensorProto:
        t = TensorProto(name=name, data_type=dtype)
        t.dims.extend(shape)
        return t

    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["sub_c"], value=stripped("sub_c", TensorProto.FLOAT16))],
        "then",
        [],
        [helper.make_tensor_value_info("sub_c", TensorProto.FLOAT16, shape)],
    )
    else_graph = helper.make_graph(
        [
            helper.make_node(
                "Constant",
                [],
                ["sub_d"],
                value=numpy_helper.from_array(np.ones(shape, np.float16), "sub_d"),
            )
        ],
        "else",
        [],
        [helper.make_tensor_value_info("sub_d", TensorProto.FLOAT16, shape)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=stripped("c", TensorProto.DOUBLE)),
            helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
        ],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [
            helper.make_tensor_value_info("c", TensorProto.DOUBLE, shape),
            helper.make_tensor_value_info("y", TensorProto.FLOAT16, shape),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    stats = {
        "format": "onnx-skeleton-v1",
        "threshold": 256,
        "tensors": {
            "c": {"where": "constant", "mean": 2.0, "std": 0.5, "min": 0.0, "max": 4.0},
            "sub_c": {"where": "constant", "mean": -1.0, "std": 0.0, "min": -1.0, "max": -1.0},
        },
    }
    zoo.materialize(model, stats, seed=0)
    onnx.checker.check_model(model, full_check=True)
    c, y = run(model, {"cond": np.array(True)})
    assert c.dtype == np.float64 and abs(c.mean() - 2.0) < 0.1 and c.std() > 0.3
    assert y.dtype == np.float16 and (y == -1).all()
    bad = {"format": "onnx-skeleton-v1", "tensors": {}}
    model.graph.node[0].attribute[0].t.ClearField("raw_data")
    with pytest.raises(KeyError):
        zoo.materialize(model, bad)


def test_zoo_cli(tmp_path):
    out = tmp_path / "sq.onnx"
    assert zoo.main(["squeezenet1_1", str(out), "--exporter", "dynamo", "--seed", "2"]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    expected = zoo.load("squeezenet1_1", "dynamo", seed=2)
    assert model.SerializeToString() == expected.SerializeToString()
    with pytest.raises(SystemExit):
        zoo.main(["nonexistent", str(out)])
