"""Notebook 01's analyses: tensor-level identity vs block-level similarity (paper section 3.1), the
Appendix G / P aggregation statistics, and the blocks x sub-parameters breakdown."""
from __future__ import annotations

from ..io.registry import Variant
from .records import AGGREGATION, ScanResult, mean_defined

__all__ = ["architecture_note", "granularity_gap", "aggregation_stats", "subparam_matrix", "paper_vs_measured", "side_by_side",
           "compare_with"]


def granularity_gap(result: ScanResult, tau_cos: float, tau_frob: float) -> dict:
    """Tensor-level identity vs block-level similarity (paper section 3.1), with the one-sentence statement."""
    mask = result.share_mask(tau_cos, tau_frob)
    saving = result.dedup_bytes / result.variant_bytes if result.variant_bytes else 0.0
    out = {"n_tensors": result.n_tensors, "n_identical_tensors": result.n_identical,
           "dedup_bytes": result.dedup_bytes, "variant_bytes": result.variant_bytes, "dedup_saving": saving,
           "n_blocks": len(result.blocks), "n_shareable": sum(mask), "mean_cos": result.mean_cos,
           "mean_frob": result.mean_frob, "tau_cos": tau_cos, "tau_frob": tau_frob}
    fmt = lambda x, spec: "undefined" if x is None else format(x, spec)  # noqa: E731
    out["identity_basis"] = result.identity_basis
    basis = "" if result.identity_basis.startswith("stored bytes") else f" (compared as {result.identity_basis})"
    out["sentence"] = (
        f"{result.n_identical} of {result.n_tensors} tensors are byte-identical{basis}, so tensor-hash dedup saves "
        f"{saving:.1%} of the variant's {result.variant_bytes / 2**20:.1f} MiB; yet at the block level the mean "
        f"cosine is {fmt(result.mean_cos, '.5f')} and the mean relative Frobenius distance "
        f"{fmt(result.mean_frob, '.4f')}, and {sum(mask)}/{len(mask)} blocks pass eq. (3) at "
        f"tau_cos={tau_cos:g}, tau_frob={tau_frob:g}.")
    return out


def aggregation_stats(result: ScanResult) -> dict:
    """Appendix G / Table 9 and Appendix P statistics: mean-over-K vs max-over-K and the global extremes."""
    recs = [r for r in result.tensors if r.group == "block"]
    frobs = [(r.frob, r.name) for r in recs if r.frob is not None]
    coss = [(r.cos, r.name) for r in recs if r.cos is not None]
    gmax, gmin = max(frobs, default=(None, None)), min(coss, default=(None, None))
    return {"mean_eps": result.mean_frob,
            "maxK_mean": mean_defined(b.frob_max for b in result.blocks),
            "global_max": gmax[0], "global_max_tensor": gmax[1],
            "mean_cos": result.mean_cos, "minK_mean_cos": mean_defined(b.cos_min for b in result.blocks),
            "global_min_cos": gmin[0], "global_min_cos_tensor": gmin[1]}


def subparam_matrix(result: ScanResult, metric: str = "frob"):
    """Blocks x sub-parameters table of one per-tensor metric ("cos" or "frob"): the App. G/P breakdown."""
    import pandas as pd
    rows = [{"block": r.block, "sub": r.sub, metric: getattr(r, metric)} for r in result.tensors
            if r.group == "block"]
    return pd.DataFrame(rows).pivot(index="block", columns="sub", values=metric)


def paper_vs_measured(result: ScanResult, gap: dict, stats: dict, spec: Variant | None):
    """Table 1 / Table 8 / Table 9 / section 3.1 figures beside the measured ones (pandas DataFrame).

    Args:
        result: the scan; gap: `granularity_gap(result, ...)`; stats: `aggregation_stats(result)`.
        spec: the registry's `Variant` for this exact pair (`params.Run.spec`); None gives a measured-only table.
    """
    cos = [b.cos for b in result.blocks if b.cos is not None]
    eps = [b.frob for b in result.blocks if b.frob is not None]
    summary = result.summary() | {"cos_range": (min(cos), max(cos)) if cos else None,
                                  "eps_range": (min(eps), max(eps)) if eps else None,
                                  "n_shareable": gap["n_shareable"], "n_blocks": gap["n_blocks"]}
    import pandas as pd
    p = spec.paper if spec else {}
    e = spec.external if spec else {}
    t1, t4, t9, s31 = p.get("table1", {}), p.get("table4", {}), p.get("table9", {}), p.get("section3_1", {})
    md = e.get("modeldelta", {})
    rows = [
        ("blocks", summary["n_blocks"], t1.get("blocks"), "Table 1"),
        ("tensors", summary["n_tensors"], s31.get("n_tensors"), "section 3.1"),
        ("byte-identical tensors", summary["n_identical_tensors"], s31.get("identical_tensors"), "section 3.1"),
        ("cos range over blocks", summary["cos_range"], t1.get("cos_range"), "Table 1"),
        ("eps range over blocks", summary["eps_range"], t1.get("eps_range"), "Table 1"),
        ("eps mean (eps-bar)", summary["mean_frob"], t1.get("eps_mean"), "Table 1 / 8"),
        ("blocks shareable", f"{summary['n_shareable']}/{summary['n_blocks']}", t4.get("shared"), "Table 4 / 8"),
        ("max-over-K mean eps", stats["maxK_mean"], t9.get("maxK_mean"), "Table 9"),
        ("global max eps", stats["global_max"], t9.get("global_max"), "Table 9"),
        ("whole-model tensor mean rel. Frobenius", summary["tensor_mean_frob"], md.get("rel_frob"),
         "modeldelta (external)"),
        ("whole-model tensor mean cosine", summary["tensor_mean_cos"], md.get("cos"), "modeldelta (external)"),
        ("Shadow-FT sigma", summary["shadow_sigma"], e.get("shadow_ft_sigma"), "Shadow-FT (external)"),
    ]
    return pd.DataFrame(rows, columns=["quantity", "measured", "reported", "source"]).set_index("quantity")


