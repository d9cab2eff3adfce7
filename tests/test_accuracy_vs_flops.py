"""The accuracy-vs-FLOPs benchmark's core: one curve per method over the asked levels, the
shared ratio reaching each level, and the issue's bar (l2 + lstsq at half the FLOPs keeps at
least 95% of the original top-1) on the full test split, with 64 calibration samples."""

from __future__ import annotations

import pytest

from benchmarks import accuracy_vs_flops as bench


@pytest.fixture(scope="module")
def sweep():
    return bench.sweep([1.0, 0.5], ["l2", "lstsq", "layer"], calib_samples=64)


def test_every_method_has_a_curve_over_the_levels(sweep):
    assert [c.method for c in sweep.curves] == ["l2", "lstsq", "layer"]
    for c in sweep.curves[:2]:
        assert [p.level for p in c.points] == [1.0, 0.5]
        assert c.points[0].accuracy == sweep.accuracy_original
    ratio, kept = sweep.ratios[0.5]
    assert 0 < ratio < 0.95 and abs(kept - 0.5) < 0.03
    assert sweep.accuracy_original > 0.95 and sweep.test_samples == 497


def test_ratio_methods_share_the_ratio_and_cut_the_same_flops(sweep):
    l2, lstsq = (c.points[1] for c in sweep.curves[:2])
    assert l2.flops_kept == lstsq.flops_kept == sweep.ratios[0.5][1]
    assert l2.exact and lstsq.exact


def test_lstsq_at_half_the_flops_keeps_95_percent_and_l2_does_not(sweep):
    l2, lstsq = (c.points[1].accuracy / sweep.accuracy_original for c in sweep.curves[:2])
    assert lstsq >= 0.95
    assert l2 < lstsq


def test_layer_pass_reports_the_discrete_levels_it_reached(sweep):
    layer = sweep.curves[2]
    kept = [p.flops_kept for p in layer.points]
    assert kept[0] == 1.0 and all(a > b for a, b in zip(kept, kept[1:]))
    assert kept[-1] < 0.5  # it went on until below the lowest level
    assert all(p.exact for p in layer.points[1:])


def test_table_has_a_row_per_method_and_a_column_per_level(sweep):
    text = bench.table(sweep, [1.0, 0.5])
    lines = text.splitlines()
    assert "100%" in lines[0] and "50%" in lines[0]
    assert len(lines) == 2 + 3
    assert any("l2 + lstsq" in line for line in lines)


def test_sparsity_rows_give_accuracy_and_non_zero_weights_at_unchanged_macs():
    from graphprune.calibration.datasets import open_dataset
    from models.examples import digits

    model = bench.graphprune.load_model(str(digits.MODEL))
    points = bench.sparsity_sweep(
        model, None, None, open_dataset(digits.TEST), 100, configs=[("2:4", 0.5)], criteria=["magnitude"]
    )
    (p,) = points
    assert p.exact and p.pattern == "2:4"
    assert 0.5 <= p.nonzero < 0.6  # half of every sparsified weight; BN parameters and the 1-channel stem stay
    assert p.zip_ratio < 0.7 and p.accuracy > 0.5
    text = bench.sparsity_table(points)
    assert "MACs kept" in text and "2:4 50%" in text and "1.000" in text
