"""Function-preserving transformations of one transformer block (paper §3.3, Table 3), proved on the real layer.

The symmetries leave a block's input -> output map unchanged but move its weights. Where each weight sits (q/k/v
separate or fused, gate/up separate or fused, experts stacked, which norm feeds which projection) comes from the
architecture record (`io.architectures`), in the `transformers` module layout:

1. MLP intermediate permutation pi: rows of gate/up (and biases) and columns of down are permuted together
   (the gate and up halves of a fused gate_up_proj alike; in a MoE block, every expert's intermediate dimension).
2. Attention head permutation, correct under grouped-query attention: KV head g serves query heads
   g*n_rep .. g*n_rep+n_rep-1 (`repeat_kv`), so KV groups are permuted together with the query heads that read
   them, and query heads are permuted within their group. q/k/v rows (and biases; the q, k and v parts of a
   fused qkv_proj) move in head_dim chunks, o_proj columns in the same chunks. Rotary embeddings act identically
   on every head's head_dim slice, so they still line up. Per-head q/k norms (Qwen3, Gemma3: one [head_dim]
   weight) need no change; full-width q/k norms (OLMo-2: [n_heads * head_dim]) are permuted in head_dim chunks
   with their heads.
3. Norm channel rescaling (pre-norm families): each norm that feeds projections (`placement: pre`, `feeds`) gets
   its effective scale multiplied by c, and the input columns of what it feeds (q/k/v or qkv; gate/up or
   gate_up; a MoE block's router and every expert) are divided by c. Gemma's norms multiply by (1 + w)
   (`norm_offset` = 1), so there w <- c * (1 + w) - 1.
   Post-norm families (OLMo-2) normalise a sublayer's *output* before the residual add, and no norm feeds a
   projection: a per-channel rescaling of a post-norm's weight lands in the residual stream, where nothing can
   absorb it, and scaling a projection's rows changes the RMS the next norm divides by. The rescalings such a
   block does admit replace the control there (`absorbed_rescale`): q_norm × c / k_norm ÷ c per (KV group,
   rotary pair) channel (the q·k product is unchanged), v rows × c / o columns ÷ c per (KV group, head_dim
   channel), up rows × c / down columns ÷ c per intermediate channel.
4. Expert permutation (MoE): experts and the router's rows permuted together; top-k picks the same experts
   under their new indices with the same weights.

If block similarity (eqs. 1-2) were an artefact of these symmetries, applying one would not change it. It does:
the cosine to the variant drops by orders of magnitude (permutations) or the Frobenius ratio inflates
(rescaling) while the function is untouched. `prove` shows the "untouched" part by running the architecture's
own `transformers` decoder layer (its rotary embeddings and causal mask, built by the model's forward) on seeded
random hidden states in float32 before and after.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..io.architectures import Architecture, block_count, get_architecture, layout
from ..io.conversions import to_module
from ..io.models import decoder_layers, pick_device
from ..io.references import open_checkpoint
from .controls import (CONTROLS, MOE_CONTROLS, TOLERANCE, Block, SymmetryError, absorbed_rescale, check_rescale,
                       derangement, expert_permutation, head_permutation, is_pre_norm, kind_means, mlp_permutation,
                       norm_rescale, random_controls)

__all__ = ["Block", "SymmetryError", "TOLERANCE", "load_block", "block_from_model", "derangement",
           "mlp_permutation", "head_permutation", "norm_rescale", "absorbed_rescale", "expert_permutation",
           "random_controls", "kind_means", "build_layer", "layer_output", "prove", "run_controls", "check_rescale",
           "ControlReport", "CONTROLS", "MOE_CONTROLS"]


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def load_block(ref, index: int | None = None) -> Block:
    """Read only block `index`'s tensors of a checkpoint (default: the middle block), as float32, converted to
    the module layout (a MoE block's per-expert tensors stacked as transformers v5 holds them).

    Raises:
        SymmetryError: `index` is out of range (the message gives the valid range).
    """
    from transformers import AutoConfig
    ck = open_checkpoint(ref)
    arch, roles = layout(ck.names, ck.model_type)
    n = block_count(roles.values())
    index = n // 2 if index is None else index
    if not 0 <= index < n:
        raise SymmetryError(f"block {index} does not exist in {ck.ref}: it has {n} blocks, use 0..{n - 1}.")
    names = {r.sub: name for name, r in roles.items() if r.group == "block" and r.block == index}
    weights = to_module(arch, index, {sub: ck.get(name).float() for sub, name in sorted(names.items())})
    config = _text_config(AutoConfig.from_pretrained(ck.path))
    return Block(index, weights, config, _text_arch(arch, config))


def _text_arch(arch: Architecture, config) -> Architecture:
    """The record of the text model a layer is built as (gemma3 -> gemma3_text): `build_layer` builds the text
    model, whose module names have no multimodal prefix."""
    return get_architecture(getattr(config, "model_type", arch.name) or arch.name) if not arch.is_generic else arch


def block_from_model(model, index: int, model_type: str | None = None) -> Block:
    """A `Block` from an instantiated model (used by the tests on random-init configs)."""
    config = _text_config(model.config)
    arch = get_architecture(model_type or config.model_type)
    weights = {k: v.detach().float().clone() for k, v in decoder_layers(model)[index].state_dict().items()}
    return Block(index, weights, config, arch)


# -- the proof on the real layer --------------------------------------------------------------------------------

def build_layer(block: Block, device: str | torch.device = "cpu"):
    """A 1-layer `transformers` base model of the block's architecture, float32, eager attention, holding the
    block's weights. Its vocabulary is shrunk to 8 (we feed hidden states, never token ids) so a 7B block
    needs ~1 GiB, not a whole model; `layer_types` keeps the block's own (sliding / full) attention type."""
    from transformers import AutoModel
    cfg = copy.deepcopy(block.config)
    cfg.num_hidden_layers, cfg.vocab_size, cfg.pad_token_id = 1, 8, None
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[block.index]]
    cfg._attn_implementation = "eager"
    model = AutoModel.from_config(cfg, dtype=torch.float32).to(device).eval()
    load_into(model, block)
    return model


