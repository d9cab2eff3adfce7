"""An LLM decoder with a KV cache (issue 12): MLP width prunes, the cache stays untouched.

The model is :func:`models.kv_decoder.kv_decoder`: inputs ``input_ids``, ``attention_mask``,
``position_ids`` and ``past_key_values.{i}.key/value``; outputs ``logits`` and ``present.{i}.key/value``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune
from graphprune.validation.contract import masked_reference
from models.kv_decoder import kv_decoder

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 2, 32, 4, 2, 64, 64
HEAD_DIM = HIDDEN // HEADS
BATCH, PAST, SEQ = 2, 3, 2
CACHE = ("past_key_values.", "present.")


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return kv_decoder(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN, seed=0)


@pytest.fixture(scope="module")
def pruned(model) -> graphprune.api.PruneResult:
    return graphprune.prune(model, ratio=0.5, units=("mlp",), latency=False, input_shapes=_input_shapes())


def _input_shapes() -> dict[str, list[int]]:
    shapes = {
        "input_ids": [BATCH, SEQ],
        "attention_mask": [BATCH, PAST + SEQ],
        "position_ids": [BATCH, SEQ],
    }
    for i in range(LAYERS):
        for kind in ("key", "value"):
            shapes[f"past_key_values.{i}.{kind}"] = [BATCH, KV_HEADS, PAST, HEAD_DIM]
    return shapes


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _prompt_feeds(seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of 2 after a past of length 3; the second row's first past position is padding."""
    rng = np.random.default_rng(seed)
    mask = np.ones((BATCH, PAST + SEQ), np.int64)
    mask[1, 0] = 0
    feeds = {
        "input_ids": rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int64),
        "attention_mask": mask,
        "position_ids": np.tile(np.arange(PAST, PAST + SEQ, dtype=np.int64), (BATCH, 1)),
    }
    for i in range(LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal((BATCH, KV_HEADS, PAST, HEAD_DIM)).astype(
                np.float32
            )
    return feeds


def _generate(m: onnx.ModelProto, steps: int = 3) -> list[np.ndarray]:
    """Greedy decoding: each step feeds the argmax token, ``present.*`` as the next past, and
    attention_mask / position_ids grown by one; returns the logits of every step."""
    sess = _session(m)
    names = [o.name for o in sess.get_outputs()]
    feeds = _prompt_feeds()
    all_logits = []
    for _ in range(steps):
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        logits = out["logits"]
        all_logits.append(logits)
        nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        last_pos = feeds["position_ids"][:, -1:]
        feeds = {
            "input_ids": nxt,
            "attention_mask": np.concatenate([feeds["attention_mask"], np.ones((BATCH, 1), np.int64)], axis=1),
            "position_ids": last_pos + 1,
        }
        for i in range(LAYERS):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = out[f"present.{i}.{kind}"]
    return all_logits


def _declared(vi: onnx.ValueInfoProto) -> tuple:
    dims = vi.type.tensor_type.shape.dim
    return vi.type.tensor_type.elem_type, tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims)


def test_kv_decoder_is_valid_and_runs_with_a_past(model):
    onnx.checker.check_model(model, full_check=True)
    feeds = _prompt_feeds()
    out = dict(zip([o.name for o in model.graph.output], _session(model).run(None, feeds), strict=True))
    assert out["logits"].shape == (BATCH, SEQ, VOCAB)
    for i in range(LAYERS):
        for kind in ("key", "value"):
            present = out[f"present.{i}.{kind}"]
            assert present.shape == (BATCH, KV_HEADS, PAST + SEQ, HEAD_DIM)
            # the cache is the past followed by the new entries
            np.testing.assert_array_equal(present[:, :, :PAST], feeds[f"past_key_values.{i}.{kind}"])
    assert np.isfinite(out["logits"]).all()


def test_every_dim_of_the_graph_interface_is_symbolic_except_model_sizes(model):
    declared = {vi.name: _declared(vi)[1] for vi in [*model.graph.input, *model.graph.output]}
    assert declared["input_ids"] == ("batch", "seq")
    assert declared["attention_mask"] == ("batch", "total_seq")
    assert declared["logits"] == ("batch", "seq", VOCAB)
    assert declared["past_key_values.0.key"] == ("batch", KV_HEADS, "past_seq", HEAD_DIM)
    assert declared["present.1.value"] == ("batch", KV_HEADS, "total_seq", HEAD_DIM)


