"""Unit and architecture tiers for linker_nb.interpolation (paper §3.4, App. H, App. L).

Unit: hand-made loss tables with known barriers. Architecture: tiny random-init pairs of every family
(`linker_nb.testing`), evaluated on seeded random tokens: α = 0 must be the variant's loss and α = 1 on every
tensor the base's, exactly (torch.lerp is exact at both ends), and every parameter must be bit-identical after
each swap, including one interrupted by an exception.
"""
from __future__ import annotations

import math

import pytest
import torch

from linker_nb.analyses import interpolation as I
from linker_nb.analyses.loss import lm_loss
from linker_nb.io.models import load_model
from linker_nb.testing import ARCH_FAMILIES, FAMILIES, tiny_config


def _tokens(n=4, seq=16, vocab=96, seed=0):
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, snap):
    sd = model.state_dict()
    return set(sd) == set(snap) and all(torch.equal(sd[k], snap[k]) for k in snap)


# -- unit: grid checks and the summary of a hand-made result ----------------------------------------------------

@pytest.mark.parametrize("alphas, match", [([0.0], "at least two"), ([0.0, 1.5], r"\[0, 1\]"),
                                            ([0.0, 0.5, 0.5], "strictly increasing"), ([0.1, 1.0], "start at 0.0")])
def test_check_alphas_rejects_bad_grids(alphas, match):
    with pytest.raises(ValueError, match=match):
        I.check_alphas(alphas)


def test_default_grid_is_the_papers():
    assert I.check_alphas(I.DEFAULT_ALPHAS) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_summary_of_a_known_result():
    # block 0 flat, block 1 a 0.3-nat barrier at α = 0.5, block 2 downhill; full path dips to -0.2 at α = 0.5
    r = I.InterpolationResult(alphas=[0.0, 0.5, 1.0], loss_variant=2.0, loss_base=2.5,
                              per_block=[[2.0, 2.0, 2.0], [2.0, 2.3, 2.1], [2.0, 1.9, 1.8]],
                              full_model=[2.0, 1.8, 2.5], full_model_all=[2.0, 1.9, 2.5])
    assert r.per_block_max_delta == pytest.approx([0.0, 0.3, 0.0])
    s = r.summary()
    assert s["per_block_max_delta"] == pytest.approx(0.3) and s["argmax_block"] == 1
    assert s["full_model_peak_delta"] == pytest.approx(0.5) and s["full_model_min_delta"] == pytest.approx(-0.2)
    assert s["full_model_argmin_alpha"] == 0.5 and s["full_model_all_peak_delta"] == pytest.approx(0.5)
    assert r.band([50])[0] == pytest.approx([0.0, 0.0, 0.0])
    assert r.block_table()["at α"].tolist() == [0.0, 0.5, 0.0]
    t = I.table13(s, {"per_block_max_delta": 2.7615, "argmax_block": 15, "full_model_peak_delta": 2.6834})
    assert t.loc["per-block max ΔL", "paper (Table 13)"] == 2.7615
    assert t.loc["full-model peak ΔL (α > 0)", "paper (Table 13)"] == 2.6834
    assert t.loc["full-model ΔL at α = 1", "measured"] == pytest.approx(0.5)


def test_shared_blocks_rejects_unknown_set():
    assert I.substituted_blocks("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown shared set 'some'"):
        I.substituted_blocks("some", 3)
    with pytest.raises(ValueError, match="needs base_ref"):
        I.substituted_blocks("scan", 3)


# -- architecture tier: real transformers models of every family --------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_endpoints_are_exact_and_weights_restored(tiny_pairs, family):
    b, v = tiny_pairs(family)
    model = load_model(v, device="cpu", dtype="float32")
    tokens = _tokens()
    snap = _snapshot(model)
    loss_var = lm_loss(model, tokens)
    loss_base = lm_loss(load_model(b, device="cpu", dtype="float32"), tokens)
    path = I.WeightPath(model, b)
    assert path.n_blocks == 3 and not path.tied
    with path.hold(path.names([1])) as set_alpha:
        set_alpha(0.0)
        assert lm_loss(model, tokens) == loss_var          # α = 0: the variant, bit for bit
        set_alpha(0.5)
        assert lm_loss(model, tokens) != loss_var
    assert _same(model, snap)
    with path.hold_all(path.names(non_block=True)) as set_alpha:
        set_alpha(1.0)
        assert lm_loss(model, tokens) == loss_base         # α = 1 on every tensor: the base model exactly
    assert _same(model, snap)


