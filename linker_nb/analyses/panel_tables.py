"""The panel's aggregates, read back from its store: Table 1, Figure 1, Table 2, Table 10, Figure 2.

Every function takes `entries`: (PanelPair, ScanResult) for the pairs that were scanned (`load`), and
returns a pandas DataFrame or plain data for a plot. Which pairs feed which table follows the paper:
  - Table 1 / Figure 1: base -> each post-trained variant, and every explicit pair, ordered by eps-bar (the
    paper has one row per family, base -> instruct; its figures are shown beside the default variant's row);
  - Table 2: every pair, with the region from `boundary.region` (the same rule as notebook 02);
  - Table 10: each family's default pair against the default pair of the older releases it lists
    (`boundary.vintage_table` with the measured eps-bar);
  - Figure 2: eps-bar of each family's default pair against a capability gain, measured (`gains`) or
    transcribed from the registry (`paper.figure2.delta_mmlu`).
"""
from __future__ import annotations

import math
from dataclasses import fields

from ..io import registry
from .boundary import ALIGNED_COS_MIN, ALIGNED_EPS_MAX, Pair, PairResult, boundary_table, region, vintage_table
from .panel import PanelPair, PanelRun
from .records import ScanResult

__all__ = ["PAPER_FIGURE2", "load", "thresholds", "table1", "depth_profiles", "table2", "table10", "figure2",
           "gains_from_results"]

# §3.1, Figure 2: Pearson r of eps-bar against Delta MMLU (instruct - base, lm-eval v0.4.11, 5-shot, n=30 per
# subject) over the paper's 8 families. The paper prints no per-family Delta MMLU, only bands: "flat or
# slightly negative" for Mistral-v0.3 / Qwen-3B / Qwen-7B, "5-9 pt gain" for the Llama-3.2 series and Gemma-2-2B.
PAPER_FIGURE2 = {"pearson": 0.819, "n": 8}

Entry = tuple[PanelPair, ScanResult]
_PAIR_FIELDS = [f.name for f in fields(PanelPair)]


def load(run: PanelRun) -> list[Entry]:
    """(PanelPair, ScanResult) for every pair of `run` that is in the store, in panel order."""
    out = []
    for p, o in zip(run.pairs, run.outcomes):
        if o["key"]:
            out.append((p, run.store.load(o["key"])))
    return out


def thresholds(pair: PanelPair, tau: tuple[float, float] | None = None) -> tuple[float, float]:
    """Eq. (3)'s thresholds for a pair: `tau` when given, else its family's (Table 8), else App. E's
    conservative tier (explicit pairs)."""
    if tau is not None:
        return tau
    if pair.family is None:
        return registry.CONSERVATIVE
    fam = registry.get(pair.family)
    return fam.tau_cos, fam.tau_frob


def _range(xs) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return (min(xs), max(xs)) if xs else (None, None)


def _table1_pairs(entries: list[Entry]) -> list[Entry]:
    """Base -> post-trained pairs of registry families, and every explicit pair (a user's base -> fine-tune)."""
    return [(p, s) for p, s in entries if p.kind == "given" or (p.kind == "post-trained" and p.base == "base")]


def table1(entries: list[Entry], tau: tuple[float, float] | None = None):
    """Table 1: base -> post-trained pairs ordered by eps-bar, with the paper's figures beside.

    Columns: family, variant, blocks, cos min/max and eps min/max over blocks, cos mean, eps-bar (mean over
    blocks of eps(i), eq. 2), shareable blocks (eq. 3 at `thresholds`), and the paper's blocks, cos range,
    eps range and eps-bar (`variant.paper["table1"]`) where it reports this pair.
    """
    import pandas as pd
    rows = []
    for p, s in _table1_pairs(entries):
        (cmin, cmax), (emin, emax) = _range(b.cos for b in s.blocks), _range(b.frob for b in s.blocks)
        mask = s.share_mask(*thresholds(p, tau))
        t1 = p.paper.get("table1", {})
        rows.append({"pair": p.label, "family": registry.get(p.family).label if p.family else "", "variant": p.variant,
                     "blocks": len(s.blocks), "cos min": cmin, "cos max": cmax, "ε min": emin, "ε max": emax,
                     "cos mean": s.mean_cos, "ε̄": s.mean_frob, "shareable": f"{sum(mask)}/{len(mask)}",
                     "paper blocks": t1.get("blocks"), "paper cos range": t1.get("cos_range"),
                     "paper ε range": "–".join(f"{x:g}" for x in t1["eps_range"]) if t1 else None,
                     "paper ε̄": t1.get("eps_mean")})
    df = pd.DataFrame(rows, columns=["pair", "family", "variant", "blocks", "cos min", "cos max", "ε min", "ε max",
                                     "cos mean", "ε̄", "shareable", "paper blocks", "paper cos range",
                                     "paper ε range", "paper ε̄"])
    return df.sort_values("ε̄", kind="stable").set_index("pair")


