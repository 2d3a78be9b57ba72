"""The symmetry controls' transformations (paper §3.3) on one block's weights, in the module layout; where
each weight sits comes from the architecture record. See `analyses.symmetry` for what each one is and why it
preserves the block's function, and for the proof on the real layer."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..io.architectures import MLP_KINDS, Architecture, Role
from .kernel import cosine, rel_frob, tensor_stats
from .records import mean_defined

__all__ = ["Block", "SymmetryError", "TOLERANCE", "CONTROLS", "MOE_CONTROLS", "derangement", "mlp_permutation",
           "head_permutation", "norm_rescale", "absorbed_rescale", "expert_permutation", "random_controls",
           "kind_means", "check_rescale", "is_pre_norm"]

TOLERANCE = 1e-5  # max |dy| / max |y| allowed for "function preserved"; float32 round-off is ~1e-8..1e-6
CONTROLS = ("ref", "mlp_perm", "head_perm", "rmsnorm")
MOE_CONTROLS = CONTROLS + ("expert_perm",)


class SymmetryError(ValueError):
    """The block or the request does not admit the transformation; the message says why and what to do."""



@dataclass
class Block:
    """One transformer block's weights in float32, in the `transformers` module layout.

    Attributes:
        index: block index in its model.
        weights: sub-name -> float32 tensor ("self_attn.q_proj.weight": [d_out, d_in]; norms and biases [d];
            fused experts "mlp.experts.gate_up_proj": [E, 2I, H]).
        config: the `transformers` (text) config of the model the block comes from.
        arch: its architecture record (`io.architectures`).
        kinds: sub-name -> kind (attn / mlp / norm / router / expert / unknown); from the record when not given.
    """
    index: int
    weights: dict[str, torch.Tensor]
    config: object
    arch: Architecture
    kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for sub in self.weights:
            if sub not in self.kinds:
                found = self.arch.entry(sub, module=True)
                self.kinds[sub] = found[0]["kind"] if found else "unknown"

    @property
    def dims(self):
        return self.arch.dims(self.config)

    def describe(self) -> str:
        """One line: the block's place and the head / MLP sizes the controls act on."""
        cfg, d = self.config, self.dims
        experts = f", {d.n_experts} experts" if d.n_experts else ""
        return (f"block {self.index} of {cfg.num_hidden_layers} ({cfg.model_type}, record {self.arch.name}): "
                f"{d.n_heads} query heads, {d.n_kv_heads} KV heads, head_dim {d.head_dim}, intermediate "
                f"{d.intermediate}{experts}, norm offset {self.arch.norm_offset}")

    def with_weights(self, weights: dict[str, torch.Tensor]) -> "Block":
        return Block(self.index, weights, self.config, self.arch, self.kinds)


# -- where the weights sit: the record's entries, resolved on one block ----------------------------------------
@dataclass(frozen=True)
class _Loc:
    """One logical matrix (or bias) of the block: `weights[sub][index]` is a [d_out, d_in] view ([d] for biases)."""
    sub: str
    index: tuple
    expert: int | None
    bias: bool


def _locate(block: Block, role: str) -> list[_Loc]:
    """Every place the role's matrices sit in the block: separate projections, parts of fused ones, or one per
    expert; biases included (`bias=True`)."""
    out = []
    dims = block.dims
    for sub, t in block.weights.items():
        found = block.arch.entry(sub, module=True)
        if found is None:
            continue
        e = found[0]
        bias = sub.endswith(".bias")
        if e["role"] == role and "split" in e:  # a fused tensor as a whole (a norm feeding "qkv" scales all of it)
            out.append(_Loc(sub, (), None, bias))
            continue
        for part in block.arch.parts(Role("block", block.index, sub, e["kind"], e["role"]), tuple(t.shape), dims,
                                     module=True):
            if part.role == role:
                out.append(_Loc(sub, part.index, part.expert, bias))
    return out


def _need(block: Block, *roles: str, why: str) -> dict[str, list[_Loc]]:
    if block.arch.norm_type != "rmsnorm":
        raise SymmetryError(f"block {block.index} ({block.arch.name}): the controls are implemented for RMSNorm "
                            f"families with nn.Linear [out, in] projections; {block.arch.name} has "
                            f"{block.arch.norm_type} norms ({block.arch.source}).")
    locs = {r: _locate(block, r) for r in roles}
    missing = [r for r, x in locs.items() if not [loc for loc in x if not loc.bias]]
    if missing:
        raise SymmetryError(f"block {block.index} ({block.arch.name}) has no {missing} projection in its record "
                            f"({block.arch.source}): {why}")
    return locs


def _clone(block: Block) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in block.weights.items()}


