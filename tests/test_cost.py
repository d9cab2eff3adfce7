"""Tests of graphprune.objectives.cost on tiny hand-built models with hand-computed counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.objectives.cost import Cost, cost_of, count_flops, count_params, latency_ms, random_feeds

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _weight(name: str, shape, seed: int = 0) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _vi(name: str, shape, elem=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _conv_model(c_in, c_out, k, hw, group=1, pads=1, bias=True):
    inits = [_weight("W", [c_out, c_in // group, k, k])]
    inputs = ["x", "W"]
    if bias:
        inits.append(_weight("B", [c_out]))
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["y"], kernel_shape=[k, k], pads=[pads] * 4, group=group)
    return _model([node], [_vi("x", [1, c_in, hw, hw])], [_vi("y", None)], inits)


def test_conv_macs():
    m = _conv_model(3, 8, 3, 8)
    flops, by_op = count_flops(m)
    assert flops == 1 * 8 * 8 * 8 * 3 * 9
    assert by_op == {"Conv": flops}


def test_grouped_conv_macs():
    # 8 -> 16 channels, 4 groups, 3x3, stride 2, no pad on 9x9: out 4x4
    w = _weight("W", [16, 2, 3, 3])
    node = helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], strides=[2, 2], group=4)
    m = _model([node], [_vi("x", [2, 8, 9, 9])], [_vi("y", None)], [w])
    assert count_flops(m)[0] == 2 * 16 * 4 * 4 * (8 // 4) * 9


def test_depthwise_conv_macs():
    m = _conv_model(6, 6, 3, 10, group=6)
    assert count_flops(m)[0] == 1 * 6 * 10 * 10 * 1 * 9


def test_conv_transpose_macs():
    # C_in 4 -> C_out 6, group 2, kernel 2x2, stride 2 on [1, 4, 5, 5]
    w = _weight("W", [4, 3, 2, 2])
    node = helper.make_node("ConvTranspose", ["x", "W"], ["y"], kernel_shape=[2, 2], strides=[2, 2], group=2)
    m = _model([node], [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], [w])
    assert count_flops(m)[0] == 1 * 4 * 5 * 5 * (6 // 2) * 4


def test_gemm_trans_b():
    node = helper.make_node("Gemm", ["a", "W", "b"], ["y"], transB=1)
    m = _model(
        [node],
        [_vi("a", [5, 7])],
        [_vi("y", None)],
        [_weight("W", [11, 7]), _weight("b", [11])],
    )
    assert count_flops(m) == (5 * 11 * 7, {"Gemm": 5 * 11 * 7})


def test_gemm_trans_a():
    node = helper.make_node("Gemm", ["a", "W"], ["y"], transA=1)
    m = _model([node], [_vi("a", [7, 5])], [_vi("y", None)], [_weight("W", [7, 11])])
    assert count_flops(m)[0] == 5 * 11 * 7


def test_matmul_3d_by_const_2d():
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    m = _model([node], [_vi("x", [2, 5, 7])], [_vi("y", None)], [_weight("W", [7, 3])])
    assert count_flops(m)[0] == 2 * 5 * 3 * 7


def test_matmul_activation_by_activation():
    node = helper.make_node("MatMul", ["q", "k"], ["y"])
    m = _model([node], [_vi("q", [2, 4, 6, 8]), _vi("k", [2, 4, 8, 6])], [_vi("y", None)])
    assert count_flops(m)[0] == 2 * 4 * 6 * 6 * 8


def test_matmul_broadcast_and_vector():
    mm1 = helper.make_node("MatMul", ["a", "b"], ["y"])  # [3,1,4,5] x [2,5,6] -> [3,2,4,6]
    mm2 = helper.make_node("MatMul", ["v", "b"], ["z"])  # [5] x [2,5,6] -> [2,6]
    m = _model(
        [mm1, mm2],
        [_vi("a", [3, 1, 4, 5]), _vi("b", [2, 5, 6]), _vi("v", [5])],
        [_vi("y", None), _vi("z", None)],
    )
    assert count_flops(m)[0] == 3 * 2 * 4 * 6 * 5 + 2 * 6 * 5


def test_einsum_matches_matmul():
    node = helper.make_node("Einsum", ["q", "k"], ["y"], equation="bhid,bhjd->bhij")
    m = _model([node], [_vi("q", [2, 4, 6, 8]), _vi("k", [2, 4, 6, 8])], [_vi("y", None)])
    assert count_flops(m)[0] == 2 * 4 * 6 * 6 * 8
    node = helper.make_node("Einsum", ["q", "k"], ["y"], equation="...id,...jd->...ij")
    m = _model([node], [_vi("q", [2, 4, 6, 8]), _vi("k", [4, 6, 8])], [_vi("y", None)])
    assert count_flops(m)[0] == 2 * 4 * 6 * 6 * 8


def test_lstm_macs():
    seq, batch, inp, hid = 5, 2, 3, 4
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hid)
    m = _model(
        [node],
        [_vi("x", [seq, batch, inp])],
        [_vi("y", None)],
        [_weight("W", [1, 4 * hid, inp]), _weight("R", [1, 4 * hid, hid])],
    )
    assert count_flops(m)[0] == seq * batch * 4 * hid * (inp + hid)


def test_relu_counts_output_elements():
    node = helper.make_node("Relu", ["x"], ["y"])
    m = _model([node], [_vi("x", [2, 3, 4, 5])], [_vi("y", None)])
    assert count_flops(m) == (2 * 3 * 4 * 5, {"Relu": 120})


def test_add_counts_broadcast_output():
    node = helper.make_node("Add", ["x", "b"], ["y"])
    m = _model([node], [_vi("x", [2, 3, 4])], [_vi("y", None)], [_weight("b", [4])])
    assert count_flops(m)[0] == 24


def test_global_average_pool_counts_input_elements():
    node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    m = _model([node], [_vi("x", [1, 16, 7, 7])], [_vi("y", None)])
    assert count_flops(m) == (16 * 7 * 7, {"GlobalAveragePool": 16 * 7 * 7})


def test_reduce_mean_costs_like_global_pool():
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
    m = _model([node], [_vi("x", [1, 16, 7, 7])], [_vi("y", None)], [axes], opset=18)
    assert count_flops(m)[0] == 16 * 7 * 7


def test_max_pool_counts_output_times_kernel():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    m = _model([node], [_vi("x", [1, 4, 8, 8])], [_vi("y", None)])
    assert count_flops(m)[0] == 4 * 4 * 4 * 9


def test_shape_ops_count_zero():
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Cast", ["r"], ["c"], to=TensorProto.DOUBLE),
        helper.make_node("Identity", ["c"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [1, 3, 4])], [_vi("y", None, TensorProto.DOUBLE)], [shape])
    cost = cost_of(m)
    assert (cost.flops, cost.flops_by_op, cost.unknown_nodes) == (0, {}, 0)


def test_params_shared_initializer_counted_once_and_int_not_counted():
    w = _weight("W", [4, 4])
    shape = numpy_helper.from_array(np.array([2, 8], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["h2"]),
        helper.make_node("Reshape", ["h2", "shape"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [4, 4])], [_vi("y", None)], [w, shape])
    assert count_params(m) == 16
    cost = cost_of(m)
    assert cost == Cost(params=16, flops=2 * 4 * 4 * 4, flops_by_op={"MatMul": 128})


def test_params_float_types_and_constant_nodes():
    inits = [
        helper.make_tensor("h", TensorProto.FLOAT16, [3, 5], np.zeros(15, np.float16).tobytes(), raw=True),
        helper.make_tensor("d", TensorProto.DOUBLE, [2], [1.0, 2.0]),
        helper.make_tensor("i", TensorProto.INT32, [100], list(range(100))),
    ]
    nodes = [
        helper.make_node("Constant", [], ["c1"], value=numpy_helper.from_array(np.ones((2, 3), np.float32))),
        helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(np.ones(7, np.int64))),
        helper.make_node("Constant", [], ["c3"], value_float=1.5),
        helper.make_node("Constant", [], ["c4"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Identity", ["x"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [1])], [_vi("y", None)], inits)
    assert count_params(m) == 15 + 2 + 6 + 1 + 3


def test_params_without_data(tmp_path):
    """A model saved with external data and loaded without it is still counted from dims."""
    m = _conv_model(3, 8, 3, 8)
    path = tmp_path / "m.onnx"
    onnx.save(m, path, save_as_external_data=True, size_threshold=0, location="m.data")
    light = onnx.load(path, load_external_data=False)
    assert count_params(light) == 8 * 3 * 9 + 8
    assert cost_of(light).flops == 1 * 8 * 8 * 8 * 3 * 9


def test_unknown_shapes_reported():
    # a symbolic batch dim leaves the output shapes unknown: the nodes are skipped, not guessed
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", None)], [_weight("W", [4, 3])])
    cost = cost_of(m)
    assert cost.flops == 0 and cost.flops_by_op == {}
    assert cost.unknown_nodes == 2
    assert cost.params == 12


def test_unknown_shape_from_opaque_node():
    nodes = [
        helper.make_node("MyOp", ["x"], ["h"], domain="custom"),
        helper.make_node("Relu", ["h"], ["y"]),
        helper.make_node("Relu", ["x"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2, 3])], [_vi("y", None), _vi("z", None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    cost = cost_of(m)
    assert (cost.flops, cost.unknown_nodes) == (6, 1)


def test_explicit_shapes_override_inference():
    node = helper.make_node("Relu", ["x"], ["y"])
    m = _model([node], [_vi("x", ["N", 3])], [_vi("y", None)])
    assert cost_of(m).unknown_nodes == 1
    assert count_flops(m, shapes={"x": (5, 3), "y": (5, 3)})[0] == 15


def test_random_feeds_dtypes_and_dims():
    inputs = [
        _vi("f", ["batch", 3]),
        _vi("h", [2], TensorProto.FLOAT16),
        _vi("i", [4], TensorProto.INT64),
        _vi("j", [1, 2], TensorProto.INT32),
        _vi("b", [3], TensorProto.BOOL),
        _vi("W", [2, 2]),  # also an initializer: not fed
    ]
    node = helper.make_node("Identity", ["f"], ["y"])
    m = _model([node], inputs, [_vi("y", None)], [_weight("W", [2, 2])])
    feeds = random_feeds(m, seed=1)
    assert set(feeds) == {"f", "h", "i", "j", "b"}
    assert feeds["f"].shape == (1, 3) and feeds["f"].dtype == np.float32
    assert feeds["h"].dtype == np.float16
    assert feeds["i"].dtype == np.int64 and feeds["i"].min() >= 0 and feeds["i"].max() <= 3
    assert feeds["j"].dtype == np.int32 and feeds["j"].shape == (1, 2)
    assert feeds["b"].dtype == np.bool_
    again = random_feeds(m, seed=1)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)


def test_latency_ms_model_and_path(tmp_path):
    m = _conv_model(3, 8, 3, 8)
    t = latency_ms(m, repeats=3, warmup=1)
    assert isinstance(t, float) and t > 0
    path = tmp_path / "conv.onnx"
    onnx.save(m, path)
    t2 = latency_ms(str(path), repeats=2, warmup=0, feeds=random_feeds(m, seed=3))
    assert isinstance(t2, float) and t2 > 0
    assert latency_ms(path, repeats=1, warmup=0) > 0


def _counting_runs(monkeypatch) -> list:
    """Every ``run`` of the sessions latency_ms builds, counted (onnxruntime otherwise as is)."""
    import types

    from graphprune.ir import runtime

    real = runtime.ort()
    runs: list = []

    class Counting:
        def __init__(self, *args, **kwargs):
            self._sess = real.InferenceSession(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._sess, name)

        def run(self, *args, **kwargs):
            runs.append(1)
            return self._sess.run(*args, **kwargs)

    fake = types.SimpleNamespace(
        InferenceSession=Counting,
        SessionOptions=real.SessionOptions,
        GraphOptimizationLevel=real.GraphOptimizationLevel,
    )
    monkeypatch.setattr(runtime, "ort", lambda: fake)
    return runs


def test_a_model_slower_than_a_third_of_the_budget_per_run_is_timed_in_three_runs(monkeypatch):
    """Its first run is one of the three timed runs, not an extra warm-up (fcn_resnet50: 3 runs
    of 7 s each instead of 4)."""
    runs = _counting_runs(monkeypatch)
    assert latency_ms(_conv_model(3, 8, 3, 8), repeats=None, warmup=3, budget_s=0.0) > 0
    assert len(runs) == 3


def test_a_fast_model_gets_its_warm_up_runs_before_the_timed_ones(monkeypatch):
    runs = _counting_runs(monkeypatch)
    assert latency_ms(_conv_model(3, 8, 3, 8), repeats=None, warmup=3, budget_s=1e9) > 0
    assert len(runs) == 3 + 20  # warm-ups untimed, then MAX_LATENCY_RUNS


def test_latency_rejects_zero_repeats():
    with pytest.raises(ValueError):
        latency_ms(_conv_model(3, 8, 3, 8), repeats=0)


def test_integer_weights_of_quantized_operators_are_parameters():
    """A QOperator model's int8 weights count as parameters, one per element, as a QDQ model's do."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from graphprune.objectives.cost import count_params

    inits = [
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w"),
        numpy_helper.from_array(np.array(0.1, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.1, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.1, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zp"),
    ]
    node = helper.make_node(
        "QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"], ["y"], pads=[1, 1, 1, 1]
    )
    graph = helper.make_graph(
        [node],
        "qconv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert count_params(model) == 4 * 3 * 3 * 3 + 3  # the weights, and the three float scales


def _sessions_by_level(monkeypatch) -> list:
    """The optimisation level of every onnxruntime session built (onnxruntime otherwise as is)."""
    from graphprune.ir import runtime

    real, levels = runtime.session, []

    def recording(source, **kwargs):
        levels.append(kwargs.get("optimization"))
        return real(source, **kwargs)

    monkeypatch.setattr(runtime, "session", recording)
    return levels


def test_validation_runs_the_original_through_its_latency_session(monkeypatch):
    """With latency timed, the original is run once in a fully optimised session that validation
    and timing share (fcn_resnet50: one run of seconds fewer), and the report is the one a run
    without latency gives: the fidelity baseline differs by float rounding only."""
    import graphprune
    from models.builders import residual_net

    model = residual_net(seed=3)
    levels = _sessions_by_level(monkeypatch)
    runs = _counting_runs(monkeypatch)
    timed = graphprune.prune(model, ratio=0.5, criterion="l2", latency=True, latency_runs=3)
    # the original at full optimisation for validation and again for timing (its session is
    # dropped in between, so validation never holds two); the pruned model and the reference basic
    assert sorted(levels, key=str) == ["all", "all", "all", "basic", "basic"]
    # validation: the original (also latency's first warm-up), pruned, reference; then the
    # original's 2 more warm-ups and 3 timed runs, the pruned model's 3 and 3 (15 before)
    assert len(runs) == 3 + (2 + 3) + (3 + 3)
    del levels[:]
    untimed = graphprune.prune(model, ratio=0.5, criterion="l2", latency=False)
    assert levels == ["basic", "basic", "basic"]  # original, pruned, reference
    assert timed.report.latency_ms_before > 0 and timed.report.latency_ms_after > 0
    assert timed.report.exact.passed and untimed.report.exact.passed
    assert timed.report.fidelity.cosine == pytest.approx(untimed.report.fidelity.cosine, abs=1e-6)
    assert timed.report.fidelity.rel_l2 == pytest.approx(untimed.report.fidelity.rel_l2, abs=1e-6)


def test_a_timed_session_s_earlier_run_counts_as_a_warm_up(monkeypatch):
    from graphprune.objectives.cost import TimedSession

    runs = _counting_runs(monkeypatch)
    model = _conv_model(3, 8, 3, 8)
    timed = TimedSession(model, random_feeds(model))
    assert len(timed.run()) == 1 and len(timed.durations) == 1
    assert latency_ms(timed, repeats=5, warmup=3) > 0
    assert len(runs) == 1 + 2 + 5  # validation's run, two more warm-ups, the timed runs
