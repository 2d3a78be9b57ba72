"""Train the embedded tiny families: a small base model and its relatives per layout, deterministically.

    python scripts/train_tiny_family.py --out linker_nb/tiny_family            # full run, ~15 min on 2 cores
    python scripts/train_tiny_family.py --out /tmp/t --steps-scale 0.01 --only base,instruct   # smoke run
    python scripts/train_tiny_family.py --layout moe --out linker_nb/tiny_moe  # the MoE family

Layouts (`--layout`, `LAYOUTS`; each built from the real `transformers` config class, so checkpoint names are
the real ones, and all sharing the sizes of `ARCH`):

* llama  `tiny`:       LlamaForCausalLM, the six variants below (the default; its weights are committed);
* moe    `tiny-moe`:   Qwen3MoeForCausalLM, 4 experts, 2 active per token, q/k norms per head;
* phi3   `tiny-phi3`:  Phi3ForCausalLM, fused qkv_proj and gate_up_proj;
* olmo2  `tiny-olmo2`: Olmo2ForCausalLM, norms after attention and MLP, q/k norms over the full width.

The new layouts train base, instruct and coder with the same recipe and use the tokenizer shipped with
`tiny` (`--tokenizer`), so every embedded family reads the same text the same way.

Variants (all the same architecture, `build_config`):

* base      pre-training from `--seed` on the train pydoc topics (80% of rows) and stdlib code (20%);
* instruct  short SFT of base on `corpus.instruction_pairs("instruct")`, low learning rate, answer-only loss;
* chat      the same SFT recipe on the "chat" pairs;
* qa        the same SFT recipe on the "qa" pairs;
* coder     long continued pre-training of base on stdlib code only, at a higher rate than the SFTs;
* scratch   the base recipe from `--scratch-seed` (the unrelated control).

Derived variants start from the *saved* base checkpoint (bf16, upcast to float32), as real post-training
starts from a released model, so `--only instruct` reproduces the same weights as a full run.

Budget: about 0.3 s per pre-training step on 2 free cores; three full runs on a shared 2-core machine took
885, 1927 and 970 s, with identical weights each time.

Reproducibility: every random draw comes from the seeds on the command line (`torch.manual_seed` before a
model is built, a seeded `torch.Generator` for batches), `torch.use_deterministic_algorithms(True)` and a
fixed `--threads`. Weights are bitwise identical across runs with the same torch version, thread count and
Python installation (the corpus is read from the installed standard library, see `linker_nb.corpus`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:   # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig,  # noqa: E402
                          PreTrainedModel, PretrainedConfig, PreTrainedTokenizerFast)

from linker_nb.analyses import loss as evaluation  # noqa: E402
from linker_nb.analyses.scan import scan  # noqa: E402
from linker_nb.io import corpus  # noqa: E402

transformers.utils.logging.disable_progress_bar()     # per-shard save/load bars would drown the step log

VARIANTS = ("base", "instruct", "chat", "qa", "coder", "scratch")
DERIVED = ("instruct", "chat", "qa", "coder")        # start from the saved base
SFT_KINDS = ("instruct", "chat", "qa")
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
VOCAB_SIZE = 1024
CONTEXT = 256           # pre-training window; also the held-out evaluation length
EVAL_SEQ_LEN = CONTEXT


@dataclass(frozen=True)
class Phase:
    """One optimisation run: AdamW, linear warmup then cosine decay to `min_lr_ratio * lr`."""
    steps: int
    lr: float
    warmup: int
    batch_size: int = 16
    weight_decay: float = 0.1       # on matrices only; norms keep their scale
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1

    def scaled(self, scale: float) -> "Phase":
        steps = max(1, round(self.steps * scale))
        return Phase(steps, self.lr, min(round(self.warmup * scale), steps - 1), self.batch_size,
                     self.weight_decay, self.betas, self.grad_clip, self.min_lr_ratio)


# Sensible values for a 0.5M-parameter model, chosen once and not tuned toward any similarity result.
# SFT: ~1/30 of the pre-training peak rate and ~1/3 of its steps; coder: 1/3 of the peak rate, 10x the
# SFT rate, and more steps than all three SFTs together.
PRETRAIN = Phase(steps=600, lr=3e-3, warmup=60)
SFT = Phase(steps=200, lr=1e-4, warmup=20)
CODER = Phase(steps=500, lr=1e-3, warmup=25)
CODE_SHARE = 0.2        # fraction of pre-training rows drawn from code
SFT_MAX_LEN = CONTEXT


# ---------------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `VOCAB_SIZE` entries (3 special tokens first: bos=0, eos=1, pad=2).

    The tokenizer prepends `<|bos|>` when called with special tokens, as Llama tokenizers do.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=CONTEXT * 2)


# The sizes every layout shares: 8 layers, d=64, grouped-query attention (4 query / 2 kv heads of 16).
ARCH = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=192, num_hidden_layers=8,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2 * CONTEXT,
            tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0)


@dataclass(frozen=True)
class Layout:
    """One embedded family: its registry key, `transformers` config class, the arguments it adds to `ARCH`,
    its variants and the sentence its README opens the architecture paragraph with."""
    key: str
    config_class: str
    variants: tuple[str, ...]
    args: dict
    summary: str
    moe: bool = False       # train with the router's load-balancing loss (`output_router_logits=True`)


LAYOUTS = {
    "llama": Layout("tiny", "LlamaConfig", VARIANTS, {},
                    "`LlamaForCausalLM`, {L} layers, hidden {d}, MLP {ff}, {h} query / {kv} key-value heads "
                    "(grouped-query attention), RoPE theta 10000, untied embeddings"),
    # 4 experts of width 96 with 2 active per token: the active MLP width is the dense families' 192.
    "moe": Layout("tiny-moe", "Qwen3MoeConfig", ("base", "instruct", "coder"),
                  dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=96,
                       norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                       router_aux_loss_coef=0.01),
                  "`Qwen3MoeForCausalLM` (sparse mixture of experts), {L} layers, hidden {d}, {E} experts of MLP "
                  "width {moe_ff} per block with {k} active per token (router `mlp.gate`, top-{k} renormalised), "
                  "{h} query / {kv} key-value heads with per-head q/k RMSNorm, untied embeddings", moe=True),
    "phi3": Layout("tiny-phi3", "Phi3Config", ("base", "instruct", "coder"), {},
                   "`Phi3ForCausalLM` (fused projections: `self_attn.qkv_proj` rows are [q | k | v], "
                   "`mlp.gate_up_proj` rows are [gate | up]), {L} layers, hidden {d}, MLP {ff}, {h} query / {kv} "
                   "key-value heads, untied embeddings"),
    "olmo2": Layout("tiny-olmo2", "Olmo2Config", ("base", "instruct", "coder"), {},
                    "`Olmo2ForCausalLM` (post-norm: RMSNorm after attention and after the MLP, before the "
                    "residual add; q/k RMSNorm over the full projection width), {L} layers, hidden {d}, MLP {ff}, "
                    "{h} query / {kv} key-value heads, untied embeddings"),
}
TINY_TOKENIZER = REPO / "linker_nb" / "tiny_family" / "base"     # the tokenizer the other layouts reuse


def build_config(tokenizer, layout: Layout = LAYOUTS["llama"]) -> PretrainedConfig:
    """The family's architecture: `ARCH` sizes in `layout`'s config class, with the tokenizer's special ids."""
    cls = getattr(transformers, layout.config_class)
    return cls(**ARCH, **layout.args, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)


