"""KV heads of a decoder with a KV cache (issue 12): ``allow_io_change`` / ``--allow-io-change``
lets the heads shrink past and present together, ``uniform_heads`` / ``--uniform-heads`` keeps
one head count in every layer.

The model is :func:`models.kv_decoder.kv_decoder` with grouped-query attention (query head
``h`` reads KV head ``h // (heads // kv_heads)``): a pruned KV head takes its query heads along.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphprune
from graphprune.analysis.dependency import analyze
from graphprune.analysis.iochange import release_io
from graphprune.errors import InputError
from graphprune.validation.contract import masked_reference
from models.kv_decoder import kv_decoder

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 2, 32, 4, 2, 64, 64
HEAD_DIM = HIDDEN // HEADS
BATCH, PAST, SEQ = 2, 3, 2


def _cache_names(layers: int = LAYERS) -> list[str]:
    return [
        f"{p}.{i}.{kind}" for i in range(layers) for p in ("past_key_values", "present") for kind in ("key", "value")
    ]


def _input_shapes(layers: int = LAYERS, kv_heads: int = KV_HEADS, head_dim: int = HEAD_DIM) -> dict[str, list[int]]:
    shapes = {"input_ids": [BATCH, SEQ], "attention_mask": [BATCH, PAST + SEQ], "position_ids": [BATCH, SEQ]}
    for i in range(layers):
        for kind in ("key", "value"):
            shapes[f"past_key_values.{i}.{kind}"] = [BATCH, kv_heads, PAST, head_dim]
    return shapes


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return kv_decoder(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN, seed=0)


@pytest.fixture(scope="module")
def pruned(model) -> graphprune.api.PruneResult:
    return graphprune.prune(
        model,
        ratio=0.5,
        units=("heads",),
        allow_io_change=True,
        uniform_heads=True,
        latency=False,
        input_shapes=_input_shapes(),
    )


def _declared(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def _prompt(
    heads: np.ndarray | None = None, seed: int = 0, *, seq: int = SEQ, pad: bool = True, head_dim: int = HEAD_DIM
) -> dict[str, np.ndarray]:
    """Prompt feeds of ``seq`` tokens after a past of 3 (``pad``: row 1's first past position is
    padding); ``heads``: the KV heads the cache keeps (all by default)."""
    rng = np.random.default_rng(seed)
    mask = np.ones((BATCH, PAST + seq), np.int64)
    mask[1, 0] = 0 if pad else 1
    feeds = {
        "input_ids": rng.integers(0, VOCAB, (BATCH, seq)).astype(np.int64),
        "attention_mask": mask,
        "position_ids": np.tile(np.arange(PAST, PAST + seq, dtype=np.int64), (BATCH, 1)),
    }
    for i in range(LAYERS):
        for kind in ("key", "value"):
            cache = rng.standard_normal((BATCH, KV_HEADS, PAST, head_dim)).astype(np.float32)
            feeds[f"past_key_values.{i}.{kind}"] = cache if heads is None else cache[:, heads[i]]
    return feeds


def _generate(m: onnx.ModelProto, feeds: dict[str, np.ndarray], steps: int = 3) -> list[dict[str, np.ndarray]]:
    """Greedy decoding with the model's own cache: each step feeds the argmax token, ``present.*``
    as the next past, attention_mask and position_ids grown by one; every step's outputs."""
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = []
    for _ in range(steps):
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        outs.append(out)
        nxt = out["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        feeds = {
            "input_ids": nxt,
            "attention_mask": np.concatenate([feeds["attention_mask"], np.ones((BATCH, 1), np.int64)], axis=1),
            "position_ids": feeds["position_ids"][:, -1:] + 1,
            **{f"past_key_values.{k[len('present.') :]}": v for k, v in out.items() if k.startswith("present.")},
        }
    return outs