def _rows(w, loc: _Loc, order: torch.Tensor) -> None:
    view = w[loc.sub][loc.index] if loc.index else w[loc.sub]
    view.copy_(view[order])


def _cols(w, loc: _Loc, order: torch.Tensor) -> None:
    view = w[loc.sub][loc.index] if loc.index else w[loc.sub]
    view.copy_(view[:, order])


def _scale(w, loc: _Loc, c: torch.Tensor, rows: bool) -> None:
    """Multiply the rows (or, rows=False, divide the input columns) of a located matrix by c."""
    view = w[loc.sub][loc.index] if loc.index else w[loc.sub]
    if rows or loc.bias:
        view.mul_(c if view.dim() == 1 else c[:, None])
    else:
        view.div_(c)


# -- the transformations ---------------------------------------------------------------------------------------
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


def _check_perm(perm: torch.Tensor, n: int, what: str) -> None:
    if sorted(perm.tolist()) != list(range(n)):
        raise SymmetryError(f"perm is not a permutation of the {n} {what}.")


def mlp_permutation(block: Block, perm: torch.Tensor) -> Block:
    """Permute the MLP intermediate dimension: gate/up rows (and biases) by perm, down columns likewise; in a
    MoE block every expert's (each expert is an MLP of its own; one perm serves them all).

    Args:
        perm: LongTensor [intermediate_size] (a MoE block: [moe intermediate size]), a permutation.
    """
    locs = _need(block, "gate", "up", "down", why="this control needs a gated MLP (llama/mistral/qwen/gemma/phi3 "
                                                    "style, or MoE experts).")
    w = _clone(block)
    for loc in locs["gate"] + locs["up"]:
        _check_perm(perm, (w[loc.sub][loc.index] if loc.index else w[loc.sub]).shape[0],
                    f"intermediate channels of block {block.index} ({loc.sub})")
        _rows(w, loc, perm)
    for loc in locs["down"]:
        if loc.bias:
            continue  # down's bias lives on the hidden side: untouched
        _cols(w, loc, perm)
    return block.with_weights(w)


def _heads(block: Block) -> tuple[int, int, int]:
    d = block.dims
    return d.n_heads, d.n_kv_heads, d.head_dim


def _chunks(order: torch.Tensor, hd: int) -> torch.Tensor:
    """Head order -> row index order (head_dim rows per head)."""
    return (order[:, None] * hd + torch.arange(hd)).reshape(-1)


def head_permutation(block: Block, kv_perm: torch.Tensor, q_within: torch.Tensor) -> Block:
    """Permute attention heads, consistently with grouped-query attention.

    New KV head g holds old KV head kv_perm[g]; new query head g*n_rep + r holds old query head
    kv_perm[g]*n_rep + q_within[kv_perm[g], r], i.e. query heads travel with the KV head they read and are
    shuffled inside their group. q/k/v rows (and biases) move in head_dim chunks, o_proj columns likewise;
    full-width q/k norm weights move with their heads.

    Args:
        kv_perm: LongTensor [n_kv_heads], a permutation.
        q_within: LongTensor [n_kv_heads, n_rep], one permutation of range(n_rep) per (old) KV group.
    """
    locs = _need(block, "q", "k", "v", "o", why="this control needs q/k/v/o projections (separate or fused).")
    n_q, n_kv, hd = _heads(block)
    n_rep = n_q // n_kv
    if sorted(kv_perm.tolist()) != list(range(n_kv)) or tuple(q_within.shape) != (n_kv, n_rep) or any(
            sorted(row.tolist()) != list(range(n_rep)) for row in q_within):
        raise SymmetryError(f"kv_perm must permute the {n_kv} KV heads and q_within hold one permutation of "
                            f"range({n_rep}) per KV head (shape [{n_kv}, {n_rep}]).")
    q_order = torch.stack([kv_perm[g] * n_rep + q_within[kv_perm[g]] for g in range(n_kv)]).reshape(-1)
    w = _clone(block)
    for role, order in (("q", q_order), ("k", kv_perm), ("v", kv_perm)):
        for loc in locs[role]:
            rows = (w[loc.sub][loc.index] if loc.index else w[loc.sub]).shape[0]
            if rows != len(order) * hd:
                raise SymmetryError(f"{loc.sub} ({role}) has {rows} rows, expected {len(order)} heads x head_dim "
                                    f"{hd} from the config.")
            _rows(w, loc, _chunks(order, hd))
    for loc in locs["o"]:
        if not loc.bias:
            _cols(w, loc, _chunks(q_order, hd))
    for role, order in (("q_norm", q_order), ("k_norm", kv_perm)):
        for loc in _locate(block, role):
            if w[loc.sub].shape[0] == len(order) * hd:  # full width (OLMo-2); a per-head [head_dim] norm stays
                _rows(w, loc, _chunks(order, hd))
    return block.with_weights(w)


