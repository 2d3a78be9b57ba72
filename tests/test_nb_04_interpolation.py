"""Notebook tier: 04_interpolation on the embedded tiny family (llama architecture, 8 blocks).

The tiny variants were post-trained from `base`, and the evaluation text is held-out pretraining prose, so the
base has the lower loss and the paths should go downhill without barriers (the paper's post-trained band, §3.4).
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(420)]  # default run ~30 s on 2 idle cores, 144 s at load 8; others 12-21 s

GRID = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_default_run_reproduces_the_post_trained_band(notebook_runner):
    r = notebook_runner("04_interpolation", model="tiny")
    assert r["alphas"] == GRID and r["variant"].endswith("instruct") and not r["tied"]
    assert r["corpus"] in ("embedded held-out pydoc topics", "wikitext-2-raw-v1 test")
    assert (r["n_sequences"], r["seq_len"], r["n_tokens"]) == (8, 256, 2048)
    # a trained 1024-token LM: far below the uniform ln(1024) = 6.93; the base knows pretraining prose better
    assert 1.0 < r["loss_base"] < r["loss_variant"] < 5.0
    # every path starts at the variant; the all-tensor path ends at the base model exactly
    assert r["full_model_curve"][0] == r["loss_variant"] and r["full_model_all_curve"][-1] == r["loss_base"]
    assert len(r["per_block_max_delta"]) == 8 and all(d[0] == 0.0 for d in r["per_block_delta"])
    # §3.4: per-block paths flat (no barrier above 0.01 nats) and the full-model path barrier-free and downhill
    assert all(0.0 <= b < 0.01 for b in r["per_block_max_delta"])
    s = r["summary"]
    assert s["full_model_peak_delta"] < 0.01 and s["full_model_min_delta"] < -0.05
    assert r["full_model_curve"][-1] < r["loss_variant"]
    # App. H: layer 0 undefined, interior bounded (paper: [0.7, 2.2]); divergence grows, never explodes
    amp, div = r["amplification"], r["divergence"]
    assert r["shared"] == list(range(8)) and len(amp) == 8 and amp[0] is None
    lo, hi = r["amplification_interior_range"]
    assert 0.5 < lo <= hi < 3.0
    assert all(d > 0 for d in div) and div[-1] < 10 * div[0]


def test_variant_alphas_scan_share_set(notebook_runner):
    r = notebook_runner("04_interpolation", model="tiny", variant="coder", shared="scan", non_block=False,
                        alphas=[0.0, 0.5, 1.0], n_sequences=4, seq_len=128)
    instruct = notebook_runner("04_interpolation", model="tiny")
    assert r["variant"].endswith("coder") and r["alphas"] == [0.0, 0.5, 1.0] and r["n_tokens"] == 512
    assert r["loss_base"] is None and r["full_model_all_curve"] is None and len(r["full_model_curve"]) == 3
    # continued pretraining on code fails eq. (3) everywhere (cos ~0.7 class, Table 2), so nothing is shared
    assert r["shared"] == [] and r["amplification_interior_range"] is None
    assert all(a is None for a in r["amplification"]) and r["divergence"] == [0.0] * 8
    # on prose, the code variant is worse than the instruct one and gains more by moving to the base
    assert r["loss_variant"] > instruct["loss_variant"]
    assert r["full_model_curve"][-1] - r["loss_variant"] < instruct["full_model_curve"][-1] - instruct["loss_variant"]


def test_bad_parameters_fail_in_the_validation_cell(tmp_path):
    import papermill as pm
    from conftest import run_notebook
    with pytest.raises(pm.PapermillExecutionError, match=r"alphas must lie in \[0, 1\]"):
        run_notebook("04_interpolation", tmp_path / "a", model="tiny", alphas=[0.0, 2.0])
    with pytest.raises(pm.PapermillExecutionError, match="shared = 'some'; use one of"):
        run_notebook("04_interpolation", tmp_path / "b", model="tiny", shared="some")
    with pytest.raises(pm.PapermillExecutionError, match="at most 70 sequences of 256 fit"):
        run_notebook("04_interpolation", tmp_path / "c", model="tiny", n_sequences=1000)


def test_per_block_paths_equal_the_plain_loop(notebook_runner):
    """04's per-block paths come from the sweep (`sweep.per_block_sweep`); today's loop (a whole forward pass per
    (block, α), `interpolation.per_block_loop`) on the same model, corpus and batches gives the same ΔL_i(α) to
    1e-5 nats, on the first, a middle and the last block (all 8: 61 s at load 10 on 2 cores; every block of every
    family is compared on small inputs in test_interpolation.py)."""
    from linker_nb.analyses import interpolation, loss
    from linker_nb.io import models
    r = notebook_runner("04_interpolation", model="tiny")
    lm = models.load_model(r["variant"], device="cpu", dtype="float32")
    ev = loss.eval_corpus(models.load_tokenizer(r["variant"]), "auto", r["n_sequences"], r["seq_len"])
    assert ev.name == r["corpus"]
    path = interpolation.WeightPath(lm, r["base"])
    blocks = [0, 3, 7]
    loop = interpolation.per_block_loop(lm, path, ev.tokens, GRID[1:], blocks, batch_size=8)
    assert loss.lm_loss(lm, ev.tokens, 8) == r["loss_variant"]
    diff = [abs((x - r["loss_variant"]) - d) for row, i in zip(loop, blocks)
            for x, d in zip(row, r["per_block_delta"][i][1:])]
    assert len(diff) == 30 and max(diff) <= 1e-5