# ---------------------------------------------------------------------------------------------- data

def token_stream(tokenizer, docs: list[str]) -> torch.LongTensor:
    """Documents as one 1-D stream, each wrapped as `<|bos|> doc <|eos|>`."""
    ids = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    flat = []
    for doc in ids:
        flat += [tokenizer.bos_token_id, *doc, tokenizer.eos_token_id]
    return torch.tensor(flat, dtype=torch.long)


def sample_windows(streams: list[torch.LongTensor], weights: list[float], batch_size: int,
                   gen: torch.Generator) -> torch.LongTensor:
    """[batch_size, CONTEXT] windows: each row picks a stream by `weights`, then a uniform start."""
    which = torch.multinomial(torch.tensor(weights), batch_size, replacement=True, generator=gen)
    rows = []
    for s in which.tolist():
        stream = streams[s]
        start = int(torch.randint(0, len(stream) - CONTEXT + 1, (1,), generator=gen))
        rows.append(stream[start:start + CONTEXT])
    return torch.stack(rows)


def sft_example(tokenizer, prompt: str, answer: str, max_len: int = SFT_MAX_LEN) -> tuple[list[int], list[int]]:
    """Token ids and labels of one SFT example: `<|bos|> prompt answer <|eos|>`, loss on the answer only.

    Returns:
        (input_ids, labels), equal length <= max_len; labels are -100 on bos and prompt tokens and equal to
        input_ids on the answer and the closing eos.
    """
    p = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = ([tokenizer.bos_token_id] + p + a)[:max_len]
    labels = ([-100] * (1 + len(p)) + a)[:max_len]
    return ids, labels


