"""Symmetry controls (paper §3.3, Table 3): unit tier on hand-made tensors, architecture tier on tiny random-init
configs of every family in linker_nb.testing.FAMILIES (grouped-query attention: 4 query heads, 2 KV heads).

Oracle: the architecture's own `transformers` decoder layer on seeded random hidden states, float32. Tolerance:
max |dy| / max |y| <= symmetry.TOLERANCE (1e-5); measured round-off is 1e-7..6e-7. Negative controls (a wrong
transformation) must exceed it by orders of magnitude, so the oracle can fail.
"""
from __future__ import annotations

import pytest
import torch

from linker_nb.analyses import symmetry as S
from linker_nb.io.architectures import get_architecture
from linker_nb.testing import FAMILIES, perturb_state, tiny_config


class _Cfg:  # the attributes symmetry reads from a transformers config
    num_attention_heads, num_key_value_heads, head_dim, hidden_size, model_type = 4, 2, 1, 2, "llama"


def _hand_block() -> S.Block:
    """hidden 2, intermediate 3, 4 query heads / 2 KV heads of head_dim 1: every entry is its own label."""
    w = {"mlp.gate_proj.weight": torch.tensor([[1., 2], [3, 4], [5, 6]]),
         "mlp.up_proj.weight": torch.tensor([[7., 8], [9, 10], [11, 12]]),
         "mlp.down_proj.weight": torch.tensor([[1., 2, 3], [4, 5, 6]]),
         "self_attn.q_proj.weight": torch.tensor([[0., 0], [1, 1], [2, 2], [3, 3]]),
         "self_attn.q_proj.bias": torch.tensor([0., 1, 2, 3]),
         "self_attn.k_proj.weight": torch.tensor([[10., 10], [11, 11]]),
         "self_attn.v_proj.weight": torch.tensor([[20., 20], [21, 21]]),
         "self_attn.o_proj.weight": torch.tensor([[0., 1, 2, 3], [0, 1, 2, 3]]),
         "input_layernorm.weight": torch.tensor([1., 2]), "post_attention_layernorm.weight": torch.tensor([3., 4])}
    kinds = {k: "norm" if "norm" in k else k.split(".")[0].replace("self_attn", "attn") for k in w}
    return S.Block(0, w, _Cfg(), get_architecture("llama"), kinds)


# -- unit tier ---------------------------------------------------------------------------------------------------

def test_mlp_permutation_moves_rows_and_columns_together():
    out = S.mlp_permutation(_hand_block(), torch.tensor([2, 0, 1])).weights
    assert out["mlp.gate_proj.weight"].tolist() == [[5, 6], [1, 2], [3, 4]]
    assert out["mlp.up_proj.weight"][:, 0].tolist() == [11, 7, 9]
    assert out["mlp.down_proj.weight"].tolist() == [[3, 1, 2], [6, 4, 5]]


def test_head_permutation_carries_query_heads_with_their_kv_group():
    # swap the KV groups; inside old group 0 swap its two query heads, keep group 1's order
    out = S.head_permutation(_hand_block(), torch.tensor([1, 0]), torch.tensor([[1, 0], [0, 1]])).weights
    assert out["self_attn.k_proj.weight"][:, 0].tolist() == [11, 10]
    assert out["self_attn.v_proj.weight"][:, 0].tolist() == [21, 20]
    assert out["self_attn.q_proj.weight"][:, 0].tolist() == [2, 3, 1, 0]  # group 1's heads first, then group 0's
    assert out["self_attn.q_proj.bias"].tolist() == [2, 3, 1, 0]
    assert out["self_attn.o_proj.weight"][0].tolist() == [2, 3, 1, 0]


