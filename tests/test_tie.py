"""Several files sharing weights prune with one plan (graphprune.tie), and still run together."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune
from graphprune import tie
from graphprune.validation.contract import masked_reference
from models.multifile import decoder_pair, encoder_decoder

SHARED = ("shared.ffn.up.weight", "shared.ffn.up.bias", "shared.ffn.down.weight")
RENAMED = tuple(n.replace("shared.", "decoder.shared_copy.") for n in SHARED)
NAMES = ["encoder.onnx", "decoder.onnx"]


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _kept_columns(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    """Which columns of ``original`` the pruned up-projection kept (each column is unique)."""
    return [int(np.flatnonzero((original == pruned[:, [j]]).all(axis=0))[0]) for j in range(pruned.shape[1])]


@pytest.fixture(scope="module", params=[False, True], ids=["by_name", "renamed"])
def pair(request):
    enc, dec = encoder_decoder(renamed=request.param)
    return request.param, enc, dec, tie.prune_many([enc, dec], names=NAMES, ratio=0.5, latency=False)


def test_a_tied_pair_removes_the_same_entries_of_every_shared_weight(pair):
    renamed, enc, dec, result = pair
    e, d = _weights(result.results[0].model), _weights(result.results[1].model)
    for a, b in zip(SHARED, RENAMED if renamed else SHARED, strict=True):
        assert e[a].shape == d[b].shape and np.array_equal(e[a], d[b]), (a, b)
    up = _weights(enc)[SHARED[0]]
    assert e[SHARED[0]].shape[1] == up.shape[1] // 2
    assert _kept_columns(up, e[SHARED[0]]) == _kept_columns(up, d[RENAMED[0] if renamed else SHARED[0]])


def test_each_file_of_a_tied_pair_validates_exactly(pair):
    for r in pair[3].results:
        assert r.report.passed and r.report.exact.checked and r.report.exact.passed
        assert r.report.exact.max_rel_diff is not None and r.report.exact.max_rel_diff < 1e-5
        assert r.report.flops_after < r.report.flops_before


def test_the_report_names_the_tied_group_in_each_file_and_how_it_matched(pair):
    renamed, _, _, result = pair
    for r in result.results:
        tied = [t for t in r.report.to_dict()["tied"] if t["prunable"]]
        assert len(tied) == 1
        assert tied[0]["anchors"] == {
            "encoder.onnx": ["shared.ffn.up.weight[1]"],
            "decoder.onnx": [f"{'decoder.shared_copy' if renamed else 'shared'}.ffn.up.weight[1]"],
        }
        assert tied[0]["matched_by"] == ["hash" if renamed else "name"]
        assert tied[0]["size"] == 32 and tied[0]["removed"] == 16
        # the embedding (the residual width, a graph output of the encoder) is tied but stays whole
        blocked = [t for t in r.report.to_dict()["tied"] if not t["prunable"]]
        assert len(blocked) == 1 and "graph output" in blocked[0]["reason"]


def test_the_pruned_pair_runs_end_to_end_like_the_masked_pair(pair):
    _, enc, dec, result = pair
    rng = np.random.default_rng(1)
    ids = {"input_ids": rng.integers(0, 32, (1, 6)).astype(np.int64)}
    dec_ids = rng.integers(0, 32, (1, 5)).astype(np.int64)
    refs = [masked_reference(m, r.deps, r.plan) for m, r in zip((enc, dec), result.results, strict=True)]
    pruned = [r.model for r in result.results]

    def pipeline(e, d):
        states = _run(e, ids)["encoder_hidden_states"]
        return _run(d, {"decoder_input_ids": dec_ids, "encoder_hidden_states": states})["logits"]

    got, want, original = pipeline(*pruned), pipeline(*refs), pipeline(enc, dec)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, original, rtol=1e-3, atol=1e-4)  # the pruning did change the function


def test_untied_pruning_of_the_same_pair_breaks_the_sharing():
    """Without tie each file is pruned alone: the decoder's residual width reaches no graph
    input or output there, so its copy of the shared weights loses rows the encoder's keeps."""
    enc, dec = encoder_decoder()
    result = tie.prune_many([enc, dec], names=NAMES, tie=False, latency=False)
    assert result.tying is None and any("pruned independently" in n for n in result.notes)
    e, d = (_weights(r.model)[SHARED[0]] for r in result.results)
    assert e.shape == (16, 16) and d.shape == (8, 16)
    assert all(r.report.passed for r in result.results)  # each file alone is fine: only the pair is not


