"""GGUF files (llama.cpp, Ollama, LM Studio) read behind the same `Checkpoint` interface as safetensors.

The header and metadata are read through the `gguf` package's memory-mapped `GGUFReader`; no tensor data is
touched until `get`, which dequantizes one tensor to float32 (or returns F16/BF16/F32 as stored). Names and
layout are turned back into Hugging Face's: llama.cpp's converter (`convert_hf_to_gguf.py`) renames every
tensor through `gguf.TensorNameMap`, permutes the rows of q_proj/k_proj for Llama-style rotary models
(`LlamaModel.permute`) and adds 1 to Gemma's norm weights; `GGUFCheckpoint` inverts all three, so a GGUF file
and the safetensors it was made from line up tensor for tensor.

How each Hugging Face `model_type` is stored in GGUF is the `gguf` field of its architecture record
(`_data/architectures/<model_type>.json`); `GGUF_ARCHITECTURES` is built from those records.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .architectures import Architecture, get_architecture, supported
from .checkpoint import Checkpoint, CheckpointCorrupt, CheckpointNotFound, TensorInfo
from .gguf_layout import UnsupportedGGUF, check_layout

__all__ = ["GGUFArch", "GGUF_ARCHITECTURES", "UnsupportedGGUF", "GGUFCheckpoint", "gguf_file", "model_type_of",
           "hf_to_gguf_names", "permuted_heads", "permute_qk", "unpermute_qk"]


@dataclass(frozen=True)
class GGUFArch:
    """How llama.cpp's converter stores one Hugging Face architecture.

    Attributes:
        gguf: the file's `general.architecture`.
        block: Hugging Face sub-modules of block i (`<layers>.{i}.<sub>`), each with `.weight` and, where
            the checkpoint has one, `.bias`.
        permute: (sub-module, config field of its head count) whose rows the converter reorders
            (`LlamaModel.permute`) for llama.cpp's rotary embedding: q_proj by query heads, k_proj by KV heads;
            weight and bias, undone on read.
        norm_shift: added to every `*norm.weight` by the converter (Gemma's (1 + w) RMSNorm baked in).
        non_block: embedding, final norm, lm_head module names.
        layers: the module path of the decoder layers ("model.layers").
        lm_head: the lm_head tensor's name (absent from a file when the converter ties it).
    """
    gguf: str
    block: tuple[str, ...]
    permute: tuple[tuple[str, str], ...] = ()
    norm_shift: float = 0.0
    non_block: tuple[str, ...] = ("model.embed_tokens", "model.norm", "lm_head")
    layers: str = "model.layers"
    lm_head: str = "lm_head.weight"


def _from_record(arch: Architecture) -> GGUFArch:
    """The storage of one architecture record's `gguf` field: block sub-modules in record order, q/k rows
    permuted by the record's head-count config keys, the norm shift from its `norm_offset`."""
    prefix = arch.prefixes[0]
    subs = list(dict.fromkeys(e["name"].rsplit(".", 1)[0] for e in arch.entries))
    heads = {r: arch.config_keys.get(k) for r, k in (("q", "n_heads"), ("k", "n_kv_heads"))}
    heads = {r: (k[0] if isinstance(k, list) else k) for r, k in heads.items()}
    permute = tuple((e["name"].rsplit(".", 1)[0], heads[e["role"]]) for e in arch.entries
                    if arch.gguf.get("permute_qk") and e["role"] in heads and e["name"].endswith(".weight"))
    # embed / final_norm names are relative to the prefix, lm_head names are whole (the records' convention)
    outside = [prefix + arch.embed[0], prefix + arch.final_norm[0]] + (
        [arch.lm_head[0]] if arch.gguf.get("lm_head", True) else [])
    return GGUFArch(arch.gguf["arch"], tuple(subs), permute=permute, norm_shift=arch.norm_offset,
                    non_block=tuple(n.rsplit(".", 1)[0] for n in outside), layers=prefix + arch.layers[0],
                    lm_head=arch.lm_head[0])


# model_type -> storage, from every architecture record with a `gguf` field (`_data/architectures/*.json`).
# A Mistral converted by llama.cpp says "llama"; `model_type_of` prefers the model_type named like the GGUF
# architecture, and pairing accepts either.
GGUF_ARCHITECTURES: dict[str, GGUFArch] = {
    mt: _from_record(a) for mt in supported() if (a := get_architecture(mt)).gguf is not None}
# GGUF metadata key (after "{arch}.") -> Hugging Face config field.
_CONFIG_KEYS = {"block_count": "num_hidden_layers", "embedding_length": "hidden_size",
                "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
                "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
                "attention.layer_norm_rms_epsilon": "rms_norm_eps", "context_length": "max_position_embeddings",
                "rope.freq_base": "rope_theta", "vocab_size": "vocab_size",
                "attention.sliding_window": "sliding_window", "attn_logit_softcapping": "attn_logit_softcapping",
                "final_logit_softcapping": "final_logit_softcapping"}
# Tensors llama.cpp generates from the config rather than converts (no Hugging Face counterpart).
_GENERATED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_NATIVE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def model_type_of(gguf_arch: str) -> str | None:
    """The Hugging Face `model_type` a GGUF `general.architecture` stands for (None: no mapping)."""
    if gguf_arch in GGUF_ARCHITECTURES and GGUF_ARCHITECTURES[gguf_arch].gguf == gguf_arch:
        return gguf_arch
    return next((mt for mt, a in GGUF_ARCHITECTURES.items() if a.gguf == gguf_arch), None)


def permuted_heads(rec: GGUFArch, config: dict, names) -> dict[str, int]:
    """{Hugging Face tensor name: head count} of the tensors whose rows `rec`'s converter permutes."""
    out = {}
    for sub, key in rec.permute:
        n = config.get(key, config.get("num_attention_heads"))  # no KV count: as many KV heads as query heads
        for name in names:
            if name.startswith(rec.layers + ".") and name.rsplit(".", 1)[0].endswith("." + sub):
                out[name] = n
    return out


def hf_to_gguf_names(model_type: str, n_blocks: int) -> dict[str, str]:
    """{Hugging Face tensor name: GGUF tensor name} for every tensor `model_type` can have, through the `gguf`
    package's own `TensorNameMap` (what `convert_hf_to_gguf.py` calls)."""
    import gguf
    rec = GGUF_ARCHITECTURES[model_type]
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == rec.gguf)
    tmap = gguf.get_tensor_name_map(arch, n_blocks)
    modules = list(rec.non_block) + [f"{rec.layers}.{i}.{s}" for i in range(n_blocks) for s in rec.block]
    out = {}
    for m in modules:
        target = tmap.get_name(m)
        if target is None:  # the record names a module the gguf package cannot map: a bug in the record
            raise UnsupportedGGUF(f"the installed gguf package has no GGUF name for {m!r} of {model_type}; fix "
                                  f"the `gguf` field of linker_nb/_data/architectures/{model_type}.json.")
        for suffix in (".weight", ".bias"):
            out[m + suffix] = target + suffix
    return out


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute` (rows of q_proj / k_proj, shape [n_head * head_dim, ...]): each head's
    rotary halves interleaved. `n_head` is the query heads for q_proj, the KV heads for k_proj."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of `permute_qk`: back to Hugging Face's row order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@lru_cache(maxsize=None)
def _can_dequantize(qtype: int) -> bool:
    """Whether the installed `gguf` package dequantizes this type (probed on one zero block)."""
    import gguf
    from gguf.quants import dequantize
    t = gguf.GGMLQuantizationType(qtype)
    if t.name in _NATIVE:
        return True
    try:
        dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[t][1]), np.uint8), t)
        return True
    except (NotImplementedError, KeyError, ValueError):
        return False


def _is_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


def gguf_file(path: Path) -> Path | None:
    """The .gguf file a reference names: the file itself, or the one .gguf of a directory without safetensors
    or .bin weights; None when `path` is no GGUF reference."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise CheckpointNotFound(f"{path} holds {len(found)} .gguf files ({', '.join(p.name for p in found[:4])}"
                                 f"{', ...' if len(found) > 4 else ''}); pass one of them, e.g. {found[0]}. Split "
                                 f"files (-00001-of-0000N) must first be merged: llama-gguf-split --merge.")
    return found[0] if found else None


class GGUFCheckpoint(Checkpoint):
    """One .gguf file as a `Checkpoint`: Hugging Face names, shapes and config; `get` dequantizes one tensor.

    `TensorInfo.dtype` is the stored type: a torch dtype name for F32/F16/BF16, else the GGML type ("Q4_K").
    `nbytes` and the identity hash (`stored`) are those of the stored, possibly quantized, bytes.
    """

    format = "gguf"

    def __init__(self, path: str | os.PathLike, ref: str | None = None):
        p = Path(path)
        self.file = gguf_file(p)
        if self.file is None:
            raise CheckpointNotFound(f"no .gguf file at {p} ({ref or p}).")
        self.path, self.ref = self.file, ref or str(path)
        self._files = [self.file.name]
        check_layout(self.file)
        import gguf
        try:
            self._reader = gguf.GGUFReader(self.file)
        except Exception as exc:  # whatever the layout walk let through (duplicate names, bad UTF-8, ...)
            raise CheckpointCorrupt(f"{self.file} is not a readable GGUF file: {type(exc).__name__}: "
                                    f"{str(exc)[:200]}. Delete it and download or convert it again.") from exc
        arch = self._meta("general.architecture", str, required=True)
        mt = model_type_of(arch)
        if mt is None:
            known = sorted({a.gguf for a in GGUF_ARCHITECTURES.values()})
            raise UnsupportedGGUF(f"{self.file}: GGUF architecture {arch!r} has no mapping to Hugging Face names "
                                  f"(mapped: {', '.join(known)}). Compare the safetensors checkpoint instead, or "
                                  f"add a `gguf` field to the model type's architecture record "
                                  f"(linker_nb/_data/architectures/<model_type>.json).")
        self.arch = GGUF_ARCHITECTURES[mt]
        self.config = self._config(arch, mt)
        n_blocks = self.config["num_hidden_layers"]
        to_hf = {g: h for h, g in hf_to_gguf_names(mt, n_blocks).items()}
        self._tensors, self._info, self._gguf_name = {}, {}, {}
        for t in self._reader.tensors:
            if t.name in _GENERATED:
                continue
            if t.name not in to_hf:
                raise UnsupportedGGUF(f"{self.file}: tensor {t.name!r} has no Hugging Face counterpart in the "
                                      f"{arch} mapping (a block beyond {arch}.block_count = {n_blocks}, or a tensor "
                                      f"of another architecture); add its module to the {mt} architecture record "
                                      f"(linker_nb/_data/architectures/{mt}.json).")
            if not _can_dequantize(int(t.tensor_type)):
                raise UnsupportedGGUF(f"{self.file}: tensor {t.name!r} is stored as {t.tensor_type.name}, which the "
                                      f"installed gguf package cannot dequantize; upgrade it (pip install -U gguf) "
                                      f"or compare a file quantized to another type.")
            hf, qt = to_hf[t.name], t.tensor_type.name
            dtype = str(_NATIVE[qt]).replace("torch.", "") if qt in _NATIVE else qt
            self._tensors[hf] = t
            self._gguf_name[hf] = t.name
            self._info[hf] = TensorInfo(hf, tuple(int(d) for d in reversed(t.shape.tolist())), dtype,
                                        self.file.name, int(t.n_bytes))
        self.config["tie_word_embeddings"] = self.arch.lm_head not in self._info
        self._heads = permuted_heads(self.arch, self.config, self._info)
        for name, n in self._heads.items():  # the head counts `get` needs, checked against the shapes
            rows = self._info[name].shape[0]
            if not _is_count(n) or rows % (2 * n):
                raise CheckpointCorrupt(f"{self.file}: {name} has {rows} rows, which {n!r} heads of even size "
                                        f"cannot split (attention.head_count / head_count_kv); the metadata is "
                                        f"damaged: convert or download the file again.")

    # -- metadata -> Hugging Face config -----------------------------------------------------------
    def _meta(self, key: str, typ: type, required: bool = False):
        field = self._reader.get_field(key)
        if field is None:
            if required:
                raise CheckpointCorrupt(f"{self.file} has no {key!r} metadata; it was not written by llama.cpp's "
                                        f"converter or is damaged: convert the model again.")
            return None
        try:
            value = field.contents()
        except Exception:  # undecodable string
            value = None
        ok = isinstance(value, typ) and not isinstance(value, bool) if typ in (int, float) else isinstance(value, typ)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise CheckpointCorrupt(f"{self.file}: metadata {key!r} is {str(value)[:80]!r}, expected "
                                    f"{typ.__name__}; the file is damaged: convert or download it again.")
        return value

    def _config(self, arch: str, model_type: str) -> dict:
        cfg: dict = {"model_type": model_type, "gguf_architecture": arch}
        for key, hf in _CONFIG_KEYS.items():
            typ = float if hf in ("rms_norm_eps", "rope_theta") or "softcapping" in hf else int
            value = self._meta(f"{arch}.{key}", typ, required=key == "block_count")
            if value is not None:
                if typ is int and value < 0:
                    raise CheckpointCorrupt(f"{self.file}: metadata {arch}.{key} is {value}; the file is damaged.")
                cfg[hf] = value
        if cfg["num_hidden_layers"] < 1:
            raise CheckpointCorrupt(f"{self.file}: {arch}.block_count is {cfg['num_hidden_layers']}; the file is "
                                    f"damaged: convert or download it again.")
        for key, hf in (("general.name", "gguf_name"), ("general.file_type", "gguf_file_type")):
            try:
                value = self._meta(key, int if hf == "gguf_file_type" else str)
            except CheckpointCorrupt:
                value = None  # descriptive only
            if value is not None:
                cfg[hf] = value
        return cfg

    # -- access ------------------------------------------------------------------------------------
    @property
    def model_types(self) -> set[str]:
        """Every Hugging Face model_type stored as this file's GGUF architecture (llama also stands for mistral)."""
        return {mt for mt, a in GGUF_ARCHITECTURES.items() if a.gguf == self.arch.gguf}

    @property
    def identity_basis(self) -> str:
        types = sorted({i.dtype for i in self._info.values()})
        quantized = any(t not in _NATIVE and not t.startswith("float") and t != "bfloat16" for t in types)
        return (f"stored GGUF bytes ({', '.join(types)}"
                f"{'; quantized tensors compared before dequantization' if quantized else ''})")

    def get(self, name: str) -> torch.Tensor:
        """One tensor in Hugging Face's name, shape and row order: F32/F16/BF16 as stored, every quantized type
        dequantized to float32 (`gguf.quants.dequantize`). Memory: this tensor (and, while dequantizing, the
        package's working arrays for 16 rows at a time)."""
        info = self.info(name)
        t = self._tensors[name]
        from gguf.quants import dequantize
        try:
            if info.dtype in ("bfloat16",):  # the package has no bfloat16: reinterpret the stored bytes
                out = torch.from_numpy(np.array(t.data, copy=True)).view(torch.bfloat16).reshape(info.shape)
            elif t.tensor_type.name in _NATIVE:
                out = torch.from_numpy(np.array(t.data, copy=True)).reshape(info.shape)
            else:  # a damaged scale dequantizes to inf/NaN: the scan counts those, numpy need not warn
                with np.errstate(invalid="ignore", over="ignore"):
                    out = torch.from_numpy(dequantize(t.data, t.tensor_type)).reshape(info.shape)
        except Exception as exc:
            raise CheckpointCorrupt(f"cannot read tensor {self._gguf_name[name]!r} ({name}) from {self.file}: "
                                    f"{type(exc).__name__}: {exc}. The file is damaged: download or convert it "
                                    f"again.") from exc
        if name in self._heads:
            out = unpermute_qk(out, self._heads[name]).contiguous()
        if self.arch.norm_shift and name.endswith("norm.weight"):
            out = (out.float() - self.arch.norm_shift).to(out.dtype)
        return out

    def stored(self, name: str, loaded: torch.Tensor):
        """The stored bytes of `name` (quantized blocks, llama.cpp's row order) for the identity hash."""
        return self._tensors[name].data

    def note(self, name: str) -> str:
        info = self.info(name)
        return "" if info.dtype in ("float32", "float16", "bfloat16", "float64") else f"dequantized from {info.dtype}"

    def fingerprint(self) -> str:
        """File name, size and modification time, and the header bytes (no tensor data)."""
        h = hashlib.sha256()
        st = self.file.stat()
        h.update(f"{self.file.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(self.file, "rb") as f:
            h.update(f.read(self._reader.data_offset))
        return h.hexdigest()[:32]

    def close(self) -> None:
        pass  # the reader's memory map is released with the object
