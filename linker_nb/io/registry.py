"""Short keys for the model pairs of the paper, with its reported figures for side-by-side display.

A `Family` is one base checkpoint with its derivatives (post-trained, continued-pretrained, vintage or
unrelated). Every number under `paper` is transcribed from `block-level-structure-paper.txt` (the table is
named in the key); `external` holds figures published elsewhere (`external-figures.md`). None of them is
measured here: notebooks put them beside what they measure.

`tiny` is the embedded family trained by `scripts/train_tiny_family.py`; it needs no download.

Thresholds: Table 8 gives tau_frob per family. tau_cos is 0.999 (App. E's conservative tier; App. J for
Gemma) except where Table 1's cosine range together with Table 4's shared-block count implies a lower one:
Qwen2.5-0.5B has block cosines of 0.998 yet shares 24/24, so tau_cos <= 0.998; Llama-3.2-1B/3B have
0.990-0.995 yet share 13/16 and 28/28 (Table 6's footnote: at 0.999 Llama-3.2-3B shares only 5/28), so 0.99.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Variant", "Family", "REGISTRY", "UnknownModel", "get", "keys", "resolve_pair", "TINY_DIR",
           "CONSERVATIVE", "PAPER_INTERIOR_BAND", "reported"]

TINY_DIR = Path(__file__).resolve().parent.parent / "tiny_family"
PAPER_INTERIOR_BAND = (0.7, 2.2)  # App. H / Figure 6: interior amplification factors of Qwen2.5-1.5B/3B
CONSERVATIVE = (0.999, 0.05)  # App. E "conservative tier" (tau_cos, tau_frob) for unrecognised families


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Variant:
    """One derivative of a family's base.

    Attributes:
        ref: hub id or local directory.
        kind: "post-trained", "continued-pretraining", "independent" or "vintage".
        paper: figures the paper reports for base -> this variant (keys name the table).
        external: published figures from outside the paper for the same pair.
    """
    ref: str
    kind: str = "post-trained"
    paper: dict = field(default_factory=dict)
    external: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    key: str
    label: str
    base: str
    variants: dict[str, Variant]
    default_variant: str = "instruct"
    tau_cos: float = CONSERVATIVE[0]   # Table 8 / App. E defaults
    tau_frob: float = CONSERVATIVE[1]
    cross: tuple[tuple[str, str], ...] = ()   # variant -> variant pairs (Table 2's cross-variant row)
    vintage: tuple[str, ...] = ()            # registry keys of older releases of this family (Table 10)
    paper: dict = field(default_factory=dict)  # family-level figures (Tables 3, 11, 13-15, App. H)
    eval_seq_len: int = 512
    eval_sequences: int = 24  # §3.4: 24 evaluation sequences of eval_seq_len tokens

    @property
    def variant(self) -> Variant:
        return self.variants[self.default_variant]


def _v(ref, kind="post-trained", **kw) -> Variant:
    ext = kw.pop("external", {})
    return Variant(ref, kind, kw, ext)


def _md(frob, cos):  # modeldelta whole-model tensor mean (external-figures.md)
    return {"modeldelta": {"rel_frob": frob, "cos": cos}}


def _t1(blocks, cos_range, eps_range, eps_mean):
    return {"table1": {"blocks": blocks, "cos_range": cos_range, "eps_range": eps_range, "eps_mean": eps_mean}}


def _t4(tau, shared, naive, lazy, save):
    return {"table4": {"tau_frob": tau, "shared": shared, "naive_mib": naive, "lazy_mib": lazy, "save": save}}


def _t6(saved, mmlu, arc, hella, wino):
    return {"table6": {"saved": saved, "mmlu": mmlu, "arc": arc, "hellaswag": hella, "winogrande": wino}}


REGISTRY: dict[str, Family] = {}


def _add(f: Family) -> None:
    REGISTRY[f.key] = f


_add(Family(
    "qwen05b", "Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B",
    {"instruct": _v("Qwen/Qwen2.5-0.5B-Instruct", **_t1(24, "0.998", (0.04, 0.05), 0.045),
                    **_t4(0.06, "24/24", 1900, 1210, 0.36), **_t6(0.36, 102, 95, 96, 100),
                    external=_md(0.0715, 0.997456))},
    tau_cos=0.998, tau_frob=0.06,
    paper={"table11": {"tol": 0.05, "blocks": 24, "mean_ratio": 1.219, "min": 1.194, "max": 1.223},
           "appE": "5% budget -> tau_frob 0.06 (24/24)"}))
_add(Family(
    "qwen15b", "Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B",
    {"instruct": _v("Qwen/Qwen2.5-1.5B-Instruct", table13={"eps_mean": 0.013}, external=_md(0.00867, 0.999952)),
     "coder": _v("Qwen/Qwen2.5-Coder-1.5B", "continued-pretraining", table2={"cos": 0.704, "eps": 0.358}),
     "math": _v("Qwen/Qwen2.5-Math-1.5B", "continued-pretraining", table2={"cos": 0.526, "eps": 0.469})},
    paper={"table3": {"block": 14, "attn_cos": {"ref": 0.9999, "head_perm": 0.1344, "rmsnorm": 0.9666},
                      "attn_frob": {"ref": 0.0037, "head_perm": 0.6527, "rmsnorm": 0.0856},
                      "mlp_perm": {"mlp_cos_ref": 1.000, "mlp_cos": 0.002, "max_abs_output_diff": 9.5e-6}},
           "table13": {"per_block_max_delta": 0.0062, "argmax_block": 14, "full_model_peak_delta": -0.012,
                       "full_model_argmin_alpha": 0.4},
           "appH": {"interior_range": (0.7, 2.2), "n_inputs": 100}}))
_add(Family(
    "qwen3b", "Qwen2.5-3B", "Qwen/Qwen2.5-3B",
    {"instruct": _v("Qwen/Qwen2.5-3B-Instruct", **_t1(36, "0.999+", (0.01, 0.02), 0.011),
                    **_t4(0.05, "36/36", 11988, 6588, 0.45), **_t6(0.45, 99, 97, 98, 98),
                    table9={"mean_eps": 0.007, "maxK_mean": 0.014, "global_max": 0.018},
                    appO={"bleu": 0.50, "rougeL": 0.42}, external=_md(0.00859, 0.999954)),
     "coder": _v("Qwen/Qwen2.5-Coder-3B", "continued-pretraining", table2={"cos": 0.752, "eps": 0.305})},
    tau_frob=0.05,
    paper={"table11": {"tol": 0.05, "blocks": 36, "mean_ratio": 1.180, "min": 0.800, "max": 1.206},
           "table14_mib": [5994, 6588, 7182, 7776, 8370],
           "table15_s": {"cpu_load": 1.4, "scan": 19.8, "alias": 0.6, "move": 0.3, "total": 22.1, "naive": 5.8},
           "table12": {"linker_save": 0.45, "deltazip_save": 0.83},
           "appH": {"interior_range": (0.7, 2.2), "n_inputs": 100}}))
_add(Family(
    "qwen7b", "Qwen2.5-7B", "Qwen/Qwen2.5-7B",
    {"instruct": _v("Qwen/Qwen2.5-7B-Instruct", **_t1(28, "0.999+", (0.01, 0.02), 0.015),
                    **_t4(0.05, "28/28", 29136, 16648, 0.43), **_t6(0.43, 102, 101, 101, 103),
                    table2={"cos": 0.9997, "eps": 0.015}, section3_1={"identical_tensors": 2, "n_tensors": 339},
                    external=_md(0.01196, 0.999957) | {"modeldelta_erank_delta": 2166}),
     "coder": _v("Qwen/Qwen2.5-Coder-7B", "continued-pretraining", table2={"cos": 0.637, "eps": 0.831},
                 external=_md(0.862, 0.605)),
     "math": _v("Qwen/Qwen2.5-Math-7B", "continued-pretraining", external=_md(0.951, 0.669))},
    tau_frob=0.05, cross=(("instruct", "coder"),),
    paper={"table2_cross": {"pair": "instruct->coder", "cos": 0.637, "eps": 0.831},
           "table3": {"block": 14, "attn_cos": {"ref": 0.9999, "head_perm": 0.0727, "rmsnorm": 0.9677},
                      "attn_frob": {"ref": 0.0050, "head_perm": 0.6808, "rmsnorm": 0.0847}},
           "table11": {"tol": 0.05, "blocks": 28, "mean_ratio": 1.198, "min": 1.112, "max": 1.209},
           "table14_mib": [14568, 16648, 18728, 20808],
           "table15_s": {"cpu_load": 2.8, "scan": 51.5, "alias": 1.4, "move": 0.6, "total": 56.3, "naive": 11.9}}))
_add(Family(
    "llama1b", "Llama-3.2-1B", "meta-llama/Llama-3.2-1B",
    {"instruct": _v("meta-llama/Llama-3.2-1B-Instruct", **_t1(16, "0.990-0.995", (0.12, 0.17), 0.156),
                    **_t4(0.20, "13/16", 4716, 3208, 0.32), **_t6(0.14, 83, 96, 100, 98),
                    table9={"mean_eps": 0.122, "maxK_mean": 0.182, "global_max": 0.192})},
    tau_cos=0.99, tau_frob=0.20,
    paper={"table13": {"per_block_max_delta": 2.7615, "argmax_block": 15, "full_model_peak_delta": 2.6834,
                       "loss_variant": 3.22, "loss_base": 5.91},
           "table12": {"linker_save": 0.32, "deltazip_save": 0.85},
           "appE": "5% budget -> no sharing; 10% -> tau_frob 0.13 (13/16)"}))
_add(Family(
    "llama3b", "Llama-3.2-3B", "meta-llama/Llama-3.2-3B",
    {"instruct": _v("meta-llama/Llama-3.2-3B-Instruct", **_t1(28, "0.991-0.995", (0.10, 0.12), 0.110),
                    **_t4(0.13, "28/28", 12256, 6880, 0.44), **_t6(0.07, 98, 102, 100, 99),
                    external=_md(0.115, 0.99273))},
    tau_cos=0.99, tau_frob=0.13))
_add(Family(
    "llama8b", "Llama-3.1-8B", "meta-llama/Llama-3.1-8B",
    {"instruct": _v("meta-llama/Llama-3.1-8B-Instruct", **_t1(32, "0.999+", (0.04, 0.05), 0.045),
                    **_t4(0.05, "32/32", 30634, 17322, 0.43), **_t6(0.43, 96, 97, 101, 99),
                    section3_1={"identical_tensors": 0, "n_tensors": 291},
                    external=_md(0.0354, 0.99978) | {"shadow_ft_sigma": 0.018})},
    tau_frob=0.05, vintage=("llama2-7b",),
    paper={"table3": {"block": 16, "attn_cos": {"ref": 0.9994, "head_perm": 0.1522, "rmsnorm": 0.9431},
                      "attn_frob": {"ref": 0.0207, "head_perm": 0.6502, "rmsnorm": 0.1529}}}))
_add(Family(
    "mistral7b", "Mistral-7B-v0.3", "mistralai/Mistral-7B-v0.3",
    {"instruct": _v("mistralai/Mistral-7B-Instruct-v0.3", **_t1(32, "0.999+", (0.004, 0.01), 0.006),
                    **_t4(0.05, "32/32", 27648, 14336, 0.48), **_t6(0.48, 101, 87, 96, 101),
                    table9={"mean_eps": 0.016, "maxK_mean": 0.024, "global_max": 0.029},
                    appO={"bleu": 0.44, "rougeL": 0.23})},
    tau_frob=0.05, vintage=("mistral7b-v01",),
    paper={"table14_mib": [13824, 14336, 14848, 15360, 15872]}))
_add(Family(
    "gemma2b", "Gemma-2-2B", "google/gemma-2-2b",
    {"instruct": _v("google/gemma-2-2b-it", **_t1(26, "0.998-0.999", (0.04, 0.08), 0.049),
                    **_t4(0.07, "12/26", 9974, 8193, 0.18), **_t6(0.18, 91, 100, 101, 100))},
    tau_frob=0.07, vintage=("gemma1-2b",),
    paper={"table16": {"shared_blocks": "0-11", "rejected_blocks": "12-25"},
           "table17": {"pearson": -0.120, "spearman": -0.104}}))
# Vintage pairs of Table 10 (2023-era releases).
_add(Family("gemma1-2b", "Gemma-1-2B (Feb '24)", "google/gemma-2b",
            {"instruct": _v("google/gemma-2b-it", "vintage", table10={"eps_mean": 0.610, "tightening": 12.4})},
            tau_frob=0.07))
_add(Family("mistral7b-v01", "Mistral-7B-v0.1 (Sep '23)", "mistralai/Mistral-7B-v0.1",
            {"instruct": _v("mistralai/Mistral-7B-Instruct-v0.1", "vintage",
                            table10={"eps_mean": 0.140, "tightening": 23.3}, external=_md(0.139, 0.99218))}))
_add(Family("llama2-7b", "Llama-2-7B (Jul '23)", "meta-llama/Llama-2-7b-hf",
            {"instruct": _v("meta-llama/Llama-2-7b-chat-hf", "vintage",
                            table10={"eps_mean": 0.052, "tightening": 1.15})}))
_add(Family(
    "tiny", "tiny (embedded, llama-arch GQA)", str(TINY_DIR / "base"),
    {"instruct": _v(str(TINY_DIR / "instruct")), "chat": _v(str(TINY_DIR / "chat")),
     "qa": _v(str(TINY_DIR / "qa")), "coder": _v(str(TINY_DIR / "coder"), "continued-pretraining"),
     "scratch": _v(str(TINY_DIR / "scratch"), "independent")},
    # Same regime as Qwen2.5-0.5B (measured base->instruct: cos 0.998-0.999, eps-bar 0.045; README), so the
    # same thresholds as the paper's qwen05b entry.
    tau_cos=0.998, tau_frob=0.06, cross=(("instruct", "coder"),), eval_seq_len=256, eval_sequences=8))


def keys() -> list[str]:
    return sorted(REGISTRY)


def get(key: str) -> Family:
    """The family registered under `key`.

    Raises:
        UnknownModel: with the list of known keys.
    """
    try:
        return REGISTRY[key]
    except KeyError:
        raise UnknownModel(f"unknown model key {key!r}. Known keys: {', '.join(keys())}. Or pass local "
                           f"paths / hub ids with -p base ... -p variant ...") from None


def resolve_pair(model: str, base: str | None = None, variant: str | None = None) -> tuple[str, str]:
    """(base_ref, variant_ref) for a notebook: explicit `base`/`variant` override the registry key.

    `variant` may also name one of the family's variants ("coder").
    """
    fam = get(model) if model else None
    if fam is None and (base is None or variant is None):
        raise ValueError("give a registry key as `model`, or both `base` and `variant`")
    b = base or fam.base
    if variant and fam and variant in fam.variants:
        v = fam.variants[variant].ref
    else:
        v = variant or fam.variant.ref
    return b, v


def reported(model: str, base: str | None = None, variant: str | None = None) -> Variant | None:
    """The registry's `Variant` (with its paper/external figures) when the pair is the registered one; None
    when `base` or `variant` override it with other checkpoints (the figures would not apply)."""
    fam = get(model)
    if base is not None and base != fam.base:
        return None
    name = variant or fam.default_variant
    if name in fam.variants:
        return fam.variants[name]
    return next((v for v in fam.variants.values() if v.ref == name), None)
