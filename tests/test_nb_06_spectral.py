"""Notebook tier: 06_spectral on the embedded tiny family (llama architecture, 8 blocks, hidden 64, MLP 192)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(300)]  # measured on the loaded 2-core box: default run 39-67 s, blocks/coder run 23-52 s, bad-parameter runs 20-27 s

# Largest possible LoRA ratio of a tiny block (every ΔW at full rank): Σ min(m,n)(m+n) / Σ m·n over q, k, v, o
# (64x64, 32x64, 32x64, 64x64) and gate, up, down (192x64, 192x64, 64x192) = 71680 / 49152.
FULL_RANK_RATIO = 71680 / 49152


def test_instruct_spectra_ablations_and_gradient_probe(notebook_runner):
    r = notebook_runner("06_spectral", model="tiny")
    assert r["variant"].endswith("instruct") and r["blocks"] == list(range(8))
    assert r["n_matrices"] == 8 * 7 and r["svd_methods"] == ["exact"]
    layers = [str(i) for i in range(8)]
    assert set(r["sv_scaling"]) == set(r["rotation_consistency"]) == set(r["erank"]) == set(r["lora_ratio"]) == set(layers)
    for i in layers:
        # SFT at 1/30 of the pre-training rate: σ scale by ~1 with a small spread
        assert 0.97 < r["sv_scaling"][i]["mean"] < 1.05 and r["sv_scaling"][i]["std"] < 0.2
        # He & Cao's consistent rotation: the top-16 subspaces are kept and turned alike on both sides
        rc = r["rotation_consistency"][i]
        assert rc["consistency"] > 0.95 and rc["orth_u"] < 0.2 and rc["orth_v"] < 0.2
        # Timber: eRank(W_b) ≈ eRank(W_v), and ΔW is not low-rank
        e = r["erank"][i]
        assert e["var"] == pytest.approx(e["base"], rel=0.02) and e["delta"] > 0.5 * e["base"]
        # App. K: LoRA extraction at 5% costs more than the block, at most the full-rank ratio
        assert 1.0 < r["lora_ratio"][i] <= FULL_RANK_RATIO + 1e-9
    a = r["ablation"]
    assert a["loss_restored"] == a["loss_variant"] and 1.0 < a["loss_variant"] < 6.0
    assert abs(a["loss_sv_swapped"] - a["loss_variant"]) < 0.1          # σ back to the base: temperature-like
    assert a["loss_rotation_broken"] - a["loss_variant"] > 1.0          # one-sided rotation: catastrophic
    g = r["gradient_locality"]
    assert -1 <= g["pearson"] <= 1 and -1 <= g["spearman"] <= 1
    assert len(g["rel_grad"]) == 8 and all(0 < x < 1 for x in g["rel_grad"])
    assert all(0 < x < 0.01 for x in g["one_minus_cos"])


def test_blocks_variant_and_spectral_parameters(notebook_runner):
    r = notebook_runner("06_spectral", model="tiny", variant="coder", blocks=[2, 5], top_r=4, erank_gamma=2.0,
                        lora_tol=0.2, n_sequences=4, n_calib=2)
    ref = notebook_runner("06_spectral", model="tiny")
    assert r["variant"].endswith("coder") and r["blocks"] == [2, 5] and r["n_matrices"] == 14
    assert set(r["sv_scaling"]) == {"2", "5"} and r["top_r"] == 4 and r["erank_gamma"] == 2.0
    for i in ("2", "5"):
        # continued pre-training moved further than SFT: less consistent, larger σ spread, smaller γ=2 eRank
        assert r["rotation_consistency"][i]["consistency"] < ref["rotation_consistency"][i]["consistency"]
        assert r["sv_scaling"][i]["std"] > ref["sv_scaling"][i]["std"]
        assert r["erank"][i]["base"] < ref["erank"][i]["base"]     # γ = 2 concentrates p on the top σ
        assert r["lora_ratio"][i] < ref["lora_ratio"][i]            # a 20% tolerance needs fewer ranks
    a = r["ablation"]
    assert a["loss_restored"] == a["loss_variant"] and a["loss_rotation_broken"] > a["loss_variant"]
    assert len(r["gradient_locality"]["rel_grad"]) == 8               # the probe always covers every block


def test_bad_parameters_fail_in_the_validation_cell(tmp_path):
    import papermill as pm
    from conftest import run_notebook
    with pytest.raises(pm.PapermillExecutionError, match=r"the model has 8 blocks, use indices in 0..7"):
        run_notebook("06_spectral", tmp_path / "a", model="tiny", blocks=[9])
    with pytest.raises(pm.PapermillExecutionError, match="lora_tol = 1.5"):
        run_notebook("06_spectral", tmp_path / "b", model="tiny", lora_tol=1.5)
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'top_r'"):
        run_notebook("06_spectral", tmp_path / "c", model="tiny", top_r="many")
