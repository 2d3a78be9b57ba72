"""The paper's LinkerLLM tables from a `Linker`: Table 4 (pairs), Table 14 (N variants), Table 15 (cold start)."""
from __future__ import annotations

import time
from typing import Sequence

from ..io.models import decoder_layers, load_model
from .memory import Linker, storage_bytes

__all__ = ["load_table", "pair_table", "n_variant_scaling", "cold_start", "table4", "table14", "table15"]


def load_table(linker: Linker):
    """One row per recipient: its plan's status (cached / scanned / stale), blocks shared, tensors and MiB read
    from its checkpoint (pandas DataFrame)."""
    import pandas as pd
    return pd.DataFrame({n: {"plan": s, "shared": len(p.shared), "blocks": p.n_blocks,
                             "tensors read": len(linker.reports[n].names_read),
                             "MiB read": linker.reports[n].bytes_read / 2**20,
                             "MiB in checkpoint": linker.reports[n].bytes_total / 2**20}
                         for n, (p, s) in linker.plans.items()}).T


def pair_table(linker: Linker) -> list[dict]:
    """Table 4 per recipient: the donor + that recipient alone, naive (two independent models) vs shared bytes.

    MoE recipients also say how many of those bytes are experts and router: `expert_bytes_aliased` (held once,
    in the donor's aliased blocks) and `expert_bytes_read` (stored expert bytes read for the unique blocks);
    both 0 for a dense model."""
    rows = []
    for name, model in linker.recipients.items():
        naive = storage_bytes(linker.donor) + storage_bytes(model)
        shared = storage_bytes(linker.donor, model)
        rep = linker.reports[name]
        rows.append({"variant": name, "blocks_shared": len(rep.shared), "n_blocks": len(decoder_layers(model)),
                     "bytes_naive": naive, "bytes_shared": shared, "saving": 1 - shared / naive,
                     "bytes_read": rep.bytes_read, "bytes_total": rep.bytes_total,
                     "expert_bytes_aliased": rep.expert_bytes_aliased, "expert_bytes_read": rep.expert_bytes_read})
    return rows


def n_variant_scaling(linker: Linker, names: Sequence[str] | None = None) -> list[dict]:
    """Table 14: bytes of the donor plus the first N-1 recipients, for N = 1..1+len(names), and the saving
    against N independent models (1 - bytes / naive)."""
    names = list(linker.recipients) if names is None else list(names)
    rows = []
    for n in range(1, len(names) + 2):
        models = [linker.donor] + [linker.recipients[k] for k in names[:n - 1]]
        naive = sum(storage_bytes(m) for m in models)
        held = storage_bytes(*models)
        rows.append({"n": n, "bytes": held, "bytes_naive": naive, "saving": 1 - held / naive,
                     "marginal": held - rows[-1]["bytes"] if rows else held})
    return rows


def cold_start(linker: Linker, ref, name: str = "_cold") -> dict:
    """Table 15: seconds of scan, build (meta), alias and read-unique/move for one recipient with no plan
    (forced rescan), the total with a cached plan, and the naive `from_pretrained` time, beside each other."""
    linker.add(name, ref, refresh_plan=True)
    rep, (plan, _) = linker.reports[name], linker.plans[name]
    linker.remove(name)
    t0 = time.perf_counter()
    linker.add(name, ref)
    cached_total = time.perf_counter() - t0
    cached_status = linker.plans[name][1]
    linker.remove(name)
    t0 = time.perf_counter()
    naive = load_model(ref, device=str(linker.device), dtype=linker.dtype)
    naive_s = time.perf_counter() - t0
    del naive
    return {"scan_s": plan.scan_s, "build_s": rep.build_s, "alias_s": rep.alias_s,
            "load_unique_s": rep.load_unique_s,
            "total_s": plan.scan_s + rep.build_s + rep.alias_s + rep.load_unique_s,
            "cached_plan_total_s": cached_total, "cached_plan_status": cached_status, "naive_s": naive_s,
            "donor_load_s": linker.donor_load_s}


def _mib(x: int) -> float:
    return x / 2**20


def table4(rows: list[dict], paper: dict[str, dict] | None = None):
    """Table 4's layout (MiB): naive vs lazy (shared) vs saving per pair, with the paper's row where it has one.

    Args:
        rows: `pair_table` rows.
        paper: variant name -> the registry's `paper["table4"]` dict (naive_mib, lazy_mib, save, shared).
    """
    import pandas as pd
    paper = paper or {}
    out = []
    for r in rows:
        p = paper.get(r["variant"]) or {}
        out.append({"variant": r["variant"], "shared": f"{r['blocks_shared']}/{r['n_blocks']}",
                    "naive MiB": _mib(r["bytes_naive"]), "lazy MiB": _mib(r["bytes_shared"]),
                    "save": r["saving"], "read from disk MiB": _mib(r["bytes_read"]),
                    # MoE only (NaN columns of dense models are dropped below)
                    "experts aliased MiB": _mib(r["expert_bytes_aliased"]) if r.get("expert_bytes_aliased") else None,
                    "experts read MiB": _mib(r["expert_bytes_read"]) if r.get("expert_bytes_aliased") else None,
                    "paper shared": p.get("shared"), "paper naive MiB": p.get("naive_mib"),
                    "paper lazy MiB": p.get("lazy_mib"), "paper save": p.get("save")})
    return pd.DataFrame(out).set_index("variant").dropna(axis=1, how="all")


def table14(rows: list[dict], paper_mib: list[float] | None = None):
    """Table 14's layout: MiB held and saving for N = 1..k co-resident variants (paper MiB beside, if given)."""
    import pandas as pd
    df = pd.DataFrame([{"N": r["n"], "MiB": _mib(r["bytes"]), "naive MiB": _mib(r["bytes_naive"]),
                        "save": r["saving"], "marginal MiB": _mib(r["marginal"])} for r in rows]).set_index("N")
    if paper_mib:
        df["paper MiB"] = pd.Series({i: m for i, m in enumerate(paper_mib, 1)})
        df["paper save"] = pd.Series({i: 1 - m / (i * paper_mib[0]) for i, m in enumerate(paper_mib, 1)})
    return df


def table15(cold: dict, paper: dict | None = None):
    """Table 15's layout (seconds): scan, build, alias, read-unique/move, total, cached-plan total, naive load."""
    import pandas as pd
    cols = {"scan": "scan_s", "build (meta)": "build_s", "alias": "alias_s", "read unique + move": "load_unique_s",
            "total": "total_s", "total, cached plan": "cached_plan_total_s", "naive": "naive_s"}
    rows = {"measured": {k: cold[v] for k, v in cols.items()}}
    if paper:
        rows["paper"] = {"scan": paper.get("scan"), "alias": paper.get("alias"),
                         "read unique + move": paper.get("move"), "total": paper.get("total"),
                         "naive": paper.get("naive")}
    return pd.DataFrame(rows).T