def load_into(model, block: Block) -> None:
    layer = decoder_layers(model)[0]
    missing, unexpected = layer.load_state_dict(block.weights, strict=False)
    if missing or unexpected:
        raise SymmetryError(f"block {block.index} does not fit a {block.config.model_type} layer: missing "
                            f"{missing[:4]}, unexpected {unexpected[:4]}.")


@torch.no_grad()
def layer_output(model, x: torch.Tensor, with_input: bool = False):
    """Run the model's forward on hidden states x [batch, seq, hidden] and return its layer 0's output.

    The model builds the rotary position embeddings and the causal mask itself, exactly as in generation;
    a hook captures what the decoder layer receives and returns (Gemma scales x by sqrt(hidden) first).

    Returns:
        y [batch, seq, hidden], or (layer input, y) when `with_input`.
    """
    got = {}

    def hook(_m, args, kwargs, out):
        got["x"] = args[0] if args else kwargs["hidden_states"]
        got["y"] = out[0] if isinstance(out, tuple) else out
    h = decoder_layers(model)[0].register_forward_hook(hook, with_kwargs=True)
    try:
        model(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long, device=x.device),
              use_cache=False)
    finally:
        h.remove()
    return (got["x"], got["y"]) if with_input else got["y"]


def prove(before: Block, after: Block, seed: int = 0, batch: int = 2, seq_len: int = 16,
          model=None) -> dict[str, float]:
    """Max |y_before - y_after| of the real decoder layer on seeded N(0, 1) hidden states [batch, seq_len, d].

    Returns:
        {"max_abs_output_diff", "max_abs_output", "max_abs_update", "relative"} with relative = max|dy| / max|y|;
        the function is preserved iff relative <= TOLERANCE. max_abs_update = max|y - x| is the block's own
        contribution: when it is tiny next to the residual x (small random-init weights), even a broken
        transformation would look preserved, so tests use weights that give an O(1) update.
    """
    model = model or build_layer(before)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, before.config.hidden_size, generator=g).to(next(model.parameters()).device)
    load_into(model, before)
    x_in, y0 = layer_output(model, x, with_input=True)
    load_into(model, after)
    y1 = layer_output(model, x)
    load_into(model, before)
    diff, scale = float((y0 - y1).abs().max()), float(y0.abs().max())
    return {"max_abs_output_diff": diff, "max_abs_output": scale, "max_abs_update": float((y0 - x_in).abs().max()),
            "relative": diff / scale if scale else diff}


