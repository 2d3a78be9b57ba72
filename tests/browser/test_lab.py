"""Every notebook in a real JupyterLab in chromium, used the way a person uses it (tier: browser, see README).

For each notebook: open it, Run > Run All Cells, wait for every cell to finish, save, and assert that no cell
has an error output (read back from the saved file, naming the cell). Every plotly figure is rendered, keeps a
screenshot under the artefacts folder, and is checked for what a reader would trip over: tick labels that
overlap, a legend over the plot area, annotations on top of each other. In notebooks with widgets, every slider
is moved with the keyboard on its handle (End, or Home when already at the end) and the test waits for the
readout text, the shareable / shared count, and the figure's threshold line and highlighted point to follow the
new value, cross-checked against the numbers the headless run wrote to the results JSON.

Measured on a shared 2-core machine (the 7 notebooks + the report page): 304 s at load ~5, 663-729 s at load
8-11 (04's Run All took 57-297 s of its 600 s); the per-test timeout is 900 s.
"""
from __future__ import annotations

import json
import re

import pytest

from browser_lab import ARTIFACTS, ROOT, browser, lab, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUN_TIMEOUT_MS = 600_000  # a notebook's Run All (07 starts a Dask cluster; 05 evaluates quality)

# A page-side snapshot of one plotly figure: its data/layout as plotly.js holds them, and the boxes of what it drew.
_FIGURE_JS = r"""(gd) => {
  const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const axes = {};
  gd.querySelectorAll('g.xtick text, g.ytick text, g.x2tick text, g.y2tick text').forEach((t) => {
    const sub = t.closest('g.subplot, g.overplot');
    const key = t.parentNode.getAttribute('class') + ':' + (sub ? sub.getAttribute('class') : '');
    const rotated = /rotate\((?!0[ ,)])/.test(t.getAttribute('transform') || '');
    (axes[key] = axes[key] || []).push({text: t.textContent, box: box(t), rotated: rotated,
                                        size: parseFloat(getComputedStyle(t).fontSize)});
  });
  const legend = gd.querySelector('g.legend');
  return {
    data: gd.data.map((t) => ({name: t.name, x: t.x, y: t.y, text: t.text, yaxis: t.yaxis || 'y'})),
    shapes: (gd.layout.shapes || []).map((s) => ({x0: s.x0, y0: s.y0, xref: s.xref, yref: s.yref})),
    ticks: axes,
    legend: legend ? box(legend.querySelector('.bg') || legend) : null,
    axis_text: Array.from(gd.querySelectorAll('g.g-xtitle text, g.g-ytitle text, g.g-y2title text, '
                                              + 'g.xtick text, g.ytick text, g.y2tick text')).map(box),
    plots: Array.from(gd.querySelectorAll('.draglayer .nsewdrag')).map(box),
    annotations: Array.from(gd.querySelectorAll('g.annotation-text-g')).map((a) => ({text: a.textContent,
                                                                                      box: box(a)})),
  };
}"""


def _overlap(a, b, slack: float = 1.0) -> bool:
    return a[0] + slack < b[2] and b[0] + slack < a[2] and a[1] + slack < b[3] and b[1] + slack < a[3]


def _open_and_run(page, lab, name: str) -> int:
    """Open `name` in a fresh workspace, Run All, wait for the queue to drain, save; the number of cells run."""
    page.goto(lab.url(f"lab/tree/{name}", query="reset"))  # reset: not the tabs the previous test left open
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first.wait_for(state="visible", timeout=120_000)
    lab.wait_kernel_idle(name)  # started by the autoStartDefaultKernel setting (no "Select Kernel" dialog)
    _wait_idle(page, 60_000)
    _menu(page, "Run", r"Run All Cells")
    # every code cell gets a number ('[*]' while queued or running); an error stops the queue, leaving '[ ]'
    page.wait_for_function(r"""() => {
        const p = Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell '
                                                       + '.jp-InputArea-prompt')).map((e) => e.textContent);
        return p.length > 0 && /\[\d+\]/.test(p[0]) && !p.some((t) => t.includes('*'));
    }""", timeout=RUN_TIMEOUT_MS, polling=500)
    _wait_idle(page, 120_000)
    n_run = page.evaluate(r"""() => Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')).filter(
        (e) => /\[\d+\]/.test(e.textContent)).length""")
    _menu(page, "File", r"Save Notebook")
    return n_run