def sft_batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (ids, labels) to the longest; padding is masked out of attention and loss."""
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------- training

def lr_at(step: int, phase: Phase) -> float:
    """Linear warmup over `phase.warmup` steps, then cosine from `lr` to `min_lr_ratio * lr`."""
    if step < phase.warmup:
        return phase.lr * (step + 1) / phase.warmup
    progress = (step - phase.warmup) / max(1, phase.steps - phase.warmup - 1)
    ratio = phase.min_lr_ratio + (1 - phase.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return phase.lr * ratio


def optimise(model, phase: Phase, next_batch, log_every: int = 50, name: str = "",
             forward: dict | None = None) -> list[float]:
    """Run `phase.steps` AdamW steps on batches from `next_batch(step)`; returns the per-step losses.

    `forward` adds keyword arguments to every forward call (MoE: `output_router_logits=True`, so the loss
    includes the router's load-balancing term, `router_aux_loss_coef` times the aux loss).
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": phase.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=phase.lr, betas=phase.betas)
    model.train()
    losses = []
    for step in range(phase.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, phase)
        loss = model(**next_batch(step), **(forward or {})).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), phase.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == phase.steps:
            print(f"  {name} step {step + 1}/{phase.steps} loss {loss.item():.4f} lr {lr_at(step, phase):.2e}",
                  flush=True)
    return losses


def pretrain(model, streams, weights, phase: Phase, seed: int, name: str, forward: dict | None = None
             ) -> list[float]:
    """Next-token training on random windows of the token streams (rows drawn from streams by weight)."""
    gen = torch.Generator().manual_seed(seed)

    def next_batch(step):
        windows = sample_windows(streams, weights, phase.batch_size, gen)
        return {"input_ids": windows, "labels": windows}     # the model shifts labels itself
    return optimise(model, phase, next_batch, name=name, forward=forward)


def sft(model, tokenizer, pairs, phase: Phase, seed: int, name: str, forward: dict | None = None
        ) -> list[float]:
    """Fine-tune on (prompt, answer) pairs: epochs of seeded permutations, answer-only loss."""
    examples = [sft_example(tokenizer, p, a) for p, a in pairs]
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []

    def next_batch(step):
        nonlocal order
        while len(order) < phase.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        idx, order = order[:phase.batch_size], order[phase.batch_size:]
        return sft_batch([examples[i] for i in idx], tokenizer.pad_token_id)
    return optimise(model, phase, next_batch, name=name, forward=forward)


