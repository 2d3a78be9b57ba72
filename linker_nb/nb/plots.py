"""Plotly figures for the notebooks. Every function takes measured data and returns a `go.Figure`.

Notebooks call these instead of re-defining plot helpers; widgets update the traces of the same figures.
"""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["block_profile", "subparam_heatmap", "expert_heatmap", "pair_profiles", "control_bars", "interpolation_paths",
           "amplification_profile", "nvariant_scaling", "tuner_curve", "sv_ratio_spectra", "spectral_layers",
           "lora_ratio_bars"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _eps_cos_frame(titles: tuple[str, str], eps_line: tuple[str, float | None],
                   cos_line: tuple[str, float | None]) -> go.Figure:
    """Two stacked panels, ε(i) on top and cos(i) below, with a dashed threshold line on each when given."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=titles)
    for row, (label, y) in ((1, eps_line), (2, cos_line)):
        if y is not None:
            # the panels have no traces yet: plotly would skip them as empty subplots and draw no line
            fig.add_hline(y=y, line=dict(color="grey", dash="dash"), annotation_text=f"{label}={y:g}", row=row, col=1,
                          exclude_empty_subplots=False)
    fig.update_xaxes(title_text="block index i", row=2, col=1)
    return fig


def _legend_below(fig: go.Figure, per_line: int = 4) -> go.Figure:
    """A horizontal legend at the bottom of the figure (container coordinates), under the x-axis title, with the
    bottom margin grown to hold it: a legend placed relative to the plot area (y=-0.15) landed on the axis title
    when the figure was drawn narrower (in a widget's Output pane)."""
    import math
    entries = {t.legendgroup or t.name for t in fig.data if t.showlegend is not False and t.name}
    lines = max(1, math.ceil(len(entries) / per_line))
    fig.update_layout(legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, xanchor="left"),
                      margin=dict(b=90 + 24 * lines))
    return fig


def block_profile(blocks, tau_cos: float | None = None, tau_frob: float | None = None,
                  title: str = "") -> go.Figure:
    """Per-block epsilon(i) (top) and cos(i) (bottom), with threshold lines and shareable blocks marked.

    Args:
        blocks: `BlockRecord`s (or dicts with index, cos, frob, cos_min, frob_max).
        tau_cos, tau_frob: eq. (3) thresholds to draw; omitted when None.
    """
    rows = [b if isinstance(b, dict) else b.__dict__ for b in blocks]
    idx = [r["index"] for r in rows]
    fig = _eps_cos_frame(("relative Frobenius ε(i) = mean_k ‖W_b−W_v‖/‖W_b‖", "cosine sim(i) = mean_k cos(W_b, W_v)"),
                         ("τ_frob", tau_frob), ("τ_cos", tau_cos))
    fig.add_trace(go.Scatter(x=idx, y=[r["frob"] for r in rows], mode="lines+markers", name="ε(i) mean over K",
                             line=dict(color=PALETTE[0])), row=1, col=1)
    fig.add_trace(go.Scatter(x=idx, y=[r["frob_max"] for r in rows], mode="lines", name="max over K",
                             line=dict(color=PALETTE[0], dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=idx, y=[r["cos"] for r in rows], mode="lines+markers", name="cos(i) mean over K",
                             line=dict(color=PALETTE[1])), row=2, col=1)
    fig.add_trace(go.Scatter(x=idx, y=[r["cos_min"] for r in rows], mode="lines", name="min over K",
                             line=dict(color=PALETTE[1], dash="dot")), row=2, col=1)
    if tau_cos is not None and tau_frob is not None:  # eq. (3)'s verdict, highlighted on both panels
        mask = [_shareable(b, tau_cos, tau_frob) for b in blocks]
        for row, key in ((1, "frob"), (2, "cos")):
            fig.add_trace(go.Scatter(x=[i for i, m in zip(idx, mask) if m], y=[r[key] for r, m in zip(rows, mask) if m],
                                     mode="markers", name=f"shareable ({sum(mask)}/{len(mask)})",
                                     legendgroup="shareable", showlegend=row == 1,
                                     marker=dict(color=PALETTE[2], size=12, symbol="circle-open", line=dict(width=2))),
                          row=row, col=1)
    fig.update_layout(title=title, height=600)
    return _legend_below(fig)


def _shareable(block, tau_cos: float, tau_frob: float) -> bool:
    """Eq. (3) for a `BlockRecord` (its own rule, which also refuses non-finite blocks) or a results-JSON dict."""
    if hasattr(block, "shareable"):
        return block.shareable(tau_cos, tau_frob)
    return block["cos"] is not None and block["frob"] is not None and block["cos"] >= tau_cos \
        and block["frob"] <= tau_frob


def subparam_heatmap(matrix, title: str = "", colorscale: str = "Viridis") -> go.Figure:
    """Heatmap of a blocks x sub-parameters DataFrame (`metrics.subparam_matrix`)."""
    fig = go.Figure(go.Heatmap(z=matrix.values, x=[str(c) for c in matrix.columns], y=list(matrix.index),
                               colorscale=colorscale, colorbar=dict(title="")))
    # long tensor names are slanted below the plot: leave them room, and the rows at least 22 px each
    fig.update_layout(title=title, xaxis_title="sub-parameter", yaxis_title="block", height=300 + 22 * len(matrix),
                      xaxis_tickangle=-35)
    return fig


def expert_heatmap(table, metric: str = "frob", router=None, title: str = "") -> go.Figure:
    """MoE: blocks x experts heatmap of the per-expert mean cos or ε (`ScanResult.expert_table`), with the
    router's value per block as an extra column when `router` (`ScanResult.router_table()`) is given.

    Raises:
        ValueError: the table is empty (a dense model has no experts).
    """
    if table is None or table.empty:
        raise ValueError("no experts to plot: expert_heatmap is for MoE scans (ScanResult.n_experts > 0)")
    z = table.values.tolist()
    x = [f"expert {c}" for c in table.columns]
    if router is not None and not router.empty:
        col = router[f"router_{metric}"].reindex(table.index)
        z = [row + [r] for row, r in zip(z, col.tolist())]
        x.append("router")
    label = "ε" if metric == "frob" else "cos"
    fig = go.Figure(go.Heatmap(z=z, x=x, y=list(table.index), colorscale="Viridis", colorbar=dict(title=label)))
    fig.update_layout(title=title or f"per-expert mean {label} (mean over each expert's gate/up/down)",
                      xaxis_title="expert", yaxis_title="block", height=160 + 22 * len(table))
    return fig


def pair_profiles(frob: dict[str, Sequence[float]], cos: dict[str, Sequence[float]], title: str = "",
                  eps_max: float | None = None, cos_min: float | None = None) -> go.Figure:
    """Per-block ε(i) (top) and cos(i) (bottom) of several pairs overlaid, one colour per pair (Table 2's pairs).

    Args:
        frob, cos: pair label -> per-block values (`boundary.profiles`).
        eps_max, cos_min: the region rule's thresholds, drawn as dashed lines when given.
    """
    fig = _eps_cos_frame(("relative Frobenius ε(i)", "cosine cos(i)"), ("ε_max", eps_max), ("cos_min", cos_min))
    for j, label in enumerate(frob):
        color = PALETTE[j % len(PALETTE)]
        for row, data in ((1, frob), (2, cos)):
            ys = list(data[label])
            fig.add_trace(go.Scatter(x=list(range(len(ys))), y=ys, mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=row == 1, line=dict(color=color)), row=row, col=1)
    fig.update_layout(title=title, height=620)
    return _legend_below(fig)


def control_bars(table, title: str = "") -> go.Figure:
    """Table 3 as grouped bars: attention- and MLP-mean cosine (left) and ε (right) to the variant block for
    each control (rows of `symmetry.ControlReport.table()`)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cosine to the variant block", "ε to the variant block"))
    for j, (kind, label) in enumerate((("attn", "attention mean"), ("mlp", "MLP mean"))):
        for col, metric in ((1, "cos"), (2, "frob")):
            fig.add_trace(go.Bar(x=list(table.index), y=list(table[f"{kind}_{metric}"]), name=label,
                                 legendgroup=kind, showlegend=col == 1, marker_color=PALETTE[j]), row=1, col=col)
    fig.update_layout(title=title, barmode="group", height=400)
    return fig


def interpolation_paths(alphas: Sequence[float], delta, full: Sequence[float] | None = None,
                        full_all: Sequence[float] | None = None, title: str = "") -> go.Figure:
    """Figure 3's layout: grey per-block ΔL_i(α), their median with a 10/90 percentile band (blue), and the
    full-model path (orange; dashed: with embeddings / final norm / lm_head interpolated too), all as ΔL in nats.

    Args:
        alphas: the α grid (0 = variant, 1 = base).
        delta: [n_blocks][n_alphas] ΔL_i(α) = L_i(α) − L_variant.
        full, full_all: full-model ΔL(α) curves; omitted when None.
    """
    import numpy as np
    d = np.asarray(delta, dtype=float)
    xs = list(alphas)
    fig = go.Figure()
    for i, row in enumerate(d):
        fig.add_trace(go.Scatter(x=xs, y=row.tolist(), mode="lines", line=dict(color="lightgrey", width=1),
                                 name="per-block ΔL_i(α)", legendgroup="blocks", showlegend=i == 0,
                                 hovertemplate=f"block {i}<br>α=%{{x}}<br>ΔL=%{{y:.4f}}<extra></extra>"))
    lo, med, hi = np.percentile(d, [10, 50, 90], axis=0)
    fig.add_trace(go.Scatter(x=xs, y=hi.tolist(), mode="lines", line=dict(width=0), showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=lo.tolist(), mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(31,119,180,0.2)", name="10–90th percentile"))
    fig.add_trace(go.Scatter(x=xs, y=med.tolist(), mode="lines+markers", line=dict(color=PALETTE[0]),
                             name="median over blocks"))
    if full is not None:
        fig.add_trace(go.Scatter(x=xs, y=list(full), mode="lines+markers", line=dict(color=PALETTE[1]),
                                 name="full model (all blocks)"))
    if full_all is not None:
        fig.add_trace(go.Scatter(x=xs, y=list(full_all), mode="lines", line=dict(color=PALETTE[1], dash="dash"),
                                 name="full model + embeddings/head"))
    fig.add_hline(y=0, line=dict(color="grey", width=1))
    fig.update_layout(title=title, xaxis_title="α (0 = variant, 1 = base)", yaxis_title="ΔL = L(α) − L_variant (nats)",
                      height=450)
    return fig


def amplification_profile(factors: dict[str, Sequence[float | None]], band: tuple[float, float] | None = None,
                          title: str = "") -> go.Figure:
    """Figure 6's layout: per-layer amplification factor α(i) against relative depth i/L, one curve per model.

    Args:
        factors: label -> α(i) per layer (None where undefined, e.g. layer 0).
        band: a reference interior range drawn as a shaded band (App. H: (0.7, 2.2)).
    """
    fig = go.Figure()
    if band is not None:
        fig.add_hrect(y0=band[0], y1=band[1], fillcolor="grey", opacity=0.12, line_width=0,
                      annotation_text=f"paper interior [{band[0]:g}, {band[1]:g}]", annotation_position="top left")
    for j, (label, ys) in enumerate(factors.items()):
        n = len(ys)
        fig.add_trace(go.Scatter(x=[i / n for i in range(n)], y=list(ys), mode="lines+markers", name=label,
                                 line=dict(color=PALETTE[j % len(PALETTE)])))
    fig.add_hline(y=1, line=dict(color="grey", dash="dot"))
    fig.update_layout(title=title, xaxis_title="relative depth i/L", height=400,
                      yaxis_title="α(i) = d<sub>i</sub> / d<sub>i−1</sub>")
    return fig


def nvariant_scaling(rows: Sequence[dict], paper_mib: Sequence[float] | None = None,
                     title: str = "") -> go.Figure:
    """Table 14 as a figure: bytes held (MiB, bars) and saving vs N independent models (line) for N variants.

    Args:
        rows: `aliasing.n_variant_scaling` rows {n, bytes, bytes_naive, saving}.
        paper_mib: the paper's MiB for N = 1.. of one family, drawn as a reference on its own axis when given.
    """
    ns = [r["n"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=ns, y=[r["bytes_naive"] / 2**20 for r in rows], name="naive (N independent)",
                         marker_color="#c7c7c7"), secondary_y=False)
    fig.add_trace(go.Bar(x=ns, y=[r["bytes"] / 2**20 for r in rows], name="co-resident, shared",
                         marker_color=PALETTE[0]), secondary_y=False)
    fig.add_trace(go.Scatter(x=ns, y=[100 * r["saving"] for r in rows], mode="lines+markers", name="saving (%)",
                             line=dict(color=PALETTE[1])), secondary_y=True)
    if paper_mib:
        save = [100 * (1 - m / (i * paper_mib[0])) for i, m in enumerate(paper_mib, 1)]
        fig.add_trace(go.Scatter(x=list(range(1, len(save) + 1)), y=save, mode="lines+markers",
                                 name="paper saving (%)", line=dict(color=PALETTE[1], dash="dot")), secondary_y=True)
    fig.update_layout(title=title or "N co-resident variants (Table 14)", barmode="overlay", height=400,
                      xaxis_title="N (donor + N−1 recipients)", xaxis=dict(tickmode="linear", tick0=1, dtick=1))
    # each y axis its own round ticks: left-grid-aligned ticks labelled the saving axis 23.7 / 47.4 / 71.1
    fig.update_yaxes(title_text="MiB held", secondary_y=False,
                     **nice_axis(0.0, max(r["bytes_naive"] for r in rows) / 2**20))
    fig.update_yaxes(title_text="saving vs naive (%)", secondary_y=True, showgrid=False, zeroline=False,
                     **nice_axis(0.0, 100.0))
    return fig


def nice_axis(lo: float, hi: float, n_ticks: int = 5) -> dict:
    """Axis settings with round ticks: a step of 1, 2 or 5 x 10^k, the range widened to whole steps.

    Two y axes on one plot each get their own round ticks this way instead of plotly aligning the right axis's
    ticks to the left axis's grid (which labelled the tuner's loss axis 4.94 / 2.18 / -0.57).

    Returns:
        {"range": [lo', hi'], "tick0": 0, "dtick": step, "tickmode": "linear"} with lo' <= lo < hi <= hi'.
    """
    import math
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_axis needs finite bounds, got ({lo}, {hi})")
    if hi - lo <= 0:
        lo, hi = lo - 0.5, hi + 0.5
    mag = 10 ** math.floor(math.log10((hi - lo) / max(n_ticks - 1, 1)))
    # the finest round step that spans [lo, hi] in at most n_ticks + 1 intervals
    step = next(m * mag for m in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
                if math.ceil(hi / (m * mag) - 1e-9) - math.floor(lo / (m * mag) + 1e-9) <= n_ticks + 1)
    step = float(f"{step:.12g}")  # 0.05, not 0.05000000000000001
    return {"range": [float(f"{math.floor(lo / step + 1e-9) * step:.12g}"),
                      float(f"{math.ceil(hi / step - 1e-9) * step:.12g}")],
            "tick0": 0, "dtick": step, "tickmode": "linear"}


def tuner_curve(curve: Sequence[dict], budget: float, chosen: float | None = None,
                title: str = "") -> go.Figure:
    """App. E auto-tuner: memory saved (left axis) and relative quality drop (right axis) against τ_frob, the
    budget as a dashed line on the loss axis, the chosen τ marked on both curves.

    Each axis has its own round ticks (`nice_axis`) and no grid is shared between them. The legend sits below
    the plot, so it never covers the curves.

    Args:
        curve: `quality.TunerResult.curve` rows {tau_frob, blocks_shared, saving, rel_drop}.
        budget: the quality budget (relative loss increase).
        chosen: the selected τ_frob (a vertical line and a highlighted point on each curve), or None.
    """
    x = [r["tau_frob"] for r in curve]
    saved = [100 * r["saving"] for r in curve]
    drop = [100 * r["rel_drop"] for r in curve]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=saved, mode="lines+markers", line_shape="hv",
                             name="recipient memory saved (%)", line=dict(color=PALETTE[0]),
                             text=[f"{r['blocks_shared']} blocks" for r in curve]), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=drop, mode="lines+markers", line_shape="hv",
                             name="calibration loss increase (%)", line=dict(color=PALETTE[3])), secondary_y=True)
    # the budget is a trace on the loss axis (not add_hline: its label went to the memory axis)
    fig.add_trace(go.Scatter(x=[min(x), max(x)], y=[100 * budget] * 2, mode="lines", name=f"budget {budget:.1%}",
                             line=dict(color=PALETTE[3], dash="dash"), hoverinfo="skip"), secondary_y=True)
    if chosen is not None:
        k = min(range(len(x)), key=lambda i: abs(x[i] - chosen))
        fig.add_vline(x=chosen, line=dict(color="grey", dash="dot"))
        fig.add_trace(go.Scatter(x=[chosen], y=[saved[k]], mode="markers", name=f"τ_frob={chosen:.4g}",
                                 legendgroup="chosen", marker=dict(color=PALETTE[0], size=14, symbol="circle-open",
                                                                   line=dict(width=3))), secondary_y=False)
        fig.add_trace(go.Scatter(x=[chosen], y=[drop[k]], mode="markers", name=f"τ_frob={chosen:.4g}",
                                 legendgroup="chosen", showlegend=False,
                                 marker=dict(color=PALETTE[3], size=14, symbol="circle-open", line=dict(width=3))),
                      secondary_y=True)
    fig.update_layout(title=title or "Threshold auto-tuner (App. E)", height=450, xaxis_title="τ_frob")
    _legend_below(fig)
    fig.update_yaxes(title_text="memory saved (%)", secondary_y=False,
                     **nice_axis(min(0.0, *saved), max(1.0, *saved)))
    fig.update_yaxes(title_text="loss increase (%)", secondary_y=True, showgrid=False, zeroline=False,
                     **nice_axis(min(0.0, *drop), max(100 * budget, *drop) * 1.05))
    return fig


__all__ += ["nvariant_scaling", "tuner_curve", "nice_axis"]


def sv_ratio_spectra(matrices, title: str = "") -> go.Figure:
    """σ_i(W_v)/σ_i(W_b) against relative spectral index i/(k−1), one line per matrix, coloured by sub-parameter
    (`spectral.SpectralResult.matrices`, or dicts with block, sub, ratios). A flat line is uniform scaling."""
    rows = [m if isinstance(m, dict) else m.__dict__ for m in matrices]
    subs = sorted({r["sub"] for r in rows})
    fig = go.Figure()
    for r in rows:
        ys = list(r["ratios"])
        j = subs.index(r["sub"])
        fig.add_trace(go.Scatter(
            x=[i / max(len(ys) - 1, 1) for i in range(len(ys))], y=ys, mode="lines", name=r["sub"],
            legendgroup=r["sub"], showlegend=r is next(q for q in rows if q["sub"] == r["sub"]),
            line=dict(color=PALETTE[j % len(PALETTE)], width=1), opacity=0.6,
            hovertemplate=f"block {r['block']} {r['sub']}<br>i/(k−1)=%{{x:.2f}}<br>ratio=%{{y:.4f}}<extra></extra>"))
    fig.add_hline(y=1, line=dict(color="grey", dash="dot"))
    fig.update_layout(title=title, xaxis_title="relative spectral index i/(k−1) (0 = largest σ)",
                      yaxis_title="σ<sub>i</sub>(W<sub>var</sub>) / σ<sub>i</sub>(W<sub>base</sub>)", height=430)
    return fig


def spectral_layers(table, columns: dict[str, str], yaxis: str, title: str = "",
                    hline: float | None = None) -> go.Figure:
    """Per-block curves from `spectral.SpectralResult.layer_table()`: label -> column, e.g. consistency or eRank."""
    fig = go.Figure()
    for j, (label, col) in enumerate(columns.items()):
        fig.add_trace(go.Scatter(x=list(table.index), y=list(table[col]), mode="lines+markers", name=label,
                                 line=dict(color=PALETTE[j % len(PALETTE)])))
    if hline is not None:
        fig.add_hline(y=hline, line=dict(color="grey", dash="dot"))
    fig.update_layout(title=title, xaxis_title="block index i", yaxis_title=yaxis, height=400)
    return fig


def lora_ratio_bars(ratios: dict, paper_mean: float | None = None, title: str = "") -> go.Figure:
    """App. K / Table 11: per-block LoRA-extraction storage ratio as bars, 1.0 (LoRA = full block) dashed, and the
    paper's mean ratio dotted when given."""
    fig = go.Figure(go.Bar(x=[int(b) for b in ratios], y=list(ratios.values()), marker_color=PALETTE[0],
                           name="LoRA params / block params"))
    fig.add_hline(y=1, line=dict(color="grey", dash="dash"), annotation_text="LoRA = full block")
    if paper_mean is not None:
        fig.add_hline(y=paper_mean, line=dict(color=PALETTE[3], dash="dot"), annotation_text=f"paper mean {paper_mean:g}",
                      annotation_position="bottom right")
    fig.update_layout(title=title, xaxis_title="block index i", yaxis_title="storage ratio", height=380)
    return fig


__all__ += ["sv_ratio_spectra", "spectral_layers", "lora_ratio_bars"]


def side_by_side(cmp: dict, title: str = "") -> go.Figure:
    """Two pairs' ε(i) on one log axis (top) and their ratio per block (bottom; above 1: the first pair moves
    the block more). Quantization error and post-training drift differ by orders of magnitude, hence the log.

    Args:
        cmp: `granularity.side_by_side(...)`.
    """
    la, lb = cmp["labels"]
    idx = [r["index"] for r in cmp["blocks"]]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.65, 0.35],
                        subplot_titles=("relative Frobenius ε(i) per block (log)", f"ε ratio {la} / {lb}"))
    for j, (key, label) in enumerate((("eps_a", la), ("eps_b", lb))):
        fig.add_trace(go.Scatter(x=idx, y=[r[key] for r in cmp["blocks"]], mode="lines+markers", name=label,
                                 line=dict(color=PALETTE[j])), row=1, col=1)
    fig.add_trace(go.Bar(x=idx, y=[r["ratio"] for r in cmp["blocks"]], name="ratio", marker_color=PALETTE[2],
                         showlegend=False), row=2, col=1)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dash"), row=2, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(title_text="block index i", row=2, col=1)
    fig.update_layout(title=title, height=580)
    return _legend_below(fig)