def _menu(page, menu: str, item: str) -> None:
    """Click a menu bar entry, then the item whose label is exactly `item` (a regex)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{item}$")).click()


def _wait_idle(page, timeout: int) -> None:
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(state="attached",
                                                                                      timeout=timeout)


def _errors(nb: dict) -> list[str]:
    out = []
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i} ({''.join(c['source'])[:60]!r}): {o['ename']}: {o['evalue']}")
    return out


def _check_figure(fig: dict, where: str) -> None:
    """What a reader trips over: overlapping tick labels on one axis, a legend over a plot area, annotations
    drawn on top of each other."""
    for axis, ticks in fig["ticks"].items():
        shown = [t for t in ticks if t["text"].strip()]
        for a, b in zip(shown, shown[1:]):
            if a["rotated"] and b["rotated"]:  # slanted labels: their boxes overlap, their baselines must not
                gap = abs((a["box"][0] + a["box"][2]) - (b["box"][0] + b["box"][2])) / 2
                assert gap >= a["size"], f"{where}: slanted tick labels {a['text']!r} and {b['text']!r} overlap"
            else:
                assert not _overlap(a["box"], b["box"]), f"{where}: tick labels {a['text']!r} and {b['text']!r} " \
                                                         f"overlap"
    if fig["legend"]:
        for p in fig["plots"]:
            assert not _overlap(fig["legend"], p, slack=2.0), f"{where}: the legend covers a plot area"
        for t in fig["axis_text"]:
            assert not _overlap(fig["legend"], t), f"{where}: the legend covers an axis title or tick label"
    ann = fig["annotations"]
    for i, a in enumerate(ann):
        for b in ann[i + 1:]:
            assert not _overlap(a["box"], b["box"]), f"{where}: annotations {a['text']!r} and {b['text']!r} overlap"


def _figures(page, name: str) -> list[dict]:
    """Snapshot and screenshot every plotly figure of the open notebook."""
    plots = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot")
    figs = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i in range(plots.count()):
        gd = plots.nth(i)
        gd.scroll_into_view_if_needed()
        gd.locator(".main-svg").first.wait_for(state="attached")
        gd.screenshot(path=str(ARTIFACTS / f"{name}-figure{i + 1}.png"))
        fig = gd.evaluate(_FIGURE_JS)
        _check_figure(fig, f"{name} figure {i + 1}")
        figs.append(fig)
    return figs


def _slider_cells(page):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").filter(
        has=page.locator(".widget-slider"))


def _move(page, slider) -> str:
    """Move one slider with the keyboard on its handle (End; Home if already at the end); the new readout."""
    readout = slider.locator(".widget-readout")
    before = readout.inner_text().strip()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    handle.press("End")
    if readout.inner_text().strip() == before:
        handle.press("Home")
    after = readout.inner_text().strip()
    assert after != before, f"the slider {slider.inner_text()!r} did not move from {before}"
    return after


def _label(cell) -> str:
    return cell.locator(".widget-html-content").first.inner_text()


def _wait_label(page, cell, text: str) -> str:
    """Wait for the kernel's answer: the widget's label shows `text`."""
    cell.locator(".widget-html-content", has_text=text).first.wait_for(timeout=60_000)
    return _label(cell)


def _widget_figure(page, cell, must) -> dict:
    """The figure inside the widget's Output pane once `must(fig)` holds (it is redrawn after the label)."""
    gd = cell.locator(".widget-output .js-plotly-plot").first
    for _ in range(120):
        fig = gd.evaluate(_FIGURE_JS)
        if must(fig):
            return fig
        page.wait_for_timeout(500)
    return fig


