"""Short keys for the model pairs of the paper, with its reported figures for side-by-side display.

The families live in one data file, `linker_nb/_data/registry.toml`: one top-level table per family, named
by its registry key, with named fields for the family, each variant and each paper table. The file's header
comments say where every number comes from and how the thresholds were chosen (Table 8, App. E, App. J).
It is validated on load against `FAMILY`, `VARIANT`, `FAMILY_PAPER`, `VARIANT_PAPER` and `EXTERNAL` below:
an unknown field fails with its name and the allowed ones, a wrong type or a missing required field with
its place (`qwen7b.variants.instruct.paper.table4.save`).

Adding a family (Qwen3, OLMo-2, Mixtral, ...): copy a table such as `[llama3b]` with its
`[llama3b.variants.instruct]`, rename the key, and fill in

    [olmo2-7b]
    label = "OLMo-2-7B"
    base = "allenai/OLMo-2-1124-7B"          # hub id, local directory, or "package:<dir in linker_nb>"
    tau_cos = 0.999                           # no paper figure: App. E's conservative tier (CONSERVATIVE)
    tau_frob = 0.05
    # optional: default_variant = "instruct", eval_seq_len = 512, eval_sequences = 24,
    #           cross = [["instruct", "coder"]], vintage = ["<older key>"], paper.<table> = {...}

    [olmo2-7b.variants.instruct]
    ref = "allenai/OLMo-2-1124-7B-SFT"
    kind = "post-trained"                     # or continued-pretraining / independent / vintage
    external.modeldelta = { rel_frob = 0.049, cos = 0.99942 }   # external-figures.md

Only figures somebody published go under `paper` (this paper) or `external` (elsewhere, cited in
external-figures.md). A new paper table needs its schema added to `FAMILY_PAPER` or `VARIANT_PAPER` first;
`tests/test_registry.py` then checks the file loads.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Variant", "Family", "REGISTRY", "UnknownModel", "RegistryError", "get", "keys", "load",
           "resolve_pair", "TINY_DIR", "DATA_FILE", "CONSERVATIVE", "PAPER_INTERIOR_BAND", "KINDS", "reported",
           "is_embedded"]

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TINY_DIR = PACKAGE_DIR / "tiny_family"
DATA_FILE = PACKAGE_DIR / "_data" / "registry.toml"
# App. H / Figure 6: the band of interior amplification factors measured on Qwen2.5-1.5B/3B. The registry
# holds it as `paper.appH.interior_range` for those two; notebooks fall back to it for other families.
PAPER_INTERIOR_BAND = (0.7, 2.2)
CONSERVATIVE = (0.999, 0.05)  # App. E "conservative tier" (tau_cos, tau_frob) for unrecognised families
KINDS = ("post-trained", "continued-pretraining", "independent", "vintage")
PACKAGE_PREFIX = "package:"  # local refs inside the package, resolved against PACKAGE_DIR on load


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class RegistryError(ValueError):
    """The registry file is malformed: the message names the file, the field and what is allowed."""


@dataclass(frozen=True)
class Variant:
    """One derivative of a family's base.

    Attributes:
        ref: hub id or local directory.
        kind: one of `KINDS`.
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


# ---- schema: per table, field name -> type; `_opt(...)` marks an optional field ----------------------------

@dataclass(frozen=True)
class _Opt:
    spec: Any


@dataclass(frozen=True)
class _Seq:
    item: Any
    length: int | None = None   # fixed length (pairs)
    as_tuple: bool = True       # tuple in the API (ranges, pairs); False keeps a list (Table 14's series)


@dataclass(frozen=True)
class _Map:  # free keys (variant names), one schema for every value
    value: Any


def _opt(spec: Any) -> _Opt:
    return _Opt(spec)


