"""Function-preserving transformations of one transformer block (paper §3.3, Table 3), proved on the real layer.

Three symmetries leave a block's input -> output map unchanged but move its weights:

1. MLP intermediate permutation pi: rows of gate/up (and biases) and columns of down are permuted together.
2. Attention head permutation, correct under grouped-query attention: KV head g serves query heads
   g*n_rep .. g*n_rep+n_rep-1 (`repeat_kv`), so KV groups are permuted together with the query heads that read
   them, and query heads are permuted within their group. q/k/v rows (and biases) move in head_dim chunks,
   o_proj columns in the same chunks. Rotary embeddings act identically on every head's head_dim slice, so they
   still line up; per-head q/k norms (Qwen3, Gemma3) are shared across heads and need no change.
3. Norm channel rescaling: the RMSNorm feeding q/k/v (`Architecture.attn_norm`) gets its effective scale
   multiplied by c, and the q/k/v input columns are divided by c; likewise `mlp_norm` with gate/up. Gemma's norms
   multiply by (1 + w) (`norm_offset` = 1), so there w <- c * (1 + w) - 1.

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

from ..io.architectures import Architecture, block_count, layout
from ..io.models import decoder_layers, pick_device
from ..io.references import open_checkpoint
from .kernel import cosine, rel_frob, tensor_stats
from .records import mean_defined

__all__ = ["Block", "SymmetryError", "TOLERANCE", "load_block", "block_from_model", "derangement",
           "mlp_permutation", "head_permutation", "norm_rescale", "random_controls", "kind_means", "build_layer",
           "layer_output", "prove", "run_controls", "check_rescale", "ControlReport", "CONTROLS"]

TOLERANCE = 1e-5  # max |dy| / max |y| allowed for "function preserved"; float32 round-off is ~1e-8..1e-6
CONTROLS = ("ref", "mlp_perm", "head_perm", "rmsnorm")


class SymmetryError(ValueError):
    """The block or the request does not admit the transformation; the message says why and what to do."""


@dataclass
class Block:
    """One transformer block's weights in float32, keyed by sub-name ("self_attn.q_proj.weight").

    Attributes:
        index: block index in its model.
        weights: sub-name -> float32 tensor ([d_out, d_in] for projections, [d] for norms and biases).
        config: the `transformers` (text) config of the model the block comes from.
        arch: the naming conventions of its family (`linker_nb.architectures`).
        kinds: sub-name -> "attn" / "mlp" / "norm" / "other" (for the attention / MLP sub-means).
    """
    index: int
    weights: dict[str, torch.Tensor]
    config: object
    arch: Architecture
    kinds: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the block's place and the head / MLP sizes the controls act on."""
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return (f"block {self.index} of {cfg.num_hidden_layers} ({cfg.model_type}): {cfg.num_attention_heads} query "
                f"heads, {cfg.num_key_value_heads} KV heads, head_dim {head_dim}, intermediate "
                f"{cfg.intermediate_size}, norm offset {self.arch.norm_offset}")

    def with_weights(self, weights: dict[str, torch.Tensor]) -> "Block":
        return Block(self.index, weights, self.config, self.arch, self.kinds)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def load_block(ref, index: int | None = None) -> Block:
    """Read only block `index`'s tensors of a checkpoint (default: the middle block), as float32.

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
    weights = {sub: ck.get(name).float() for sub, name in sorted(names.items())}
    kinds = {sub: roles[name].kind for sub, name in names.items()}
    config = _text_config(AutoConfig.from_pretrained(ck.path))
    return Block(index, weights, config, arch, kinds)


def block_from_model(model, index: int, model_type: str | None = None) -> Block:
    """A `Block` from an instantiated model (used by the tests on random-init configs)."""
    config = _text_config(model.config)
    mt = model_type or config.model_type
    names = [f"model.layers.{index}.{k}" for k in decoder_layers(model)[index].state_dict()]
    arch, roles = layout([n.replace(f"layers.{index}.", "layers.0.") for n in names], mt)
    weights = {k: v.detach().float().clone() for k, v in decoder_layers(model)[index].state_dict().items()}
    kinds = {r.sub: r.kind for r in roles.values()}
    return Block(index, weights, config, arch, kinds)


# -- the three transformations ---------------------------------------------------------------------------------

def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly drawn permutation of range(n) with no fixed point, so every neuron/head moves (n >= 2).

    For large n this is practically a uniform permutation (which has ~1 fixed point on average); for the
    2 KV groups of a tiny model it avoids drawing the identity half of the time."""
    if n < 2:
        raise SymmetryError(f"cannot move {n} element(s): a permutation control needs at least 2.")
    while True:
        p = torch.randperm(n, generator=generator)
        if not bool((p == torch.arange(n)).any()):
            return p