def test_norm_rescale_plain_and_gemma_offset():
    b = _hand_block()
    c = torch.tensor([2., 0.5])
    out = S.norm_rescale(b, c, c).weights
    assert out["input_layernorm.weight"].tolist() == [2, 1]
    assert out["self_attn.k_proj.weight"][0].tolist() == [5, 20]
    assert out["mlp.up_proj.weight"][0].tolist() == [3.5, 16]
    assert torch.equal(out["self_attn.o_proj.weight"], b.weights["self_attn.o_proj.weight"])  # reads attn output
    gemma = S.Block(0, b.weights, b.config, get_architecture("gemma"), b.kinds)  # (1 + w) convention
    assert S.norm_rescale(gemma, c, c).weights["input_layernorm.weight"].tolist() == [3, 0.5]  # c(1+w)-1


def test_derangement_moves_everything_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 50):
        p = S.derangement(n, g)
        assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()
    assert torch.equal(S.derangement(9, torch.Generator().manual_seed(1)),
                       S.derangement(9, torch.Generator().manual_seed(1)))


def test_kind_means_known_answer():
    b = _hand_block()
    v = b.with_weights({k: -t if k == "mlp.down_proj.weight" else t for k, t in b.weights.items()})
    m = S.kind_means(b, v)
    assert m["attn_cos"] == pytest.approx(1.0) and m["attn_frob"] == pytest.approx(0.0)
    assert m["mlp_cos"] == pytest.approx((1 + 1 - 1) / 3) and m["mlp_frob"] == pytest.approx(2 / 3)


