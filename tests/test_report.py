"""`make demo`'s HTML report (linker_nb.nb.report): a page per executed notebook with its plotly figures drawn by
plotly.js (included once per page), and an index of families x notebooks with each one's headline numbers.
Tier: unit (a hand-made executed notebook) and notebook (01 executed by papermill on the tiny family, ~20 s)."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from conftest import run_notebook
from linker_nb.nb import report

FIG = {"data": [{"type": "scatter", "x": [0, 1], "y": [0.25, 0.5], "name": "eps"}],
       "layout": {"title": {"text": "a measured figure"}}}
PLOTLYJS_BANNER = re.compile(r"plotly\.js v\d+\.\d+\.\d+")  # the comment heading plotly.min.js


def _executed(path, study="01_granularity_gap", figures=1, widget=True):
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell("# 01 · a study"), nbformat.v4.new_code_cell("x = 1", execution_count=1)]
    for k in range(figures):
        c = nbformat.v4.new_code_cell(f"fig{k}.show()", execution_count=2 + k)
        c.outputs = [nbformat.v4.new_output("display_data", data={"application/vnd.plotly.v1+json": FIG,
                                                                  "text/plain": ["<Figure>"]})]
        cells.append(c)
    if widget:
        c = nbformat.v4.new_code_cell("widgets.threshold_explorer(result, 0.99, 0.1)", execution_count=9)
        c.outputs = [nbformat.v4.new_output("execute_result", execution_count=9, data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": ["VBox(children=(HBox(...)))"]})]
        cells.append(c)
    nb.cells = cells
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_page_draws_each_figure_with_plotly_included_once(tmp_path):
    page = report.notebook_page(_executed(tmp_path / "tiny" / "01_granularity_gap.ipynb", figures=2))
    assert len(PLOTLYJS_BANNER.findall(page)) == 1  # the library once, however many figures
    assert page.count("Plotly.newPlot(") == 2 and page.count("a measured figure") >= 2
    # plotly.js comes before require.js, so it sets window.Plotly instead of defining an anonymous AMD module
    assert PLOTLYJS_BANNER.search(page).start() < page.index('require.min.js">')
    assert "needs a running kernel" in page and "make lab" in page  # the slider's place, explained
    assert 'href="../index.html"' in page


def test_index_lists_families_by_notebook_with_headline_numbers(tmp_path):
    runs = tmp_path / "runs"
    for fam, n_shareable in (("tiny", 7), ("tinymoe", 3)):
        _executed(runs / fam / "01_granularity_gap.ipynb")
        (runs / fam / "01_granularity_gap.json").write_text(json.dumps(
            {"study": "01_granularity_gap", "n_tensors": 75, "n_identical_tensors": 0, "n_shareable": n_shareable,
             "n_blocks": 8, "mean_cos": 0.998618034, "mean_frob": 0.0454848}))
    _executed(runs / "tiny" / "02_boundary.ipynb", widget=False)  # no JSON: the notebook did not finish
    (runs / "browser").mkdir()  # other folders under runs/ (browser-tier artefacts) are not families
    index = report.write_report(runs)
    assert index == runs / "index.html"
    html = index.read_text()
    assert [m for m in re.findall(r"<h2>(\w+)</h2>", html)] == ["tiny", "tinymoe"]
    assert 'href="tiny/01_granularity_gap.html"' in html and 'href="tinymoe/01_granularity_gap.html"' in html
    assert "shareable blocks: <b>7</b>" in html and "shareable blocks: <b>3</b>" in html
    assert "mean cos: <b>0.9986</b>" in html
    assert "no results JSON (02_boundary.json)" in html
    for page in ("tiny/01_granularity_gap.html", "tiny/02_boundary.html", "tinymoe/01_granularity_gap.html"):
        assert (runs / page).stat().st_size > 1_000_000  # plotly.js inlined: the page works offline, alone


def test_headline_paths_and_missing_keys():
    doc = {"pairs": [{"variant": "instruct", "saving": 0.5}, {"variant": "coder", "saving": None}],
           "tuner": {"tau_frob": 0.04}, "quality": []}
    got = dict(report.headline("05_linker_memory", doc))
    assert got["variants"] == "[instruct, coder]" and got["memory saved"] == "[0.5, —]"
    assert got["tuner τ_frob"] == "0.04" and got["rel. loss increase"] == "[]" and got["blocks shared"] == "[—, —]"
    assert dict(report.headline("99_new", {"schema_version": 1, "n": 3, "name": "x"})) == {"n": "3"}


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(report.ReportError, match="make demo"):
        report.write_report(tmp_path / "runs")
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    with pytest.raises(report.ReportError, match=r"runs/<family>/NN_\*\.ipynb"):
        report.write_report(tmp_path / "runs")


@pytest.mark.notebook
def test_report_of_a_papermill_run(tmp_path):
    """01 executed by papermill as `make demo` does: its figures (plotly_mimetype outputs) become plotly divs,
    and the index shows the numbers its results JSON holds."""
    runs = tmp_path / "runs"
    res = run_notebook("01_granularity_gap", runs / "tiny", model="tiny")
    index = report.write_report(runs)
    page = (runs / "tiny" / "01_granularity_gap.html").read_text()
    saved = json.loads((runs / "tiny" / "01_granularity_gap.ipynb").read_text())
    n_figs = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in saved["cells"]
                 for o in c.get("outputs", []))
    assert n_figs >= 2 and page.count("Plotly.newPlot(") == n_figs
    assert len(PLOTLYJS_BANNER.findall(page)) == 1
    html = index.read_text()
    assert f"shareable blocks: <b>{res['n_shareable']}</b>" in html and f"blocks: <b>{res['n_blocks']}</b>" in html
    assert f"mean ε: <b>{res['mean_frob']:.4g}</b>" in html
