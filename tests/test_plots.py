"""Figure fixes that can be checked without a browser (tier: unit). The browser tier (tests/browser) checks the
drawn figures: tick labels, legends and annotations that overlap."""
from __future__ import annotations

import math

import pytest

from linker_nb.nb import plots

# a tuner curve whose loss *drops* at first (shared blocks can lower the calibration loss), as on the tiny family
CURVE = [{"tau_frob": t, "blocks_shared": n, "saving": n / 10, "rel_drop": d, "within_budget": d <= 0.05}
         for t, n, d in [(0.0, 0, 0.0), (0.02, 3, -0.0607), (0.04, 6, 0.0494), (0.06, 8, 0.09)]]


def _round_step(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step))
    return any(math.isclose(mantissa, m) for m in (1, 2, 5, 10))


@pytest.mark.parametrize("lo,hi", [(0, 80), (-6.07, 9.45), (0, 0.3), (-0.001, 0.0004), (5, 5), (-120, -3)])
def test_nice_axis_round_ticks_cover_the_data(lo, hi):
    ax = plots.nice_axis(lo, hi)
    step, (a, b) = ax["dtick"], ax["range"]
    assert _round_step(step)
    assert a <= lo and b >= hi
    assert math.isclose(a / step, round(a / step), abs_tol=1e-6) and math.isclose(b / step, round(b / step), abs_tol=1e-6)
    assert 2 <= round((b - a) / step) <= 10  # a readable number of ticks
    with pytest.raises(ValueError, match="finite"):
        plots.nice_axis(0, float("nan"))


def test_tuner_budget_on_the_loss_axis_with_round_ticks_on_both():
    fig = plots.tuner_curve(CURVE, budget=0.05, chosen=0.04)
    by_name = {t.name: t for t in fig.data}
    assert by_name["budget 5.0%"].yaxis == "y2" and set(by_name["budget 5.0%"].y) == {5.0}
    assert by_name["calibration loss increase (%)"].yaxis == "y2"
    assert by_name["recipient memory saved (%)"].yaxis in (None, "y")
    assert not [a for a in fig.layout.annotations if a.yref == "y" and "budget" in a.text]  # the old bug
    for axis, values in ((fig.layout.yaxis, [100 * r["saving"] for r in CURVE]),
                         (fig.layout.yaxis2, [100 * r["rel_drop"] for r in CURVE] + [5.0])):
        assert axis.tickmode == "linear" and _round_step(axis.dtick) and axis.tick0 == 0
        assert axis.range[0] <= min(values) and axis.range[1] >= max(values)
    assert fig.layout.yaxis2.showgrid is False  # no second grid misaligned with the first
    # the chosen τ: a vertical line and a highlighted point on each curve at that grid point
    (vline,) = [s for s in fig.layout.shapes if s.xref == "x"]
    assert vline.x0 == 0.04
    chosen = [t for t in fig.data if t.name == "τ_frob=0.04"]
    assert sorted((t.yaxis or "y", t.y[0]) for t in chosen) == [("y", 60.0), ("y2", pytest.approx(4.94))]


def test_tuner_without_choice_has_no_marker():
    fig = plots.tuner_curve(CURVE, budget=0.05)
    assert not [s for s in fig.layout.shapes if s.xref == "x"]
    assert not [t for t in fig.data if t.name.startswith("τ_frob=")]


def test_legends_sit_outside_the_plot_area():
    """Horizontal legends sit at the figure's bottom edge (container coordinates), in a margin grown to hold them:
    under the x-axis title, never over the data."""
    blocks = [{"index": i, "cos": 0.999 - i * 1e-4, "frob": 0.01 + i * 0.01, "cos_min": 0.99, "frob_max": 0.1}
              for i in range(4)]
    figs = [plots.block_profile(blocks, 0.9992, 0.025), plots.tuner_curve(CURVE, 0.05, 0.02),
            plots.pair_profiles({"a": [0.1, 0.2]}, {"a": [0.99, 0.98]})]
    for fig in figs:
        lg = fig.layout.legend
        assert lg.orientation == "h" and lg.yref == "container" and lg.y == 0 and lg.yanchor == "bottom"
        assert fig.layout.margin.b >= 114
    many = plots.depth_profiles({f"pair {k}": {"depth": [0, 1], "eps": [0.1, 0.2]} for k in range(13)})
    assert many.layout.margin.b == 90 + 24 * 4  # 13 entries, 4 a line


def test_block_profile_highlights_the_shareable_blocks():
    blocks = [{"index": i, "cos": c, "frob": f, "cos_min": c, "frob_max": f}
              for i, (c, f) in enumerate([(0.9995, 0.01), (0.9990, 0.03), (0.9999, 0.02), (0.99, 0.001)])]
    fig = plots.block_profile(blocks, tau_cos=0.999, tau_frob=0.025)
    marked = [t for t in fig.data if t.name and t.name.startswith("shareable")]
    assert marked[0].name == "shareable (2/4)"
    assert [list(t.x) for t in marked] == [[0, 2], [0, 2]]  # ε panel and cos panel
    assert list(marked[1].y) == [0.9995, 0.9999]
    assert not [t for t in plots.block_profile(blocks).data if t.name and t.name.startswith("shareable")]


def test_nvariant_scaling_round_ticks_on_both_axes():
    rows = [{"n": n, "bytes": (1 + 0.5 * (n - 1)) * 2**21, "bytes_naive": n * 2**21, "saving": 1 - (1 + 0.5 * (n - 1)) / n}
            for n in range(1, 5)]
    fig = plots.nvariant_scaling(rows)
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tick0 == 1  # N is a count: no 1.5, 2.5
    for axis, top in ((fig.layout.yaxis, 8.0), (fig.layout.yaxis2, 100.0)):
        assert axis.tickmode == "linear" and _round_step(axis.dtick) and axis.range[0] == 0 and axis.range[1] >= top
    assert fig.layout.yaxis2.showgrid is False