def _kept_heads(result) -> np.ndarray:
    """Per layer, the KV heads the pruned cache keeps (from the report's io_changes)."""
    changes = {c["name"]: c for c in result.report.prune["io_changes"]}
    return np.array(
        [np.setdiff1d(np.arange(KV_HEADS), changes[f"past_key_values.{i}.key"]["removed"]) for i in range(LAYERS)]
    )


def test_without_allow_io_change_the_kv_heads_stay_blocked(model):
    with pytest.raises(InputError, match="no prunable group of that unit"):
        graphprune.prune(model, units=("heads",), latency=False, input_shapes=_input_shapes())


def test_release_frees_only_the_head_groups_whose_cache_is_paired(model):
    deps = analyze(model)
    released = release_io(deps)
    heads = [g for g in deps.groups if g.unit == "heads"]
    assert sorted(released.groups) == sorted(g.id for g in heads) and len(heads) == LAYERS
    for g in heads:
        i = g.label.split(".")[2]
        assert sorted(map(tuple, g.facts["io"])) == [
            (f"past_key_values.{i}.key", f"present.{i}.key"),
            (f"past_key_values.{i}.value", f"present.{i}.value"),
        ]
    # the logits' group reaches a graph output with no past: it stays blocked, and a note says so
    logits = deps.group_of("lm_head.weight", 1)
    assert not logits.prunable and logits.id in released.unpaired
    assert any("--allow-io-change" in n and "logits" in n for n in deps.notes)
    # the head_dim group reaches the cache too, but RoPE and the attention products block it
    head_dim = deps.group_of("past_key_values.0.key", 3)
    assert not head_dim.prunable and head_dim.id not in released.groups


def test_kv_heads_prune_exactly_and_the_report_lists_the_changed_cache(model, pruned):
    report = pruned.report
    assert report.passed and report.exact.checked and report.exact.passed
    assert report.exact.max_rel_diff is not None and report.exact.max_rel_diff <= 1e-4
    changes = report.prune["io_changes"]
    assert sorted(c["name"] for c in changes) == sorted(_cache_names())
    for c in changes:
        assert c["axis"] == 1 and len(c["removed"]) == 1
        seq = "past_seq" if c["kind"] == "input" else "total_seq"
        assert c["before"] == ["batch", KV_HEADS, seq, HEAD_DIM]
        assert c["after"] == ["batch", KV_HEADS - 1, seq, HEAD_DIM]
    assert report.prune["num_key_value_heads"] == 1
    assert report.prune["num_attention_heads"] == HEADS // 2
    # the JSON report carries them, and the table says so
    as_json = report.to_dict()
    assert as_json["num_key_value_heads"] == 1 and len(as_json["io_changes"]) == 4 * LAYERS
    assert "graph inputs/outputs changed: 8" in report.table()
    assert "num_key_value_heads 1" in report.table()


def test_pruned_model_declares_its_smaller_cache_and_keeps_the_rest(model, pruned):
    before = {vi.name: _declared(vi) for vi in [*model.graph.input, *model.graph.output]}
    after = {vi.name: _declared(vi) for vi in [*pruned.model.graph.input, *pruned.model.graph.output]}
    assert list(before) == list(after)
    for name in before:
        if name in _cache_names():
            assert (
                after[name][1] == KV_HEADS - 1
                and after[name][:1] + after[name][2:] == before[name][:1] + before[name][2:]
            )
        else:
            assert after[name] == before[name], name
    weights = {t.name: t.dims for t in pruned.model.graph.initializer}
    for i in range(LAYERS):
        p = f"model.layers.{i}.self_attn"
        assert weights[f"{p}.k_proj.weight"] == [HIDDEN, HEAD_DIM]  # one KV head left
        assert weights[f"{p}.q_proj.weight"] == [HIDDEN, 2 * HEAD_DIM]  # with its two query heads
        assert weights[f"{p}.o_proj.weight"] == [2 * HEAD_DIM, HIDDEN]