def depth_profiles(entries: list[Entry]) -> dict[str, dict[str, list]]:
    """Figure 1's data: per Table 1 pair, eps(i) against relative depth i / (n - 1) (0: first block, 1: last),
    so families of different depths overlay. {label: {"depth": [...], "eps": [...]}}."""
    out = {}
    for p, s in _table1_pairs(entries):
        n = len(s.blocks)
        out[p.label] = {"depth": [b.index / max(n - 1, 1) for b in s.blocks], "eps": [b.frob for b in s.blocks]}
    return out


def table2(entries: list[Entry], cos_min: float = ALIGNED_COS_MIN, eps_max: float = ALIGNED_EPS_MAX,
           tau: tuple[float, float] | None = None):
    """Table 2: every pair's mean cos / eps-bar, its region (`boundary.region`), the paper's figures and region
    where it measured the pair, and eq. (3)'s shareable blocks at `thresholds` (`boundary.boundary_table`'s
    layout, indexed by the panel's pair labels)."""
    if not entries:  # every pair failed: an empty table with Table 2's columns
        import pandas as pd
        return pd.DataFrame(columns=["kind", "mean cos", "mean ε", "region", "paper cos", "paper ε", "paper region",
                                     "shareable blocks"], index=pd.Index([], name="pair"))
    results = []
    for p, s in entries:
        paper = p.paper.get("table2", p.paper if {"cos", "eps"} <= set(p.paper) else {})
        base = f"{p.family} {p.base}" if p.family else p.base
        results.append(PairResult(Pair(base, p.variant, p.base_ref, p.variant_ref, p.kind, dict(paper)), s))
    df = boundary_table(results, cos_min, eps_max)
    df["shareable blocks"] = [f"{sum(m)}/{len(m)}" for m in (s.share_mask(*thresholds(p, tau)) for p, s in entries)]
    return df


def table10(entries: list[Entry]):
    """Table 10: for each family in the panel that lists older releases, eps-bar of the older and the current
    default pair and the tightening factor (older / current), measured and from the paper
    (`boundary.vintage_table`). None when no family of the panel has an older release."""
    import pandas as pd
    eps = {p.family: s.mean_frob for p, s in entries if p.family and p.default}
    tables = [vintage_table(registry.get(k), eps) for k in eps if registry.get(k).vintage]
    tables = [t for t in tables if t is not None]
    return pd.concat(tables) if tables else None


def figure2(entries: list[Entry], gains: dict[str, float] | None = None) -> dict:
    """Figure 2's data: eps-bar of each family's default post-trained pair against its capability gain.

    Args:
        gains: family key -> measured gain (e.g. Delta MMLU in points from lm-eval); these take precedence over
            the registry's transcribed `paper.figure2.delta_mmlu`.

    Returns:
        {"points": [{family, label, eps_mean, gain, source ("measured" or "transcribed")}], "pearson": r over
        the points with a gain (None for fewer than 3 or no spread), "n": their count, "paper": PAPER_FIGURE2,
        "without_gain": [families with no gain to plot]}.
    """
    from scipy.stats import pearsonr
    gains = gains or {}
    points, missing = [], []
    for p, s in entries:
        if not (p.family and p.default and p.kind == "post-trained"):
            continue
        transcribed = registry.get(p.family).variant.paper.get("figure2", {}).get("delta_mmlu")
        gain, source = (gains[p.family], "measured") if p.family in gains else (transcribed, "transcribed")
        if gain is None or s.mean_frob is None:
            missing.append(p.family)
            continue
        points.append({"family": p.family, "label": registry.get(p.family).label, "eps_mean": s.mean_frob,
                       "gain": float(gain), "source": source})
    x, y = [q["eps_mean"] for q in points], [q["gain"] for q in points]
    r = None
    if len(points) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
        r = float(pearsonr(x, y).statistic)
    return {"points": points, "pearson": r, "n": len(points), "paper": dict(PAPER_FIGURE2), "without_gain": missing}


def regions(entries: list[Entry], cos_min: float = ALIGNED_COS_MIN, eps_max: float = ALIGNED_EPS_MAX) -> dict:
    """pair label -> region (`boundary.region`)."""
    return {p.label: region(s.mean_cos, s.mean_frob, cos_min, eps_max) for p, s in entries}


__all__ += ["regions"]


def gains_from_results(docs, benchmark: str = "mmlu") -> dict[str, float]:
    """Figure 2's measured gains from 05_linker_memory results: family key -> capability gain (points) of the
    family's default variant over its base on `benchmark` (ΔMMLU by default), for `figure2(entries, gains)`.

    Args:
        docs: results documents (dicts) or paths to their JSON files. A custom pair's (model null), one without
            that benchmark, and one without the family's default variant add nothing.
    """
    import json
    from pathlib import Path
    gains = {}
    for doc in docs:
        if not isinstance(doc, dict):
            doc = json.loads(Path(doc).read_text())
        if doc.get("study") != "05_linker_memory":
            raise ValueError(f"not a 05_linker_memory results document (study {doc.get('study')!r}); gains come "
                             f"from 05's results JSON (-p results_json ...)")
        gain = ((doc.get("benchmarks") or {}).get("capability_gain") or {}).get(benchmark) or {}
        key = doc.get("model")
        variant = registry.get(key).default_variant if key in registry.REGISTRY else None
        if variant in gain and gain[variant] is not None:
            gains[key] = float(gain[variant])
    return gains
