"""ipywidgets controls that re-threshold results already in memory (a slider never recomputes a scan).

Each control calls the same pure function the headless run already called (e.g. `ScanResult.share_mask`), so
what the slider shows is what papermill recorded at the default thresholds. Under papermill the widgets are
built and displayed but nothing listens to them; no callback runs, so they are harmless there.

Panes are filled by setting an `Output` widget's `outputs` state (`_show`), never with `with out:` capture:
nbclient answers output captured into an `Output` widget with a message on the shell channel that races its wait
for the cell's reply, and papermill then waits forever on an idle kernel (jupyter/nbclient#312; it hung notebook
05 in CI).
"""
from __future__ import annotations

__all__ = ["threshold_explorer", "tuner_slider"]


def _show(out, *objs) -> None:
    """Replace what the `Output` widget `out` shows with `objs`, each as its display data."""
    from IPython.core.interactiveshell import InteractiveShell
    fmt = InteractiveShell.instance().display_formatter.format

    def bundle(obj) -> tuple[dict, dict]:
        # a plotly figure displays itself through _ipython_display_ (a side effect into the cell, no data);
        # its own bundle follows the renderer that notebook.setup_plotly picked
        return (obj._repr_mimebundle_(), {}) if hasattr(obj, "_repr_mimebundle_") else fmt(obj)
    out.outputs = tuple({"output_type": "display_data", "data": data, "metadata": meta}
                        for data, meta in map(bundle, objs))


def threshold_explorer(result, tau_cos: float, tau_frob: float):
    """Sliders for tau_cos and tau_frob over a `ScanResult`: updates the shareable count, the per-block table
    and the threshold lines of the block-profile figure live.

    Returns:
        An `ipywidgets.VBox` (display it as the cell's last expression).
    """
    import ipywidgets as W

    from .plots import block_profile

    n = len(result.blocks)
    cos_vals = [b.cos for b in result.blocks if b.cos is not None]
    lo = min(min(cos_vals, default=0.9), tau_cos)
    s_cos = W.FloatSlider(value=tau_cos, min=round(max(-1.0, lo - 0.01), 4), max=1.0, step=1e-4,
                          readout_format=".4f", description="τ_cos", continuous_update=False)
    frob_vals = [b.frob for b in result.blocks if b.frob is not None]
    s_frob = W.FloatSlider(value=tau_frob, min=0.0, max=round(max(max(frob_vals, default=0.1), tau_frob) * 1.2, 4),
                           step=1e-3, readout_format=".3f", description="τ_frob", continuous_update=False)
    label = W.HTML()
    plot, table = W.Output(), W.Output()  # an Output holds figure JSON only, not a copy of plotly.js

    def update(*_):
        mask = result.share_mask(s_cos.value, s_frob.value)
        label.value = f"<b>{sum(mask)}/{n}</b> blocks shareable at τ_cos={s_cos.value:.4f}, τ_frob={s_frob.value:.3f}"
        _show(plot, block_profile(result.blocks, s_cos.value, s_frob.value))
        _show(table, result.block_table(s_cos.value, s_frob.value)[["cos", "frob", "cos_min", "frob_max", "shareable"]])

    s_cos.observe(update, names="value")
    s_frob.observe(update, names="value")
    update()
    return W.VBox([W.HBox([s_cos, s_frob]), label, plot, table])


def tuner_slider(tuner):
    """A τ_frob slider that moves along a precomputed `quality.TunerResult` curve (no recomputation): shows the
    blocks shared, memory saved and quality drop at each grid point, and marks it on the tuner figure.

    Returns:
        An `ipywidgets.VBox`.
    """
    import ipywidgets as W

    from .plots import tuner_curve

    curve = tuner.curve
    start = next((k for k, r in enumerate(curve) if r["tau_frob"] == tuner.tau_frob), len(curve) - 1)
    slider = W.SelectionSlider(options=[(f"{r['tau_frob']:.4g}", k) for k, r in enumerate(curve)], value=start,
                               description="τ_frob", continuous_update=True)
    label, plot = W.HTML(), W.Output()

    def update(*_):
        r = curve[slider.value]
        ok = "within" if r["within_budget"] else "<b>over</b>"
        label.value = (f"τ_frob={r['tau_frob']:.4g}: <b>{r['blocks_shared']}</b> blocks shared, "
                       f"{r['saving']:.1%} of the recipient saved, loss +{r['rel_drop']:.2%} ({ok} the "
                       f"{tuner.budget:.1%} budget)")
        _show(plot, tuner_curve(curve, tuner.budget, r["tau_frob"]))

    slider.observe(update, names="value")
    update()
    return W.VBox([slider, label, plot])

