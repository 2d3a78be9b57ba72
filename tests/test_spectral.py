"""linker_nb.spectral. Unit tier: constructed matrices with known answers (pure scaling -> uniform σ-ratios,
W_v = U Q Σ Qᵀ Vᵀ -> perfect consistency, rank-k ΔW -> LoRA rank k, eRank of known spectra, randomized vs exact
SVD). Architecture tier: the streaming scan, the ablations (restored bit for bit) and the gradient probe on tiny
random-init checkpoints of every family, plus the embedded tiny family (instruct vs the unrelated scratch model)."""
from __future__ import annotations

import math

import pytest
import torch

from linker_nb.analyses import spectral, spectral_ablations
from linker_nb.io.pairing import ScanMismatch
from linker_nb.testing import FAMILIES


def _orth(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _matrix(m=48, n=32, seed=0, decay=0.5):
    """U diag(σ) Vᵀ with distinct, slowly decaying σ_i = (1 + i)^-decay (like trained weights)."""
    k = min(m, n)
    s = (1.0 + torch.arange(k, dtype=torch.float64)) ** -decay
    return _orth(m, k, seed), s, _orth(n, k, seed + 1)


# -- unit tier -------------------------------------------------------------------------------------------------
def test_pure_scaling_gives_uniform_ratios_and_perfect_consistency():
    u, s, v = _matrix()
    w = (u * s) @ v.T
    c = spectral.compare_matrices(w, 1.07 * w, top_r=8)
    assert c["method"] == "exact" and c["k"] == 32 and c["ratios"].numel() == 32
    assert torch.allclose(c["ratios"], torch.full((32,), 1.07), atol=1e-5)
    assert c["ratio_mean"] == pytest.approx(1.07, abs=1e-5) and c["ratio_std"] < 1e-5
    assert c["consistency"] == pytest.approx(1.0, abs=1e-5) and c["orth_u"] < 1e-5 and c["orth_v"] < 1e-5
    assert c["erank_var"] == pytest.approx(c["erank_base"], rel=1e-5)
    assert c["erank_delta"] == pytest.approx(c["erank_base"], rel=1e-4)  # ΔW = 0.07 W: same spectrum shape


def test_consistent_rotation_u_q_sigma_qt_vt_gives_perfect_consistency():
    u, s, v = _matrix(seed=3)
    q = _orth(32, 32, 7)
    w_b, w_v = (u * s) @ v.T, u @ q @ torch.diag(s) @ q.T @ v.T
    for r in (4, 16, 32):
        c = spectral.compare_matrices(w_b, w_v, top_r=r)
        assert c["r"] == r and c["consistency"] == pytest.approx(1.0, abs=1e-4)
        assert c["ratio_std"] < 1e-4 and c["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # σ untouched
    assert c["orth_u"] < 1e-4 and c["orth_v"] < 1e-4    # full rank: Q_U = Q_V = Q, orthogonal


def test_independent_rotations_score_low_and_sign_flips_do_not_matter():
    u, s, v = _matrix(seed=5)
    qu, qv = _orth(32, 32, 11), _orth(32, 32, 12)
    scores = spectral.rotation_scores(u, v, u @ qu, v @ qv, 32)
    assert 0.1 < scores["consistency"] < 0.5    # ≈ 1 - 1/√2 ≈ 0.29 for independent Haar rotations
    assert scores["orth_u"] < 1e-6 and scores["orth_v"] < 1e-6
    signs = torch.where(torch.arange(32) % 3 == 0, -1.0, 1.0).double()  # SVD's joint (u_i, v_i) sign ambiguity
    flipped = spectral.rotation_scores(u, v, u * signs, v * signs, 32)
    assert flipped["consistency"] == pytest.approx(1.0, abs=1e-12)
    # a subspace the variant left: orthogonality defect of the top-r block is large
    lost = spectral.rotation_scores(u[:, :8], v[:, :8], u[:, 8:16], v[:, 8:16], 8)
    assert lost["orth_u"] == pytest.approx(1.0) and lost["orth_v"] == pytest.approx(1.0)


def test_rank_k_delta_gives_lora_rank_k_and_table11_ratio():
    u, s, v = _matrix(m=64, n=40, seed=9)
    w_b = (u * s) @ v.T
    for k in (1, 3, 10):
        a, b = _orth(64, k, 20 + k), _orth(40, k, 30 + k)
        delta = 0.01 * (a * torch.linspace(1, 2, k, dtype=torch.float64)) @ b.T
        c = spectral.compare_matrices(w_b, w_b + delta, lora_tol=0.05)
        assert c["lora_rank"] == k
        assert c["lora_params"] / c["full_params"] == pytest.approx(k * (64 + 40) / (64 * 40))
    assert spectral.lora_rank(torch.tensor([3.0, 4.0]), 5.0, tol=0.05) == 2
    assert spectral.lora_rank(torch.tensor([4.0, 3.0]), 5.0, tol=0.61) == 1   # tail 3/5 = 0.6 <= 0.61
    assert spectral.lora_rank(torch.tensor([4.0]), 5.0, tol=0.05) is None     # truncated spectrum: r > 1
    assert spectral.lora_rank(torch.tensor([0.0]), 0.0) == 0                  # ΔW = 0: nothing to store
    c = spectral.compare_matrices(w_b, w_b.clone())
    assert c["lora_rank"] == 0 and c["erank_delta"] is None and c["consistency"] == pytest.approx(1.0, abs=1e-6)


def test_erank_known_values():
    assert spectral.erank(torch.ones(10)) == pytest.approx(10.0)
    assert spectral.erank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    p = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    h = float(-(p * p.log()).sum())
    assert spectral.erank(torch.tensor([1.0, 0.5])) == pytest.approx(math.exp(h))
    # γ = 2 weights by σ²: p = (0.8, 0.2)
    p2 = torch.tensor([0.8, 0.2], dtype=torch.float64)
    assert spectral.erank(torch.tensor([1.0, 0.5]), gamma=2.0) == pytest.approx(math.exp(float(-(p2 * p2.log()).sum())))
    assert spectral.erank(torch.zeros(4)) is None
    with pytest.raises(ValueError, match="erank_gamma = 0"):
        spectral.erank(torch.ones(3), gamma=0)


def test_randomized_svd_error_against_exact_on_a_sample(monkeypatch):
    u, s, v = _matrix(m=700, n=500, seed=2)    # power-law spectrum like trained weights
    w = ((u * s) @ v.T).float()
    err = spectral.randomized_error(w, k=64)
    assert err["k"] == 64 and err["sigma_rel_err"] < 1e-2 and err["energy_rel_err"] < 1e-2
    assert err["recon_excess"] < 0.02          # measured 0.001-0.002 at niter = 4
    monkeypatch.setattr(spectral, "EXACT_MAX_DIM", 100)
    monkeypatch.setattr(spectral, "RANDOMIZED_K", 64)
    c = spectral.compare_matrices(w, 1.1 * w, top_r=8)
    assert c["method"] == "randomized" and c["k"] == 64
    assert c["ratio_mean"] == pytest.approx(1.1, abs=1e-3) and c["consistency"] > 0.99
    assert c["lora_rank"] is None and c["lora_params"] == 64 * 1200   # top 64 of ΔW cannot reach 5%: a lower bound


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown SVD method 'fast'"):
        spectral.svd(torch.ones(3, 3), method="fast")
    with pytest.raises(ValueError, match=r"svd needs a matrix, got shape \(3,\)"):
        spectral.svd(torch.ones(3))
    with pytest.raises(ValueError, match=r"one shape, got \(3, 4\) and \(4, 3\)"):
        spectral.compare_matrices(torch.ones(3, 4), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"blocks contains \[8\]: the model has 8 blocks, use indices in 0..7"):
        spectral.check_blocks([0, 8], 8)
    with pytest.raises(ValueError, match=r"blocks = \[\] selects nothing"):
        spectral.check_blocks([], 8)
    assert spectral.check_blocks(None, 3) == [0, 1, 2] and spectral.check_blocks([2, 0, 2], 3) == [0, 2]
    with pytest.raises(ValueError, match="top_r = 0"):
        spectral.check_params(0, 0.05, 1.0)
    with pytest.raises(ValueError, match="lora_tol = 1.5"):
        spectral.check_params(4, 1.5, 1.0)
    with pytest.raises(ValueError, match="erank_gamma = -1"):
        spectral.check_params(4, 0.05, -1)


# -- architecture tier -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_scan_every_family(tiny_pairs, family):
    b, v = tiny_pairs(family)
    res = spectral.spectral_scan(b, v, top_r=4)
    assert res.n_blocks == 3 and res.blocks == [0, 1, 2] and res.model_type == family
    assert len(res.matrices) == 3 * 7                        # q/k/v/o + gate/up/down; norms and biases skipped
    assert {m.shape for m in res.matrices if m.sub.endswith("k_proj.weight")} == {(16, 32)}  # GQA: 2 KV heads x 8
    t = res.layer_table()
    assert list(t.index) == [0, 1, 2]
    # a 1% dense perturbation: σ barely move, the top-4 subspaces stay, ΔW is noise (full-rank, ratio > 1)
    assert t.sv_ratio_mean.between(0.95, 1.05).all() and (t.consistency > 0.9).all()
    assert (t.lora_ratio > 1).all() and (t.erank_delta > t.erank_base * 0.8).all()
    s = res.summary()
    assert set(s["sv_scaling"]) == {"0", "1", "2"} and s["svd_methods"] == ["exact"]
    one = spectral.spectral_scan(b, v, blocks=[1])
    assert one.blocks == [1] and {m.block for m in one.matrices} == {1}


def test_scan_errors(tiny_pairs):
    b, v = tiny_pairs("llama")
    with pytest.raises(ValueError, match=r"the model has 3 blocks, use indices in 0..2"):
        spectral.spectral_scan(b, v, blocks=[5])
    b4, _ = tiny_pairs("llama", layers=4)
    with pytest.raises(ScanMismatch, match="num_hidden_layers"):
        spectral.spectral_scan(b4, v)


def test_ablations_edit_as_specified_and_restore_bit_for_bit(tiny_pairs):
    from linker_nb.io.models import load_model
    b, v = tiny_pairs("qwen2")
    model = load_model(v, device="cpu")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    q = model.model.layers[1].self_attn.q_proj.weight
    base_q = load_model(b, device="cpu").model.layers[1].self_attn.q_proj.weight.detach()
    with spectral_ablations.sv_swapped(model, b, blocks=[1]):
        assert torch.allclose(torch.linalg.svdvals(q.detach()), torch.linalg.svdvals(base_q), atol=1e-5)
        assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before["model.layers.0.self_attn.q_proj.weight"])
    with spectral_ablations.rotation_broken(model, blocks=[1], seed=3):
        w = q.detach()
        orig = before["model.layers.1.self_attn.q_proj.weight"]
        assert torch.allclose(torch.linalg.svdvals(w), torch.linalg.svdvals(orig), atol=1e-5)   # σ kept
        assert torch.allclose(w @ w.T, orig @ orig.T, atol=1e-5)    # left side (U S) untouched
        assert not torch.allclose(w, orig, atol=1e-3)
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())
    tokens = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    out = spectral_ablations.ablation(model, b, tokens, seed=0)
    assert out["loss_restored"] == out["loss_variant"] and out["loss_rotation_broken"] != out["loss_variant"]
    with pytest.raises(ValueError, match="use indices in 0..2"):
        spectral_ablations.ablation(model, b, tokens, blocks=[3])


