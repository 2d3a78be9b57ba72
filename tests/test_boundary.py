"""boundary: the region rule (unit), Table 2 / Table 10 assembly from the registry (unit), and multi-pair scans
on tiny random-init checkpoints (architecture tier)."""
from __future__ import annotations

import math

import pytest

from linker_nb.analyses import boundary as B
from linker_nb.io import registry


def test_region_rule_and_its_paper_defaults():
    assert B.region(0.9997, 0.015) == "aligned"          # Qwen2.5-7B instruct, Table 2
    assert B.region(0.990, 0.156) == "aligned"           # Llama-3.2-1B instruct, Table 1 (edge of the band)
    for cos, eps in ((0.752, 0.305), (0.637, 0.831), (0.526, 0.469)):  # continued pretraining, Table 2
        assert B.region(cos, eps) == "outside"
    assert B.region(0.999, 0.25) == "outside" and B.region(0.98, 0.01) == "outside"  # both conditions needed
    assert B.region(0.95, 0.3, cos_min=0.9, eps_max=0.5) == "aligned"  # parameters, not names, decide
    assert B.region(None, 0.1) == "undefined" and B.region(0.9, math.nan) == "undefined"
    with pytest.raises(ValueError, match="cos_min in"):
        B.region(0.9, 0.1, cos_min=2.0)
    with pytest.raises(ValueError, match="eps_max >= 0"):
        B.region(0.9, 0.1, eps_max=-0.1)


def test_family_pairs_tiny_and_qwen7b():
    tiny = registry.get("tiny")
    pairs = B.family_pairs(tiny, ["instruct", "coder", "scratch"])
    assert [p.label for p in pairs] == ["base → instruct", "base → coder", "base → scratch", "instruct → coder"]
    assert [p.kind for p in pairs] == ["post-trained", "continued-pretraining", "independent", "cross-variant"]
    assert pairs[-1].base_ref == tiny.variants["instruct"].ref and all(not p.paper for p in pairs)
    assert len(B.family_pairs(tiny, ["instruct", "scratch"])) == 2  # the cross pair needs both ends
    assert len(B.family_pairs(tiny, ["instruct", "coder"], cross=False)) == 2
    q = B.family_pairs(registry.get("qwen7b"), ["instruct", "coder"])
    assert q[0].paper == {"cos": 0.9997, "eps": 0.015} and q[1].paper["cos"] == 0.637
    assert q[2].label == "instruct → coder" and q[2].paper == {"cos": 0.637, "eps": 0.831}
    # another base: the paper's figures no longer describe the pair
    assert all(not p.paper for p in B.family_pairs(registry.get("qwen7b"), ["coder"], base="/x/base"))
    given = B.family_pairs(tiny, ["/data/my-variant"])[0]
    assert given.variant == "my-variant" and given.variant_ref == "/data/my-variant" and given.kind == "given"
    with pytest.raises(ValueError, match="`variants` is empty.*instruct"):
        B.family_pairs(tiny, [])


def test_vintage_table_from_the_registry():
    t = B.vintage_table(registry.get("mistral7b"))
    row = t.iloc[0]
    assert row["paper ε̄ older"] == 0.140 and row["paper ε̄ current"] == 0.006 and row["paper tightening"] == 23.3
    assert row["tightening from paper ε̄"] == pytest.approx(23.3, rel=0.01)
    assert row["measured tightening"] is None
    llama = B.vintage_table(registry.get("llama8b"), measured={"llama8b": 0.05, "llama2-7b": 0.10})
    assert llama.iloc[0]["tightening from paper ε̄"] == pytest.approx(1.15, rel=0.01)  # flat (Table 10)
    assert llama.iloc[0]["measured tightening"] == pytest.approx(2.0)
    assert B.vintage_table(registry.get("gemma2b")).iloc[0]["paper tightening"] == 12.4
    assert B.vintage_table(registry.get("tiny")) is None


def test_compare_scans_each_pair_and_decides_regions(tiny_pairs):
    near = tiny_pairs("llama", scale=0.01)
    far = tiny_pairs("llama", scale=1.0)
    pairs = [B.Pair("base", "near", str(near[0]), str(near[1]), "post-trained"),
             B.Pair("base", "far", str(far[0]), str(far[1]), "continued-pretraining")]
    res = B.compare(pairs)
    recs = B.pair_records(res)
    assert [r["region"] for r in recs] == ["aligned", "outside"]
    assert recs[0]["mean_cos"] > 0.999 and recs[1]["mean_frob"] > 0.5
    t = B.boundary_table(res, tau=(0.999, 0.05))
    assert list(t.index) == ["base → near", "base → far"] and t.loc["base → near", "shareable blocks"] == "3/3"
    assert t["paper cos"].isna().all()
    prof = B.profiles(res, "cos")
    assert set(prof) == {"base → near", "base → far"} and all(len(v) == 3 for v in prof.values())
    # a stricter rule moves the near pair out: the rule, not the kind, decides
    assert B.pair_records(res, eps_max=1e-6)[0]["region"] == "outside"
