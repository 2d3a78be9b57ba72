"""Each study's results JSON, built here (never in a notebook cell), with its schema documented and versioned.

Every document starts with the run's header (`params.Run.header`):

    schema_version  int     SCHEMA_VERSION; bumped when a key changes meaning or disappears
    study           str     the notebook's name, e.g. "01_granularity_gap"
    model           str|null  the registry key; null for a custom pair (`base`/`variant` overrides)
    base, variant   str     the references compared (notebooks with `variants` have no `variant`)
    references      {base, variant}
    custom          bool    true when the registry's defaults and figures do not apply
    defaults        {name: source}  where each defaulted parameter came from

followed by the study's own keys, listed in each builder's docstring. `results.write_results` adds an
`environment` entry when the document is written. The builders are pure (no I/O), so tests call them directly.
"""
from __future__ import annotations

from typing import Any

from .params import Run

__all__ = ["SCHEMA_VERSION", "granularity_gap", "boundary", "permutation", "interpolation", "linker_memory",
           "spectral", "panel", "panel_thresholds"]

SCHEMA_VERSION = 2  # 2: 05 adds benchmarks, benchmark_tuner, boundary_rule; its lm_eval says what ran


def _doc(study: str, run: Run, **keys: Any) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "study": study, **run.header(), **keys}


def granularity_gap(run: Run, result, gap: dict, stats: dict, comparison: dict | None = None) -> dict[str, Any]:
    """01. Keys: tau_cos, tau_frob; n_tensors, n_identical_tensors, dedup_bytes, variant_bytes, dedup_saving
    (tensor level, §3.1); n_blocks, n_shareable, mean_cos, mean_frob (eqs. 1-3, Table 1); shadow_sigma;
    tensor_mean {cos, frob, n} (modeldelta-style); aggregation (App. G/P: `granularity.aggregation_stats`);
    nonfinite_tensors, undefined_tensors; blocks [{index, cos, frob, cos_min, frob_max, shareable}];
    scan_seconds, scan_bytes; identity_basis (what byte-identical compares: for GGUF the quantized bytes);
    comparison (`granularity.side_by_side`, when `compare_to` was given, else null); architecture (the record
    used, "generic" for an unknown model type) and unknown_kind_tensors (block tensors in no sub-mean); MoE
    only: n_experts, moe_aggregation (the rule, text), experts {cos, frob} ([block][expert] per-expert means),
    router [{block, cos, frob}].

    Args:
        result: the `ScanResult`; gap: `granularity.granularity_gap(...)`; stats: `aggregation_stats(result)`;
        comparison: `granularity.compare_with(...)` or None.
    """
    tau_cos, tau_frob = run.thresholds
    mask = result.share_mask(tau_cos, tau_frob)
    return _doc(
        "01_granularity_gap", run, tau_cos=tau_cos, tau_frob=tau_frob,
        **{k: gap[k] for k in ("n_tensors", "n_identical_tensors", "dedup_bytes", "variant_bytes", "dedup_saving",
                                "n_blocks", "n_shareable", "mean_cos", "mean_frob")},
        shadow_sigma=result.shadow_sigma, tensor_mean=result.tensor_mean(), aggregation=stats,
        nonfinite_tensors=result.nonfinite_tensors, undefined_tensors=result.undefined_tensors,
        blocks=[{"index": b.index, "cos": b.cos, "frob": b.frob, "cos_min": b.cos_min, "frob_max": b.frob_max,
                 "shareable": s} for b, s in zip(result.blocks, mask)],
        scan_seconds=result.elapsed_s, scan_bytes=result.bytes_read, identity_basis=result.identity_basis,
        comparison=comparison, architecture=result.architecture,
        unknown_kind_tensors=result.unknown_kind_tensors, **_moe(result))


def _moe(result) -> dict[str, Any]:
    """The MoE part of 01's results: per-expert tables and router similarity; {} for a dense model."""
    if not result.n_experts:
        return {}
    from ..analyses.records import AGGREGATION
    return {"n_experts": result.n_experts, "moe_aggregation": AGGREGATION,
            "experts": {m: result.expert_table(m).values.tolist() for m in ("cos", "frob")},
            "router": [{"block": b.index, "cos": b.router_cos, "frob": b.router_frob} for b in result.blocks]}


