"""The search space: seeded design, refinement, space files, the constrained front (issue 14)."""

from __future__ import annotations

import json

import pytest

from graphprune.errors import InputError
from graphprune.search.front import feasible, pareto
from graphprune.search.space import DESIGN_SIZE, Space, design, load_space, normalize, refine, trial_id
from graphprune.search.store import Trial


def test_design_is_deterministic_per_seed_and_distinct():
    a, b, c = design(Space(), 0), design(Space(), 0), design(Space(), 1)
    assert a == b and a != c
    assert len(a) == DESIGN_SIZE and len({trial_id(x) for x in a}) == DESIGN_SIZE
    # the README's recipe comes first
    assert a[0]["pass"] == "filter" and a[0]["criterion"] == "l2" and a[0]["compensate"] == "lstsq"


def test_refinement_moves_a_front_member_one_option_and_never_repeats():
    sp = Space()
    front = design(sp, 0)[:2]
    seen = {trial_id(c) for c in front}
    out = refine(sp, front, set(seen), seed=0, round_no=1, n=6)
    assert out == refine(sp, front, set(seen), seed=0, round_no=1, n=6)
    assert len(out) == 6 and not seen & {trial_id(c) for c in out}
    for c in out:
        changed = min(
            sum(c[k] != f[k] for k in ("pass", "criterion", "target_flops", "round_to", "remove_blocks")) for f in front
        )
        assert changed <= 2  # one option moved (a channel pass also fixes compensate and ratio)
    # a shorter round is a prefix of a longer one: a longer search extends a shorter one
    assert refine(sp, front, set(seen), seed=0, round_no=1, n=3) == out[:3]


def test_design_allocates_the_recipe_by_sensitivity_first_then_without():
    a = design(Space(), 0)
    spread = [0.25, 0.4, 0.75]  # smallest, middle, largest of the default targets
    assert [(c["sensitivity"], c["target_flops"]) for c in a[:6]] == [(True, t) for t in spread] + [
        (False, t) for t in spread
    ]
    assert all(c["pass"] == "filter" and c["round_to"] == 16 for c in a[:6])
    no_sens = Space({**Space().values, "sensitivity": [False]})
    assert not any(c["sensitivity"] for c in design(no_sens, 0))


def test_filter_trials_keep_at_most_their_target():
    f = normalize({"pass": "filter", "criterion": "l2", "compensate": "lstsq", "target_flops": 0.4, "round_to": 16})
    c = normalize({"pass": "channel", "criterion": "l2", "compensate": "lstsq", "target_flops": 0.4, "round_to": 16})
    assert f["target_at_most"] is True and "target_at_most" not in c


def test_refinement_moves_a_target_to_a_listed_neighbour_or_halfway():
    sp = Space({**Space().values, "target_flops": [0.3, 0.4, 0.5]})
    sp.values.update({k: [v[0]] for k, v in sp.values.items() if k != "target_flops"})  # only the target moves
    base = normalize({"pass": "filter", "criterion": "l2", "compensate": "lstsq", "target_flops": 0.4, "round_to": 1})
    out = refine(sp, [base], {trial_id(base)}, seed=0, round_no=1, n=8)
    assert sorted(c["target_flops"] for c in out) == [0.3, 0.35, 0.45, 0.5]
    again = normalize({**base, "target_flops": 0.45})  # from a target between listed ones
    out = refine(sp, [again], {trial_id(again)}, seed=0, round_no=2, n=8)
    assert sorted(c["target_flops"] for c in out) == [0.4, 0.425, 0.475, 0.5]


def test_channel_pass_configs_normalise_to_one_id():
    a = normalize({"pass": "channel", "criterion": "l2", "compensate": "none", "target_flops": 0.25, "round_to": 1})
    b = normalize({"pass": "channel", "criterion": "l2", "compensate": "bias", "target_flops": 0.25, "round_to": 1})
    assert trial_id(a) == trial_id(b) and a["ratio"] == 0.5 and a["compensate"] == "lstsq"


@pytest.mark.parametrize(
    "space, message",
    [
        ({"criterion": ["l2", "l7"]}, "unknown criterion"),
        ({"speed": [1]}, "unknown option 'speed'"),
        ({"target_flops": [1.5]}, "between 0 and 1"),
        ({"units": [["wings"]]}, "a list of units"),
        ([1, 2], "a JSON object"),
    ],
)
def test_bad_space_file_names_the_file(tmp_path, space, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(InputError, match=message) as err:
        load_space(path)
    assert str(path) in str(err.value)


def test_space_file_replaces_only_the_lists_it_names(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"criterion": ["fpgm"], "round_to": 4}))
    sp = load_space(path)
    assert sp.values["criterion"] == ["fpgm"] and sp.values["round_to"] == [4]
    assert sp.values["pass"] == Space().values["pass"]


def _t(tid, metric, macs, latency=1.0, status="done"):
    return Trial(tid, 0, 0, {}, status, metric, macs, macs, latency)


def test_front_drops_dominated_and_constrained_trials():
    trials = [_t("a", 0.99, 0.6, 0.7), _t("b", 0.95, 0.4, 0.5), _t("c", 0.90, 0.5, 0.6), _t("d", 0.80, 0.3, 0.9)]
    trials.append(_t("e", None, None, status="failed"))
    assert [t.id for t in pareto(feasible(trials))] == ["a", "b", "d"]
    assert [t.id for t in pareto(feasible(trials, max_flops=0.45))] == ["b", "d"]
    assert [t.id for t in feasible(trials, max_latency=0.65)] == ["b", "c"]
    assert [t.id for t in pareto(feasible(trials, max_latency=0.65))] == ["b"]  # b beats c on both


def test_outdir_without_matplotlib_skips_the_plot_with_a_note(tmp_path, monkeypatch):
    import sys

    from graphprune.search.report import write_outdir
    from graphprune.search.run import SearchResult

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    config = {"pass": "filter", "criterion": "l2", "compensate": "lstsq", "target_flops": 0.5, "round_to": 1}
    trial = Trial("abc", 0, 0, {**config, "units": [], "remove_blocks": 0}, "done", 0.9, 0.5, 0.6, 0.7, 1.0)
    notes = write_outdir(SearchResult([trial], [], 1, 0.95, "accuracy"), tmp_path)
    assert notes == ["search.png skipped: plotting needs matplotlib (pip install 'graphprune[plot]')"]
    assert not (tmp_path / "search.png").exists()
    assert json.loads((tmp_path / "front.json").read_text())["front"] == []
    assert "abc" in (tmp_path / "trials.html").read_text()


def test_ray_refuses_a_model_with_external_data_before_starting(tmp_path):
    import onnx

    from graphprune import api
    from graphprune.search.executors import check_ray_files
    from models import builders

    m = builders.residual_net(width=8, blocks=2, num_classes=4, input_shape=[1, 3, 8, 8])
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    api.load_model(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="external data is not supported yet"):
        check_ray_files(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="a folder of .npz is not supported yet"):
        check_ray_files(tmp_path / "none.onnx", tmp_path)