def _need(block: Block, subs) -> None:
    missing = [s for s in subs if f"{s}.weight" not in block.weights]
    if missing:
        raise SymmetryError(f"block {block.index} ({block.arch.name}) has no {missing}: this control needs a "
                            f"gated MLP and separate q/k/v/o projections (llama/mistral/qwen2/gemma style).")


def mlp_permutation(block: Block, perm: torch.Tensor) -> Block:
    """Permute the MLP intermediate dimension: W_in[perm] for gate/up (and biases), W_out[:, perm] for down.

    Args:
        perm: LongTensor [intermediate_size], a permutation.
    """
    a = block.arch
    _need(block, (*a.mlp_in, a.mlp_out))
    w = dict(block.weights)
    n = w[f"{a.mlp_out}.weight"].shape[1]
    if sorted(perm.tolist()) != list(range(n)):
        raise SymmetryError(f"perm is not a permutation of the {n} intermediate channels of block {block.index}.")
    for m in a.mlp_in:
        for p in ("weight", "bias"):
            if f"{m}.{p}" in w:
                w[f"{m}.{p}"] = w[f"{m}.{p}"][perm]
    w[f"{a.mlp_out}.weight"] = w[f"{a.mlp_out}.weight"][:, perm]
    return block.with_weights(w)


def _heads(block: Block) -> tuple[int, int, int]:
    c = block.config
    n_q, n_kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_q
    return n_q, n_kv, head_dim


def head_permutation(block: Block, kv_perm: torch.Tensor, q_within: torch.Tensor) -> Block:
    """Permute attention heads, consistently with grouped-query attention.

    New KV head g holds old KV head kv_perm[g]; new query head g*n_rep + r holds old query head
    kv_perm[g]*n_rep + q_within[kv_perm[g], r], i.e. query heads travel with the KV head they read and are
    shuffled inside their group. q/k/v rows (and biases) move in head_dim chunks, o_proj columns likewise.

    Args:
        kv_perm: LongTensor [n_kv_heads], a permutation.
        q_within: LongTensor [n_kv_heads, n_rep], one permutation of range(n_rep) per (old) KV group.
    """
    a = block.arch
    q, k, v, o = a.attn_proj
    _need(block, a.attn_proj)
    n_q, n_kv, hd = _heads(block)
    n_rep = n_q // n_kv
    if sorted(kv_perm.tolist()) != list(range(n_kv)) or tuple(q_within.shape) != (n_kv, n_rep) or any(
            sorted(row.tolist()) != list(range(n_rep)) for row in q_within):
        raise SymmetryError(f"kv_perm must permute the {n_kv} KV heads and q_within hold one permutation of "
                            f"range({n_rep}) per KV head (shape [{n_kv}, {n_rep}]).")
    q_order = torch.stack([kv_perm[g] * n_rep + q_within[kv_perm[g]] for g in range(n_kv)]).reshape(-1)

    def rows(order):  # head order -> row index order
        return (order[:, None] * hd + torch.arange(hd)).reshape(-1)
    w = dict(block.weights)
    for name, order in ((q, q_order), (k, kv_perm), (v, kv_perm)):
        if w[f"{name}.weight"].shape[0] != len(order) * hd:
            raise SymmetryError(f"{name}.weight has {w[f'{name}.weight'].shape[0]} rows, expected "
                                f"{len(order)} heads x head_dim {hd} from the config.")
        for p in ("weight", "bias"):
            if f"{name}.{p}" in w:
                w[f"{name}.{p}"] = w[f"{name}.{p}"][rows(order)]
    w[f"{o}.weight"] = w[f"{o}.weight"][:, rows(q_order)]
    return block.with_weights(w)