def test_three_files_tie_through_names_and_hashes_at_once():
    """An encoder, its decoder and a renamed copy of that decoder: the shared MLP is one tied
    group over three files, the decoders' own MLP one over two."""
    enc, dec = encoder_decoder()
    _, copy = encoder_decoder(renamed=True)
    names = [*NAMES, "decoder_copy.onnx"]
    result = tie.prune_many([enc, dec, copy], names=names, latency=False)
    assert all(r.report.passed and r.report.exact.passed for r in result.results)
    by_files = {tuple(sorted(t["anchors"])): t for t in result.tied if t["prunable"]}
    assert by_files[tuple(sorted(names))]["removed"] == 16
    assert by_files[("decoder.onnx", "decoder_copy.onnx")]["removed"] == 16
    w = [_weights(r.model) for r in result.results]
    assert np.array_equal(w[0][SHARED[0]], w[1][SHARED[0]]) and np.array_equal(w[1][SHARED[0]], w[2][RENAMED[0]])
    assert np.array_equal(w[1]["decoder.ffn.down.weight"], w[2]["decoder.ffn.down.weight"])


def test_same_name_with_other_values_is_not_tied():
    enc, _ = encoder_decoder(seed=0)
    _, dec = encoder_decoder(seed=5)  # same names, other values
    deps = tie.analyze_all([enc, dec])
    tying = tie.find_ties(deps, NAMES)
    assert tying.groups == []
    assert any("shared.ffn.up.weight with other values" in n for n in tying.notes)


def test_a_constant_weight_is_not_matched_by_its_hash():
    """A zero bias in both files would match by content alone: it is not tied."""
    enc, dec = encoder_decoder(renamed=True)
    for m, name in ((enc, "shared.ffn.up.bias"), (dec, "decoder.shared_copy.ffn.up.bias")):
        t = next(t for t in m.graph.initializer if t.name == name)
        t.CopyFrom(onnx.numpy_helper.from_array(np.zeros(32, np.float32), name))
    links, _ = tie.shared_weights(tie.analyze_all([enc, dec]), NAMES)
    matched = {(a, b) for _, a, _, b, _ in links}
    assert ("shared.ffn.up.weight", "decoder.shared_copy.ffn.up.weight") in matched
    assert not any("bias" in a for a, _ in matched)