def save_variant(model, tokenizer, path: Path) -> None:
    """bf16 safetensors + config.json + generation_config.json + tokenizer files (casts `model` in place)."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=64)
    model.to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_variant(path: Path) -> PreTrainedModel:
    """A saved variant as float32 (the bf16 weights upcast exactly)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- driver

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory, one sub-directory per variant")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="llama",
                    help="architecture of the family (llama: `tiny`; moe, phi3, olmo2: the new layouts)")
    ap.add_argument("--tokenizer", type=Path, default=TINY_TOKENIZER,
                    help="layouts other than llama load this saved tokenizer instead of training one")
    ap.add_argument("--seed", type=int, default=0, help="base: init and batch-order seed")
    ap.add_argument("--scratch-seed", type=int, default=1, help="scratch: init and batch-order seed")
    ap.add_argument("--post-seed", type=int, default=0, help="batch order of the SFTs and of coder")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (part of reproducibility)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every step count (smoke runs)")
    ap.add_argument("--code-bytes", type=int, default=2_000_000, help="cap on the stdlib code text")
    ap.add_argument("--readme-only", action="store_true",
                    help="train nothing: re-measure the block similarities of the saved variants and rewrite "
                         "recipe.json's `headline` and README.md")
    ap.add_argument("--only", type=str, default=",".join(VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS)}; derived variants load <out>/base "
                         "when base is not in the subset")
    args = ap.parse_args(argv)
    variants = LAYOUTS[args.layout].variants
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    if args.only == ap.get_default("only"):
        only = list(variants)
    unknown = sorted(set(only) - set(variants))
    if unknown:
        ap.error(f"unknown variant(s) {unknown} for --layout {args.layout}; choose from {','.join(variants)}")
    args.only = only
    return args


def _rel(path: Path) -> str:
    """`path` relative to the repository when inside it (recipes must not record a machine's layout)."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _table(recipe: dict, variants: tuple[str, ...] = VARIANTS) -> str:
    head = ("| variant | starts from | data | steps | peak lr | final train loss | held-out loss | wall s |\n"
            "|---|---|---|---:|---:|---:|---:|---:|")
    rows = [f"| {v} | {r['init']} | {r['data']} | {r['steps']} | {r['lr']:g} | {r['final_train_loss']:.3f} "
            f"| {r['heldout_loss']:.3f} | {r['wall_s']:.0f} |"
            for v in variants if (r := recipe["variants"].get(v))]
    return "\n".join([head, *rows])


def _intro(layout: Layout, recipe: dict) -> list[str]:
    """The README's title, opening and architecture paragraph."""
    a = recipe["architecture"]
    arch = layout.summary.format(L=a["num_hidden_layers"], d=a["hidden_size"], ff=a["intermediate_size"],
                                 h=a["num_attention_heads"], kv=a["num_key_value_heads"],
                                 E=a.get("num_experts"), k=a.get("num_experts_per_tok"),
                                 moe_ff=a.get("moe_intermediate_size"))
    if layout.key == "tiny":
        return ["# The embedded `tiny` family",
                "Six small Llama-architecture models trained by `scripts/train_tiny_family.py` (`make tiny-family`) "
                "on text that ships with Python, so every notebook runs offline. This file and `recipe.json` are "
                "written by the script; every number below is measured.",
                f"**Architecture** (all variants): {arch}, vocab {a['vocab_size']} (byte-level BPE trained on the "
                f"pre-training prose + code), {recipe['n_parameters']:,} parameters, saved in bf16."]
    n = len(recipe["variants"])
    active = (f" ({recipe['n_active_parameters']:,} active per token)" if "n_active_parameters" in recipe else "")
    return [f"# The embedded `{layout.key}` family",
            f"{n} small models of the `{recipe['layout']}` layout trained by `scripts/train_tiny_family.py "
            f"--layout {recipe['layout']}` (`make tiny-family`) on the same text, with the same tokenizer and "
            f"the same recipe as the `tiny` family (`../tiny_family/README.md`), so every notebook runs offline "
            f"on this layout too. This file and `recipe.json` are written by the script; every number below is "
            f"measured.",
            f"**Architecture** (all variants): {arch}, vocab {a['vocab_size']} (the `tiny` family's byte-level "
            f"BPE), {recipe['n_parameters']:,} parameters{active}, saved in bf16."]


