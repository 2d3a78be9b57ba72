"""The registry: every key of the paper, paper figures transcribed, clear errors."""
from __future__ import annotations

import pytest

from linker_nb.io import registry

PAPER_KEYS = {"qwen05b", "qwen15b", "qwen3b", "qwen7b", "llama1b", "llama3b", "llama8b", "mistral7b", "gemma2b"}


def test_every_pair_of_the_paper_is_registered():
    assert PAPER_KEYS | {"tiny", "gemma1-2b", "mistral7b-v01", "llama2-7b"} <= set(registry.keys())
    for key in PAPER_KEYS:
        fam = registry.get(key)
        assert "/" in fam.base and "/" in fam.variant.ref and fam.variant.kind == "post-trained"


def test_table8_thresholds_and_table1_figures():
    assert registry.get("qwen05b").tau_cos == 0.998 and registry.get("llama3b").tau_cos == 0.99
    t8 = {"mistral7b": 0.05, "qwen3b": 0.05, "qwen7b": 0.05, "qwen05b": 0.06, "llama8b": 0.05, "gemma2b": 0.07,
          "llama3b": 0.13, "llama1b": 0.20}
    for key, tau in t8.items():
        fam = registry.get(key)
        assert fam.tau_frob == tau
        assert fam.variant.paper["table4"]["tau_frob"] == tau
    assert registry.get("llama1b").variant.paper["table1"]["eps_mean"] == 0.156
    assert registry.get("qwen7b").variants["coder"].paper["table2"] == {"cos": 0.637, "eps": 0.831}
    assert registry.get("gemma1-2b").variant.paper["table10"]["tightening"] == 12.4


def test_boundary_pairs_of_table2():
    kinds = {(k, v): var.kind for k in ("qwen15b", "qwen3b", "qwen7b") for v, var in registry.get(k).variants.items()}
    assert kinds[("qwen15b", "coder")] == kinds[("qwen15b", "math")] == "continued-pretraining"
    assert kinds[("qwen3b", "coder")] == kinds[("qwen7b", "coder")] == "continued-pretraining"
    assert ("instruct", "coder") in registry.get("qwen7b").cross


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(KeyError) as err:
        registry.get("qwen9000")
    assert "qwen9000" in str(err.value) and "qwen7b" in str(err.value) and "tiny" in str(err.value)


def test_resolve_pair_and_overrides(tmp_path):
    assert registry.resolve_pair("qwen7b") == ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct")
    assert registry.resolve_pair("qwen7b", variant="coder")[1] == "Qwen/Qwen2.5-Coder-7B"
    assert registry.resolve_pair("tiny", base="/a", variant="/b") == ("/a", "/b")
    assert registry.reported("qwen7b").paper["table1"]["blocks"] == 28
    assert registry.reported("qwen7b", base="/elsewhere") is None  # figures do not apply to other weights


def test_tiny_family_is_shipped():
    fam = registry.get("tiny")
    for name, v in {"base": registry.Variant(fam.base), **fam.variants}.items():
        assert (registry.TINY_DIR / name / "config.json").exists(), f"tiny/{name} missing: run make tiny-family"
        assert list((registry.TINY_DIR / name).glob("*.safetensors"))
