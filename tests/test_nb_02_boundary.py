"""Notebook tier: 02_boundary on the embedded tiny family (base against every variant, plus instruct -> coder)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(240)]  # each run ~9 s on 2 cores (kernel start + 6 scans)


def _by_pair(r):
    return {(p["base"], p["variant"]): p for p in r["pairs"]}


def test_post_training_stays_aligned_and_the_rest_falls_outside(notebook_runner):
    r = notebook_runner("02_boundary", model="tiny")
    pairs = _by_pair(r)
    assert set(pairs) >= {("base", "instruct"), ("base", "coder"), ("base", "scratch"), ("instruct", "coder")}
    for p in r["pairs"]:
        assert set(p) >= {"base", "variant", "mean_cos", "mean_frob", "region"}
        # the region follows from the numbers and the rule, not from the name
        assert p["region"] == ("aligned" if p["mean_cos"] >= r["cos_min"] and p["mean_frob"] <= r["eps_max"]
                               else "outside")
    for v in ("instruct", "chat", "qa"):
        assert pairs[("base", v)]["region"] == "aligned" and pairs[("base", v)]["mean_cos"] > 0.99
    for k in (("base", "coder"), ("base", "scratch"), ("instruct", "coder")):
        assert pairs[k]["region"] == "outside"
    inst, coder, scratch = (pairs[("base", v)] for v in ("instruct", "coder", "scratch"))
    assert inst["mean_frob"] < coder["mean_frob"] < scratch["mean_frob"]
    assert inst["mean_cos"] > coder["mean_cos"] > scratch["mean_cos"]
    assert abs(scratch["mean_cos"]) < 0.3 and scratch["mean_frob"] > 0.8  # unrelated init
    assert pairs[("instruct", "coder")]["kind"] == "cross-variant"
    assert set(r["n_blocks"].values()) == {8} and r["vintage"] is None


def test_variants_and_rule_parameters_override_the_registry(notebook_runner):
    r = notebook_runner("02_boundary", model="tiny", variants=["instruct", "coder"], cos_min=0.9, eps_max=0.5)
    pairs = _by_pair(r)
    assert list(pairs) == [("base", "instruct"), ("base", "coder"), ("instruct", "coder")]
    assert pairs[("base", "coder")]["region"] == "aligned"  # a looser rule moves coder in: the rule decides
    r = notebook_runner("02_boundary", model="tiny", variants=["instruct", "coder"], cross=False)
    assert len(r["pairs"]) == 2


def test_local_checkpoints(notebook_runner, tiny_pairs):
    b, v = tiny_pairs("mistral")
    r = notebook_runner("02_boundary", model="tiny", base=str(b), variants=[str(v)])
    assert r["base"] == str(b) and len(r["pairs"]) == 1
    p = r["pairs"][0]
    assert p["variant"] == v.name and p["region"] == "aligned" and p["mean_cos"] > 0.999


def test_bad_parameters_fail_in_the_validation_cell(tmp_path):
    import papermill as pm
    from conftest import run_notebook
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'variants'"):
        run_notebook("02_boundary", tmp_path / "a", model="tiny", variants="coder")
    with pytest.raises(pm.PapermillExecutionError, match="cos_min in"):
        run_notebook("02_boundary", tmp_path / "b", model="tiny", cos_min=2.0)
    with pytest.raises(pm.PapermillExecutionError, match="`variants` is empty"):
        run_notebook("02_boundary", tmp_path / "c", model="tiny", variants=[])
