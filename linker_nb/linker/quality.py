"""Quality kept by a shared recipient (paper App. D, E, O): loss, top-1 agreement, generation overlap, auto-tuner.

Every comparison is the shared recipient (blocks aliased to the donor) against the same variant unshared
(loaded normally), on the same tokens. BLEU is `sacrebleu`'s corpus BLEU and ROUGE-L is `rouge_score`'s F-measure,
both on a 0-1 scale as Appendix O reports them, with the unshared output as the reference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..analyses.loss import lm_loss, next_token_predictions
from ..io import corpus as _corpus

__all__ = ["prompt_set", "greedy_outputs", "generation_overlap", "compare", "compare_all", "table", "examples_table",
           "lm_eval_status", "TunerResult", "BOUNDARY_EPS",
           "tune_threshold", "tuner_grid", "boundary_rule", "boundary_table"]


PROMPT_KINDS = ("instruct", "qa")  # "chat" would parse every stdlib module with ast (~10 s) for 4 prompts


def prompt_set(n: int = 12) -> list[str]:
    """A fixed, deterministic prompt set (App. O: 12 prompts): alternately from the "instruct" (pydoc topics) and
    "qa" (builtin docstrings) post-training sets of `corpus.instruction_pairs`, spread over each set."""
    pools = [_corpus.instruction_pairs(k) for k in PROMPT_KINDS]
    return [pools[j % 2][(j // 2) * 37 % len(pools[j % 2])][0] for j in range(n)]


def greedy_outputs(model, tokenizer, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy continuation of each prompt (decoded, prompt removed), all prompts in one left-padded batch.

    Both models of a comparison see the same batch, so padding affects them alike.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = side
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)


def generation_overlap(reference: list[str], candidate: list[str]) -> dict:
    """BLEU (sacrebleu corpus BLEU / 100) and mean ROUGE-L F1 (rouge_score) of `candidate` against `reference`,
    plus the fraction of exact matches."""
    import sacrebleu
    from rouge_score import rouge_scorer
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need equally many non-zero outputs, got {len(reference)} and {len(candidate)}")
    bleu = sacrebleu.corpus_bleu(candidate, [reference]).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = sum(scorer.score(r, c)["rougeL"].fmeasure for r, c in zip(reference, candidate)) / len(reference)
    exact = sum(r == c for r, c in zip(reference, candidate)) / len(reference)
    return {"bleu": bleu, "rouge_l": rouge, "exact_match": exact}


def compare(unshared, shared, tokens: torch.LongTensor, *, tokenizer=None, prompts: list[str] | None = None,
            max_new_tokens: int = 24, batch_size: int = 8) -> dict:
    """Quality of `shared` relative to `unshared` on the same tokens (and prompts, when given).

    Args:
        unshared, shared: the variant loaded normally / with blocks aliased to the donor.
        tokens: [n, L] held-out token ids.
        tokenizer, prompts: for the greedy-generation overlap (skipped when either is None).

    Returns:
        loss_unshared, loss_shared (nats), rel_loss_increase, top1_agreement (fraction of positions where the
        argmax next tokens agree), and bleu / rouge_l / exact_match when prompts are given.
    """
    lu, ls = lm_loss(unshared, tokens, batch_size), lm_loss(shared, tokens, batch_size)
    agree = (next_token_predictions(unshared, tokens, batch_size) ==
             next_token_predictions(shared, tokens, batch_size)).float().mean().item()
    out = {"loss_unshared": lu, "loss_shared": ls, "rel_loss_increase": (ls - lu) / lu, "top1_agreement": agree}
    if tokenizer is not None and prompts:
        ref = greedy_outputs(unshared, tokenizer, prompts, max_new_tokens)
        cand = greedy_outputs(shared, tokenizer, prompts, max_new_tokens)
        out |= generation_overlap(ref, cand) | {"examples": list(zip(prompts[:3], ref[:3], cand[:3]))}
    return out


def compare_all(unshared: dict, shared: dict, tokens: torch.LongTensor, tokenizer, prompts: list[str],
                max_new_tokens: int = 24) -> dict[str, dict]:
    """`compare` for every recipient: name -> its quality dict (unshared[name] against shared[name])."""
    return {v: compare(unshared[v], shared[v], tokens, tokenizer=tokenizer, prompts=prompts,
                       max_new_tokens=max_new_tokens) for v in unshared}


QUALITY_COLUMNS = ("loss_unshared", "loss_shared", "rel_loss_increase", "top1_agreement", "bleu", "rouge_l",
                   "exact_match")


def table(quality: dict[str, dict]):
    """One row per recipient: loss shared vs unshared, top-1 agreement, BLEU / ROUGE-L, exact match (DataFrame)."""
    import pandas as pd
    return pd.DataFrame({v: {k: q[k] for k in QUALITY_COLUMNS} for v, q in quality.items()}).T


def examples_table(quality: dict):
    """One recipient's greedy generations, prompt by prompt: unshared vs shared (DataFrame)."""
    import pandas as pd
    return pd.DataFrame(quality["examples"], columns=["prompt", "unshared", "shared"])


