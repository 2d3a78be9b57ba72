"""Tiny random-init checkpoints of each supported family, built locally from `transformers` configs.

Used by the architecture tier of the tests and by the benchmark's smoke path: real module names, real
`save_pretrained` layouts (sharded or not, tied or not, bf16 or fp32, safetensors or `.bin`), no download.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .io.architectures import get_architecture, supported

__all__ = ["FAMILIES", "ARCH_FAMILIES", "COMMON", "tiny_config", "make_pair", "perturb_state", "write_gguf"]

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


def write_gguf(src: str | Path, out: str | Path, qtype: str = "F16") -> Path:
    """Convert a safetensors checkpoint to GGUF the way llama.cpp's `convert_hf_to_gguf.py` does, at test scale.

    Every tensor is renamed through the `gguf` package's `TensorNameMap`, widened to float32 (the converter's
    first step for bf16), its q_proj/k_proj rows permuted (`LlamaModel.permute`) and its norms shifted (Gemma)
    as `linker_nb.io.gguf.GGUF_ARCHITECTURES` records, then stored as `qtype` with the package's own quantizer.
    Like the converter, 1-D tensors (norms, biases) stay F32, and a matrix whose rows do not fill whole
    quantization blocks falls back to F16 (llama.cpp's choice too).

    Args:
        src: a checkpoint directory (config.json + safetensors).
        out: the .gguf file to write.
        qtype: a `gguf.GGMLQuantizationType` name: "F32", "F16", "BF16", "Q8_0", "Q4_0", ...

    Returns:
        `out`.
    """
    import gguf
    from gguf.quants import quantize

    from .io.checkpoint import Checkpoint
    from .io.gguf import GGUF_ARCHITECTURES, permute_qk, permuted_heads
    ck = Checkpoint(src)
    cfg = ck.config
    rec = GGUF_ARCHITECTURES[ck.model_type]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == rec.gguf)
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    target = gguf.GGMLQuantizationType[qtype]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    w = gguf.GGUFWriter(str(out), rec.gguf)
    w.add_name(Path(src).name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 1e4))))
    w.add_vocab_size(cfg["vocab_size"])
    heads = permuted_heads(rec, cfg, ck.names)
    for name in ck.names:
        data = ck.get(name).float()
        if name in heads:
            data = permute_qk(data, heads[name])
        if rec.norm_shift and name.endswith("norm.weight"):
            data = data + rec.norm_shift
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None and name == rec.lm_head and rec.lm_head.rsplit(".", 1)[0] not in rec.non_block:
            continue  # the converter drops Gemma's lm_head: llama.cpp always ties it
        if gname is None:
            raise ValueError(f"the gguf package maps no GGUF name to {name!r} ({ck.model_type})")
        arr = data.numpy()
        t = target
        if arr.ndim == 1:
            t = gguf.GGMLQuantizationType.F32
        elif arr.shape[-1] % gguf.GGML_QUANT_SIZES[t][0]:
            t = gguf.GGMLQuantizationType.F16
        q = quantize(arr, t)
        w.add_tensor(gname, q, raw_shape=q.shape if t.name in ("F32", "F16") else None,
                     raw_dtype=None if t.name in ("F32", "F16") else t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck.close()
    return Path(out)