def _two_matmuls(w1: np.ndarray, w2: np.ndarray, name: str) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["x", f"{name}.1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", f"{name}.2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w2.shape[1]])],
        [numpy_helper.from_array(w1, f"{name}.1"), numpy_helper.from_array(w2, f"{name}.2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_equal_bytes_in_another_shape_are_not_matched_by_hash():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 12)).astype(np.float32), rng.standard_normal((12, 8)).astype(np.float32)
    same = _two_matmuls(w1, w2, "a"), _two_matmuls(w1, w2, "b")
    reshaped = _two_matmuls(w1, w2, "a"), _two_matmuls(w2.reshape(8, 12), w1.reshape(12, 8), "b")
    links, _ = tie.shared_weights(tie.analyze_all(same), NAMES)
    assert sorted((a, b) for _, a, _, b, _ in links) == [("a.1", "b.1"), ("a.2", "b.2")]
    links, _ = tie.shared_weights(tie.analyze_all(reshaped), NAMES)
    assert links == []


def test_a_tied_group_blocked_in_one_file_stays_whole_in_both():
    """The decoder reads the shared up-projection's output as its graph output too: that file
    blocks the group, so the encoder, where it is prunable, keeps it whole as well."""
    enc, dec = encoder_decoder()
    dec.graph.output.append(onnx.helper.make_tensor_value_info("shared.ffn.h2", onnx.TensorProto.FLOAT, None))
    result = tie.prune_many([enc, dec], names=NAMES, latency=False)
    tied = [t for t in result.tying.groups if any("shared.ffn.up.weight[1]" in s for s in t.shared)]
    assert len(tied) == 1 and not tied[0].prunable and "decoder.onnx" in tied[0].reason
    e = _weights(result.results[0].model)
    assert e["shared.ffn.up.weight"].shape == (16, 32)
    assert e["encoder.ffn.up.weight"].shape == (16, 16)  # the encoder's own MLP still prunes
    assert result.results[0].report.passed


def test_protecting_a_shared_weight_in_one_file_keeps_the_tied_group_whole_in_both():
    enc, dec = encoder_decoder(renamed=True)
    result = tie.prune_many([enc, dec], names=NAMES, ignore=["decoder.shared_copy.ffn.up.weight"], latency=False)
    tied = next(t for t in result.tied if "encoder.onnx:shared.ffn.up.weight[1]" in t["shared"])
    assert not tied["prunable"] and "--ignore" in tied["reason"] and tied["removed"] == 0
    assert _weights(result.results[0].model)["shared.ffn.up.weight"].shape == (16, 32)
    assert _weights(result.results[0].model)["encoder.ffn.up.weight"].shape == (16, 16)


def test_an_ignore_pattern_no_file_matches_is_an_error():
    enc, dec = encoder_decoder()
    with pytest.raises(graphprune.InputError, match="--ignore nowhere"):
        tie.prune_many([enc, dec], names=NAMES, ignore=["nowhere"], latency=False)


LAYERS, HIDDEN, HEADS, KV, FFN = 2, 32, 4, 2, 64
PAST, SEQ = 3, 2


def _decoder_shapes(with_past: bool) -> dict:
    total = PAST + SEQ if with_past else SEQ
    shapes = {"input_ids": [1, SEQ], "attention_mask": [1, total], "position_ids": [1, SEQ]}
    if with_past:
        for i in range(LAYERS):
            for kind in ("key", "value"):
                shapes[f"past_key_values.{i}.{kind}"] = [1, KV, PAST, HIDDEN // HEADS]
    return shapes


def test_a_decoder_and_its_decoder_with_past_prune_as_one_model():
    """optimum's pair: the first step runs the decoder, the next ones the decoder with past on
    its cache; pruned with tie, the pair generates like the masked reference of one model."""
    first, rest = decoder_pair(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV, ffn=FFN)
    result = tie.prune_many(
        [first, rest],
        names=["decoder_model.onnx", "decoder_with_past_model.onnx"],
        input_shapes=[_decoder_shapes(False), _decoder_shapes(True)],
        latency=False,
    )
    for r in result.results:
        assert r.report.passed and r.report.exact.checked and r.report.exact.passed
    w0, w1 = _weights(result.results[0].model), _weights(result.results[1].model)
    assert set(w1) - set(w0) == set() and set(w0) - set(w1) == {"model.mask.no_past"}
    for name, w in w1.items():
        assert np.array_equal(w, w0[name]), name
    prunable = [t for t in result.tying.groups if t.prunable]
    assert len(prunable) == LAYERS and all(len(t.removed) == FFN // 2 for t in prunable)
    # generation: the first file on the prompt, the second on each next token with the cache
    refs = [masked_reference(m, r.deps, r.plan) for m, r in zip((first, rest), result.results, strict=True)]
    got = _generate(*(r.model for r in result.results))
    want = _generate(*refs)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[0], _generate(first, rest)[0], rtol=1e-3, atol=1e-4)  # pruning changed it


def _generate(first: onnx.ModelProto, rest: onnx.ModelProto, steps: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, 64, (1, SEQ)).astype(np.int64),
        "attention_mask": np.ones((1, SEQ), np.int64),
        "position_ids": np.arange(SEQ, dtype=np.int64)[None],
    }
    out = _run(first, feeds)
    logits = [out["logits"]]
    for _ in range(steps - 1):
        nxt = logits[-1][:, -1].argmax(-1).astype(np.int64)[:, None]
        n = feeds["attention_mask"].shape[1]
        feeds = {
            "input_ids": nxt,
            "attention_mask": np.ones((1, n + 1), np.int64),
            "position_ids": np.array([[n]], np.int64),
            **{f"past_key_values.{k[len('present.') :]}": v for k, v in out.items() if k.startswith("present.")},
        }
        out = _run(rest, feeds)
        logits.append(out["logits"])
    return logits


def test_prune_many_is_public():
    assert graphprune.prune_many is tie.prune_many