def lm_eval_status() -> str:
    """Whether lm-eval can run the benchmarks here (`benchmarks.status`)."""
    from .benchmarks import status
    return status()


# -- threshold auto-tuner (App. E) ---------------------------------------------------------------------------
BOUNDARY_EPS = 0.10   # App. E step 3: a scan with eps-bar above this is a boundary case


@dataclass
class TunerResult:
    """The tuner's curve and choice.

    Attributes:
        budget: max acceptable relative quality drop (calibration-loss increase, or task-score decrease).
        curve: rows {tau_frob, blocks_shared, shared, bytes_saved, saving, loss | score, rel_drop, within_budget}.
        tau_frob: the widest tau_frob within budget (None: not even sharing nothing qualifies).
        blocks_shared: blocks shared at that tau_frob.
        objective: "calibration loss" or the lm-eval task whose score was kept within budget.
        reference: the objective's value on the unshared variant (what rel_drop is relative to).
    """
    budget: float
    tau_cos: float
    curve: list[dict]
    tau_frob: float | None
    blocks_shared: int
    objective: str = "calibration loss"
    reference: float | None = None

    def table(self):
        import pandas as pd
        return pd.DataFrame(self.curve).set_index("tau_frob")

    def to_dict(self) -> dict:
        return asdict(self)


def tuner_grid(plan, extra: tuple[float, ...] = ()) -> list[float]:
    """tau_frob values where the shared set can change: 0 and every block's eps(i) (plus `extra`), sorted."""
    vals = {0.0, *(float(b["frob"]) for b in plan.blocks if b["frob"] is not None), *map(float, extra)}
    return sorted(vals)


def _rel_drop(value: float, ref: float, higher_is_better: bool) -> float:
    """Relative quality drop of `value` against the unshared `ref`: loss increase, or score decrease."""
    diff = (ref - value) if higher_is_better else (value - ref)
    if ref == 0:
        return 0.0 if diff <= 0 else float("inf")  # a zero score cannot drop relatively; any loss is infinite
    return diff / abs(ref)