def test_scan_runs_every_path_and_restores(tiny_pairs):
    b, v = tiny_pairs("llama")
    model = load_model(v, device="cpu", dtype="float32")
    tokens = _tokens()
    snap = _snapshot(model)
    base_loss = lm_loss(load_model(b, device="cpu", dtype="float32"), tokens)
    r = I.interpolation_scan(model, b, tokens, alphas=[0.0, 0.5, 1.0])
    assert _same(model, snap)
    assert r.loss_variant == lm_loss(model, tokens) and r.loss_base == base_loss
    assert len(r.per_block) == 3 and all(len(c) == 3 and c[0] == r.loss_variant for c in r.per_block)
    assert r.full_model_all[-1] == base_loss and r.full_model[0] == r.loss_variant
    assert r.full_model[-1] != base_loss                   # blocks only: embeddings/head stay at the variant
    assert min(r.per_block_max_delta) >= 0.0 and r.n_tokens == tokens.numel() and r.dtype == "float32"
    only = I.interpolation_scan(model, b, tokens, alphas=[0.0, 1.0], blocks=[2], non_block=False)
    assert len(only.per_block) == 1 and only.full_model_all is None and only.loss_base is None
    assert only.per_block[0][-1] == pytest.approx(r.per_block[2][-1], abs=1e-12)


def test_midpoint_is_the_average_and_bf16_models_work(tiny_pairs):
    b, v = tiny_pairs("qwen2")
    model = load_model(v, device="cpu", dtype="bfloat16")
    path = I.WeightPath(model, b)
    name = path.names([0])[0]
    var = path.params[name].detach().float().clone()
    base = path._base(name, "cpu")
    with path.hold([name]) as set_alpha:
        set_alpha(0.5)
        got = path.params[name].detach().float()
        assert torch.allclose(got, (var + base) / 2, rtol=1e-2, atol=1e-3)
        set_alpha(1.0)
        assert torch.equal(path.params[name].detach().float(), base)  # bf16 base values are exact in bf16
    assert torch.equal(path.params[name].detach().float(), var)


def test_weights_restored_after_an_exception(tiny_pairs):
    b, v = tiny_pairs("llama")
    model = load_model(v, device="cpu", dtype="float32")
    snap = _snapshot(model)
    path = I.WeightPath(model, b)
    for hold in (path.hold, path.hold_all):
        with pytest.raises(RuntimeError, match="boom"):
            with hold(path.names()) as set_alpha:
                set_alpha(0.7)
                raise RuntimeError("boom")
        assert _same(model, snap)


def test_tied_embeddings_move_with_the_head(tiny_pairs):
    b, v = tiny_pairs("llama", tied=True)
    model = load_model(v, device="cpu", dtype="float32")
    path = I.WeightPath(model, b)
    assert path.tied and not any("lm_head" in n for n in path.non_block)
    tokens = _tokens()
    base_loss = lm_loss(load_model(b, device="cpu", dtype="float32"), tokens)
    with path.hold_all(path.names(non_block=True)) as set_alpha:
        set_alpha(1.0)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert lm_loss(model, tokens) == base_loss


def test_amplification_known_cases(tiny_pairs):
    b, v = tiny_pairs("llama", layers=4)
    model = load_model(v, device="cpu", dtype="float32")
    snap = _snapshot(model)
    path = I.WeightPath(model, b)
    tokens = _tokens(n=3)
    none = I.amplification(path, tokens, shared=[])
    assert none.divergence == [0.0] * 4 and none.factor == [None] * 4 and none.interior_range is None
    late = I.amplification(path, tokens, shared=[2])
    assert late.divergence[:2] == [0.0, 0.0] and late.divergence[2] > 0     # nothing diverges before block 2
    assert late.factor[:3] == [None, None, None] and late.factor[3] > 0
    full = I.amplification(path, tokens, batch_size=2)
    assert full.shared == [0, 1, 2, 3] and full.factor[0] is None and all(d > 0 for d in full.divergence)
    assert full.factor[1:] == pytest.approx([d / p for p, d in zip(full.divergence, full.divergence[1:])])
    lo, hi = full.interior_range
    assert lo == min(full.factor[1:3]) and hi == max(full.factor[1:3])     # layers 1..L-2
    assert full.relative_depth() == [0.0, 0.25, 0.5, 0.75]
    assert _same(model, snap)
    with pytest.raises(ValueError, match=r"shared block indices \[7\] out of range; the model has 4 blocks"):
        I.amplification(path, tokens, shared=[7])