def headline(out: Path, variants: tuple[str, ...]) -> dict:
    """Block similarity of each saved derived variant to the saved base (`linker_nb.analyses.scan.scan`).

    Returns:
        {variant: {"mean_cos", "min_block_cos", "mean_eps", "max_block_eps"}} over the model's blocks.
    """
    out_ = {}
    for v in variants:
        if v == "base" or not (out / v / "config.json").exists():
            continue
        r = scan(out / "base", out / v, progress=False)
        out_[v] = {"mean_cos": r.mean_cos, "min_block_cos": min(b.cos for b in r.blocks),
                   "mean_eps": r.mean_frob, "max_block_eps": max(b.frob for b in r.blocks)}
    return out_


def _headline_table(recipe: dict, variants: tuple[str, ...]) -> str:
    head = ("| base -> | mean block cos | min block cos | mean block eps | max block eps |\n"
            "|---|---:|---:|---:|---:|")
    rows = [f"| {v} | {h['mean_cos']:.5f} | {h['min_block_cos']:.5f} | {h['mean_eps']:.4f} | "
            f"{h['max_block_eps']:.4f} |" for v in variants if (h := recipe.get("headline", {}).get(v))]
    return "\n".join([head, *rows])


def _other_layouts(out: Path) -> list[str]:
    """The tiny README's summary of the sibling families of other layouts (read from their recipe.json)."""
    rows = []
    for name, layout in LAYOUTS.items():
        path = out.parent / f"tiny_{name}" / "recipe.json"
        if name == "llama" or not path.exists():
            continue
        r = json.loads(path.read_text())
        mb = sum(f.stat().st_size for f in path.parent.glob("*/*")) / 1e6
        h, v = r.get("headline", {}), r["variants"]
        rows.append(f"| `{layout.key}` | `tiny_{name}/` | {layout.config_class.replace('Config', 'ForCausalLM')} | "
                    f"{r['n_parameters']:,} | {mb:.1f} | {v['base']['heldout_loss']:.3f} | "
                    + " | ".join(f"{h[k]['mean_cos']:.4f} / {h[k]['mean_eps']:.4f}" if k in h else "-"
                                 for k in ("instruct", "coder")) + " |")
    if not rows:
        return []
    return ["## Embedded families of the other layouts",
            "Trained by the same script with `--layout moe|phi3|olmo2`, on the same text with this family's "
            "tokenizer and recipe (steps scaled as each family's `recipe.json` records), each with base, "
            "instruct and coder; their own README.md has the full recipe and table.",
            "| family | directory | model | parameters | MB on disk (3 models) | base held-out loss | "
            "base -> instruct cos / eps | base -> coder cos / eps |\n|---|---|---|---:|---:|---:|---:|---:|\n"
            + "\n".join(rows)]


