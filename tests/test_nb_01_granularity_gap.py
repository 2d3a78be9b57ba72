"""Notebook tier: 01_granularity_gap on the embedded tiny family (and on local overrides)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(240)]  # each run ~8 s on 2 cores


def test_post_training_moves_every_block_a_little(notebook_runner):
    r = notebook_runner("01_granularity_gap", model="tiny")
    assert r["model"] == "tiny" and r["base"].endswith("base") and r["variant"].endswith("instruct")
    assert r["n_blocks"] == 8 and r["n_tensors"] == 8 * 9 + 3  # 8 llama blocks of 9 + embed, norm, lm_head
    assert len(r["blocks"]) == 8
    for b in r["blocks"]:
        assert set(b) == {"index", "cos", "frob", "cos_min", "frob_max", "shareable"}
        assert b["cos_min"] <= b["cos"] <= 1.0 and 0.0 <= b["frob"] <= b["frob_max"]
        assert b["shareable"] == (b["cos"] >= r["tau_cos"] and b["frob"] <= r["tau_frob"])
    assert r["n_shareable"] == sum(b["shareable"] for b in r["blocks"])
    # the granularity gap: (almost) no tensor survives byte-identical, yet every block stays aligned
    assert r["n_identical_tensors"] <= 3
    assert r["dedup_saving"] == pytest.approx(r["dedup_bytes"] / r["variant_bytes"])
    assert r["dedup_saving"] < 0.05
    assert r["mean_cos"] > 0.95 and r["mean_frob"] < 0.3
    assert r["mean_frob"] == pytest.approx(sum(b["frob"] for b in r["blocks"]) / 8)
    assert r["nonfinite_tensors"] == [] and r["undefined_tensors"] == []


def test_continued_pretraining_and_scratch_are_further_away(notebook_runner):
    inst = notebook_runner("01_granularity_gap", model="tiny")
    coder = notebook_runner("01_granularity_gap", model="tiny", variant="coder")
    scratch = notebook_runner("01_granularity_gap", model="tiny", variant="scratch")
    assert inst["mean_frob"] < coder["mean_frob"] < scratch["mean_frob"]
    assert inst["mean_cos"] > coder["mean_cos"] > scratch["mean_cos"]
    assert abs(scratch["mean_cos"]) < 0.3  # independent init: unrelated directions
    assert scratch["n_shareable"] == 0


def test_local_overrides_and_thresholds(notebook_runner, tiny_pairs):
    b, v = tiny_pairs("qwen2")
    r = notebook_runner("01_granularity_gap", model="tiny", base=str(b), variant=str(v), tau_cos=0.99,
                        tau_frob=0.5)
    assert r["base"] == str(b) and r["n_blocks"] == 3 and r["tau_frob"] == 0.5
    assert r["model"] is None and r["custom"] and r["references"] == {"base": str(b), "variant": str(v)}
    # zero-initialised qwen2 biases: cosine undefined, reported and never shared
    assert any("bias" in n for n in r["undefined_tensors"]) and r["n_shareable"] == 0


def test_override_never_takes_another_familys_thresholds(notebook_runner, tiny_pairs):
    """`-p base DIR -p variant DIR` with `model` left at tiny: App. E's conservative tier, not tiny's 0.998 / 0.06."""
    b, v = tiny_pairs("llama", layers=2)
    r = notebook_runner("01_granularity_gap", base=str(b), variant=str(v))
    assert (r["tau_cos"], r["tau_frob"]) == (0.999, 0.05) and r["model"] is None
    assert "conservative" in r["defaults"]["tau_cos"]


def test_bad_parameters_fail_in_the_validation_cell(tmp_path):
    import papermill as pm
    from conftest import run_notebook
    with pytest.raises(pm.PapermillExecutionError, match="Known keys: .*qwen7b"):
        run_notebook("01_granularity_gap", tmp_path / "a", model="qwen9000")
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'tau_cos'"):
        run_notebook("01_granularity_gap", tmp_path / "b", model="tiny", tau_cos="high")
    with pytest.raises(pm.PapermillExecutionError, match="not a cosine"):
        run_notebook("01_granularity_gap", tmp_path / "c", model="tiny", tau_cos=2.0)


def test_moe_family_measures_every_expert_and_the_router(notebook_runner):
    r = notebook_runner("01_granularity_gap", model="tiny-moe")
    assert r["architecture"] == "qwen3_moe" and r["unknown_kind_tensors"] == []
    # per block: q, k, v, o, q_norm, k_norm, 2 norms, router, 4 experts x (gate, up, down); + embed, norm, lm_head
    assert r["n_blocks"] == 8 and r["n_tensors"] == 8 * (9 + 12) + 3
    assert r["n_experts"] == 4 and "router" in r["moe_aggregation"]
    cos, frob = r["experts"]["cos"], r["experts"]["frob"]
    assert len(cos) == len(frob) == 8 and all(len(row) == 4 for row in cos + frob)      # blocks x experts
    assert min(min(row) for row in cos) > 0.99 and max(max(row) for row in frob) < 0.1  # SFT moved each a little
    assert [x["block"] for x in r["router"]] == list(range(8)) and all(x["cos"] > 0.99 for x in r["router"])
    # the block mean includes the experts: it lies between the least and most changed expert's means
    for b, row in zip(r["blocks"], frob):
        assert b["frob_max"] >= max(row) and b["cos_min"] <= min(cos[b["index"]])
    assert r["n_shareable"] == 8   # the family's registry thresholds share every SFT block
