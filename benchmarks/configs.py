"""Real model configurations for the benchmark, and a writer of synthetic checkpoints with their exact layout.

Real weights cannot be downloaded here, so the benchmark writes its own: the tensor names and shapes come from
a meta-device `transformers` model built from the real `config.json` numbers, dtype bf16, and the files are
laid out like the real repositories (both Qwen2.5-0.5B and Qwen2.5-1.5B ship one `model.safetensors` with tied
embeddings, so no `lm_head.weight`; Qwen2.5-3B ships two shards). Tensors are generated and written one at a
time (large ones in row chunks), so writing a 3 GB checkpoint never holds a model in memory.

The variant is the base plus a dense perturbation, W_v = W_b + scale * sigma_W * N(0, 1), with sigma_W the
init scale of that tensor (0.02 for matrices and biases; 1 for the RMSNorm gains, which start at 1).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

# Numbers from the real config.json of each repository (Qwen/Qwen2.5-*); `shards` is the real repository's
# file count (the split point is chosen by size like `save_pretrained(max_shard_size=...)` does).
CONFIGS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(repo="Qwen/Qwen2.5-0.5B", shards=1, config=dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_window_layers=24, use_sliding_window=False)),
    "qwen2.5-1.5b": dict(repo="Qwen/Qwen2.5-1.5B", shards=1, config=dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_window_layers=28, use_sliding_window=False)),
    "qwen2.5-3b": dict(repo="Qwen/Qwen2.5-3B", shards=2, config=dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_window_layers=36, use_sliding_window=False)),
    # The panel benchmark's synthetic pairs (benchmarks/panel.py): Qwen2 layout, 8 layers, ~54 MB per checkpoint.
    "panel-small": dict(repo=None, shards=1, config=dict(
        vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_window_layers=8, use_sliding_window=False)),
    # Smoke configuration for tests/test_bench.py: same code path, 2 layers, sharded in 2 files.
    "tiny-qwen2": dict(repo=None, shards=2, config=dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_window_layers=2, use_sliding_window=False)),
}
DEFAULT_CONFIGS = ("qwen2.5-0.5b", "qwen2.5-1.5b")
WRITER_VERSION = 1  # bump when the written bytes would change; stale scratch pairs are rewritten
ROW_CHUNK_ELEMS = 1 << 24  # generate big tensors 16M elements at a time (64 MiB of float32 per operand)


def _check(name: str) -> None:
    if name not in CONFIGS:
        raise ValueError(f"unknown benchmark configuration {name!r}; known: {sorted(CONFIGS)} "
                         f"(add it to CONFIGS in benchmarks/configs.py)")


def qwen2_config(name: str):
    """The `transformers.Qwen2Config` of a benchmark configuration."""
    import transformers as tf
    _check(name)
    kw = dict(CONFIGS[name]["config"])
    theta = kw.pop("rope_theta")
    return tf.Qwen2Config(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta},
                          architectures=["Qwen2ForCausalLM"], dtype="bfloat16")


def tensor_specs(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every stored tensor, from a meta-device model (no memory); tied lm_head left out."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    sd = model.state_dict()
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return [(k, tuple(v.shape)) for k, v in sd.items()]


def _sigma(name: str) -> float:
    return 1.0 if name.endswith("norm.weight") else 0.02


def _plan_shards(specs, n_shards: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split tensors (sorted by name, as safetensors stores them) into n files of about equal size."""
    specs = sorted(specs)
    total = sum(2 * _numel(s) for _, s in specs)
    shards, cur, size = [], [], 0
    for name, shape in specs:
        nb = 2 * _numel(shape)
        if cur and len(shards) < n_shards - 1 and size + nb > total / n_shards:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nb
    shards.append(cur)
    return shards


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _header(tensors) -> bytes:
    meta, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        nb = 2 * _numel(shape)
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment


def _stamp(name: str, scale: float, seed: int) -> str:
    key = json.dumps([CONFIGS[name], scale, seed, WRITER_VERSION], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def write_pair(name: str, root: str | os.PathLike, *, scale: float = 0.05, seed: int = 0,
               force: bool = False, log=print) -> tuple[Path, Path]:
    """Write (once) a synthetic base/variant pair of configuration `name` under `root`; return both dirs.

    A pair already written with the same configuration, scale, seed and writer version is reused.
    """
    _check(name)
    root = Path(root) / name
    base, var = root / "base", root / "variant"
    stamp = _stamp(name, scale, seed)
    marker = root / "COMPLETE"
    if not force and marker.exists() and marker.read_text().strip() == stamp:
        return base, var
    config = qwen2_config(name)
    specs = tensor_specs(config)
    shards = _plan_shards(specs, CONFIGS[name]["shards"])
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    marker.unlink(missing_ok=True)
    for d in (base, var):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.safetensors"):
            old.unlink()
        config.save_pretrained(d)
        if n > 1:
            total = sum(2 * _numel(s) for _, s in specs)
            wm = {t: f for f, sh in zip(files, shards) for t, _ in sh}
            (d / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": wm}, indent=2))
    g = torch.Generator().manual_seed(seed)
    for fname, tensors in zip(files, shards):
        log(f"  writing {name} {fname} ({sum(2 * _numel(s) for _, s in tensors) / 2**30:.2f} GiB x 2)")
        header = _header(tensors)
        with open(base / fname, "wb") as fb, open(var / fname, "wb") as fv:
            for f in (fb, fv):
                f.write(len(header).to_bytes(8, "little"))
                f.write(header)
            for tname, shape in tensors:
                sig, numel = _sigma(tname), _numel(shape)
                for s in range(0, numel, ROW_CHUNK_ELEMS):
                    k = min(ROW_CHUNK_ELEMS, numel - s)
                    w = torch.randn(k, generator=g) * sig
                    if sig == 1.0:
                        w += 1.0
                    wb = w.to(torch.bfloat16)
                    wv = (wb.float() + (scale * sig) * torch.randn(k, generator=g)).to(torch.bfloat16)
                    fb.write(memoryview(wb.view(torch.uint8).numpy()))
                    fv.write(memoryview(wv.view(torch.uint8).numpy()))
    marker.write_text(stamp + "\n")
    return base, var
