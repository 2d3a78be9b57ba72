"""Notebook tier: 03_permutation on the embedded tiny family (llama architecture, GQA 4 query / 2 KV heads)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(240)]  # each run ~9 s on 2 cores

TOL = 1e-5  # symmetry.TOLERANCE, relative to max |y|; outputs of the tiny block are O(1)-O(10)


def test_controls_preserve_function_but_not_similarity(notebook_runner):
    r = notebook_runner("03_permutation", model="tiny")
    assert r["block"] == 4 and r["model_type"] == "llama" and r["variant"].endswith("instruct")
    c = r["controls"]
    assert set(c) == {"ref", "mlp_perm", "head_perm", "rmsnorm"}
    for name, row in c.items():
        assert set(row) == {"attn_cos", "attn_frob", "mlp_cos", "mlp_frob", "max_abs_output_diff"}
        assert r["relative_output_diff"][name] <= TOL and row["max_abs_output_diff"] < 1e-4
    assert c["ref"]["max_abs_output_diff"] == 0.0
    assert c["ref"]["attn_cos"] > 0.99 and c["ref"]["mlp_cos"] > 0.99 and c["ref"]["attn_frob"] < 0.1
    # §3.3: the MLP permutation leaves attention alone and destroys the MLP's alignment
    assert c["mlp_perm"]["attn_cos"] == c["ref"]["attn_cos"] and abs(c["mlp_perm"]["mlp_cos"]) < 0.1
    # Table 3: head permutation collapses the attention cosine, rescaling mostly inflates eps
    assert abs(c["head_perm"]["attn_cos"]) < 0.3 and c["head_perm"]["attn_frob"] > 1.0
    assert c["head_perm"]["mlp_cos"] == c["ref"]["mlp_cos"]
    assert 0.8 < c["rmsnorm"]["attn_cos"] < c["ref"]["attn_cos"]
    assert c["rmsnorm"]["attn_frob"] > 3 * c["ref"]["attn_frob"]


def test_block_seed_and_variant_parameters(notebook_runner):
    r = notebook_runner("03_permutation", model="tiny", variant="coder", block=0, seed=1, rescale_low=0.9,
                        rescale_high=1.1)
    ref = notebook_runner("03_permutation", model="tiny")["controls"]["ref"]
    c = r["controls"]
    assert r["block"] == 0 and r["variant"].endswith("coder") and r["seed"] == 1
    assert max(r["relative_output_diff"].values()) <= TOL
    assert c["ref"]["attn_frob"] > ref["attn_frob"]  # continued pretraining moved further than instruct
    # a milder rescaling inflates eps less than U[0.5, 2] did on the instruct pair
    assert c["rmsnorm"]["attn_frob"] - c["ref"]["attn_frob"] < 0.2


def test_gemma2_checkpoint_with_one_plus_w_norms(notebook_runner, tiny_pairs):
    b, v = tiny_pairs("gemma2")
    r = notebook_runner("03_permutation", model="tiny", base=str(b), variant=str(v))
    assert r["model_type"] == "gemma2" and r["block"] == 1
    assert max(r["relative_output_diff"].values()) <= TOL
    assert r["controls"]["head_perm"]["attn_cos"] < r["controls"]["ref"]["attn_cos"] - 0.5


def test_bad_parameters_fail_in_the_validation_cell(tmp_path):
    import papermill as pm
    from conftest import run_notebook
    with pytest.raises(pm.PapermillExecutionError, match="has 8 blocks, use 0..7"):
        run_notebook("03_permutation", tmp_path / "a", model="tiny", block=99)
    with pytest.raises(pm.PapermillExecutionError, match="rescale_low"):
        run_notebook("03_permutation", tmp_path / "b", model="tiny", rescale_low=0.0)
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'seed'"):
        run_notebook("03_permutation", tmp_path / "c", model="tiny", seed="one")


# The embedded families of the new layouts: each control acts on that layout and is proved on its real layer.
LAYOUT_CONTROLS = {"tiny-moe": ("qwen3_moe", {"ref", "mlp_perm", "head_perm", "rmsnorm", "expert_perm"}),
                   "tiny-phi3": ("phi3", {"ref", "mlp_perm", "head_perm", "rmsnorm"}),
                   "tiny-olmo2": ("olmo2", {"ref", "mlp_perm", "head_perm", "rmsnorm"})}


@pytest.mark.parametrize("family", list(LAYOUT_CONTROLS))
def test_controls_on_each_embedded_layout(notebook_runner, family):
    r = notebook_runner("03_permutation", model=family)
    model_type, controls = LAYOUT_CONTROLS[family]
    c = r["controls"]
    assert r["model_type"] == model_type and set(c) == controls and r["variant"].endswith("instruct")
    assert max(r["relative_output_diff"].values()) <= TOL and c["ref"]["max_abs_output_diff"] == 0.0
    assert c["ref"]["attn_cos"] > 0.99 and c["ref"]["mlp_cos"] > 0.99
    # head permutation (q/k/v parts of phi3's fused qkv_proj; olmo2's full-width q/k norms carried along)
    assert abs(c["head_perm"]["attn_cos"]) < 0.3 and c["head_perm"]["mlp_cos"] == c["ref"]["mlp_cos"]
    # the MLP (every expert's, for MoE) hidden units permuted: attention untouched, MLP alignment gone
    assert abs(c["mlp_perm"]["mlp_cos"]) < 0.1 and c["mlp_perm"]["attn_cos"] == c["ref"]["attn_cos"]
    assert 0.8 < c["rmsnorm"]["attn_cos"] < c["ref"]["attn_cos"]
    if family == "tiny-moe":    # experts and router rows permuted together: both alignments gone
        e = c["expert_perm"]
        assert abs(e["mlp_cos"]) < 0.1 and abs(e["router_cos"]) < 0.1 and e["attn_cos"] == c["ref"]["attn_cos"]
        assert c["ref"]["router_cos"] > 0.99
    if family == "tiny-olmo2":  # no norm feeds a projection: the rescalings the post-norm block admits instead
        assert "post-norm" in r["notes"]["rmsnorm"]