def test_swiglu_mlp_groups_are_prunable_one_per_layer(model):
    deps = graphprune.analyze(model)
    mlp = [g for g in deps.prunable_groups() if g.unit == "mlp"]
    assert len(mlp) == LAYERS
    for i, g in enumerate(sorted(mlp, key=lambda g: g.label)):
        assert g.size == FFN
        weights = {(m.tensor, m.axis) for m in g.weights()}
        p = f"model.layers.{i}.mlp"
        assert {(f"{p}.gate_proj.weight", 1), (f"{p}.up_proj.weight", 1), (f"{p}.down_proj.weight", 0)} <= weights
    # nothing else is prunable: attention and the residual width touch the cache or the norms
    assert len(deps.prunable_groups()) == LAYERS


def test_groups_holding_the_cache_are_blocked_naming_it(model):
    deps = graphprune.analyze(model)
    holding = [g for g in deps.groups if any(m.tensor.startswith(CACHE) for m in g.members)]
    assert holding, "the query/key heads reach present.* through repeat_kv"
    for g in holding:
        assert not g.prunable
        cache = {m.tensor for m in g.members if m.tensor.startswith(CACHE)}
        assert any(any(t in str(r) for t in cache) and "graph" in str(r) for r in g.reasons), g.reasons


def test_key_and_value_projection_groups_are_blocked_naming_the_cache(model):
    deps = graphprune.analyze(model)
    for i in range(LAYERS):
        for proj, kind in (("k_proj", "key"), ("v_proj", "value")):
            g = deps.group_of(f"model.layers.{i}.self_attn.{proj}.weight", 1)
            assert not g.prunable
            assert any(f"present.{i}.{kind}" in str(r) or f"past_key_values.{i}.{kind}" in str(r) for r in g.reasons)


def test_mlp_pruning_validates_exactly(pruned):
    report = pruned.report
    assert report.passed
    assert report.exact is not None and report.exact.checked and report.exact.passed
    assert report.exact.skipped_groups == []
    assert report.params_after < report.params_before
    down = {i.name: i for i in pruned.model.graph.initializer}
    for i in range(LAYERS):
        assert down[f"model.layers.{i}.mlp.down_proj.weight"].dims == [FFN // 2, HIDDEN]


def test_mlp_pruning_keeps_every_declared_input_and_output_shape(model, pruned):
    for before, after in (
        (model.graph.input, pruned.model.graph.input),
        (model.graph.output, pruned.model.graph.output),
    ):
        assert [vi.name for vi in before] == [vi.name for vi in after]
        for a, b in zip(before, after, strict=True):
            assert _declared(a) == _declared(b), a.name


def test_generation_with_pruned_cache_matches_masked_original(model, pruned):
    reference = masked_reference(model, pruned.deps, pruned.plan)
    got, want = _generate(pruned.model), _generate(reference)
    original = _generate(model)
    assert len(got) == 3
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
    # pruning half the MLP changed the function: the comparison is against the masked model, not a no-op
    assert not np.allclose(got[0], original[0], rtol=1e-4, atol=1e-5)


def test_minimal_cache_concat_blocks_the_projection_by_the_graph_output():
    """The reduction of the test above: MatMul -> Concat([past, k], axis=1) with the axis symbolic."""
    w = onnx.numpy_helper.from_array(np.ones((4, 6), np.float32), "w")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("MatMul", ["x", "w"], ["k"]),
            onnx.helper.make_node("Concat", ["past", "k"], ["present"], axis=1),
        ],
        "cache_concat",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "s", 4]),
            onnx.helper.make_tensor_value_info("past", onnx.TensorProto.FLOAT, [1, "p", 6]),
        ],
        [onnx.helper.make_tensor_value_info("present", onnx.TensorProto.FLOAT, [1, "t", 6])],
        [w],
    )
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    group = graphprune.analyze(m).group_of("w", 1)
    assert not group.prunable
    assert any("present (graph output)" in str(r) or "past (graph input)" in str(r) for r in group.reasons), (
        group.reasons
    )


def test_mask_hides_padded_past_and_future_tokens(model):
    sess = _session(model)
    feeds = _prompt_feeds()
    base = sess.run(["logits"], feeds)[0]
    changed = dict(feeds)
    for i in range(LAYERS):  # row 1's first past position is padding
        for kind in ("key", "value"):
            cache = feeds[f"past_key_values.{i}.{kind}"].copy()
            cache[1, :, 0] += 5.0
            changed[f"past_key_values.{i}.{kind}"] = cache
    changed["input_ids"] = feeds["input_ids"].copy()
    changed["input_ids"][:, 1] = (feeds["input_ids"][:, 1] + 1) % VOCAB  # a later token
    after = sess.run(["logits"], changed)[0]
    np.testing.assert_allclose(after[1, 0], base[1, 0], rtol=1e-5, atol=1e-6)  # neither reaches row 1, token 0
    assert not np.allclose(after[1, 1], base[1, 1])  # the changed token itself does
