"""`make demo`'s HTML report: every executed notebook as a page with interactive plotly figures, and an index.

Layout (what `make demo` writes, one folder per embedded family):

    runs/<family>/<notebook>.ipynb   executed by papermill
    runs/<family>/<notebook>.json    its results JSON (`linker_nb.nb.schemas`)
    runs/<family>/<notebook>.html    written here: nbconvert's lab template, plotly.js included once per page
    runs/index.html                  written here: families x notebooks, each with its headline numbers

Notebooks render figures with the "plotly_mimetype" renderer (`params.setup_plotly`), which JupyterLab draws
but nbconvert does not; each figure's JSON becomes a `<div>` drawn by plotly.js here instead. Widgets
(sliders) need a kernel: the page says so where one was, and `make lab` opens the notebook live.

Run as `python -m linker_nb.nb.report runs`; it prints the path of the index.
"""
from __future__ import annotations

import argparse
import copy
import html
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["HEADLINES", "headline", "notebook_page", "write_report", "ReportError"]

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Each study's headline numbers in the index: (label, path into its results JSON). A path is dot-separated keys;
# "*" maps over a list. Keys are documented in `linker_nb.nb.schemas`.
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "01_granularity_gap": [("byte-identical tensors", "n_identical_tensors"), ("tensors", "n_tensors"),
                           ("shareable blocks", "n_shareable"), ("blocks", "n_blocks"), ("mean cos", "mean_cos"),
                           ("mean ε", "mean_frob")],
    "02_boundary": [("pair kinds", "pairs.*.kind"), ("region", "pairs.*.region"), ("mean cos", "pairs.*.mean_cos"),
                    ("mean ε", "pairs.*.mean_frob")],
    "03_permutation": [("block", "block"), ("relative output diff", "relative_output_diff")],
    "04_interpolation": [("loss variant", "loss_variant"), ("loss base", "loss_base"),
                         ("max per-block barrier ΔL", "summary.per_block_max_delta"),
                         ("full-model peak ΔL", "summary.full_model_peak_delta")],
    "05_linker_memory": [("variants", "pairs.*.variant"), ("blocks shared", "pairs.*.blocks_shared"),
                         ("memory saved", "pairs.*.saving"), ("rel. loss increase", "quality.*.rel_loss_increase"),
                         ("tuner τ_frob", "tuner.tau_frob")],
    "06_spectral": [("matrices", "n_matrices"), ("ablation losses", "ablation"),
                    ("gradient locality (Pearson)", "gradient_locality.pearson")],
    "07_panel": [("pairs", "counts"), ("Pearson r (Figure 2)", "figure2.pearson")],
}


class ReportError(ValueError):
    """The runs folder is not what `make demo` writes; the message names the path and the fix."""


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _get(doc: Any, path: str) -> Any:
    """Follow a HEADLINES path; a missing key gives None (an older results JSON still renders)."""
    parts = path.split(".")
    for i, key in enumerate(parts):
        if key == "*":
            rest = ".".join(parts[i + 1:])
            return [_get(x, rest) if rest else x for x in doc] if isinstance(doc, list) else None
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def headline(study: str, doc: dict) -> list[tuple[str, str]]:
    """(label, formatted value) pairs of a results JSON; a study not in HEADLINES shows its scalar keys."""
    spec = HEADLINES.get(study) or [(k, k) for k, v in doc.items()
                                    if isinstance(v, (int, float)) and k != "schema_version"]
    return [(label, _fmt(_get(doc, path))) for label, path in spec]


def _with_html_figures(nb):
    """A copy of `nb` in which every plotly figure output also carries a text/html `<div>` drawn by plotly.js
    (loaded once in the page head), and every widget output a note that it needs a live kernel."""
    import plotly.io as pio
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME in data:
                fig = data[PLOTLY_MIME]
                data["text/html"] = pio.to_html(fig, include_plotlyjs=False, full_html=False, validate=False,
                                                config={"responsive": True})
            elif WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                data["text/html"] = ("<p><i>An interactive control (ipywidgets) was here: it needs a running kernel. "
                                     "Open the notebook with <code>make lab</code> to use it.</i></p>")
    return nb