def norm_rescale(block: Block, c_attn: torch.Tensor, c_mlp: torch.Tensor) -> Block:
    """Scale the norms feeding q/k/v and gate/up by c per channel and divide those projections' input columns by c.

    The effective RMSNorm scale is (norm_offset + w): for Gemma (offset 1) the stored weight becomes
    c * (1 + w) - 1, not c * w, which would change the function.

    Args:
        c_attn, c_mlp: positive float tensors [hidden_size].
    """
    a = block.arch
    _need(block, (a.attn_norm, a.mlp_norm, *a.attn_proj[:3], *a.mlp_in))
    off = a.norm_offset
    w = dict(block.weights)
    for norm, projs, c in ((a.attn_norm, a.attn_proj[:3], c_attn), (a.mlp_norm, a.mlp_in, c_mlp)):
        if not bool((c > 0).all()) or c.shape != w[f"{norm}.weight"].shape:
            raise SymmetryError(f"the scales for {norm} must be positive with shape "
                                f"{tuple(w[f'{norm}.weight'].shape)}; got shape {tuple(c.shape)}.")
        if f"{norm}.bias" in w:
            raise SymmetryError(f"{norm} has a bias (LayerNorm): channel rescaling of a biased norm is not "
                                f"implemented; use an RMSNorm family (llama/mistral/qwen2/gemma).")
        w[f"{norm}.weight"] = c * (off + w[f"{norm}.weight"]) - off
        for p in projs:
            w[f"{p}.weight"] = w[f"{p}.weight"] / c
    return block.with_weights(w)


def check_rescale(rescale_low: float, rescale_high: float) -> None:
    """The rescaling range must be positive and ordered (a zero scale is not invertible)."""
    if not 0 < rescale_low <= rescale_high:
        raise SymmetryError(f"need 0 < rescale_low <= rescale_high; got rescale_low={rescale_low}, "
                            f"rescale_high={rescale_high} (paper Table 3: 0.5, 2.0).")


def random_controls(block: Block, seed: int = 0, rescale_low: float = 0.5,
                    rescale_high: float = 2.0) -> dict[str, Block]:
    """The three controls with seeded random parameters, plus `ref` (the block itself).

    c_i ~ U[rescale_low, rescale_high] (Table 3 uses U[0.5, 2.0])."""
    check_rescale(rescale_low, rescale_high)
    g = torch.Generator().manual_seed(seed)
    a = block.arch
    n_mid = block.weights[f"{a.mlp_out}.weight"].shape[1] if f"{a.mlp_out}.weight" in block.weights else 0
    n_q, n_kv, _ = _heads(block)
    n_rep = n_q // n_kv
    kv_perm = derangement(n_kv, g) if n_kv > 1 else torch.zeros(1, dtype=torch.long)
    q_within = torch.stack([derangement(n_rep, g) if n_rep > 1 else torch.zeros(1, dtype=torch.long)
                            for _ in range(n_kv)])
    if n_kv == 1 and n_rep == 1:
        raise SymmetryError("the model has a single attention head: there is no head permutation to apply.")
    d = block.config.hidden_size

    def scales():
        return rescale_low + (rescale_high - rescale_low) * torch.rand(d, generator=g)
    return {"ref": block, "mlp_perm": mlp_permutation(block, derangement(n_mid, g)),
            "head_perm": head_permutation(block, kv_perm, q_within),
            "rmsnorm": norm_rescale(block, scales(), scales())}


def kind_means(block: Block, other: Block) -> dict[str, float | None]:
    """Attention-mean and MLP-mean cosine and relative Frobenius ratio (eqs. 1-2 restricted to one kind)
    between two blocks of equal layout (`block` is the reference of the ratio)."""
    out: dict[str, list] = {"attn_cos": [], "attn_frob": [], "mlp_cos": [], "mlp_frob": []}
    for sub, t in block.weights.items():
        kind = block.kinds.get(sub)
        if kind in ("attn", "mlp"):
            s = tensor_stats(t, other.weights[sub])
            out[f"{kind}_cos"].append(cosine(s))
            out[f"{kind}_frob"].append(rel_frob(s))
    return {k: mean_defined(v) for k, v in out.items()}


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
        keys = ("attn_cos", "attn_frob", "mlp_cos", "mlp_frob", "max_abs_output_diff")
        return {"block": self.block, "controls": {k: {q: r[q] for q in keys} for k, r in self.rows.items()}}


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
    return ControlReport(b.index, b.config.model_type, rows)
