"""The per-block interpolation sweep (04) against today's loop, on a SmolLM2-135M-shaped model (`make bench`).

SmolLM2-135M's config.json numbers (llama: 30 blocks, hidden 576, 9 query / 3 KV heads, MLP 1536, vocabulary
49152, tied embeddings), random weights (timing does not depend on them): the base is the seeded random init and
the variant the base plus 1% Gaussian noise per tensor, both written once as bf16 safetensors into
benchmarks/scratch/smollm2-135m/ and evaluated in float32 on the CPU, as 04 does there.

Both paths run over the same blocks, 11 α values (10 evaluated: α = 0 is the variant's loss, shared by every
path) on 4 x 256 tokens: `interpolation.per_block_loop` (a whole forward pass per (block, α)) and
`sweep.per_block_sweep`. Every block takes the loop the same time (a whole forward pass per α), while the sweep's
time falls with depth, so a subset of blocks must have the mean depth of all 30: the default is blocks 7 and 22
(mean 14.5, as for 0..29), to keep `make bench` to minutes on the shared 2-core machine. The two are timed block
by block, interleaved (sweep on block i, loop on block i, next block), so the sweep advances the hidden states
through 7 + 22 = 29 blocks, as a full sweep over 30 blocks does. `--blocks all` runs every block. The largest
difference between the two results is reported (target: <= 1e-5 nats).

Usage: python benchmarks/sweep.py [--blocks 7,22|all|start::step] [--threads 1]  (make bench runs it through run.py)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    tie_word_embeddings=True)
ALPHAS = tuple(round(0.1 * k, 1) for k in range(11))
N_SEQ, SEQ_LEN = 4, 256
WRITER_VERSION = 1


def write_pair(scratch: Path, log=print) -> tuple[Path, Path]:
    """The base (seeded random init) and variant (+1% noise) checkpoints, bf16; reused when already written."""
    import torch
    import transformers as tf
    root = Path(scratch) / "smollm2-135m"
    stamp = root / f"written-v{WRITER_VERSION}"
    base, var = root / "base", root / "variant"
    if stamp.exists():
        return base, var
    log("  writing smollm2-135m-shaped base and variant (bf16, 2 x 0.27 GB) ...")
    cfg = tf.LlamaConfig(**SMOLLM2_135M, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.01 * p.float().std().clamp_min(1e-3) * torch.randn(p.shape, generator=g)).to(p.dtype))
    model.save_pretrained(var)
    stamp.write_text("ok\n")
    return base, var


def parse_blocks(spec: str, n: int) -> list[int]:
    """"all", "start::step" or a comma list."""
    if spec == "all":
        return list(range(n))
    if "::" in spec:
        start, step = spec.split("::")
        return list(range(int(start or 0), n, int(step)))
    return [int(x) for x in spec.split(",")]


def measure_sweep(base: Path, variant: Path, blocks_spec: str = "7,22", threads: int = 1,
                  n_seq: int = N_SEQ, seq_len: int = SEQ_LEN) -> dict:
    """Time `per_block_loop` and `per_block_sweep` on the same blocks, α grid and tokens; compare their losses."""
    import torch

    from linker_nb.analyses import interpolation, sweep
    from linker_nb.io.models import load_model, torch_threads
    model = load_model(variant, device="cpu", dtype="float32")
    path = interpolation.WeightPath(model, base)
    blocks = parse_blocks(blocks_spec, path.n_blocks)
    tokens = torch.randint(0, model.config.vocab_size, (n_seq, seq_len), generator=torch.Generator().manual_seed(0))
    alphas = list(ALPHAS[1:])
    out: dict = {"model": "SmolLM2-135M-shaped (random weights)", "config": SMOLLM2_135M, "blocks": blocks,
                 "n_blocks": path.n_blocks, "alphas": list(ALPHAS), "tokens": [n_seq, seq_len],
                 "torch_threads": threads}
    fast, loop, out["sweep_s_per_block"], out["loop_s_per_block"] = [], [], [], []
    with torch_threads(threads):
        for i in blocks:  # interleaved block by block, so a noisy neighbour slows both alike
            t0 = time.perf_counter()
            fast += sweep.per_block_sweep(model, path, tokens, alphas, [i], batch_size=n_seq)
            out["sweep_s_per_block"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loop += interpolation.per_block_loop(model, path, tokens, alphas, [i], batch_size=n_seq)
            out["loop_s_per_block"].append(time.perf_counter() - t0)
    out["sweep_s"], out["loop_s"] = sum(out["sweep_s_per_block"]), sum(out["loop_s_per_block"])
    out["sweep_over_loop"] = out["sweep_s"] / out["loop_s"]
    out["max_abs_diff_nats"] = max(abs(x - y) for r, s in zip(loop, fast) for x, y in zip(r, s))
    out["mean_blocks_from_i"] = sum(path.n_blocks - i for i in blocks) / len(blocks)  # 15.5 for all 30
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", default="7,22", help="'all', 'start::step' or a comma list (default 7,22)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see benchmarks/README.md)")
    ap.add_argument("--scratch", default=str(ROOT / "benchmarks" / "scratch"))
    args = ap.parse_args(argv)
    base, var = write_pair(Path(args.scratch))
    r = measure_sweep(base, var, args.blocks, args.threads)
    print(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