def norm_rescale(block: Block, c_attn: torch.Tensor, c_mlp: torch.Tensor) -> Block:
    """Scale each pre-norm by c per channel and divide the input columns of the projections it feeds by c.

    The effective RMSNorm scale is (norm_offset + w): for Gemma (offset 1) the stored weight becomes
    c * (1 + w) - 1, not c * w, which would change the function.

    Args:
        c_attn, c_mlp: positive float tensors [hidden_size], for the norm feeding attention and the one feeding
            the MLP (router and experts in a MoE block).

    Raises:
        SymmetryError: the record has no pre-norm feeding projections (post-norm: use `absorbed_rescale`).
    """
    _need(block, why="")
    norms = [e for e in block.arch.module_layout if e.get("placement") == "pre" and e.get("feeds")
             and e["name"] in block.weights]
    if not norms:
        raise SymmetryError(
            f"block {block.index} ({block.arch.name}) has no norm at a sublayer's input ({block.arch.source}: "
            f"placement post): a per-channel rescaling of a post-norm's weight goes straight into the residual "
            f"stream, where no projection can absorb it. Use absorbed_rescale, the rescalings this block admits.")
    off = block.arch.norm_offset
    w = _clone(block)
    for e in norms:
        norm = e["name"]
        c = c_attn if e["role"] == "attn_norm" else c_mlp
        if not bool((c > 0).all()) or c.shape != w[norm].shape:
            raise SymmetryError(f"the scales for {norm} must be positive with shape {tuple(w[norm].shape)}; got "
                                f"shape {tuple(c.shape)}.")
        w[norm] = c * (off + w[norm]) - off
        for role in e["feeds"]:
            for loc in _locate(block, role):
                if not loc.bias:
                    _scale(w, loc, c, rows=False)
    return block.with_weights(w)


def absorbed_rescale(block: Block, c_qk: torch.Tensor, c_v: torch.Tensor, c_mlp: torch.Tensor) -> Block:
    """The rescalings a post-norm block admits: q_norm × c_qk / k_norm ÷ c_qk, v rows × c_v / o columns ÷ c_v
    (both per KV group and head_dim channel; query heads of a group share it), up rows × c_mlp / down columns ÷
    c_mlp (every expert alike).

    Args:
        c_qk: positive [n_kv_heads, head_dim], equal on each rotary pair (j, j + head_dim/2), which RoPE mixes.
        c_v: positive [n_kv_heads, head_dim]. c_mlp: positive [intermediate].
    """
    locs = _need(block, "v", "o", "up", "down", why="this control needs v/o and up/down projections.")
    n_q, n_kv, hd = _heads(block)
    n_rep = n_q // n_kv
    half = hd // 2
    if c_qk.shape != (n_kv, hd) or c_v.shape != (n_kv, hd) or not all(bool((c > 0).all()) for c in (c_qk, c_v, c_mlp)):
        raise SymmetryError(f"c_qk and c_v must be positive [{n_kv}, {hd}], c_mlp positive [intermediate].")
    if not torch.equal(c_qk[:, :half], c_qk[:, half:2 * half]):
        raise SymmetryError("c_qk must be equal on each rotary pair (j, j + head_dim/2): RoPE mixes them.")
    w = _clone(block)
    q_norm, k_norm = _locate(block, "q_norm"), _locate(block, "k_norm")
    for loc in q_norm:
        w[loc.sub].mul_(c_qk.repeat_interleave(n_rep, 0).reshape(-1) if w[loc.sub].numel() == n_q * hd else 1)
    for loc in k_norm:
        w[loc.sub].div_(c_qk.reshape(-1) if w[loc.sub].numel() == n_kv * hd else 1)
    if any(w[loc.sub].numel() == hd for loc in q_norm + k_norm):
        raise SymmetryError("per-head q/k norms share one weight across heads: c_qk cannot differ per group.")
    for loc in locs["v"]:
        _scale(w, loc, c_v.reshape(-1), rows=True)
    for loc in locs["o"]:
        if not loc.bias:
            _scale(w, loc, c_v.repeat_interleave(n_rep, 0).reshape(-1), rows=False)
    for loc in locs["up"]:
        _scale(w, loc, c_mlp, rows=True)
    for loc in locs["down"]:
        if not loc.bias:
            _scale(w, loc, c_mlp, rows=False)
    return block.with_weights(w)