def boundary(run: Run, results: list, vintage) -> dict[str, Any]:
    """02. Keys: cos_min, eps_max (the region rule); tau_cos, tau_frob; pairs [{base, variant, kind, mean_cos,
    mean_frob, region, base_ref, variant_ref}] (Table 2); n_blocks {pair label: blocks}; vintage (Table 10 rows
    or null).

    Args:
        results: `boundary.compare(...)`; vintage: `boundary.vintage_table(...)` (a DataFrame) or None.
    """
    from ..analyses.boundary import pair_records
    records = pair_records(results, run.cos_min, run.eps_max)
    tau_cos, tau_frob = run.thresholds
    return _doc("02_boundary", run, cos_min=run.cos_min, eps_max=run.eps_max, tau_cos=tau_cos,
                tau_frob=tau_frob, pairs=records, n_blocks={r.pair.label: len(r.scan.blocks) for r in results},
                vintage=None if vintage is None else vintage.reset_index().to_dict("records"))


def permutation(run: Run, report) -> dict[str, Any]:
    """03. Keys: model_type, seed, device, rescale [low, high], tolerance; block, controls {control: {attn_cos,
    attn_frob, mlp_cos, mlp_frob, max_abs_diff, relative_diff, ...}} (Table 3, `ControlReport.to_dict`);
    relative_output_diff {control: max |dy| / max |y|}.
    """
    from ..analyses.symmetry import TOLERANCE
    from ..io.models import pick_device
    return _doc("03_permutation", run, model_type=report.model_type, seed=run.seed,
                device=str(pick_device(run.device)), rescale=[run.rescale_low, run.rescale_high], tolerance=TOLERANCE,
                **report.to_dict(), relative_output_diff={k: r["relative_diff"] for k, r in report.rows.items()})


def interpolation(run: Run, result, ev, amp, shared: list[int]) -> dict[str, Any]:
    """04. Keys: corpus, n_sequences, seq_len, n_tokens, device, dtype, tied; alphas; loss_variant, loss_base;
    per_block_max_delta [block], per_block_delta [block][alpha] (Figure 3); full_model_curve,
    full_model_all_curve; summary (Table 13); shared (blocks substituted for App. H); amplification [layer],
    divergence [layer], amplification_interior_range; seconds.
    """
    return _doc("04_interpolation", run, corpus=ev.name, n_sequences=run.n_sequences, seq_len=run.seq_len,
                n_tokens=ev.n_tokens, device=result.device, dtype=result.dtype, tied=result.tied, alphas=result.alphas,
                loss_variant=result.loss_variant, loss_base=result.loss_base,
                per_block_max_delta=result.per_block_max_delta, per_block_delta=result.delta,
                full_model_curve=result.full_model, full_model_all_curve=result.full_model_all,
                summary=result.summary(), shared=shared, amplification=amp.factor, divergence=amp.divergence,
                amplification_interior_range=amp.interior_range, seconds=result.seconds)


_QUALITY_KEYS = ("loss_unshared", "loss_shared", "rel_loss_increase", "top1_agreement", "bleu", "rouge_l",
                 "exact_match")