def write_readme(out: Path, recipe: dict, layout: Layout = LAYOUTS["llama"]) -> None:
    """`<out>/README.md`: the recipe in prose and the measured table, all filled in from `recipe`."""
    h, c, e, s = (recipe[k] for k in ("hyperparameters", "corpus", "eval", "seeds"))
    pre, sft_, coder = h["pretrain"], h["sft"], h["coder"]
    code_pct = 100 * h["code_share"]
    sfts = ", ".join(f"`{v}`" for v in SFT_KINDS if v in layout.variants)
    bullets = [
        f"- `base`: {pre['steps']} steps on {h['context']}-token windows, {100 - code_pct:.0f}% prose / "
        f"{code_pct:.0f}% code rows, peak lr {pre['lr']:g}, seed {s['base']}.",
        f"- {sfts}: {sft_['steps']} SFT steps from the saved base at peak lr {sft_['lr']:g} "
        f"(1/{pre['lr'] / sft_['lr']:.0f} of pre-training); loss on answer tokens only (prompt masked with "
        f"-100); answers end with `<|eos|>`.",
        f"- `coder`: {coder['steps']} steps of continued pre-training of base on code only at peak lr "
        f"{coder['lr']:g} ({coder['lr'] / sft_['lr']:.0f}x the SFT rate): the far-from-base boundary case."]
    if "scratch" in layout.variants:
        bullets.append(f"- `scratch`: the base recipe from seed {s['scratch']} (different init and batch order): "
                       f"the unrelated control.")
    if layout.moe:
        bullets.append(f"- Every MoE step adds the router's load-balancing loss ({layout.args['router_aux_loss_coef']}"
                       f" x the Switch-style aux loss, `output_router_logits=True`) to the language-model loss; the "
                       f"train losses below include it, the held-out losses do not.")
    paragraphs = [
        *_intro(layout, recipe),
        f"**Data** (`linker_nb.corpus`): pydoc reference topics split by a hash of the topic key into train "
        f"({c['prose_train']['tokens']:,} tokens) and held-out ({c['heldout']['tokens']:,} tokens, never trained "
        f"on by any variant); standard-library source ({c['code']['tokens']:,} tokens); " + (
            f"three different SFT sets: instruct ({c['sft_pairs']['instruct']} pydoc sections, Alpaca template), "
            f"chat ({c['sft_pairs']['chat']} module docstrings, User/Assistant), qa ({c['sft_pairs']['qa']} "
            f"builtin docstrings, Q/A)." if "chat" in layout.variants else
            f"the instruct SFT set ({c['sft_pairs']['instruct']} pydoc sections, Alpaca template)."),
        f"**Recipe**: AdamW (betas {tuple(pre['betas'])}, weight decay {pre['weight_decay']} on matrices, grad "
        f"clip {pre['grad_clip']}), linear warmup then cosine to {pre['min_lr_ratio']:.0%} of the peak rate, "
        f"batch {pre['batch_size']}, float32 training, a fresh optimizer per variant.\n" + "\n".join(bullets),
        f"**Held-out loss**: `linker_nb.analyses.loss.lm_loss` on `eval_corpus(tokenizer, \"embedded\", "
        f"n_sequences={e['n_sequences']}, seq_len={e['seq_len']})` ({e['n_tokens']:,} tokens), saved bf16 "
        f"weights run in float32. **Final train loss**: mean over the last 10% of steps (SFT: answer tokens "
        f"only). The models saw {h['context']}-token windows; evaluate them at `seq_len <= {h['context']}`.",
        _table(recipe, layout.variants),
        *(["**Block similarity to base** (`linker_nb.analyses.scan.scan` of the saved checkpoints; eps is the "
           "relative Frobenius change of eq. 2, both averaged over each block's sub-parameters):",
           _headline_table(recipe, layout.variants)] if recipe.get("headline") else []),
        f"Wall seconds are training + saving on {recipe['threads']} threads, measured in this run (total "
        f"{recipe['wall_s_total_this_run']:.0f} s including tokenizer and evaluation); they grow with whatever "
        f"else the machine runs at the time, the weights do not.",
        f"**Reproducibility**: bitwise identical weights for the same torch version "
        f"({recipe['versions']['torch']}), `--threads` ({recipe['threads']}) and Python installation "
        f"({recipe['versions']['python']}; the corpus hashes in `recipe.json` show whether the text matches). "
        f"Every hyperparameter is in `recipe.json`.",
        *(_other_layouts(out) if layout.key == "tiny" else []),
    ]
    (out / "README.md").write_text("\n\n".join(paragraphs) + "\n")