def expert_permutation(block: Block, perm: torch.Tensor) -> Block:
    """Permute a MoE block's experts and the router's rows together: new expert e is old expert perm[e].

    Args:
        perm: LongTensor [n_experts], a permutation.
    """
    locs = _need(block, "router", why="expert permutation needs a MoE block (router + experts).")
    stacked = [e["name"] for e in block.arch.module_layout if e.get("experts") and e["name"] in block.weights]
    if not stacked:
        raise SymmetryError(f"block {block.index} ({block.arch.name}) has no stacked experts in its record.")
    w = _clone(block)
    _check_perm(perm, w[stacked[0]].shape[0], f"experts of block {block.index}")
    for sub in stacked:
        w[sub] = w[sub][perm]
    for loc in locs["router"]:
        _rows(w, loc, perm)
    return block.with_weights(w)


def check_rescale(rescale_low: float, rescale_high: float) -> None:
    """The rescaling range must be positive and ordered (a zero scale is not invertible)."""
    if not 0 < rescale_low <= rescale_high:
        raise SymmetryError(f"need 0 < rescale_low <= rescale_high; got rescale_low={rescale_low}, "
                            f"rescale_high={rescale_high} (paper Table 3: 0.5, 2.0).")


def is_pre_norm(block: Block) -> bool:
    return any(e.get("placement") == "pre" and e.get("feeds") for e in block.arch.module_layout)


def random_controls(block: Block, seed: int = 0, rescale_low: float = 0.5,
                    rescale_high: float = 2.0) -> dict[str, Block]:
    """The controls with seeded random parameters, plus `ref` (the block itself); `expert_perm` for MoE blocks.

    c_i ~ U[rescale_low, rescale_high] (Table 3 uses U[0.5, 2.0]). For post-norm blocks `rmsnorm` is
    `absorbed_rescale` (see the module docstring)."""
    check_rescale(rescale_low, rescale_high)
    g = torch.Generator().manual_seed(seed)
    n_q, n_kv, hd = _heads(block)
    n_rep = n_q // n_kv
    downs = [loc for loc in _locate(block, "down") if not loc.bias]
    n_mid = (block.weights[downs[0].sub][downs[0].index] if downs and downs[0].index
             else block.weights[downs[0].sub]).shape[1] if downs else 0
    kv_perm = derangement(n_kv, g) if n_kv > 1 else torch.zeros(1, dtype=torch.long)
    q_within = torch.stack([derangement(n_rep, g) if n_rep > 1 else torch.zeros(1, dtype=torch.long)
                            for _ in range(n_kv)])
    if n_kv == 1 and n_rep == 1:
        raise SymmetryError("the model has a single attention head: there is no head permutation to apply.")

    def scales(*shape):
        return rescale_low + (rescale_high - rescale_low) * torch.rand(*shape, generator=g)
    out = {"ref": block, "mlp_perm": mlp_permutation(block, derangement(n_mid, g)),
           "head_perm": head_permutation(block, kv_perm, q_within)}
    if is_pre_norm(block):
        d = block.dims.hidden
        out["rmsnorm"] = norm_rescale(block, scales(d), scales(d))
    else:
        c_qk = scales(n_kv, hd // 2).repeat(1, 2)
        out["rmsnorm"] = absorbed_rescale(block, c_qk, scales(n_kv, hd), scales(n_mid))
    if _locate(block, "router"):
        out["expert_perm"] = expert_permutation(block, derangement(block.dims.n_experts or 0, g))
    return out


def kind_means(block: Block, other: Block) -> dict[str, float | None]:
    """Attention-mean and MLP-mean cosine and relative Frobenius ratio (eqs. 1-2 restricted to one kind) between
    two blocks of equal layout (`block` is the reference of the ratio), on the parts the scan measures (fused
    projections split, experts one by one); router means too in a MoE block."""
    out: dict[str, list] = {"attn_cos": [], "attn_frob": [], "mlp_cos": [], "mlp_frob": []}
    router = {"router_cos": [], "router_frob": []}
    dims = block.dims
    for sub, t in block.weights.items():
        kind = block.kinds.get(sub, "unknown")
        group = "attn" if kind == "attn" else "mlp" if kind in MLP_KINDS else "router" if kind == "router" else None
        if group is None:
            continue
        found = block.arch.entry(sub, module=True)
        role = Role("block", block.index, sub, kind, found[0]["role"] if found else "")
        for part in block.arch.parts(role, tuple(t.shape), dims, module=True):
            a = t[part.index] if part.index else t
            b = other.weights[sub][part.index] if part.index else other.weights[sub]
            s = tensor_stats(a, b)
            dest = router if group == "router" else out
            dest[f"{group}_cos"].append(cosine(s))
            dest[f"{group}_frob"].append(rel_frob(s))
    res = {k: mean_defined(v) for k, v in out.items()}
    if router["router_cos"]:
        res |= {k: mean_defined(v) for k, v in router.items()}
    return res
