"""Where block-level alignment ends (paper §3.2, Table 2; Appendix I, Table 10).

One base is compared with several derivatives at once (post-trained, continued-pretrained, independently
trained) plus cross-variant pairs (instruct -> coder); each pair is one `metrics.scan`. A pair's *region* is
decided by `region`, a rule on the measured means with explicit parameters, never by the pair's name or kind.

Default rule, from the paper's own numbers: aligned iff mean cos >= 0.99 and mean eps <= 0.20.
  - every post-trained pair of Table 1 has mean cos >= 0.990 and eps-bar <= 0.156 (Llama-3.2-1B);
  - every continued-pretrained pair of Table 2 has cos <= 0.752 and eps >= 0.305 (§3.2: "cos drops to
    0.52-0.75 and eps rises to 0.30-0.47", Coder-7B 0.831).
Both thresholds sit inside the empty gap between the two bands, with margin on either side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..io import registry
from .records import ScanResult
from .scan import scan

__all__ = ["ALIGNED_COS_MIN", "ALIGNED_EPS_MAX", "region", "Pair", "PairResult", "family_pairs", "compare",
           "boundary_table", "pair_records", "profiles", "vintage_table", "measure_vintage"]

ALIGNED_COS_MIN = 0.99   # Table 1: post-trained mean cos >= 0.990; Table 2: continued pretraining <= 0.752
ALIGNED_EPS_MAX = 0.20   # Table 1: post-trained eps-bar <= 0.156; Table 2: continued pretraining >= 0.305


def region(mean_cos: float | None, mean_frob: float | None, cos_min: float = ALIGNED_COS_MIN,
           eps_max: float = ALIGNED_EPS_MAX) -> str:
    """"aligned" iff mean cos >= cos_min and mean eps <= eps_max, else "outside"; "undefined" when a mean is
    missing or not finite (e.g. every block has a zero-norm or non-finite sub-parameter)."""
    if not (0.0 <= eps_max and -1.0 <= cos_min <= 1.0):
        raise ValueError(f"region rule needs cos_min in [-1, 1] and eps_max >= 0; got cos_min={cos_min}, "
                         f"eps_max={eps_max} (paper-derived defaults: {ALIGNED_COS_MIN}, {ALIGNED_EPS_MAX}).")
    if mean_cos is None or mean_frob is None or not (math.isfinite(mean_cos) and math.isfinite(mean_frob)):
        return "undefined"
    return "aligned" if mean_cos >= cos_min and mean_frob <= eps_max else "outside"


@dataclass(frozen=True)
class Pair:
    """One (base, variant) comparison: labels for tables, references for the scan, and the paper's figures."""
    base: str
    variant: str
    base_ref: str
    variant_ref: str
    kind: str
    paper: dict = field(default_factory=dict)  # {"cos", "eps"} from Table 2 when the paper measured this pair

    @property
    def label(self) -> str:
        return f"{self.base} → {self.variant}"


@dataclass
class PairResult:
    pair: Pair
    scan: ScanResult


def _label(ref: str) -> str:
    return Path(ref).name or ref


def family_pairs(fam: registry.Family, variants: list[str] | None = None, base: str | None = None,
                 cross: bool = True) -> list[Pair]:
    """Table 2's rows for a family: base -> each variant, then the registered cross-variant pairs.

    Args:
        fam: a registry family.
        variants: variant names of the family, or checkpoint directories / hub ids (default: all its variants).
        base: override the base checkpoint (the paper's figures then no longer apply and are dropped).
        cross: add the family's cross-variant pairs whose two ends are both in `variants`.

    Raises:
        ValueError: `variants` is empty.
    """
    names = list(fam.variants) if variants is None else list(variants)
    if not names:
        raise ValueError(f"`variants` is empty; give variant names of {fam.key!r} ({', '.join(fam.variants)}) or "
                         f"checkpoint paths.")
    base_ref, registered = base or fam.base, base is None or base == fam.base
    pairs = []
    for v in names:
        spec = fam.variants.get(v)
        if spec is None:  # a path or hub id
            pairs.append(Pair("base", _label(v), base_ref, v, "given"))
            continue
        paper = spec.paper.get("table2", {}) if registered else {}
        pairs.append(Pair("base", v, base_ref, spec.ref, spec.kind, paper))
    if cross:
        for a, b in fam.cross:
            if a in names and b in names:
                t2 = fam.paper.get("table2_cross", {})
                paper = {k: t2[k] for k in ("cos", "eps") if k in t2} if t2.get("pair") == f"{a}->{b}" else {}
                pairs.append(Pair(a, b, fam.variants[a].ref, fam.variants[b].ref, "cross-variant", paper))
    return pairs