def main(argv: list[str] | None = None) -> dict:
    """Train the selected variants into `args.out`; returns the recipe dict also written to recipe.json."""
    args = parse_args(argv)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _run(args, argv)
    finally:    # leave the process as it was when called as a function (tests)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train_variant(name: str, args: argparse.Namespace, config: PretrainedConfig, tokenizer, streams: dict,
                   sft_pairs: dict, phases: dict) -> tuple[PreTrainedModel, dict, list[float]]:
    """Build or load the starting model of one variant and train it; returns (model, facts, losses)."""
    fwd = {"output_router_logits": True} if LAYOUTS[args.layout].moe else None
    if name in ("base", "scratch"):
        seed = args.seed if name == "base" else args.scratch_seed
        torch.manual_seed(seed)                         # the only draw from the global RNG: the init
        model_class = AutoModelForCausalLM._model_mapping[type(config)]      # e.g. LlamaForCausalLM
        model, phase = model_class(config), phases["pretrain"]
        facts = {"init": f"random init, seed {seed}",
                 "data": f"{100 - 100 * CODE_SHARE:.0f}% prose / {100 * CODE_SHARE:.0f}% code"}
        losses = pretrain(model, [streams["prose"], streams["code"]], [1 - CODE_SHARE, CODE_SHARE], phase, seed,
                          name, fwd)
    elif name == "coder":
        model, phase = load_variant(args.out / "base"), phases["coder"]
        facts = {"init": "base", "data": "code only"}
        losses = pretrain(model, [streams["code"]], [1.0], phase, args.post_seed, name, fwd)
    else:
        model, phase = load_variant(args.out / "base"), phases["sft"]
        facts = {"init": "base", "data": f"{len(sft_pairs[name])} {name} pairs"}
        losses = sft(model, tokenizer, sft_pairs[name], phase, args.post_seed, name, fwd)
    facts.update(steps=phase.steps, lr=phase.lr, warmup=phase.warmup)
    return model, facts, losses