__all__ += ["side_by_side"]


def depth_profiles(profiles: dict[str, dict], title: str = "", log_y: bool = True) -> go.Figure:
    """Figure 1's layout: per-block ε(i) against relative depth (0: first block, 1: last), one line per pair,
    every family overlaid (`panel_tables.depth_profiles`). Log scale by default: the paper's families span
    ε̄ 0.006 (Mistral) to 0.156 (Llama-3.2-1B)."""
    fig = go.Figure()
    for j, (label, d) in enumerate(profiles.items()):
        fig.add_trace(go.Scatter(x=d["depth"], y=d["eps"], mode="lines+markers", name=label,
                                 line=dict(color=PALETTE[j % len(PALETTE)])))
    fig.update_layout(title=title, xaxis_title="relative depth i / (n − 1)", yaxis_title="ε(i)", height=480,
                      yaxis_type="log" if log_y else "linear")
    return _legend_below(fig)


def gain_scatter(data: dict, title: str = "") -> go.Figure:
    """Figure 2's layout: ε̄ per family against its capability gain (`panel_tables.figure2`), marker shape by
    source (measured / transcribed), Pearson r in the title next to the paper's."""
    fig = go.Figure()
    for source, symbol in (("measured", "circle"), ("transcribed", "diamond-open")):
        pts = [q for q in data["points"] if q["source"] == source]
        if pts:
            fig.add_trace(go.Scatter(x=[q["eps_mean"] for q in pts], y=[q["gain"] for q in pts], mode="markers+text",
                                     text=[q["label"] for q in pts], textposition="top center", name=source,
                                     marker=dict(symbol=symbol, size=10)))
    r = data["pearson"]
    note = (f"Pearson r = {r:.3f} (n = {data['n']})" if r is not None else f"r undefined (n = {data['n']})")
    note += f"; paper r = {data['paper']['pearson']} (n = {data['paper']['n']})"
    fig.update_layout(title=f"{title}<br><sub>{note}</sub>" if title else note, xaxis_title="ε̄ (base → instruct)",
                      yaxis_title="capability gain (Δ MMLU, points)", height=420)
    return fig


__all__ += ["depth_profiles", "gain_scatter"]