_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}
<script type="text/javascript">{{ resources.plotly_js }}</script>
{{ super() }}
{%- endblock html_head_js -%}
{%- block body_header -%}
{{ super() }}
<p style="margin: 1em 2em"><a href="{{ resources.index_href }}">← all notebooks (index.html)</a></p>
{%- endblock body_header -%}
"""


def notebook_page(ipynb: str | Path, index_href: str = "../index.html") -> str:
    """One executed notebook as a standalone HTML page (plotly.js inlined once, before require.js, so plotly
    registers `window.Plotly` instead of an anonymous AMD module)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    nb = nbformat.read(str(ipynb), as_version=4)
    exporter = HTMLExporter(template_name="lab", template_file="linker_nb_report.html.j2",
                            extra_loaders=[jinja2.DictLoader({"linker_nb_report.html.j2": _TEMPLATE})])
    body, _ = exporter.from_notebook_node(_with_html_figures(nb),
                                          resources={"plotly_js": get_plotlyjs(), "index_href": index_href})
    return body


def _index(rows: dict[str, list[dict]]) -> str:
    sections = []
    for family, items in rows.items():
        trs = []
        for it in items:
            link = (f'<a href="{html.escape(it["href"])}">{html.escape(it["notebook"])}</a>' if it["href"]
                    else html.escape(it["notebook"]))
            nums = "<br>".join(f"{html.escape(k)}: <b>{html.escape(v)}</b>" for k, v in it["headline"]) \
                or f"<i>{html.escape(it['note'])}</i>"
            trs.append(f"<tr><td>{link}</td><td>{nums}</td></tr>")
        sections.append(f"<h2>{html.escape(family)}</h2>\n<table><tr><th>notebook</th><th>headline numbers "
                        f"(results JSON)</th></tr>\n" + "\n".join(trs) + "\n</table>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>linker-nb runs</title><style>"
            "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:.4em .8em;vertical-align:top;text-align:left}</style></head><body>\n"
            "<h1>linker-nb: executed notebooks</h1>\n<p>Written by <code>make demo</code>; each page is a notebook "
            "run by papermill with interactive figures. Families × notebooks:</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_report(runs: str | Path = "runs") -> Path:
    """Write `<runs>/<family>/<notebook>.html` for every executed notebook and `<runs>/index.html`.

    Returns:
        The path of index.html.

    Raises:
        ReportError: `runs` is missing or holds no `<family>/<notebook>.ipynb` (run `make demo` first).
    """
    root = Path(runs)
    families = sorted(p for p in root.iterdir() if p.is_dir() and list(p.glob("[0-9][0-9]_*.ipynb"))) \
        if root.is_dir() else []
    if not families:
        raise ReportError(f"no executed notebooks under {root}/<family>/NN_*.ipynb: run `make demo` first (it "
                          f"executes every notebook and then writes this report)")
    rows: dict[str, list[dict]] = {}
    for fam in families:
        rows[fam.name] = []
        for ipynb in sorted(fam.glob("[0-9][0-9]_*.ipynb")):
            page = ipynb.with_suffix(".html")
            page.write_text(notebook_page(ipynb), encoding="utf-8")
            js = ipynb.with_suffix(".json")
            doc = json.loads(js.read_text()) if js.is_file() else None
            rows[fam.name].append({"notebook": ipynb.stem, "href": f"{fam.name}/{page.name}",
                                   "headline": headline(ipynb.stem, doc) if doc else [],
                                   "note": f"no results JSON ({js.name}): the notebook did not finish"})
    index = root / "index.html"
    index.write_text(_index(rows), encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="HTML report of `make demo`'s runs/<family>/<notebook>.ipynb")
    ap.add_argument("runs", nargs="?", default="runs")
    index = write_report(ap.parse_args(argv).runs)
    print(f"report: {index.resolve()}")


if __name__ == "__main__":
    main()