def side_by_side(a: ScanResult, b: ScanResult, labels: tuple[str, str] = ("quantization", "post-training")) -> dict:
    """ε(i) and cos(i) of two pairs of one architecture, block by block: which moves a block more?

    The question of a quantized file against its original (pair `a`: safetensors base -> GGUF) beside the
    family's post-training (pair `b`: base -> instruct). Both ε(i) are relative to each pair's own base.

    Args:
        a, b: scans with the same number of blocks.
        labels: names of the two pairs, used in the table and the sentence.

    Returns:
        {"labels", "blocks": [{index, eps_a, eps_b, cos_a, cos_b, ratio (eps_a / eps_b), more (the label whose
        ε(i) is larger)}], "mean_eps": {label: mean ε}, "n_blocks_a_more": blocks where `a` moves more,
        "ratio_range": (min, max) of ratio, "sentence"} — JSON-ready.

    Raises:
        ValueError: the scans have different block counts (naming both pairs).
    """
    if len(a.blocks) != len(b.blocks):
        raise ValueError(f"cannot compare {a.base} -> {a.variant} ({len(a.blocks)} blocks) with {b.base} -> "
                         f"{b.variant} ({len(b.blocks)} blocks) block by block: compare pairs of one architecture.")
    rows = []
    for x, y in zip(a.blocks, b.blocks):
        ratio = x.frob / y.frob if x.frob is not None and y.frob else None
        more = None if x.frob is None or y.frob is None else labels[0] if x.frob > y.frob else labels[1]
        rows.append({"index": x.index, "eps_a": x.frob, "eps_b": y.frob, "cos_a": x.cos, "cos_b": y.cos,
                     "ratio": ratio, "more": more})
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    n_a = sum(r["more"] == labels[0] for r in rows)
    fmt = lambda x: "undefined" if x is None else f"{x:.4g}"  # noqa: E731
    span = f"{min(ratios):.3g}-{max(ratios):.3g}" if ratios else "undefined"
    sentence = (f"{labels[0]} moves {n_a} of {len(rows)} blocks more than {labels[1]} does (ε ratio per block "
                f"{span}; mean ε {fmt(a.mean_frob)} vs {fmt(b.mean_frob)}).")
    return {"labels": list(labels), "blocks": rows, "mean_eps": {labels[0]: a.mean_frob, labels[1]: b.mean_frob},
            "n_blocks_a_more": n_a, "ratio_range": (min(ratios), max(ratios)) if ratios else None,
            "sentence": sentence}


def compare_with(result: ScanResult, other_variant: str, progress: bool | None = None) -> dict:
    """Scan `result`'s base against a second variant and put the two ε(i) profiles `side_by_side`.

    Notebook 01's `compare_to`: with `result` = base -> its GGUF quantization and `other_variant` the family's
    post-trained checkpoint, says block by block whether quantization or post-training moves it more.
    """
    from pathlib import Path

    from .scan import scan
    other = scan(result.base, other_variant, progress=progress)
    labels = tuple(Path(str(r)).name or str(r) for r in (result.variant, other_variant))
    if labels[0] == labels[1]:
        labels = (str(result.variant), str(other_variant))
    return side_by_side(result, other, labels=labels)


def architecture_note(result: ScanResult) -> str:
    """What the scan knew about the layout: the record used, the tensors of unknown kind (in the block means,
    in no sub-mean), and for MoE how the experts are aggregated (`records.AGGREGATION`)."""
    out = [f"architecture: {result.architecture} (model_type {result.model_type})."]
    unknown = result.unknown_kind_tensors
    if unknown:
        out.append(f"{len(unknown)} block tensor(s) of unknown kind are in the block means but in no attention / "
                   f"MLP sub-mean: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}. Add "
                   f"linker_nb/_data/architectures/{result.model_type}.json to classify them.")
    else:
        out.append("Every block tensor has a known kind.")
    if result.n_experts:
        out.append(f"{result.n_experts} experts per MoE block. {AGGREGATION}")
    return " ".join(out)
