"""Widgets re-threshold results already in memory: moving a slider calls the same pure function the headless
run called, and never reads weights again."""
from __future__ import annotations

import re

import pytest

from linker_nb.analyses import granularity, kernel, records  # noqa: F401
from linker_nb.analyses import scan as scan_mod
from linker_nb.analyses.scan import scan
from linker_nb.io import checkpoint as checkpoints
from linker_nb.nb import params, widgets
from linker_nb.linker.quality import TunerResult


def _count(label) -> int:
    return int(re.search(r"<b>(\d+)/\d+</b>", label.value).group(1))


def _pane(out) -> dict:
    """The one display_data an Output pane holds. Its msg_id must stay unset: a set msg_id is what makes nbclient
    route kernel output into the widget and answer on the shell channel, the race that hung papermill."""
    assert out.msg_id == ""
    (item,) = out.outputs
    assert item["output_type"] == "display_data"
    return item["data"]


@pytest.fixture(autouse=True)
def _renderer():
    params.setup_plotly()  # as every notebook does: figures carry their JSON as application/vnd.plotly.v1+json


def test_threshold_sliders_rethreshold_without_reading(tiny_pairs, monkeypatch):
    result = scan(*tiny_pairs("llama", layers=4, scale=0.01))
    box = widgets.threshold_explorer(result, 0.999, 0.05)
    s_cos, s_frob = box.children[0].children
    label, plot, table = box.children[1:]

    def no_reads(*a, **k):
        raise AssertionError("a slider must not read weights")
    monkeypatch.setattr(checkpoints.Checkpoint, "get", no_reads)
    monkeypatch.setattr(scan_mod, "scan", no_reads)
    for tc, tf in [(0.999, 0.05), (1.0, 0.05), (0.999, 0.0), (result.blocks[0].cos_min - 0.001, 1.0)]:
        s_cos.value, s_frob.value = max(s_cos.min, tc), min(s_frob.max, tf)
        assert _count(label) == sum(result.share_mask(s_cos.value, s_frob.value))
        html = _pane(table)["text/html"]
        assert html.count(">True<") == _count(label) and html.count(">False<") == len(result.blocks) - _count(label)
        fig = _pane(plot)["application/vnd.plotly.v1+json"]  # threshold lines drawn at the slider values
        assert sorted(sh["y0"] for sh in fig["layout"]["shapes"]) == sorted([s_cos.value, s_frob.value])
    s_cos.value, s_frob.value = 1.0, 0.0
    assert _count(label) == 0


def test_tuner_slider_moves_along_the_precomputed_curve():
    curve = [{"tau_frob": t, "blocks_shared": n, "saving": n / 10, "rel_drop": d, "within_budget": d <= 0.05}
             for t, n, d in [(0.0, 0, 0.0), (0.02, 3, 0.01), (0.04, 6, 0.04), (0.06, 8, 0.09)]]
    box = widgets.tuner_slider(TunerResult(budget=0.05, tau_cos=0.998, curve=curve, tau_frob=0.04, blocks_shared=6))
    slider, label, plot = box.children
    assert "<b>6</b> blocks shared" in label.value and "within" in label.value
    before = repr(_pane(plot))
    slider.value = 3
    assert "<b>8</b> blocks shared" in label.value and "<b>over</b>" in label.value
    assert repr(_pane(plot)) != before  # the marker moved to the new grid point
    with pytest.raises(Exception):
        slider.value = 7  # only grid points of the curve exist
