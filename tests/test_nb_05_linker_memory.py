"""Notebook tier: 05_linker_memory on the embedded tiny family (donor = base, recipients instruct/chat/qa)."""
from __future__ import annotations

import pytest

# one run ~17 s with cpu_threads=1 on the loaded 2-core machine (kernel start included); three runs in this file
pytestmark = [pytest.mark.notebook, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def run(notebook_runner, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("plans"))
    # benchmark_limit: 16 items of each bundled lm-eval task per model (48 in `make demo`)
    return lambda **kw: notebook_runner("05_linker_memory", model="tiny", plan_cache=cache, cpu_threads=1,
                                        benchmark_limit=16, **kw)


def test_memory_tables_follow_from_the_shared_blocks(run):
    r = run()
    pairs = {p["variant"]: p for p in r["pairs"]}
    assert set(pairs) == {"instruct", "chat", "qa"}
    single = r["n_variant_scaling"][0]["bytes"]
    for p in pairs.values():
        assert p["blocks_shared"] == p["n_blocks"] == 8  # tiny's post-trained blocks pass qwen05b's thresholds
        assert p["bytes_naive"] == 2 * single
        unique = p["bytes_shared"] - single
        assert p["bytes_read"] * 2 == pytest.approx(unique, rel=0.01)  # bf16 on disk, float32 on CPU
        assert p["bytes_read"] < 0.3 * p["bytes_total"]  # only embeddings, final norm, lm_head were read
        assert 0.3 < p["saving"] < 0.5 and p["saving"] == pytest.approx(1 - p["bytes_shared"] / p["bytes_naive"])
    scaling = r["n_variant_scaling"]
    assert [s["n"] for s in scaling] == [1, 2, 3, 4]
    savings = [s["saving"] for s in scaling]
    assert savings[0] == 0 and all(a < b for a, b in zip(savings, savings[1:])) and savings[-1] > 0.5
    marginal = {scaling[k]["bytes"] - scaling[k - 1]["bytes"] for k in range(1, 4)}
    assert len(marginal) == 1  # constant marginal cost per variant (Table 14)
    assert r["memory"]["distinct"] == scaling[-1]["bytes"]
    assert r["integrity_checked"] == 3 * 8 * 9  # 9 tensors per llama block


def test_cold_start_quality_and_tuner(run):
    r = run()
    c = r["cold_start"]
    assert c["cached_plan_status"] == "cached" and c["scan_s"] > 0
    assert c["total_s"] == pytest.approx(c["scan_s"] + c["build_s"] + c["alias_s"] + c["load_unique_s"])
    for q in r["quality"]:
        assert 1.0 < q["loss_unshared"] < 6.0 and 1.0 < q["loss_shared"] < 6.0
        # measured: sharing all 8 base blocks moves held-out pydoc loss by -8..-11% (the base was pre-trained on
        # such prose); a broken alias (wrong block, meta buffers) would send the loss far up, agreement to ~0
        assert abs(q["loss_shared"] - q["loss_unshared"]) / q["loss_unshared"] < 0.25
        assert 0.4 < q["top1_agreement"] < 1.0
        assert 0 <= q["bleu"] <= 1 and 0 <= q["rouge_l"] <= 1
    assert "lm-eval" in r["lm_eval"]
    t = r["tuner"]
    curve = t["curve"]
    assert curve[0]["tau_frob"] == 0 and curve[0]["blocks_shared"] == 0 and curve[0]["rel_drop"] == 0
    assert [x["blocks_shared"] for x in curve] == sorted(x["blocks_shared"] for x in curve)
    ok = [x for x in curve if x["rel_drop"] <= t["budget"]]
    assert t["tau_frob"] == ok[-1]["tau_frob"] and t["blocks_shared"] == ok[-1]["blocks_shared"]


def _check_benchmarks(r, variants):
    """Tables 6-7, ΔMMLU and the benchmark tuner as they must be whatever the tiny models' skill."""
    b = r["benchmarks"]
    assert b["names"] == ["linker_pydoc_continuation", "linker_builtin_docstring"]  # tiny's default: bundled
    assert all(s["limit"] == 16 and s["num_fewshot"] == 0 for s in b["settings"].values())
    assert set(b["unshared"]) == set(b["shared"]) == set(b["retention"]) == set(variants)
    for v in variants:
        for n in b["names"]:
            u, s = b["unshared"][v][n], b["shared"][v][n]
            assert 0 <= u <= 1 and 0 <= s <= 1 and (u * 16).is_integer() and (s * 16).is_integer()  # k of 16 right
            assert b["retention"][v][n] == (pytest.approx(s / u) if u else None)
            assert b["capability_gain"][n][v] == pytest.approx(100 * (u - b["base"][n]))
    assert b["delta_mmlu"] is None  # MMLU did not run
    t = r["benchmark_tuner"]
    assert t["objective"] == "linker_pydoc_continuation" and t["budget"] == r["tuner"]["budget"]
    curve = t["curve"]
    assert curve[0]["blocks_shared"] == 0 and curve[0]["score"] == t["reference"] and curve[0]["rel_drop"] == 0
    for x in curve:
        assert x["within_budget"] == (x["rel_drop"] <= t["budget"])
    ok = [x for x in curve if x["within_budget"]]
    assert t["tau_frob"] == ok[-1]["tau_frob"] and t["blocks_shared"] == ok[-1]["blocks_shared"]
    rows = {x["objective"]: x for x in r["boundary_rule"]}
    assert set(rows) == {"calibration loss", "linker_pydoc_continuation"}
    for x, tuner in ((rows["calibration loss"], r["tuner"]), (rows["linker_pydoc_continuation"], t)):
        assert x["eps_mean"] < 0.10 and not x["boundary"]  # tiny is inside the post-training band
        assert x["tau_frob"] == x["tuner_tau_frob"] == tuner["tau_frob"]


def test_benchmark_tables_gain_and_tuner(run):
    r = run()
    assert r["schema_version"] == 2 and r["defaults"]["benchmarks"].startswith("bundled")
    _check_benchmarks(r, ["instruct", "chat", "qa"])
    from linker_nb.analyses import panel_tables  # Figure 2 (07) takes the default variant's gain from this JSON
    gain = r["benchmarks"]["capability_gain"]["linker_builtin_docstring"]["instruct"]
    assert panel_tables.gains_from_results([r], "linker_builtin_docstring") == {"tiny": gain}
    assert panel_tables.gains_from_results([r]) == {}  # no MMLU here, no ΔMMLU


def test_tighter_thresholds_and_budget_change_the_decision(run):
    r = run(tau_frob=0.045, quality_budget=0.0, variants=["instruct"])
    (p,) = r["pairs"]
    assert 0 < p["blocks_shared"] < 8  # some of instruct's eps(i) (0.041-0.048) are above 0.045
    assert p["saving"] < 0.375 and [s["n"] for s in r["n_variant_scaling"]] == [1, 2]
    for x in r["tuner"]["curve"]:
        assert x["within_budget"] == (x["rel_drop"] <= 0.0)
    _check_benchmarks(r, ["instruct"])


@pytest.mark.parametrize("params,match", [
    (dict(quality_budget=1.5), "quality_budget"),
    (dict(variants=["nope"]), "nope"),
    (dict(tau_cos=2.0), "tau_cos"),
    (dict(benchmarks=["arc_challenge"]), "allenai/ai2_arc"),  # not cached here: named, before any model loads
])
def test_bad_parameters_fail_with_the_parameter_named(notebook_runner, params, match):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match=match):
        notebook_runner("05_linker_memory", model="tiny", cpu_threads=1, **params)


def test_moe_blocks_are_aliased_whole_with_their_experts(notebook_runner, tmp_path_factory):
    r = notebook_runner("05_linker_memory", model="tiny-moe", cpu_threads=1,
                        plan_cache=str(tmp_path_factory.mktemp("moe_plans")))
    (p,) = r["pairs"]
    assert p["variant"] == "instruct" and p["blocks_shared"] == p["n_blocks"] == 8
    # every block's 4 experts (gate, up: 96 x 64; down: 64 x 96) and router (4 x 64) held once, in float32
    assert p["expert_bytes_aliased"] == 8 * (4 * 3 * 96 * 64 + 4 * 64) * 4 and p["expert_bytes_read"] == 0
    assert p["bytes_read"] < 0.3 * p["bytes_total"]       # only embeddings, final norm, lm_head were read
    assert 0.3 < p["saving"] < 0.5
    # 11 module parameters per block: q, k, v, o, q_norm, k_norm, 2 norms, router, fused gate_up, down experts
    assert r["integrity_checked"] == 8 * 11
    (q,) = r["quality"]
    assert abs(q["loss_shared"] - q["loss_unshared"]) / q["loss_unshared"] < 0.25 and q["top1_agreement"] > 0.4