def test_generation_with_the_smaller_cache_matches_the_masked_original(model, pruned):
    """The pruned model decodes 3 steps with its own cache; the reference is the original with
    the removed heads' projections masked, decoding with its full cache."""
    kept = _kept_heads(pruned)
    got = _generate(pruned.model, _prompt(kept))
    want = _generate(masked_reference(model, pruned.deps, pruned.plan), _prompt())
    original = _generate(model, _prompt())
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g["logits"], w["logits"], rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        for i in range(LAYERS):
            for kind in ("key", "value"):
                name = f"present.{i}.{kind}"
                assert g[name].shape == (BATCH, 1, PAST + SEQ + step, HEAD_DIM)
                np.testing.assert_allclose(g[name], w[name][:, kept[i]], rtol=1e-5, atol=1e-6, err_msg=name)
    # removing half the KV heads changed the function: the match is with the masked model
    assert not np.allclose(got[0]["logits"], original[0]["logits"], rtol=1e-4, atol=1e-5)


def test_uniform_heads_evens_an_uneven_global_allocation():
    """Layer 0 has one dominant KV head, so a global threshold takes more of its others; with
    uniform heads every layer keeps the same count, each losing its own lowest-scoring heads."""
    layers, heads, kv_heads, hidden = 3, 8, 4, 32
    d = hidden // heads
    m = kv_decoder(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=32, seed=0)
    per_q = heads // kv_heads
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        if t.name.startswith("model.layers.0.self_attn.") and t.name.endswith("proj.weight"):
            if "o_proj" in t.name:
                a[: per_q * d] *= 10
            elif "q_proj" in t.name:
                a[:, : per_q * d] *= 10
            else:
                a[:, :d] *= 10
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    opts = dict(
        ratio=0.5,
        global_threshold=True,
        units=("heads",),
        allow_io_change=True,
        latency=False,
        input_shapes=_input_shapes(layers, kv_heads, d),
    )
    uneven = graphprune.prune(m, **opts)
    counts = [len(uneven.plan.removed(g)) for g in uneven.deps.groups if g.unit == "heads"]
    assert len(set(counts)) > 1, counts  # the premise: global allocation differs per layer
    even = graphprune.prune(m, **opts, uniform_heads=True)
    removed = {g.label: even.plan.removed(g) for g in even.deps.groups if g.unit == "heads"}
    k = round(kv_heads - np.mean(counts))
    assert {len(r) for r in removed.values()} == {kv_heads - k}
    assert even.report.prune["num_key_value_heads"] == k
    assert even.report.prune["num_attention_heads"] == k * per_q
    assert even.report.passed and even.report.exact.passed
    # layer 0 keeps its dominant head 0
    assert 0 not in removed["model.layers.0.self_attn.q_proj.weight[1]"]
    cache = {c["name"]: c["after"] for c in even.report.prune["io_changes"]}
    assert {tuple(v) for n, v in cache.items() if n.startswith("past")} == {("batch", k, "past_seq", d)}


def test_uniform_heads_refuses_a_plan_with_uneven_counts(model, pruned):
    plan = pruned.plan.to_json(pruned.deps)
    plan["groups"] = plan["groups"][:1]  # heads removed from layer 0 only
    with pytest.raises(InputError, match="uniform-heads"):
        graphprune.prune(
            model, plan=plan, allow_io_change=True, uniform_heads=True, latency=False, input_shapes=_input_shapes()
        )


def test_a_plan_that_changes_the_cache_needs_allow_io_change(model, pruned):
    plan = pruned.plan.to_json(pruned.deps)
    assert plan["io_changes"] == sorted(_cache_names())
    with pytest.raises(InputError, match="needs --allow-io-change"):
        graphprune.prune(model, plan=plan, latency=False, input_shapes=_input_shapes())
    again = graphprune.prune(model, plan=plan, allow_io_change=True, latency=False, input_shapes=_input_shapes())
    assert again.report.exact.passed and len(again.report.prune["io_changes"]) == 4 * LAYERS


