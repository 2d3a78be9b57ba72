"""Tiny random-init checkpoints of each supported family, built locally from `transformers` configs.

Used by the architecture tier of the tests and by the benchmark's smoke path: real module names, real
`save_pretrained` layouts (sharded or not, tied or not, bf16 or fp32, safetensors or `.bin`), no download.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .io.architectures import get_architecture, supported

__all__ = ["FAMILIES", "ARCH_FAMILIES", "COMMON", "tiny_config", "make_pair", "perturb_state"]

FAMILIES = ("llama", "mistral", "qwen2", "gemma2", "gemma3_text")  # the dense families of the paper's tables
# the architecture tier: every record with a `tiny_config` recipe
ARCH_FAMILIES = tuple(a for a in supported() if get_architecture(a).tiny_config)
# Sizes every recipe starts from (grouped-query attention: 4 query heads, 2 KV heads of head_dim 8); a record's
# `tiny_config.args` add to or override them, and `"common": false` starts from nothing (GPT-2's own key names).
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
              head_dim=8, max_position_embeddings=64)


def tiny_config(family: str, *, layers: int = 3, tied: bool = False):
    """A small `transformers` config of `family`, from the `tiny_config` recipe of its architecture record.

    Raises:
        ValueError: the family has no record or no recipe.
    """
    import transformers as tf
    arch = get_architecture(family, [])
    recipe = arch.tiny_config
    if arch.is_generic or recipe is None:
        raise ValueError(f"unknown family {family!r}: no architecture record with a tiny_config recipe; known: "
                         f"{', '.join(a for a in supported() if get_architecture(a).tiny_config)}")
    keys = arch.config_keys
    text = dict(COMMON) if recipe.get("common", True) else {}
    text.update({keys["n_layers"]: layers, keys["tied"]: tied})
    args = dict(recipe.get("args", {}))
    if "common_in" in recipe:  # multimodal: the language model's sizes go into its nested config
        args[recipe["common_in"]] = text | recipe.get("text_args", {})
        args.update(recipe.get("nested", {}))
        args[keys["tied"]] = tied
    else:
        args = text | args
    return getattr(tf, recipe["class"])(**args)


def perturb_state(state: dict[str, torch.Tensor], scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """W + scale * std(W) * N(0, 1) for every floating tensor (a post-training-like dense perturbation)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        noise = torch.randn(v.shape, generator=g, dtype=torch.float32)
        std = float(v.float().std()) if v.numel() > 1 else 0.0
        ref = std if std > 1e-8 else (float(v.float().abs().mean()) or 1.0)  # constant norms: scale by value
        out[k] = (v.float() + scale * ref * noise).to(v.dtype)
    return out


def make_pair(root: str | Path, family: str = "llama", *, scale: float = 0.01, layers: int = 3,
              tied: bool = False, dtype: torch.dtype = torch.bfloat16, shard: str | None = None,
              fmt: str = "safetensors", seed: int = 0) -> tuple[Path, Path]:
    """Write base and variant (= base perturbed by `scale`) checkpoints under `root`; return both dirs.

    Args:
        shard: `max_shard_size` for `save_pretrained` (e.g. "20KB") to force a sharded index.
        fmt: "safetensors" or "bin" (a single `pytorch_model.bin` written with `torch.save`).
    """
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers=layers, tied=tied)).to(dtype)
    root = Path(root)
    dirs = []
    for name, state in (("base", None), ("variant", perturb_state(model.state_dict(), scale, seed + 1))):
        d = root / f"{family}-{name}"
        if state is not None:
            model.load_state_dict(state)
        if fmt == "bin":
            d.mkdir(parents=True, exist_ok=True)
            model.config.save_pretrained(d)
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            if tied:  # a tied checkpoint stores no lm_head
                arch = get_architecture(model.config.model_type, list(sd))
                sd = {k: v for k, v in sd.items() if arch.classify(k).group != "lm_head"}
            torch.save(sd, d / "pytorch_model.bin")
        else:
            kw = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(d, **kw)
        dirs.append(d)
    return dirs[0], dirs[1]