def compare(pairs: list[Pair], progress: bool | None = None) -> list[PairResult]:
    """One streaming `metrics.scan` per pair."""
    return [PairResult(p, scan(p.base_ref, p.variant_ref, progress=progress)) for p in pairs]


def pair_records(results: list[PairResult], cos_min: float = ALIGNED_COS_MIN,
                 eps_max: float = ALIGNED_EPS_MAX) -> list[dict]:
    """One plain dict per pair: base, variant, kind, mean_cos, mean_frob, region (and the refs)."""
    return [{"base": r.pair.base, "variant": r.pair.variant, "kind": r.pair.kind, "mean_cos": r.scan.mean_cos,
             "mean_frob": r.scan.mean_frob, "region": region(r.scan.mean_cos, r.scan.mean_frob, cos_min, eps_max),
             "base_ref": r.pair.base_ref, "variant_ref": r.pair.variant_ref} for r in results]


def boundary_table(results: list[PairResult], cos_min: float = ALIGNED_COS_MIN, eps_max: float = ALIGNED_EPS_MAX,
                   tau: tuple[float, float] | None = None):
    """Table 2's layout (pandas DataFrame indexed by pair): measured mean cos / eps and region, the paper's
    figures beside them where it measured the pair, and (with `tau` = (tau_cos, tau_frob)) eq. (3)'s count of
    shareable blocks."""
    import pandas as pd
    rows = []
    for r, rec in zip(results, pair_records(results, cos_min, eps_max)):
        p = r.pair.paper
        row = {"pair": r.pair.label, "kind": r.pair.kind, "mean cos": rec["mean_cos"], "mean ε": rec["mean_frob"],
               "region": rec["region"], "paper cos": p.get("cos"), "paper ε": p.get("eps"),
               "paper region": region(p["cos"], p["eps"], cos_min, eps_max) if p else None}
        if tau is not None:
            mask = r.scan.share_mask(*tau)
            row["shareable blocks"] = f"{sum(mask)}/{len(mask)}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("pair")


def profiles(results: list[PairResult], metric: str = "frob") -> dict[str, list[float | None]]:
    """pair label -> per-block values of `metric` ("frob" or "cos"), for overlaid profiles."""
    return {r.pair.label: [getattr(b, metric) for b in r.scan.blocks] for r in results}


def _eps_now(fam: registry.Family) -> float | None:
    return fam.variant.paper.get("table1", {}).get("eps_mean")


def measure_vintage(fam: registry.Family | None, progress: bool | None = None) -> dict[str, float | None]:
    """Measured eps-bar of the family's registered base -> instruct pair and of each older release (registry
    key -> eps-bar). Downloads real checkpoints: only for users who have (or can fetch) them. Empty when the family
    registers no older release, or is None (a custom pair)."""
    if fam is None or not fam.vintage:
        return {}
    out = {fam.key: scan(fam.base, fam.variant.ref, progress=progress).mean_frob}
    for key in fam.vintage:
        old = registry.get(key)
        out[key] = scan(old.base, old.variant.ref, progress=progress).mean_frob
    return out


def vintage_table(fam: registry.Family | None, measured: dict[str, float | None] | None = None):
    """Table 10 for one family: eps-bar of each older release vs the current one, and the tightening factor
    (old / new). Paper figures always; measured ones when `measured` (from `measure_vintage`) is given.

    Returns:
        pandas DataFrame (one row per older release), or None when the family registers no vintage pair.
    """
    import pandas as pd
    if fam is None or not fam.vintage:
        return None
    measured = measured or {}
    rows = []
    for key in fam.vintage:
        old = registry.get(key)
        t10 = old.variant.paper.get("table10", {})
        new_eps = _eps_now(fam)
        m_old, m_new = measured.get(key), measured.get(fam.key)
        rows.append({"older release": old.label, "current release": fam.label,
                     "paper ε̄ older": t10.get("eps_mean"), "paper ε̄ current": new_eps,
                     "paper tightening": t10.get("tightening"),
                     "tightening from paper ε̄": t10["eps_mean"] / new_eps if t10.get("eps_mean") and new_eps else None,
                     "measured ε̄ older": m_old, "measured ε̄ current": m_new,
                     "measured tightening": m_old / m_new if m_old is not None and m_new else None})
    return pd.DataFrame(rows).set_index("older release")