def test_validate_reads_the_stored_plan_and_its_changed_cache(model, pruned):
    report = graphprune.validate(model, pruned.model, latency=False, input_shapes=_input_shapes())
    assert report.passed and report.exact.checked and report.exact.passed


def test_a_pipeline_of_passes_refuses_io_changes(model):
    step = graphprune.FilterPruning(units=("heads",), allow_io_change=True)
    mlp = graphprune.FilterPruning(units=("mlp",))
    with pytest.raises(InputError, match="allow-io-change"):
        graphprune.api.run_passes(model, [step, mlp], latency=False, input_shapes=_input_shapes())


def test_an_output_that_is_not_carried_state_stays_blocked():
    """MatMul -> Concat(past, k) -> present is a cache; the same projection also written out as
    a graph output of its own has no past to pair with, so its group stays blocked."""
    w = numpy_helper.from_array(np.ones((4, 6), np.float32), "w")

    def cache_model(extra_output: bool) -> onnx.ModelProto:
        outputs = [onnx.helper.make_tensor_value_info("present", onnx.TensorProto.FLOAT, [1, "t", 6])]
        if extra_output:
            outputs.append(onnx.helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [1, "s", 6]))
        graph = onnx.helper.make_graph(
            [
                onnx.helper.make_node("MatMul", ["x", "w"], ["k"]),
                onnx.helper.make_node("Concat", ["past", "k"], ["present"], axis=1),
            ],
            "cache",
            [
                onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "s", 4]),
                onnx.helper.make_tensor_value_info("past", onnx.TensorProto.FLOAT, [1, "p", 6]),
            ],
            outputs,
            [w],
        )
        return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])

    deps = analyze(cache_model(extra_output=False))
    assert release_io(deps).groups == [deps.group_of("w", 1).id]
    deps = analyze(cache_model(extra_output=True))
    released = release_io(deps)
    assert released.groups == [] and not deps.group_of("w", 1).prunable
    assert released.unpaired[deps.group_of("w", 1).id] == ["k"]


def test_cli_prunes_kv_heads_with_the_flags_and_validate_passes(tmp_path, model, run_cli):
    src, out, rep = tmp_path / "kv.onnx", tmp_path / "kv.pruned.onnx", tmp_path / "report.json"
    onnx.save(model, src)
    shapes = [a for k, v in _input_shapes().items() for a in ("--input-shape", f"{k}:{','.join(map(str, v))}")]
    code, _, err = run_cli("prune", src, "-o", out, "--unit", "heads", "--no-latency", *shapes)
    assert code == 2 and "no prunable group" in err and not out.exists()
    flags = ["--allow-io-change", "--uniform-heads", "--report", rep]
    code, stdout, err = run_cli("prune", src, "-o", out, "--unit", "heads", "--no-latency", *flags, *shapes)
    assert code == 0, err
    assert "graph inputs/outputs changed: 8" in stdout and "num_key_value_heads 1" in stdout
    report = json.loads(rep.read_text())
    assert report["num_key_value_heads"] == 1 and report["exact"]["passed"]
    assert sorted(c["name"] for c in report["io_changes"]) == sorted(_cache_names())
    saved = onnx.load(out)
    assert _declared(next(vi for vi in saved.graph.input if vi.name == "past_key_values.1.value"))[1] == 1
    code, stdout, err = run_cli("validate", src, out, "--no-latency", *shapes)
    assert code == 0, err
    assert "exactness vs masked reference: passed" in stdout
    assert "graph inputs/outputs changed: 8" in stdout and "groups:" not in stdout


# ------------------------------------------------------------------ fused GroupQueryAttention
FUSED_HIDDEN = 64  # onnxruntime's rotary GroupQueryAttention wants head_dim a multiple of 16
FUSED_HEAD_DIM = FUSED_HIDDEN // HEADS