def test_amplification_is_zero_when_base_equals_variant(tiny_pairs):
    b, _ = tiny_pairs("mistral")
    model = load_model(b, device="cpu", dtype="float32")
    a = I.amplification(I.WeightPath(model, b), _tokens())
    assert a.divergence == [0.0] * 3 and a.interior_range is None


# -- bad input ------------------------------------------------------------------------------------------------------

def test_missing_block_in_base_names_the_parameter(tiny_pairs):
    b2, _ = tiny_pairs("llama", layers=2)
    _, v3 = tiny_pairs("llama")
    model = load_model(v3, device="cpu", dtype="float32")
    with pytest.raises(I.InterpolationError, match=r"'model\.layers\.2\.[^']+' has no counterpart in the checkpoint"):
        I.WeightPath(model, b2)


def test_shape_mismatch_names_both_shapes(tiny_pairs, tmp_path):
    from transformers import AutoModelForCausalLM
    _, v = tiny_pairs("llama")
    cfg = tiny_config("llama")
    cfg.intermediate_size = 40
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "wide")
    model = load_model(v, device="cpu", dtype="float32")
    with pytest.raises(I.InterpolationError, match=r"shape mismatch for 'model\.layers\.0\.mlp\.\w+_proj\.weight'"):
        I.WeightPath(model, tmp_path / "wide")


def test_missing_base_checkpoint_is_a_clear_error(tiny_pairs, tmp_path):
    from linker_nb.io.checkpoint import CheckpointNotFound
    _, v = tiny_pairs("llama")
    with pytest.raises(CheckpointNotFound):
        I.WeightPath(load_model(v, device="cpu", dtype="float32"), tmp_path / "nowhere")


def test_interior_range_is_finite(tiny_pairs):
    b, v = tiny_pairs("gemma2", layers=4)
    a = I.amplification(I.WeightPath(load_model(v, device="cpu", dtype="float32"), b), _tokens())
    assert all(math.isfinite(x) for x in a.interior_range)


# -- the per-block sweep without recomputation (analyses/sweep.py) against the plain loop ------------------------

@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_fast_sweep_equals_the_loop(tiny_pairs, family):
    """Every family with a record (GPT-2's tuple-returning blocks, Gemma's soft-capping and sliding windows, MoE
    routing): the sweep's L_i(α) equal the loop's to 1e-5 nats (measured: <= 1e-6), weights restored. ~40 s for
    all families at load 10 on 2 cores."""
    from linker_nb.analyses.sweep import per_block_sweep
    b, v = tiny_pairs(family)
    model = load_model(v, device="cpu", dtype="float32")
    tokens = _tokens(n=3, seq=10)  # batches of 2 rows and 1 row
    snap = _snapshot(model)
    path = I.WeightPath(model, b)
    alphas = [0.25, 0.5, 1.0]
    loop = I.per_block_loop(model, path, tokens, alphas, [2, 0], batch_size=2)
    fast = per_block_sweep(model, path, tokens, alphas, [2, 0], batch_size=2, max_stack_tokens=40)  # α groups 2 + 1
    assert _same(model, snap)
    assert len(fast) == 2 and all(len(r) == 3 for r in fast)
    assert max(abs(x - y) for r, s in zip(loop, fast) for x, y in zip(r, s)) <= 1e-5
    assert loop[0] != loop[1]  # the comparison is not vacuous: blocks differ


def test_interpolation_scan_fast_and_loop_agree(tiny_pairs):
    b, v = tiny_pairs("llama", tied=True)
    model = load_model(v, device="cpu", dtype="float32")
    tokens = _tokens(n=3, seq=10)
    fast = I.interpolation_scan(model, b, tokens, alphas=[0.0, 0.5, 1.0], non_block=False, batch_size=2)
    loop = I.interpolation_scan(model, b, tokens, alphas=[0.0, 0.5, 1.0], non_block=False, batch_size=2,
                                fast=False)
    assert fast.loss_variant == loop.loss_variant and fast.full_model == loop.full_model
    assert max(abs(x - y) for r, s in zip(fast.per_block, loop.per_block) for x, y in zip(r, s)) <= 1e-5
    assert all(r[0] == fast.loss_variant for r in fast.per_block)