@dataclass
class ControlReport:
    """Table 3 for one block: per control, similarity to the variant block and the function-preservation proof."""
    block: int
    model_type: str
    rows: dict[str, dict]
    notes: dict[str, str] = field(default_factory=dict)   # control -> what it did on this architecture

    def table(self):
        import pandas as pd
        return pd.DataFrame.from_dict(self.rows, orient="index")[
            ["attn_cos", "attn_frob", "mlp_cos", "mlp_frob", "max_abs_output_diff", "relative_diff",
             "max_abs_update"]]

    def table3(self, paper: dict | None = None):
        """Table 3's layout (quantities x controls) plus §3.3's MLP-permutation row; with `paper` (a family's
        `paper["table3"]`) the paper's figures follow as "paper: ..." rows (NaN where it reports none)."""
        import pandas as pd
        q = {"attention sub-mean cosine": "attn_cos", "attention sub-mean ε": "attn_frob",
             "MLP sub-mean cosine": "mlp_cos", "MLP sub-mean ε": "mlp_frob", "max |Δy|": "max_abs_output_diff"}
        if "router_cos" in self.rows["ref"]:
            q |= {"router cosine": "router_cos", "router ε": "router_frob"}
        df = pd.DataFrame({c: {label: self.rows[c][k] for label, k in q.items()} for c in self.rows})
        if paper:
            mp = paper.get("mlp_perm", {})
            extra = {"paper: attention sub-mean cosine": paper.get("attn_cos", {}),
                     "paper: attention sub-mean ε": paper.get("attn_frob", {}),
                     "paper: MLP sub-mean cosine": {"ref": mp.get("mlp_cos_ref"), "mlp_perm": mp.get("mlp_cos")},
                     "paper: max |Δy|": {"mlp_perm": mp.get("max_abs_output_diff")}}
            df = pd.concat([df, pd.DataFrame({c: {k: v.get(c) for k, v in extra.items()} for c in self.rows})])
        return df.astype(float)

    def assert_preserved(self, tolerance: float = TOLERANCE) -> float:
        """The worst relative max |dy| over the controls; raises if any control changed the block's function.

        Raises:
            SymmetryError: naming the control, its relative output change and the tolerance.
        """
        name, worst = max(((k, r["relative_diff"]) for k, r in self.rows.items()), key=lambda kv: kv[1])
        if not worst <= tolerance:
            raise SymmetryError(f"control {name!r} changed the block's function: relative max |dy| {worst:.2e} > "
                                f"{tolerance:.0e}; the transformation is wrong for this architecture.")
        return worst

    def to_dict(self) -> dict:
        keys = ("attn_cos", "attn_frob", "mlp_cos", "mlp_frob", "max_abs_output_diff", "router_cos", "router_frob")
        return {"block": self.block, "controls": {k: {q: r[q] for q in keys if q in r} for k, r in self.rows.items()},
                "notes": dict(self.notes)}


def run_controls(base, variant, block: int | None = None, seed: int = 0, rescale_low: float = 0.5,
                 rescale_high: float = 2.0, device: str = "cpu") -> ControlReport:
    """Apply each control to the base block, prove it function-preserving, and measure it against the variant.

    Args:
        base, variant: checkpoint references, or `Block`s.
        block: block index (default: the middle block).
        device: where the proof's layer runs, in float32 ("auto": CUDA when available). The weights and the
            similarity metrics stay on the CPU.
    """
    b = base if isinstance(base, Block) else load_block(base, block)
    v = variant if isinstance(variant, Block) else load_block(variant, b.index)
    if set(b.weights) != set(v.weights) or any(b.weights[k].shape != v.weights[k].shape for k in b.weights):
        raise SymmetryError(f"block {b.index} of the base and of the variant differ in layout or shapes; compare "
                            f"two checkpoints of one architecture.")
    model = build_layer(b, pick_device(device))
    rows = {}
    for name, blk in random_controls(b, seed, rescale_low, rescale_high).items():
        proof = prove(b, blk, seed, model=model)  # for ref: 0 exactly, and the block's update size
        rows[name] = kind_means(blk, v) | {"max_abs_output_diff": proof["max_abs_output_diff"],
                                           "relative_diff": proof["relative"],
                                           "max_abs_update": proof["max_abs_update"]}
    notes = {"rmsnorm": "norm channel rescaling (pre-norms x c, the projections they feed / c)" if is_pre_norm(b)
             else ("post-norm block: no norm feeds a projection, so the rescalings it admits were applied instead "
                   "(q_norm x c / k_norm / c, v rows x c / o columns / c, up rows x c / down columns / c)")}
    if "expert_perm" in rows:
        notes["expert_perm"] = "experts and the router's rows permuted together"
    return ControlReport(b.index, b.config.model_type, rows, notes)