def test_bad_inputs_name_the_problem():
    b = _hand_block()
    with pytest.raises(S.SymmetryError, match="not a permutation of the 3 intermediate"):
        S.mlp_permutation(b, torch.tensor([0, 0, 1]))
    with pytest.raises(S.SymmetryError, match=r"shape \[2, 2\]"):
        S.head_permutation(b, torch.tensor([1, 0]), torch.tensor([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(S.SymmetryError, match="positive"):
        S.norm_rescale(b, torch.tensor([1., -1]), torch.ones(2))
    with pytest.raises(S.SymmetryError, match="rescale_low <= rescale_high"):
        S.random_controls(b, rescale_low=2.0, rescale_high=0.5)
    with pytest.raises(S.SymmetryError, match="at least 2"):
        S.derangement(1, torch.Generator())
    no_mlp = b.with_weights({k: t for k, t in b.weights.items() if "mlp" not in k})
    with pytest.raises(S.SymmetryError, match="gated MLP"):
        S.mlp_permutation(no_mlp, torch.tensor([0]))


# -- architecture tier: the real decoder layer of every family --------------------------------------------------

def _block_pair(family: str, seed: int = 0) -> tuple[S.Block, S.Block]:
    """Middle block of a random-init 3-layer model; non-trivial biases (qwen2) and norm weights (gemma's zero
    init would hide a wrong (1 + w) handling); the variant is that block + 1% noise."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = tiny_config(family)
    cfg.initializer_range = 0.25  # O(1) attention/MLP updates: with the default 0.02 the residual dominates y
    model = AutoModelForCausalLM.from_config(cfg)
    b = S.block_from_model(model, 1)
    g = torch.Generator().manual_seed(seed)
    for k, t in b.weights.items():
        if k.endswith("bias") or "norm" in k:
            t.copy_((1.0 if "norm" in k and b.arch.norm_offset == 0 else 0.0) + 0.3 * torch.randn(t.shape, generator=g))
    return b, b.with_weights(perturb_state(b.weights, 0.01, seed + 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_controls_preserve_function_and_drop_similarity(family):
    b, v = _block_pair(family)
    if family == "qwen2":
        assert "self_attn.q_proj.bias" in b.weights  # biases are permuted with their rows
    r = S.run_controls(b, v, seed=0)
    rows = r.rows
    for name in ("mlp_perm", "head_perm", "rmsnorm"):
        assert rows[name]["relative_diff"] <= S.TOLERANCE, (family, name, rows[name])
    assert rows["ref"]["attn_cos"] > 0.999 and rows["ref"]["mlp_cos"] > 0.999
    assert rows["mlp_perm"]["mlp_cos"] < 0.3 and rows["mlp_perm"]["attn_cos"] == rows["ref"]["attn_cos"]
    assert rows["head_perm"]["attn_cos"] < 0.5 and rows["head_perm"]["mlp_cos"] == rows["ref"]["mlp_cos"]
    assert rows["rmsnorm"]["attn_cos"] < rows["ref"]["attn_cos"]
    assert rows["rmsnorm"]["attn_frob"] > 5 * rows["ref"]["attn_frob"]  # the eps inflation of Table 3
    d = r.to_dict()
    assert d["block"] == 1 and set(d["controls"]) == set(S.CONTROLS)
    assert d["controls"]["ref"]["max_abs_output_diff"] == 0.0


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text"])
def test_the_oracle_catches_wrong_transformations(family):
    """Each naive variant of a control breaks the function by far more than the tolerance."""
    b, _ = _block_pair(family)
    q, k, v, norm = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "input_layernorm"
    hd = b.config.head_dim
    wrong = {}
    w = dict(b.weights)  # permute KV heads without carrying their query heads
    for p in (k, v):
        w[f"{p}.weight"] = w[f"{p}.weight"].roll(hd, 0)
    wrong["kv only"] = w
    w = dict(b.weights)  # same permutation of head_dim coordinates in q and k: q.k unchanged without RoPE
    idx = torch.cat([torch.arange(h * hd, (h + 1) * hd).flip(0) for h in range(w[f"{q}.weight"].shape[0] // hd)])
    w[f"{q}.weight"] = w[f"{q}.weight"][idx]
    w[f"{k}.weight"] = w[f"{k}.weight"][idx[: w[f"{k}.weight"].shape[0]]]
    wrong["within-head dims (RoPE)"] = w
    w = dict(b.weights)  # rescale w itself, ignoring the (1 + w) convention
    c = torch.linspace(0.5, 2.0, b.config.hidden_size)
    w[f"{norm}.weight"] = w[f"{norm}.weight"] * c if b.arch.norm_offset else w[f"{norm}.weight"] * c * c
    for p in (q, k, v):
        w[f"{p}.weight"] = w[f"{p}.weight"] / c
    wrong["norm scale"] = w
    for what, w in wrong.items():
        assert S.prove(b, b)["max_abs_update"] > 0.3  # the block's own contribution is not negligible
        assert S.prove(b, b.with_weights(w))["relative"] > 1000 * S.TOLERANCE, (family, what)


def test_layer_runs_with_a_causal_mask():
    b, _ = _block_pair("mistral")
    model = S.build_layer(b)
    x = torch.randn(1, 6, b.config.hidden_size, generator=torch.Generator().manual_seed(0))
    y = S.layer_output(model, x)
    x2 = x.clone()
    x2[:, -1] += 1.0
    y2 = S.layer_output(model, x2)
    assert torch.allclose(y[:, :-1], y2[:, :-1], atol=1e-6) and not torch.allclose(y[:, -1], y2[:, -1])


def test_from_checkpoints_reads_one_block(tiny_pairs):
    base, var = tiny_pairs("qwen2")  # bf16 on disk, compared in float32
    r = S.run_controls(base, var, seed=3)
    assert r.block == 1 and r.model_type == "qwen2"  # middle of 3 blocks
    assert all(row["relative_diff"] <= S.TOLERANCE for row in r.rows.values())
    assert r.rows["head_perm"]["attn_cos"] < r.rows["ref"]["attn_cos"] - 0.3
    with pytest.raises(S.SymmetryError, match=r"has 3 blocks, use 0..2"):
        S.load_block(base, 7)
    other, _ = tiny_pairs("gemma2")
    with pytest.raises(S.SymmetryError, match="differ in layout"):
        S.run_controls(base, other, block=0)