def _check_threshold_explorer(page, lab, cell, name: str) -> None:
    """01: τ_cos and τ_frob follow their sliders in the label, as dashed lines, and as the highlighted blocks."""
    res = lab.saved(name)
    blocks = _results_blocks(res)
    sliders = cell.locator(".widget-slider")
    assert sliders.count() == 2
    for k in range(2):
        s = sliders.nth(k)
        desc = s.locator(".widget-label").first.inner_text().strip()  # τ_cos / τ_frob
        value = _move(page, s)
        label = _wait_label(page, cell, f"{desc}={value}")
        tc = float(re.search(r"τ_cos=([-\d.]+)", label).group(1))
        tf = float(re.search(r"τ_frob=([-\d.]+)", label).group(1))
        count = int(re.search(r"(\d+)/(\d+)", label).group(1))
        expect = sum(1 for b in blocks if b["cos"] >= tc and b["frob"] <= tf)
        assert count == expect, f"{name}: label says {count} shareable at τ_cos={tc}, τ_frob={tf}; the scan's " \
                                f"blocks give {expect}"
        fig = _widget_figure(page, cell, lambda f: any(abs(sh["y0"] - float(value)) < 1e-6 for sh in f["shapes"]))
        ys = sorted(sh["y0"] for sh in fig["shapes"])
        assert ys == pytest.approx(sorted([tc, tf]), abs=1e-6), f"{name}: threshold lines at {ys}, not ({tc}, {tf})"
        marked = [t for t in fig["data"] if (t["name"] or "").startswith("shareable")]
        assert marked and len(marked[0]["x"]) == count, f"{name}: {count} shareable, highlighted: {marked}"
        _check_figure(fig, f"{name} slider figure after {desc}={value}")


def _results_blocks(nb: dict) -> list[dict]:
    """The per-block mean cos / ε the headless code computed: the traces of the notebook's static block-profile
    figure (cell "Figure 1 for this pair"), read back from the saved file."""
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            fig = o.get("data", {}).get("application/vnd.plotly.v1+json")
            names = {t.get("name"): t for t in (fig or {}).get("data", [])}
            if "cos(i) mean over K" in names and "ε(i) mean over K" in names:
                cos, frob = names["cos(i) mean over K"], names["ε(i) mean over K"]
                return [{"cos": c_, "frob": f_} for c_, f_ in zip(cos["y"], frob["y"])]
    raise AssertionError("no block-profile figure in the saved notebook to cross-check the slider against")


def _check_tuner(page, lab, cell, name: str) -> None:
    """05: the tuner slider's τ_frob follows in the label (blocks shared, memory saved), the vertical line and the
    highlighted points, at a grid point of the curve the headless run computed."""
    slider = cell.locator(".widget-slider")
    assert slider.count() == 1
    value = _move(page, slider.first)
    label = _wait_label(page, cell, f"τ_frob={value}:")
    shared = int(re.search(r"(\d+)\s+blocks shared", label).group(1))
    fig = _widget_figure(page, cell, lambda f: any(sh["xref"] == "x" and f"{sh['x0']:.4g}" == value
                                                   for sh in f["shapes"]))
    (vline,) = [sh for sh in fig["shapes"] if sh["xref"] == "x"]
    assert f"{vline['x0']:.4g}" == value, f"{name}: chosen line at {vline['x0']}, slider at {value}"
    points = [t for t in fig["data"] if (t["name"] or "").startswith("τ_frob=")]
    assert points and all(f"{t['x'][0]:.4g}" == value for t in points), f"{name}: highlighted point not at {value}"
    saved = next(t for t in fig["data"] if t["name"].startswith("recipient memory saved"))
    k = [f"{x:.4g}" for x in saved["x"]].index(value)
    assert points[0]["y"][0] == pytest.approx(saved["y"][k]), f"{name}: highlighted point off the memory curve"
    text = _curve_blocks(fig, k)
    assert text == shared, f"{name}: label says {shared} blocks shared, the curve {text} at τ_frob={value}"
    budget = next(t for t in fig["data"] if t["name"].startswith("budget"))
    assert budget["yaxis"] == "y2", f"{name}: the budget line is on {budget['yaxis']}, not the loss axis"
    _check_figure(fig, f"{name} slider figure at τ_frob={value}")