PAIR = _Seq(float, 2)
_ATTN = {"ref": float, "head_perm": float, "rmsnorm": float}
EXTERNAL = {  # external-figures.md
    "modeldelta": _opt({"rel_frob": float, "cos": float}),  # whole-model tensor mean
    "modeldelta_erank_delta": _opt(int),
    "shadow_ft_sigma": _opt(float),
}
VARIANT_PAPER = {
    "table1": _opt({"blocks": int, "cos_range": str, "eps_range": PAIR, "eps_mean": float}),
    "table2": _opt({"cos": float, "eps": float}),
    "table4": _opt({"tau_frob": float, "shared": str, "naive_mib": int, "lazy_mib": int, "save": float}),
    "table6": _opt({"saved": float, "mmlu": int, "arc": int, "hellaswag": int, "winogrande": int}),
    "table7": _opt({mode: {"mmlu": float, "arc": float, "hellaswag": float, "winogrande": float}
                    for mode in ("instruct", "shared")}),  # absolute scores (%), unshared instruct vs shared
    "table9": _opt({"mean_eps": float, "maxK_mean": float, "global_max": float}),
    "table10": _opt({"eps_mean": float, "tightening": float}),
    "table13": _opt({"eps_mean": float}),
    "section3_1": _opt({"identical_tensors": int, "n_tensors": int}),
    "appO": _opt({"bleu": float, "rougeL": float}),
    "figure2": _opt({"delta_mmlu": float}),  # MMLU(instruct) - MMLU(base), points; the paper prints none per family
}
FAMILY_PAPER = {
    "table2_cross": _opt({"pair": str, "cos": float, "eps": float}),
    "table3": _opt({"block": int, "attn_cos": _ATTN, "attn_frob": _ATTN,
                    "mlp_perm": _opt({"mlp_cos_ref": float, "mlp_cos": float, "max_abs_output_diff": float})}),
    "table11": _opt({"tol": float, "blocks": int, "mean_ratio": float, "min": float, "max": float}),
    "table12": _opt({"linker_save": float, "deltazip_save": float}),
    "table13": _opt({"per_block_max_delta": float, "argmax_block": int, "full_model_peak_delta": float,
                     "full_model_argmin_alpha": _opt(float), "loss_variant": _opt(float),
                     "loss_base": _opt(float)}),
    "table14_mib": _opt(_Seq(int, as_tuple=False)),
    "table15_s": _opt({k: float for k in ("cpu_load", "scan", "alias", "move", "total", "naive")}),
    "table16": _opt({"shared_blocks": str, "rejected_blocks": str}),
    "table17": _opt({"pearson": float, "spearman": float}),
    "appE": _opt(str),
    "appH": _opt({"interior_range": PAIR, "n_inputs": _opt(int)}),
}
VARIANT = {"ref": str, "kind": str, "paper": _opt(VARIANT_PAPER), "external": _opt(EXTERNAL)}
FAMILY = {
    "label": str, "base": str, "tau_cos": float, "tau_frob": float, "variants": _Map(VARIANT),
    "default_variant": _opt(str), "cross": _opt(_Seq(_Seq(str, 2))), "vintage": _opt(_Seq(str)),
    "paper": _opt(FAMILY_PAPER), "eval_seq_len": _opt(int), "eval_sequences": _opt(int),
}
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _check(value: Any, spec: Any, where: str) -> Any:
    """`value` checked against `spec` and converted (lists to tuples where the API has tuples, ints in
    float fields to float). Raises RegistryError naming `where`."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise RegistryError(f"{where}: expected a table, got {value!r}")
        allowed = {k: (s.spec if isinstance(s, _Opt) else s) for k, s in spec.items()}
        for name in value:
            if name not in allowed:
                raise RegistryError(f"{where}: unknown field {name!r}; allowed fields: {', '.join(allowed)}")
        missing = [k for k, s in spec.items() if not isinstance(s, _Opt) and k not in value]
        if missing:
            raise RegistryError(f"{where}: missing required field(s) {', '.join(missing)}")
        return {k: _check(v, allowed[k], f"{where}.{k}") for k, v in value.items()}
    if isinstance(spec, _Map):
        if not isinstance(value, dict) or not value:
            raise RegistryError(f"{where}: expected a table of one or more entries, got {value!r}")
        return {k: _check(v, spec.value, f"{where}.{k}") for k, v in value.items()}
    if isinstance(spec, _Seq):
        if not isinstance(value, list) or (spec.length is not None and len(value) != spec.length):
            n = f"{spec.length} " if spec.length else ""
            raise RegistryError(f"{where}: expected an array of {n}items, got {value!r}")
        items = [_check(v, spec.item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if spec.as_tuple else items
    ok = (isinstance(value, spec) or (spec is float and isinstance(value, int))) and not isinstance(value, bool)
    if not ok:
        raise RegistryError(f"{where}: expected {_TYPE_NAMES[spec]}, got {type(value).__name__} {value!r}")
    return float(value) if spec is float else value


def _ref(ref: str) -> str:
    return str(PACKAGE_DIR / ref[len(PACKAGE_PREFIX):]) if ref.startswith(PACKAGE_PREFIX) else ref


def is_embedded(ref) -> bool:
    """Whether a checkpoint reference is a directory inside the package (the embedded families' checkpoints)."""
    try:
        return Path(ref).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, TypeError, ValueError):
        return False


def _family(key: str, raw: dict, where: str) -> Family:
    d = _check(raw, FAMILY, where)
    variants = {name: Variant(_ref(v["ref"]), v["kind"], v.get("paper", {}), v.get("external", {}))
                for name, v in d.pop("variants").items()}
    fam = Family(key=key, base=_ref(d.pop("base")), variants=variants, **d)
    for name, v in variants.items():
        if v.kind not in KINDS:
            raise RegistryError(f"{where}.variants.{name}.kind: {v.kind!r} is not one of {', '.join(KINDS)}")
    names = [fam.default_variant] + [n for pair in fam.cross for n in pair]
    for name in names:
        if name not in variants:
            raise RegistryError(f"{where}: variant {name!r} (default_variant or cross) is not among "
                                f"{where}.variants: {', '.join(variants)}")
    for name, x in (("tau_cos", fam.tau_cos), ("tau_frob", fam.tau_frob)):
        if not 0 < x <= 1:
            raise RegistryError(f"{where}.{name}: {x} is outside (0, 1]")
    for name, n in (("eval_seq_len", fam.eval_seq_len), ("eval_sequences", fam.eval_sequences)):
        if n < 1:
            raise RegistryError(f"{where}.{name}: {n} must be >= 1")
    return fam


def load(path: str | Path = DATA_FILE) -> dict[str, Family]:
    """The families of a registry TOML file, validated.

    Raises:
        RegistryError: unparsable TOML, an unknown/missing/mistyped field, or a dangling reference
            (default_variant, cross, vintage), with the file and the field's place named.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{path}: not valid TOML: {e}") from None
    out: dict[str, Family] = {}
    for key, table in raw.items():
        if not _KEY.match(key):
            raise RegistryError(f"{path}: key {key!r}: use letters, digits, '-', '_' or '.'")
        try:
            out[key] = _family(key, table, key)
        except RegistryError as e:
            raise RegistryError(f"{path}: {e}") from None
    for fam in out.values():
        for old in fam.vintage:
            if old not in out:
                raise RegistryError(f"{path}: {fam.key}.vintage names {old!r}, which is not a family in the file")
    return out


REGISTRY: dict[str, Family] = load()


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