def test_gradient_locality_probe(tiny_pairs):
    from linker_nb.io.models import load_model
    b, _ = tiny_pairs("llama")
    model = load_model(b, device="cpu")
    tokens = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(0))
    g = spectral_ablations.gradient_locality(model, tokens, [0.1, 0.3, 0.2], batch_size=2)
    assert len(g.rel_grad) == 3 and all(x > 0 for x in g.rel_grad)
    assert -1 <= g.pearson <= 1 and -1 <= g.spearman <= 1 and g.loss > 0
    assert all(p.grad is None for p in model.parameters())        # gradients cleared
    t = g.table17([True, True, False])
    assert list(t.columns) == ["‖g‖/‖θ‖", "1 − cos"] and t.iloc[1, 1] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="one_minus_cos has 2 entries but the model has 3 blocks"):
        spectral_ablations.gradient_locality(model, tokens, [0.1, 0.2])


def test_tiny_family_post_training_is_consistent_unlike_an_unrelated_model():
    from linker_nb.io import registry
    fam = registry.get("tiny")
    inst = spectral.spectral_scan(fam.base, fam.variants["instruct"].ref, blocks=[0, 4])
    scratch = spectral.spectral_scan(fam.base, fam.variants["scratch"].ref, blocks=[0, 4])
    ti, ts = inst.layer_table(), scratch.layer_table()
    assert (ti.consistency > 0.95).all() and (ts.consistency < 0.5).all()
    assert (ti.orth_u < 0.2).all() and (ts.orth_u > 0.5).all()
    assert (ti.sv_ratio_std < ts.sv_ratio_std).all()