def tune_threshold(linker, ref, plan, tokens: torch.LongTensor | None, budget: float, *, unshared=None,
                   grid: list[float] | None = None, batch_size: int = 8, objective=None) -> TunerResult:
    """Appendix E: the widest tau_frob whose shared set keeps the relative quality drop <= budget.

    For each tau_frob on the grid the shared set comes from the plan's stored block table (no rescan) at the
    linker's tau_cos; the recipient is lazily built with that set, scored, then dropped. Shared sets repeat
    along the grid; each distinct one is scored once.

    Args:
        linker: a `aliasing.Linker` (its donor is the base).
        ref: the variant checkpoint.
        plan: its `SharePlan` against the linker's base.
        tokens: [n, L] calibration tokens (for the default objective; unused with `objective`).
        budget: max relative drop, e.g. 0.05 for 5%.
        unshared: the variant loaded normally (loaded here when None).
        grid: tau_frob values (default `tuner_grid(plan)`).
        objective: None for the calibration loss on `tokens` (relative increase), or a `benchmarks.Objective`
            (e.g. `benchmarks.task_objective("piqa", tok)`: the relative decrease of an lm-eval task's score).
    """
    from ..io.models import load_model
    from .memory import storage_bytes
    if not budget >= 0:
        raise ValueError(f"quality_budget = {budget} must be >= 0 (a relative quality drop, e.g. 0.05 for 5%)")
    if objective is None:
        if tokens is None:
            raise ValueError("the calibration-loss tuner needs calibration tokens, or pass an `objective`")
        name, higher, key = "calibration loss", False, "loss"
        measure = lambda m: lm_loss(m, tokens, batch_size)  # noqa: E731
    else:
        name, higher, key, measure = objective.name, objective.higher_is_better, "score", objective.score
    if unshared is None:
        unshared = load_model(ref, device=str(linker.device), dtype=linker.dtype)
    reference = measure(unshared)
    full = storage_bytes(unshared)
    curve, cache = [], {}
    for tau in grid if grid is not None else tuner_grid(plan):
        shared = tuple(i for i, m in enumerate(plan.mask(linker.tau_cos, tau)) if m)
        if shared not in cache:
            tmp = f"_tuner_{len(cache)}"
            model = linker.add(tmp, ref, shared=shared)
            cache[shared] = (measure(model), full - (storage_bytes(linker.donor, model) - storage_bytes(linker.donor)))
            linker.remove(tmp)
        value, saved = cache[shared]
        rel = _rel_drop(value, reference, higher)
        curve.append({"tau_frob": tau, "blocks_shared": len(shared), "shared": list(shared), "bytes_saved": saved,
                      "saving": saved / full, key: value, "rel_drop": rel, "within_budget": rel <= budget})
    ok = [row for row in curve if row["within_budget"]]
    best = ok[-1] if ok else None
    return TunerResult(budget=budget, tau_cos=linker.tau_cos, curve=curve,
                       tau_frob=best["tau_frob"] if best else None, blocks_shared=best["blocks_shared"] if best else 0,
                       objective=name, reference=reference)


def boundary_rule(plan, *tuners: TunerResult, eps_boundary: float = BOUNDARY_EPS) -> list[dict]:
    """App. E step 3 over each tuner's choice: when the scan's eps-bar (mean eps(i) over blocks) exceeds
    `eps_boundary`, the family is a boundary case and the recommendation stays at the conservative tier
    (tau_cos 0.999, tau_frob 0.05) whatever the tuner found; otherwise the tuner's tau_frob stands.

    Returns:
        One row per tuner: {objective, eps_mean, boundary, tuner_tau_frob, tuner_blocks_shared, tau_cos,
        tau_frob (recommended), blocks_shared (at the recommendation), rule}.
    """
    from ..io.registry import CONSERVATIVE
    eps = [b["frob"] for b in plan.blocks if b["frob"] is not None]
    eps_mean = sum(eps) / len(eps) if eps else float("nan")
    boundary = eps_mean > eps_boundary
    rows = []
    for t in tuners:
        tc, tf = CONSERVATIVE if boundary else (t.tau_cos, t.tau_frob)
        n = sum(plan.mask(tc, tf)) if tf is not None else 0
        rule = (f"eps-bar {eps_mean:.4f} > {eps_boundary}: boundary case, stay at the conservative tier"
                if boundary else f"eps-bar {eps_mean:.4f} <= {eps_boundary}: the tuner's tau_frob stands")
        rows.append({"objective": t.objective, "eps_mean": eps_mean, "boundary": boundary,
                     "tuner_tau_frob": t.tau_frob, "tuner_blocks_shared": t.blocks_shared, "tau_cos": tc,
                     "tau_frob": tf, "blocks_shared": n, "rule": rule})
    return rows


def boundary_table(rows: list[dict]):
    """`boundary_rule`'s rows as a DataFrame, one row per tuner objective."""
    import pandas as pd
    return pd.DataFrame(rows).set_index("objective")