@pytest.fixture(scope="module")
def fused_pruned() -> tuple[onnx.ModelProto, graphprune.api.PruneResult]:
    m = kv_decoder(layers=LAYERS, hidden=FUSED_HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN, seed=0, fused=True)
    shapes = _input_shapes(head_dim=FUSED_HEAD_DIM)
    shapes.update(input_ids=[BATCH, 1], position_ids=[BATCH, 1], attention_mask=[BATCH, PAST + 1])
    result = graphprune.prune(
        m, ratio=0.5, units=("heads",), allow_io_change=True, uniform_heads=True, latency=False, input_shapes=shapes
    )
    return m, result


def test_fused_decoder_computes_what_the_unfused_one_does():
    """Same arguments, same weights: GroupQueryAttention (rotary inside) gives the unfused
    graph's logits and cache, one new token per row after an unpadded past."""
    args = dict(layers=LAYERS, hidden=FUSED_HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN, seed=0)
    fused, unfused = kv_decoder(**args, fused=True), kv_decoder(**args)
    assert [n.op_type for n in fused.graph.node].count("GroupQueryAttention") == LAYERS
    onnx.checker.check_model(fused, full_check=True)
    feeds = _prompt(seq=1, pad=False, head_dim=FUSED_HEAD_DIM)
    got, want = _generate(fused, feeds), _generate(unfused, feeds)
    for g, w in zip(got, want, strict=True):
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_fused_gqa_kv_heads_prune_exactly_and_rewrite_both_head_counts(fused_pruned):
    model, result = fused_pruned
    report = result.report
    assert report.passed and report.exact.checked and report.exact.passed
    assert report.prune["num_key_value_heads"] == 1 and report.prune["num_attention_heads"] == HEADS // 2
    assert sorted(c["name"] for c in report.prune["io_changes"]) == sorted(_cache_names())
    for node in result.model.graph.node:
        if node.op_type == "GroupQueryAttention":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert (attrs["num_heads"], attrs["kv_num_heads"]) == (HEADS // 2, 1)
    weights = {t.name: t.dims for t in result.model.graph.initializer}
    assert weights["model.layers.0.self_attn.q_proj.weight"] == [FUSED_HIDDEN, 2 * FUSED_HEAD_DIM]
    assert weights["model.layers.0.self_attn.k_proj.weight"] == [FUSED_HIDDEN, FUSED_HEAD_DIM]
    # GroupQueryAttention's own MACs are counted: 2 * B * S * T * num_heads * head_dim per layer
    assert report.flops_before - report.flops_after > LAYERS * 2 * (PAST + 1) * (HEADS // 2) * FUSED_HEAD_DIM


def test_fused_gqa_generation_with_the_smaller_cache_matches_the_masked_original(fused_pruned):
    model, result = fused_pruned
    kept = _kept_heads(result)
    got = _generate(result.model, _prompt(kept, seq=1, pad=False, head_dim=FUSED_HEAD_DIM))
    want = _generate(
        masked_reference(model, result.deps, result.plan), _prompt(seq=1, pad=False, head_dim=FUSED_HEAD_DIM)
    )
    original = _generate(model, _prompt(seq=1, pad=False, head_dim=FUSED_HEAD_DIM))
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g["logits"], w["logits"], rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        for i in range(LAYERS):
            name = f"present.{i}.value"
            assert g[name].shape == (BATCH, 1, PAST + 1 + step, FUSED_HEAD_DIM)
            np.testing.assert_allclose(g[name], w[name][:, kept[i]], rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(got[0]["logits"], original[0]["logits"], rtol=1e-4, atol=1e-5)


def test_inspect_says_which_groups_allow_io_change_would_free(model, tiny_model_bytes):
    from graphprune.present.inspection import describe

    notes = describe(analyze(model))["notes"]
    assert any(f"{LAYERS} groups are blocked only by graph inputs/outputs paired" in n for n in notes), notes
    # a model whose graph IO blocks nothing paired says nothing of it
    cnn = describe(analyze(onnx.load_from_string(tiny_model_bytes)))["notes"]
    assert not any("--allow-io-change" in n for n in cnn)


def test_compensated_kv_heads_stay_exact_and_recover_fidelity(model, tmp_path):
    """lstsq refits o_proj on calibration data (the compensated original is re-analysed, and the
    plan's io_changes re-allow the cache there): exact against the compensated reference, and
    closer to the original than the uncompensated cut."""
    rng = np.random.default_rng(1)
    n = 8
    data = {
        "input_ids": rng.integers(0, VOCAB, (n, SEQ)).astype(np.int64),
        "attention_mask": np.ones((n, PAST + SEQ), np.int64),
        "position_ids": np.tile(np.arange(PAST, PAST + SEQ, dtype=np.int64), (n, 1)),
    }
    for i in range(LAYERS):
        for kind in ("key", "value"):
            data[f"past_key_values.{i}.{kind}"] = rng.standard_normal((n, KV_HEADS, PAST, HEAD_DIM)).astype(np.float32)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **data)
    opts = dict(ratio=0.5, units=("heads",), allow_io_change=True, latency=False, calib=calib, batch_size=4)
    plain = graphprune.prune(model, **opts)
    refit = graphprune.prune(model, **opts, compensate="lstsq")
    assert refit.report.passed and refit.report.exact.checked and refit.report.exact.passed
    assert len(refit.report.prune["io_changes"]) == 4 * LAYERS
    assert refit.report.fidelity.cosine > plain.report.fidelity.cosine
    assert refit.report.fidelity.data == str(calib) and refit.report.fidelity.samples == n  # all of it
    # validate on the same data: the pruned model reads the data's cache at its kept heads
    again = graphprune.validate(model, plain.model, data=calib, latency=False, batch_size=4)
    assert again.passed and again.exact.passed and again.fidelity.samples == n
    assert abs(again.fidelity.cosine - plain.report.fidelity.cosine) < 1e-6
    # a compensated model has no exact reference here, but its stored plan still says how to feed it
    refit_again = graphprune.validate(model, refit.model, data=calib, latency=False, batch_size=4)
    assert refit_again.passed and not refit_again.exact.checked and refit_again.runtime["passed"]
    assert abs(refit_again.fidelity.cosine - refit.report.fidelity.cosine) < 1e-6


def test_uniform_heads_keeps_every_head_when_one_layer_cannot_lose_any(model):
    result = graphprune.prune(
        model,
        ratio=0.5,
        units=("heads", "mlp"),
        ignore=["model.layers.1.self_attn.q_proj.weight"],
        allow_io_change=True,
        uniform_heads=True,
        latency=False,
        input_shapes=_input_shapes(),
    )
    heads = [g for g in result.deps.groups if g.unit == "heads"]
    assert len(heads) == LAYERS and all(len(result.plan.removed(g)) == 0 for g in heads)
    assert result.report.prune["num_key_value_heads"] == KV_HEADS
    assert "cannot lose heads" in result.report.prune["uniform_heads"]
    assert result.report.prune["io_changes"] == []  # the MLP widths went, the cache did not change
    assert result.report.passed and result.plan.total_removed == LAYERS * FFN // 2


@pytest.mark.parametrize("repeat", ["expand_shape", "tile"])
def test_other_repeat_kv_idioms_prune_kv_heads_and_decode_like_the_masked_original(repeat):
    """repeat_kv as Expand to a shape built at run time (its KV count is a constant inside the
    Concat) or as Tile: the same KV-head units, the same exact cut, the same 3-step decoding."""
    m = kv_decoder(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN, seed=0, repeat=repeat)
    assert any(n.op_type == ("Tile" if repeat == "tile" else "Expand") for n in m.graph.node)
    result = graphprune.prune(
        m,
        ratio=0.5,
        units=("heads",),
        allow_io_change=True,
        uniform_heads=True,
        latency=False,
        input_shapes=_input_shapes(),
    )
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    assert result.report.prune["num_key_value_heads"] == 1
    kept = _kept_heads(result)
    got = _generate(result.model, _prompt(kept))
    want = _generate(masked_reference(m, result.deps, result.plan), _prompt())
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g["logits"], w["logits"], rtol=1e-4, atol=1e-5, err_msg=f"step {step}")


def test_kv_heads_pruned_twice_validate_against_the_first_original():
    """Two prunes, 4 -> 3 -> 2 KV heads per layer: validate ORIGINAL LATEST
    composes both plans (their io_changes too) into one masked reference."""
    layers, heads, kv_heads, hidden = 2, 8, 4, 32
    d = hidden // heads
    m = kv_decoder(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=32, seed=0)
    first = graphprune.prune(
        m, ratio=0.25, units=("heads",), allow_io_change=True, latency=False, input_shapes=_input_shapes(layers, 4, d)
    )
    second = graphprune.prune(
        first.model,
        ratio=0.5,
        units=("heads",),
        allow_io_change=True,
        latency=False,
        input_shapes=_input_shapes(layers, 3, d),
    )
    assert first.report.passed and second.report.passed
    report = graphprune.validate(m, second.model, latency=False, input_shapes=_input_shapes(layers, 4, d))
    assert report.passed and report.exact.checked and report.exact.passed
    assert "through 2 pruning steps" in report.exact.note
    changes = {c["name"]: c for c in report.to_dict()["io_changes"]}
    assert changes["present.1.value"]["before"][1] == 4 and changes["present.1.value"]["after"][1] == 2
    assert len(changes["present.1.value"]["removed"]) == 2


def test_gqa_with_attention_bias_and_head_sink_prunes_them_with_their_kv_head():
    """One GroupQueryAttention of fixed shapes (a past of 3, one new token: the cache grows from
    3 to 4, still paired) with a constant attention bias [1, heads, 1, 4] and a head sink [heads]:
    a KV head takes its query heads' bias rows and sinks along, exactly."""
    from onnx import TensorProto, helper

    heads, kv, d, hidden, past = 4, 2, 16, 32, 3
    rng = np.random.default_rng(0)

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [
        w("wq", (hidden, heads * d)), w("wk", (hidden, kv * d)), w("wv", (hidden, kv * d)),
        w("wo", (heads * d, hidden)), w("bias", (1, heads, 1, past + 1)), w("sink", (heads,)),
        numpy_helper.from_array(np.array([past], np.int32), "seqlens"),
        numpy_helper.from_array(np.array(past + 1, np.int32), "total"),
    ]  # fmt: skip
    gqa_inputs = ["q", "k", "v", "pk", "pv", "seqlens", "total", "", "", "", "bias", "sink"]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node(
            "GroupQueryAttention", gqa_inputs, ["a", "prk", "prv"],
            domain="com.microsoft", num_heads=heads, kv_num_heads=kv, smooth_softmax=1,
        ),
        helper.make_node("MatMul", ["a", "wo"], ["y"]),
    ]  # fmt: skip
    cache = [1, kv, past, d]
    graph = helper.make_graph(
        nodes,
        "gqa",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
            for n, s in (("x", [1, 1, hidden]), ("pk", cache), ("pv", cache))
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, hidden]),
            *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, kv, past + 1, d]) for n in ("prk", "prv")),
        ],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    group = analyze(m).group_of("wq", 1)
    assert group.size == kv and group.facts["query_heads_per_unit"] == heads // kv
    members = {(x.tensor, x.axis): x.indices.tolist() for x in group.members}
    assert members[("bias", 1)] == [[0, 1], [2, 3]] and members[("sink", 0)] == [[0, 1], [2, 3]]
    result = graphprune.prune(m, ratio=0.5, units=("heads",), allow_io_change=True, latency=False)
    assert result.report.passed and result.report.exact.checked and result.report.exact.passed
    weights = {t.name: t.dims for t in result.model.graph.initializer}
    assert weights["bias"] == [1, heads // 2, 1, past + 1] and weights["sink"] == [heads // 2]
    assert {c["name"]: c["after"] for c in result.report.prune["io_changes"]}["prk"] == [1, 1, past + 1, d]
