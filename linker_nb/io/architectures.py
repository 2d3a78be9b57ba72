"""Map tensor names to transformer blocks and sub-parameters, per architecture family.

The paper's metrics (eqs. 1-2) average over the K sub-parameters of block i, so every tensor must be put in
exactly one place: a block (index, sub-parameter name, kind) or a non-block group (embeddings, final norm,
lm_head). Families differ in naming (llama/mistral/qwen2 share `model.layers.N.*`; Gemma adds extra norms and
multiplies by (1 + w); GPT-2 style uses `transformer.h.N.*`; multimodal Gemma 3 nests the language model).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Role", "Architecture", "ARCHITECTURES", "UnsupportedArchitecture", "get_architecture",
           "classify", "layout", "block_count"]


class UnsupportedArchitecture(ValueError):
    pass


@dataclass(frozen=True)
class Role:
    """Where one tensor belongs.

    Attributes:
        group: "block", "embed", "final_norm", "lm_head" or "other".
        block: block index for group "block", else None.
        sub: name inside the block (e.g. "self_attn.q_proj.weight"); the full name otherwise.
        kind: "attn", "mlp", "norm" or "other" (used for the attention/MLP sub-means of Table 3).
    """
    group: str
    block: int | None
    sub: str
    kind: str


@dataclass(frozen=True)
class Architecture:
    """Naming and conventions of one family.

    Attributes:
        name: the config's `model_type`.
        block_pattern: regex with groups (index, sub-name) matching block tensors.
        embed / final_norm / lm_head: regexes for the non-block groups.
        ignore: regexes for tensors outside the language model (vision towers); grouped as "other".
        norm_offset: RMSNorm scale is (norm_offset + w); 1.0 for Gemma, whose norms multiply by (1 + w).
        attn_proj / mlp_in / mlp_out: sub-module names used by the symmetry controls.
    """
    name: str
    block_pattern: str = r"^(?:model\.|model\.language_model\.|language_model\.model\.)?layers\.(\d+)\.(.+)$"
    embed: str = r"(^|\.)embed_tokens\.weight$"
    final_norm: str = r"^(model\.|model\.language_model\.|language_model\.model\.)?norm\.weight$"
    lm_head: str = r"(^|\.)lm_head\.weight$"
    ignore: tuple[str, ...] = ()
    norm_offset: float = 0.0
    attn_proj: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    mlp_out: str = "mlp.down_proj"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"

    def __post_init__(self):
        object.__setattr__(self, "_block_re", re.compile(self.block_pattern))
        object.__setattr__(self, "_group_res", [("embed", re.compile(self.embed)),
                                                ("final_norm", re.compile(self.final_norm)),
                                                ("lm_head", re.compile(self.lm_head))])
        object.__setattr__(self, "_ignore_res", [re.compile(p) for p in self.ignore])

    def classify(self, name: str) -> Role:
        for rx in self._ignore_res:
            if rx.search(name):
                return Role("other", None, name, "other")
        m = self._block_re.match(name)
        if m:
            sub = m.group(2)
            return Role("block", int(m.group(1)), sub, _kind(sub))
        for group, rx in self._group_res:
            if rx.search(name):
                return Role(group, None, name, "norm" if group == "final_norm" else "other")
        return Role("other", None, name, "other")


def _kind(sub: str) -> str:
    leaf = sub.rsplit(".", 1)[0].rsplit(".", 1)[-1]  # module name: "q_proj", "input_layernorm", "ln_1"
    if "norm" in leaf or re.fullmatch(r"ln(_\w+)?", leaf):
        return "norm"
    if re.search(r"attn|attention", sub):
        return "attn"
    if re.search(r"mlp|feed_forward|ffn", sub):
        return "mlp"
    return "other"


_LLAMA = Architecture("llama")
_GEMMA_NORMS = dict(norm_offset=1.0, ignore=(r"(^|\.)vision_tower\.", r"(^|\.)multi_modal_projector\."))
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": Architecture("mistral"),
    "qwen2": Architecture("qwen2"),        # q/k/v carry biases: they are sub-parameters like any other
    "qwen3": Architecture("qwen3"),        # adds self_attn.q_norm / k_norm
    "gemma": Architecture("gemma", norm_offset=1.0),
    "gemma2": Architecture("gemma2", mlp_norm="pre_feedforward_layernorm", **_GEMMA_NORMS),
    "gemma3": Architecture("gemma3", mlp_norm="pre_feedforward_layernorm", **_GEMMA_NORMS),
    "gemma3_text": Architecture("gemma3_text", mlp_norm="pre_feedforward_layernorm", **_GEMMA_NORMS),
    "gpt2": Architecture("gpt2", block_pattern=r"^(?:transformer\.)?h\.(\d+)\.(.+)$",
                         embed=r"(^|\.)(wte|wpe)\.weight$", final_norm=r"(^|\.)ln_f\.(weight|bias)$",
                         attn_proj=(), mlp_in=(), mlp_out="", attn_norm="ln_1", mlp_norm="ln_2"),
}
_GENERIC = Architecture("generic", block_pattern=r"^(?:.*\.)?(?:layers|h|blocks)\.(\d+)\.(.+)$",
                        final_norm=r"(^|\.)(norm|ln_f|final_layernorm)\.(weight|bias)$",
                        embed=r"(^|\.)(embed_tokens|wte|wpe|word_embeddings)\.weight$")


def get_architecture(model_type: str, names: list[str] | None = None) -> Architecture:
    """The architecture for a config's `model_type`; unknown types fall back to the generic
    `*.layers.N.*` / `*.h.N.*` pattern when `names` shows block tensors, else fail clearly."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if names is not None and any(_GENERIC._block_re.match(n) for n in names):
        return _GENERIC
    raise UnsupportedArchitecture(
        f"architecture {model_type!r} is not supported and its tensor names show no `*.layers.N.*` / "
        f"`*.h.N.*` blocks. Supported: {', '.join(sorted(ARCHITECTURES))} (and any model with that pattern). "
        f"Add an entry to linker_nb.architectures.ARCHITECTURES for it.")


def classify(name: str, model_type: str = "llama") -> Role:
    """Role of one tensor name under `model_type`'s naming."""
    return get_architecture(model_type, [name]).classify(name)


def layout(names: list[str], model_type: str) -> tuple[Architecture, dict[str, Role]]:
    """Classify every name of a checkpoint; checks that blocks are numbered 0..n-1.

    Returns:
        (architecture, {name: Role}).
    """
    arch = get_architecture(model_type, names)
    roles = {n: arch.classify(n) for n in names}
    idx = sorted({r.block for r in roles.values() if r.group == "block"})
    if not idx:
        raise UnsupportedArchitecture(f"no transformer-block tensors found for model_type {model_type!r} "
                                      f"(first names: {names[:3]}).")
    if idx != list(range(len(idx))):
        gaps = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise UnsupportedArchitecture(f"block indices are not contiguous: missing {gaps[:5]} (of 0..{idx[-1]}); "
                                      f"the checkpoint is incomplete.")
    return arch, roles


def block_count(items) -> int:
    """Number of blocks among `Role`s or records (anything with `.group` and `.block`): 1 + the largest index."""
    return 1 + max(r.block for r in items if r.group == "block")