def _rewrite_readme(args: argparse.Namespace) -> dict:
    """`--readme-only`: the headline scans and README.md of an already trained family."""
    path = args.out / "recipe.json"
    if not path.exists():
        raise SystemExit(f"--readme-only needs a trained family in {args.out} (no recipe.json there)")
    recipe = json.loads(path.read_text())
    if recipe.get("layout", "llama") != args.layout:
        raise SystemExit(f"{args.out} holds layout {recipe.get('layout', 'llama')!r}; pass --layout to match")
    layout = LAYOUTS[args.layout]
    recipe["headline"] = headline(args.out, layout.variants)
    path.write_text(json.dumps(recipe, indent=2) + "\n")
    write_readme(args.out, recipe, layout)
    return recipe


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    if args.readme_only:
        return _rewrite_readme(args)
    t_start = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    prose, heldout, code = corpus.pretrain_text("train"), corpus.heldout_text(), corpus.code_text(args.code_bytes)
    layout = LAYOUTS[args.layout]
    if args.layout == "llama":
        tokenizer = train_tokenizer([prose, code])
    else:   # the same tokenizer as `tiny`, so the families differ only in architecture and weights
        if not (args.tokenizer / "tokenizer.json").exists():
            raise SystemExit(f"--layout {args.layout} reuses the tokenizer saved in {args.tokenizer}, which has "
                             "no tokenizer.json; train the llama layout first or point --tokenizer at one")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    base_dir = out / "base"
    if "base" not in args.only and set(args.only) & set(DERIVED):
        if not (base_dir / "config.json").exists():
            raise SystemExit(f"--only {','.join(args.only)} needs a trained base in {base_dir}; add base to --only")
        if AutoTokenizer.from_pretrained(base_dir).get_vocab() != tokenizer.get_vocab():
            raise SystemExit(f"the tokenizer saved in {base_dir} differs from the one trained now (different "
                             "corpus or Python version?); retrain base too")

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    # One <|bos|> ... <|eos|> document per pydoc topic and per source file.
    prose_docs = [text for key, text in corpus.prose_topics().items() if corpus.topic_split(key) == "train"]
    code_docs = [doc for doc in re.split(r"(?m)^(?=# file: )", code) if doc.strip()]
    streams = {"prose": token_stream(tokenizer, prose_docs), "code": token_stream(tokenizer, code_docs)}
    sft_pairs = {kind: corpus.instruction_pairs(kind) for kind in SFT_KINDS if kind in args.only}
    # Held-out loss on every full EVAL_SEQ_LEN chunk of the held-out topics.
    ev = evaluation.eval_corpus(tokenizer, "embedded", n_tokens(heldout) // EVAL_SEQ_LEN, EVAL_SEQ_LEN)
    config = build_config(tokenizer, layout)
    phases = {"pretrain": PRETRAIN.scaled(args.steps_scale), "sft": SFT.scaled(args.steps_scale),
              "coder": CODER.scaled(args.steps_scale)}

    recipe_path = out / "recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}    # --only updates in place
    if recipe and recipe.get("layout", "llama") != args.layout:
        raise SystemExit(f"{out} holds a family of layout {recipe.get('layout', 'llama')!r} (recipe.json), not "
                         f"{args.layout!r}; pick another --out or the matching --layout")
    variants = recipe.get("variants", {})
    for name in (v for v in layout.variants if v in args.only):
        print(f"== {name}", flush=True)
        t0 = time.time()
        model, facts, losses = _train_variant(name, args, config, tokenizer, streams, sft_pairs, phases)
        save_variant(model, tokenizer, out / name)
        tail = losses[-max(1, len(losses) // 10):]
        facts.update(wall_s=round(time.time() - t0, 1), final_train_loss=sum(tail) / len(tail),
                     heldout_loss=evaluation.lm_loss(load_variant(out / name), ev.tokens),
                     loss_curve=[[i + 1, round(losses[i], 4)] for i in range(0, len(losses), 25)])
        variants[name] = facts
        print(f"   {name}: {facts['wall_s']:.0f} s, final train loss {facts['final_train_loss']:.4f}, "
              f"held-out loss {facts['heldout_loss']:.4f}", flush=True)

    def sizes(text: str) -> dict:
        return {"chars": len(text), "tokens": n_tokens(text), "sha256_16": _sha(text)}
    arch_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps",
                 "rope_parameters", "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id",
                 *(k for k in layout.args if k != "router_aux_loss_coef"))
    if args.layout != "llama":      # the llama family's recipe.json predates these keys; its weights are kept
        recipe.update({"layout": args.layout, "family": layout.key, "model_type": config.model_type,
                       "config_class": layout.config_class})
        if layout.moe:
            recipe["router_aux_loss_coef"] = layout.args["router_aux_loss_coef"]
            per_expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n) // \
                config.num_experts
            recipe["n_active_parameters"] = sum(p.numel() for p in model.parameters()) - \
                (config.num_experts - config.num_experts_per_tok) * per_expert
    recipe.update({
        "script": "scripts/train_tiny_family.py",
        "argv": [str(a) for a in (argv if argv is not None else sys.argv[1:])],
        "seeds": {"base": args.seed, "scratch": args.scratch_seed, "post": args.post_seed},
        "threads": args.threads, "steps_scale": args.steps_scale,
        "architecture": {**{k: v for k, v in config.to_dict().items() if k in arch_keys},
                         **{k: getattr(config, k) for k in layout.args if k != "router_aux_loss_coef"}},
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer": {"type": "byte-level BPE (tokenizers)", "vocab_size": VOCAB_SIZE, "min_frequency": 2,
                      "special_tokens": [BOS, EOS, PAD], "trained_on": "prose train + code",
                      **({} if args.layout == "llama" else {"loaded_from": _rel(args.tokenizer)})},
        "hyperparameters": {"context": CONTEXT, "code_share": CODE_SHARE, "sft_max_len": SFT_MAX_LEN,
                            **{k: asdict(v) for k, v in phases.items()},
                            "schedule": "linear warmup, cosine to min_lr_ratio * lr",
                            "precision": "float32 train, bf16 saved"},
        "corpus": {"prose_train": sizes(prose), "heldout": sizes(heldout),
                   "code": {**sizes(code), "max_bytes": args.code_bytes},
                   "sft_pairs": {k: len(corpus.instruction_pairs(k)) for k in SFT_KINDS}},
        "eval": {"corpus": ev.name, "n_sequences": ev.tokens.shape[0], "seq_len": EVAL_SEQ_LEN,
                 "n_tokens": ev.n_tokens, "function": "linker_nb.analyses.loss.lm_loss",
                 "dtype": "float32 (from the bf16 checkpoint)"},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "python": platform.python_version()},
        "variants": variants,
        "wall_s_total_this_run": round(time.time() - t_start, 1),
        "headline": headline(out, layout.variants),
    })
    recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    write_readme(out, recipe, layout)
    print(f"done in {time.time() - t_start:.0f} s -> {out}", flush=True)
    return recipe


if __name__ == "__main__":
    main()