def _curve_blocks(fig: dict, k: int) -> int:
    """Blocks shared at grid point k: the memory curve carries "<n> blocks" as its hover text."""
    saved = next(t for t in fig["data"] if t["name"].startswith("recipient memory saved"))
    return int(saved["text"][k].split()[0])


WIDGET_CHECKS = {"01_granularity_gap": _check_threshold_explorer, "05_linker_memory": _check_tuner}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_in_jupyterlab(page, lab, path):
    name = path.name
    n_run = _open_and_run(page, lab, name)
    saved = lab.saved(name, n_run)
    assert not _errors(saved), f"{name}: " + "; ".join(_errors(saved))
    last = [c for c in saved["cells"] if c["cell_type"] == "code"][-1]
    assert last["execution_count"] is not None, f"{name}: the last cell did not run"
    figs = _figures(page, path.stem)
    n_figure_outputs = sum(1 for c in saved["cells"] for o in c.get("outputs", [])
                           if "application/vnd.plotly.v1+json" in o.get("data", {}))
    assert len(figs) >= n_figure_outputs, f"{name}: {n_figure_outputs} figures saved, {len(figs)} drawn"
    cells = _slider_cells(page)
    if path.stem in WIDGET_CHECKS:
        assert cells.count() >= 1, f"{name}: no slider rendered (is the widgets extension loaded?)"
        for i in range(cells.count()):
            WIDGET_CHECKS[path.stem](page, lab, cells.nth(i), name)
    else:
        assert cells.count() == 0, f"{name} has sliders but no check in WIDGET_CHECKS: add one"


def test_report_pages_draw_every_figure(browser, lab, tmp_path):
    """`make demo`'s report opened in chromium from disk: every figure of every notebook is drawn by plotly.js
    and the page raises no script error. The notebooks are the ones the tests above ran and saved (a notebook
    not run in this session is executed with papermill first)."""
    import shutil

    import papermill as pm

    from linker_nb.nb import report

    runs = tmp_path / "runs"
    (runs / "tiny").mkdir(parents=True)
    for path in NOTEBOOKS:
        saved, dest = lab.root / path.name, runs / "tiny" / path.name
        if any(c.get("outputs") for c in json.loads(saved.read_text())["cells"]):
            shutil.copy(saved, dest)
        else:
            pm.execute_notebook(str(path), str(dest), parameters={"model": "tiny"}, kernel_name="linker-nb",
                                execution_timeout=600, progress_bar=False, cwd=str(path.parent))
    index = report.write_report(runs)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(index.as_uri())
        links = page.locator("a[href$='.html']")
        assert links.count() == len(NOTEBOOKS)
        for path in NOTEBOOKS:
            nb = json.loads((runs / "tiny" / path.name).read_text())
            n_figs = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb["cells"]
                         for o in c.get("outputs", []))
            page.goto((runs / "tiny" / f"{path.stem}.html").as_uri(), wait_until="load")
            page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_figs}",
                                   timeout=60_000)
            drawn = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                  ".filter((g) => Array.isArray(g.data) && g.querySelector('.main-svg')).length")
            assert drawn == n_figs, f"report {path.stem}: {drawn} of {n_figs} figures drawn"
            assert page.evaluate("() => typeof window.Plotly") == "object"
        assert not [e for e in errors if "Plotly" in e or "plotly" in e], errors
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "FAILED-report.png"), full_page=True)
        raise
    finally:
        ctx.close()
