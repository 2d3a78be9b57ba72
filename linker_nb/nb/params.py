"""The notebooks' parameters: declared once, in the `parameters` cell, validated here from its annotations.

A notebook's `parameters` cell is flat and literal-only, one annotated line per parameter
(`model: str = "tiny"  # registry key`); papermill injects its overrides in the next cell, without annotations.
`setup(globals())` reads the cell's annotations from the kernel's namespace, type-checks every value against
them (nanoGPT's configurator does the same for its overrides), runs the per-name value checks below, and fills
the defaults that belong to a family from the registry. It returns a `Run`: the parameters, the family (or None
for a custom pair), the resolved references and where each default came from.

Custom pairs: when `base` or `variant` replace a registry key's checkpoints, no family default applies (the
paper's figures, thresholds and sizes belong to the registered pair): thresholds come from the parameters or from
App. E's conservative tier (`registry.CONSERVATIVE`: tau_cos 0.999, tau_frob 0.05), and results record
`model: null` with the references.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..io import registry

__all__ = ["ParameterError", "Run", "setup", "validate", "parse_annotation", "check_thresholds", "setup_plotly",
           "DEFAULT_EVAL_SEQUENCES", "DEFAULT_SEQ_LEN"]

DEFAULT_EVAL_SEQUENCES = 24  # §3.4: 24 sequences of 512 tokens
DEFAULT_SEQ_LEN = 512


class ParameterError(ValueError):
    """A notebook parameter has the wrong type or an unusable value; the message names it and the fix."""


def setup_plotly(renderer: str = "plotly_mimetype") -> None:
    """Pick the plotly renderer explicitly. "plotly_mimetype" stores only the figure JSON in the notebook
    (JupyterLab renders it natively); "notebook" would embed ~3 MB of plotly.js in every saved notebook."""
    import plotly.io as pio
    pio.renderers.default = renderer


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}


def parse_annotation(ann: Any) -> tuple[type, bool]:
    """(type, optional) from a parameters-cell annotation: a type (`str`) or papermill's quoted form
    (`"Optional[str]"`, which its `--help-notebook` parser reads).

    Raises:
        ParameterError: an annotation this contract does not support.
    """
    if isinstance(ann, type) and ann in _TYPES.values():
        return ann, False
    m = re.fullmatch(r"\s*(?:Optional\[(\w+)\]|(\w+))\s*", ann) if isinstance(ann, str) else None
    name = m and (m.group(1) or m.group(2))
    if name not in _TYPES:
        raise ParameterError(f"unsupported parameter annotation {ann!r}; use one of {', '.join(_TYPES)} or "
                             f"\"Optional[<type>]\"")
    return _TYPES[name], m.group(1) is not None


def _coerce(name: str, value: Any, typ: type, optional: bool) -> Any:
    """The value as `typ`, accepting what papermill passes: ints for floats, list literals given as strings."""
    if value is None or (optional and value == "None"):
        if optional:
            return None
        raise ParameterError(f"parameter {name!r} is None; it needs a {typ.__name__}. With papermill: -p {name} <value>.")
    if typ in (list, dict) and isinstance(value, str):  # `-p blocks "[0, 4]"` arrives as a string
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ParameterError(f"parameter {name!r} = {value!r} is not a {typ.__name__} literal; e.g. "
                                 f"-p {name} '[0, 4]' (papermill) or -y '{name}: [0, 4]'.") from None
    if typ is list and isinstance(value, tuple):
        value = list(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        opt = " or None" if optional else ""
        raise ParameterError(f"parameter {name!r} = {value!r} ({type(value).__name__}); expected {typ.__name__}{opt}. "
                             f"With papermill: -p {name} <value>.")
    return value


def check_thresholds(tau_cos: float, tau_frob: float) -> None:
    """Eq. (3) thresholds must be a cosine in [-1, 1] and a non-negative ratio."""
    if not -1.0 <= tau_cos <= 1.0:
        raise ParameterError(f"tau_cos = {tau_cos} is not a cosine; use a value in [-1, 1] (paper: 0.999).")
    if not tau_frob >= 0.0:
        raise ParameterError(f"tau_frob = {tau_frob} must be >= 0 (paper Table 8: 0.05-0.20).")


def _at_least(lo):
    def check(name, v):
        if v < lo:
            raise ParameterError(f"{name} = {v} must be >= {lo}.")
    return check


def _one_of(choices_of: Callable[[], tuple]):
    def check(name, v):
        if v not in choices_of():
            raise ParameterError(f"{name} = {v!r}; use one of {choices_of()}")
    return check


def _all(kind: type):
    def check(name, v):
        bad = [x for x in v if not isinstance(x, kind) or isinstance(x, bool)]
        if bad:
            raise ParameterError(f"parameter {name!r} = {v!r}: every entry must be a {kind.__name__} (got {bad[0]!r}).")
    return check


def _device(name, v):
    from ..io.models import pick_device
    pick_device(v)  # an explicit "cuda" without a GPU fails here


def _dtype(name, v):
    from ..io.models import pick_dtype
    try:
        pick_dtype(v)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None


def _corpora():
    from ..analyses.loss import CORPORA
    return CORPORA


def _shared_sets():
    from ..analyses.interpolation import SHARED_SETS
    return SHARED_SETS


def _budget(name, v):
    if not 0 <= v < 1:
        raise ParameterError(f"{name} = {v}: a relative loss increase in [0, 1), e.g. 0.05 for 5%.")


# Value checks by parameter name: one rule per name, whichever notebook declares it.
CHECKS: dict[str, Callable[[str, Any], None]] = {
    "batch_size": _at_least(1), "n_prompts": _at_least(1), "max_new_tokens": _at_least(1),
    "eval_sequences": _at_least(1), "n_sequences": _at_least(1), "n_calib": _at_least(2), "seq_len": _at_least(2),
    "cpu_threads": _at_least(0), "top_r": _at_least(1), "seed": _at_least(0),
    "device": _device, "dtype": _dtype, "corpus": _one_of(_corpora), "shared": _one_of(_shared_sets),
    "quality_budget": _budget, "variants": _all(str), "blocks": _all(int), "models": _all(str),
    "n_workers": _at_least(0), "benchmarks": _all(str), "num_fewshot": _at_least(0), "benchmark_limit": _at_least(1),
}


def validate(namespace: dict[str, Any]) -> dict[str, Any]:
    """Type-check and value-check the parameters declared by the notebook's `parameters` cell.

    Args:
        namespace: the kernel's globals (`globals()`), holding the cell's `__annotations__` and the values after
            papermill's injected overrides.

    Returns:
        name -> validated value (ints widened to floats, list literals parsed), in declaration order.

    Raises:
        ParameterError: naming the parameter, its value and the expected type or range.
    """
    annotations = namespace.get("__annotations__") or {}
    if "model" not in annotations:
        raise ParameterError("no annotated `parameters` cell found (it must declare at least `model: str = ...`); "
                             "run the notebook from its first cell.")
    params = {}
    for name, ann in annotations.items():
        typ, optional = parse_annotation(ann)
        value = _coerce(name, namespace.get(name), typ, optional)
        if value is not None and name in CHECKS:
            CHECKS[name](name, value)
        params[name] = value
    if params.get("tau_cos") is not None or params.get("tau_frob") is not None:
        check_thresholds(params.get("tau_cos") or 0.0, params.get("tau_frob") or 0.0)
    for lo, hi in (("rescale_low", "rescale_high"),):
        if lo in params and hi in params:
            from ..analyses.symmetry import check_rescale
            check_rescale(params[lo], params[hi])
    if "alphas" in params:
        from ..analyses.interpolation import check_alphas
        params["alphas"] = check_alphas(params["alphas"])
    if {"top_r", "lora_tol", "erank_gamma"} <= set(params):
        from ..analyses.spectral import check_params
        check_params(params["top_r"], params["lora_tol"], params["erank_gamma"])
    if "cos_min" in params and "eps_max" in params:
        from ..analyses.boundary import region
        region(1.0, 0.0, params["cos_min"], params["eps_max"])  # checks the rule's parameters
    return params


@dataclass
class Run:
    """One notebook run: its validated parameters and everything derived from them before any weight is read.

    Attributes:
        params: name -> value as validated (family defaults filled in for the names the notebook declares).
        family: the registry family, or None for a custom pair (`base`/`variant` overriding the key's checkpoints).
        base_ref, variant_ref: the references to compare (variant_ref None for notebooks with `variants`).
        spec: the registry's `Variant` with the paper's figures for this exact pair, or None.
        defaults: name -> where a defaulted value came from ("family tiny", "App. E conservative tier", ...).
        key_family: the family named by `model`, used only to turn variant *names* into references (its defaults
            and figures apply only through `family`).

    Parameters are also attributes: `run.tau_cos`.
    """
    params: dict[str, Any]
    family: registry.Family | None
    base_ref: str
    variant_ref: str | None
    spec: registry.Variant | None
    defaults: dict[str, str] = field(default_factory=dict)
    eval_seq_len: int = DEFAULT_SEQ_LEN
    key_family: registry.Family | None = None

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{name!r} is not a parameter of this notebook (declared: {', '.join(params)})")

    @property
    def model(self) -> str | None:
        """The registry key, or None for a custom pair (what the results JSON records)."""
        return self.family.key if self.family is not None else None

    @property
    def label(self) -> str:
        return self.family.label if self.family is not None else "custom pair"

    @property
    def thresholds(self) -> tuple[float, float]:
        """Eq. (3)'s (tau_cos, tau_frob): the parameters when the notebook declares them, else the family's, else
        App. E's conservative tier (custom pair)."""
        if "tau_cos" in self.params:
            return self.params["tau_cos"], self.params["tau_frob"]
        return (self.family.tau_cos, self.family.tau_frob) if self.family is not None else registry.CONSERVATIVE

    def paper(self, key: str) -> Any:
        """A family-level paper figure (e.g. "table13"), only when this run compares the registered pair."""
        if self.family is None or self.spec is None or self.spec is not self.family.variant:
            return None
        return self.family.paper.get(key)

    def refs(self, names: list[str] | None, kinds: tuple[str, ...] = ("post-trained",)) -> dict[str, str]:
        """name -> reference for `variants`: a variant name of the key's family or a checkpoint reference;
        None: the family's variants of the given kinds."""
        fam = self.key_family
        if names is None:
            names = [k for k, v in fam.variants.items() if v.kind in kinds]
        if not names:
            raise ParameterError(f"no variants to load: give variant names of {fam.key!r} ({sorted(fam.variants)}) "
                                 f"or checkpoint paths with -p variants '[...]'.")
        return {v: fam.variants[v].ref if v in fam.variants else v for v in names}

    def write(self, document: dict[str, Any]) -> dict[str, Any]:
        """Write a results document to the `results_json` parameter's path (nothing when it is empty)."""
        from .results import write_results
        return write_results(self.params.get("results_json"), document)

    def header(self) -> dict[str, Any]:
        """What every results JSON starts with: the study's identity and where its inputs came from."""
        return {"model": self.model, "base": self.base_ref,
                **({"variant": self.variant_ref} if self.variant_ref is not None else {}),
                "references": {"base": self.base_ref, "variant": self.variant_ref}, "custom": self.family is None,
                "defaults": self.defaults}

    def __repr__(self) -> str:
        pair = f"{self.base_ref} -> {self.variant_ref}" if self.variant_ref else self.base_ref
        taus = (f"; tau_cos={self.params['tau_cos']}, tau_frob={self.params['tau_frob']}"
                if self.params.get("tau_cos") is not None else "")
        src = f" ({', '.join(f'{k}: {v}' for k, v in self.defaults.items())})" if self.defaults else ""
        return f"{self.label}: {pair}{taus}{src}"


def _is_custom(fam: registry.Family, base: str | None, variant: str | None) -> bool:
    """True when `base`/`variant` replace the family's checkpoints with others (a variant *name* does not)."""
    registered = {v.ref for v in fam.variants.values()}
    return ((base is not None and base != fam.base)
            or (variant is not None and variant not in fam.variants and variant not in registered))


def _max_positions(ref: str) -> int | None:
    """max_position_embeddings from a checkpoint's config (header only), to cap a custom pair's sequence length."""
    try:
        from ..io.references import open_checkpoint
        cfg = open_checkpoint(ref).config
    except Exception:  # the notebook's own read will report an unusable checkpoint with its proper message
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    n = cfg.get("max_position_embeddings")
    return n if isinstance(n, int) and n > 1 else None


def _benchmark_defaults(p: dict[str, Any], defaults: dict[str, str], base_ref: str) -> None:
    """05's lm-eval defaults: the paper's benchmarks and PIQA tuner (App. D, E), or the bundled offline tasks
    when the donor is a checkpoint embedded in the package (the tiny family must run offline)."""
    if "benchmarks" not in p and "tuner_task" not in p:
        return
    from ..io.registry import is_embedded
    from ..linker import benchmarks as bench
    embedded = is_embedded(base_ref)
    source = "bundled offline tasks (embedded family)" if embedded else "the paper's (App. D, E)"
    if "benchmarks" in p and p["benchmarks"] is None:
        p["benchmarks"], defaults["benchmarks"] = bench.default_benchmarks(embedded), source
    if "tuner_task" in p and p["tuner_task"] is None:
        p["tuner_task"], defaults["tuner_task"] = bench.default_tuner_task(embedded), source


def setup(namespace: dict[str, Any]) -> Run:
    """Validate a notebook's parameters and fill the family's defaults: the cell after `parameters`.

    Args:
        namespace: the kernel's globals (`globals()`).

    Returns:
        A `Run`. Validated values are also written back into `namespace`, so later cells see e.g. the family's
        `tau_cos` instead of None.

    Raises:
        ParameterError: a bad type or value (named); registry.UnknownModel: an unknown key (listing the known ones).
    """
    setup_plotly()
    p = validate(namespace)
    base, variant, variants = p.get("base"), p.get("variant"), p.get("variants")
    fam = registry.get(p["model"])  # unknown keys fail here, listing the known ones
    custom = _is_custom(fam, base, variant) or any(v not in fam.variants for v in (variants or []))
    family = None if custom else fam
    if "variants" in p:  # one base against several derivatives (02, 05)
        base_ref, variant_ref, spec = base or fam.base, None, None
    else:
        base_ref, variant_ref = registry.resolve_pair(p["model"], base, variant)
        spec = None if custom else registry.reported(p["model"], base, variant)
    defaults: dict[str, str] = {}
    if family is not None:
        source = f"family {fam.key}"
        sizes = {"tau_cos": fam.tau_cos, "tau_frob": fam.tau_frob, "n_sequences": fam.eval_sequences,
                 "seq_len": fam.eval_seq_len}
        eval_seq_len = fam.eval_seq_len
    else:  # a custom pair: the paper's protocol, the sequence capped by what the model can attend to
        cap = _max_positions(variant_ref or base_ref)
        eval_seq_len = min(DEFAULT_SEQ_LEN, cap) if cap else DEFAULT_SEQ_LEN
        source = "App. E conservative tier / paper §3.4 (custom pair)"
        sizes = {"tau_cos": registry.CONSERVATIVE[0], "tau_frob": registry.CONSERVATIVE[1],
                 "n_sequences": DEFAULT_EVAL_SEQUENCES, "seq_len": eval_seq_len}
    for name, value in sizes.items():
        if name in p and p[name] is None:
            p[name], defaults[name] = value, source
    _benchmark_defaults(p, defaults, base_ref)
    if p.get("tau_cos") is not None:
        check_thresholds(p["tau_cos"], p["tau_frob"])
    if p.get("cpu_threads"):
        import torch
        torch.set_num_threads(p["cpu_threads"])  # the notebook asked for it (1 is fastest for tiny on a busy machine)
    namespace.update(p)
    return Run(params=p, family=family, base_ref=base_ref, variant_ref=variant_ref, spec=spec, defaults=defaults,
               eval_seq_len=eval_seq_len, key_family=fam)