def linker_memory(run: Run, linker, pairs: list[dict], scaling: list[dict], cold: dict, quality: dict,
                  corpus_name: str, tuner, n_checked: int, lm_eval: str, bench: dict | None = None,
                  bench_tuner=None, boundary: list[dict] | None = None) -> dict[str, Any]:
    """05. Keys: variants, tau_cos, tau_frob, device, dtype; pairs [{variant, blocks_shared, n_blocks, bytes_naive,
    bytes_shared, saving, bytes_read, bytes_total, expert_bytes_aliased, expert_bytes_read}] (Table 4; the expert
    bytes are MoE experts + router, 0 for dense models); n_variant_scaling [{n, bytes, bytes_naive, saving}]
    (Table 14); cold_start (Table 15, seconds); memory (`Linker.memory`); quality [{variant, loss_unshared,
    loss_shared, rel_loss_increase, top1_agreement, bleu, rouge_l, exact_match}]; lm_eval; eval_corpus;
    tuner {budget, tau_frob, blocks_shared, curve [{tau_frob, blocks_shared, saving, rel_drop, within_budget}]}
    (App. E); integrity_checked;
    benchmarks (null when none ran) {names, settings {bench: {num_fewshot, limit, metric, n_tasks}}, base
    {bench: score} (the donor), unshared / shared {variant: {bench: score}} (Table 7, scores in [0, 1]),
    retention {variant: {bench: shared / unshared or null}} (Table 6), capability_gain {bench: {variant: points
    over the base}}, delta_mmlu {variant: points} or null (Figure 2)};
    benchmark_tuner (null when not run) {objective, reference, budget, tau_frob, blocks_shared, curve [{tau_frob,
    blocks_shared, saving, score, rel_drop, within_budget}]}; boundary_rule [{objective, eps_mean, boundary,
    tuner_tau_frob, tuner_blocks_shared, tau_cos, tau_frob, blocks_shared, rule}] (App. E step 3).
    """
    from ..linker import benchmarks as b
    return _doc(
        "05_linker_memory", run, variants=list(quality), tau_cos=run.tau_cos, tau_frob=run.tau_frob,
        device=str(linker.device), dtype=str(linker.dtype).replace("torch.", ""),
        pairs=[{k: r[k] for k in ("variant", "blocks_shared", "n_blocks", "bytes_naive", "bytes_shared", "saving",
                                  "bytes_read", "bytes_total", "expert_bytes_aliased", "expert_bytes_read")}
               for r in pairs],
        n_variant_scaling=[{k: r[k] for k in ("n", "bytes", "bytes_naive", "saving")} for r in scaling],
        cold_start=cold, memory=linker.memory(),
        quality=[{"variant": v, **{k: q[k] for k in _QUALITY_KEYS}} for v, q in quality.items()],
        lm_eval=lm_eval, eval_corpus=corpus_name,
        tuner={"budget": tuner.budget, "tau_frob": tuner.tau_frob, "blocks_shared": tuner.blocks_shared,
               "curve": [{k: r[k] for k in ("tau_frob", "blocks_shared", "saving", "rel_drop", "within_budget")}
                         for r in tuner.curve]},
        integrity_checked=n_checked,
        benchmarks=None if bench is None else {
            "names": bench["benchmarks"], "settings": bench["settings"], "base": bench["base"],
            "unshared": bench["unshared"], "shared": bench["shared"], "retention": b.retention(bench),
            "capability_gain": {n: b.capability_gain(bench, n) for n in bench["benchmarks"]},
            "delta_mmlu": b.capability_gain(bench, "mmlu")},
        benchmark_tuner=None if bench_tuner is None else {
            "objective": bench_tuner.objective, "reference": bench_tuner.reference, "budget": bench_tuner.budget,
            "tau_frob": bench_tuner.tau_frob, "blocks_shared": bench_tuner.blocks_shared,
            "curve": [{k: r[k] for k in ("tau_frob", "blocks_shared", "saving", "score", "rel_drop",
                                         "within_budget")} for r in bench_tuner.curve]},
        boundary_rule=boundary)


def spectral(run: Run, res, abl: dict, ev, grad) -> dict[str, Any]:
    """06. Keys: blocks, top_r, lora_tol, erank_gamma, seed, device; svd_methods, n_matrices; sv_scaling,
    rotation_consistency, erank, lora_ratio (`SpectralResult.summary`); ablation {loss_variant, loss_sv_swapped,
    loss_rotation_broken, loss_restored}; eval_corpus {name, n_tokens}; gradient_locality {pearson, spearman,
    rel_grad, one_minus_cos, loss} (Table 17); elapsed_s.
    """
    from ..io.models import pick_device
    s = res.summary()
    return _doc(
        "06_spectral", run, blocks=res.blocks, top_r=run.top_r, lora_tol=run.lora_tol, erank_gamma=run.erank_gamma,
        seed=run.seed, device=str(pick_device(run.device)), svd_methods=s["svd_methods"], n_matrices=s["n_matrices"],
        sv_scaling=s["sv_scaling"], rotation_consistency=s["rotation_consistency"], erank=s["erank"],
        lora_ratio=s["lora_ratio"], ablation=abl, eval_corpus={"name": ev.name, "n_tokens": ev.n_tokens},
        gradient_locality={"pearson": grad.pearson, "spearman": grad.spearman, "rel_grad": grad.rel_grad,
                           "one_minus_cos": grad.one_minus_cos, "loss": grad.loss},
        elapsed_s=res.elapsed_s)


def panel_thresholds(run: Run) -> tuple[float, float] | None:
    """07's eq. (3) thresholds: (tau_cos, tau_frob) when the notebook was given either, else None (each pair's
    family's own, Table 8; `params.setup` fills unset ones from the `model` family, which would be wrong for
    the other families of the panel)."""
    return None if "tau_cos" in run.defaults and "tau_frob" in run.defaults else run.thresholds


def _records(df) -> list[dict] | None:
    return None if df is None else df.reset_index().to_dict("records")


def panel(run: Run, result, entries: list, gains: dict | None = None) -> dict[str, Any]:
    """07. Keys (besides the header, whose base/variant/references are null: a panel has many pairs):
    models [registry keys covered, or null for explicit pairs]; scheduler (address), n_workers, store (directory),
    wall_s; tau_cos, tau_frob (null: each family's own, Table 8); cos_min, eps_max (the region rule);
    counts {scanned, stored, failed};
    pairs [{label, family, base, variant, kind, default, base_ref, variant_ref, status ("scanned" | "stored":
    found in the store | "failed"), key (store key), error, seconds, worker, base_fingerprint,
    variant_fingerprint, n_blocks, mean_cos, mean_frob, region, tau_cos, tau_frob, n_shareable}];
    failures [{label, base_ref, variant_ref, error}];
    table1 [{pair, family, variant, blocks, cos min, cos max, ε min, ε max, cos mean, ε̄, shareable, paper blocks,
    paper cos range, paper ε range, paper ε̄}] ordered by ε̄; figure1 {pair label: {depth [0..1], eps [block]}};
    table2 [{pair, kind, mean cos, mean ε, region, paper cos, paper ε, paper region, shareable blocks}];
    table10 [{older release, current release, paper ε̄ older, paper ε̄ current, paper tightening, tightening from
    paper ε̄, measured ε̄ older, measured ε̄ current, measured tightening}] or null;
    figure2 {points [{family, label, eps_mean, gain, source ("measured" | "transcribed")}], pearson, n,
    paper {pearson, n}, without_gain [families]}.

    Args:
        result: `panel.run_panel(...)`'s `PanelRun`; entries: `panel_tables.load(result)`; gains: family key ->
            measured capability gain (Figure 2).
    """
    from ..analyses import panel_tables as t
    from ..analyses.boundary import ALIGNED_COS_MIN, ALIGNED_EPS_MAX, region
    tau = panel_thresholds(run)
    scans = {p.id: s for p, s in entries}
    rows = []
    for p, o in zip(result.pairs, result.outcomes):
        s = scans.get(p.id)
        tc, tf = t.thresholds(p, tau)
        row = {**p.to_dict(), **{k: o.get(k) for k in ("status", "key", "error", "seconds", "worker",
                                                       "base_fingerprint", "variant_fingerprint")},
               "n_blocks": None, "mean_cos": None, "mean_frob": None, "region": None, "tau_cos": tc, "tau_frob": tf,
               "n_shareable": None}
        row.pop("paper")
        if s is not None:
            row.update(n_blocks=len(s.blocks), mean_cos=s.mean_cos, mean_frob=s.mean_frob,
                       region=region(s.mean_cos, s.mean_frob), n_shareable=sum(s.share_mask(tc, tf)))
        rows.append(row)
    families = sorted({p.family for p in result.pairs if p.family}) or None
    return _doc("07_panel", run, base=None, variant=None, references=None, models=families,
                scheduler=result.scheduler, n_workers=result.n_workers, store=str(result.store.root),
                wall_s=result.wall_s, tau_cos=tau[0] if tau else None, tau_frob=tau[1] if tau else None,
                cos_min=ALIGNED_COS_MIN, eps_max=ALIGNED_EPS_MAX,
                counts={k: len(result.status(k)) for k in ("scanned", "stored", "failed")}, pairs=rows,
                failures=result.failures, table1=_records(t.table1(entries, tau)), figure1=t.depth_profiles(entries),
                table2=_records(t.table2(entries, tau=tau)), table10=_records(t.table10(entries)),
                figure2=t.figure2(entries, gains))
