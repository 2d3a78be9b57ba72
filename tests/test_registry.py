"""The registry: every key of the paper, paper figures transcribed, the data file validated, clear errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from linker_nb.io import registry

# Dumped once from the positional-helper registry.py that `_data/registry.toml` replaced (same `plain`
# encoding): the TOML must reproduce every figure, type and tuple of it.
BEFORE = Path(__file__).parent / "data" / "registry_before.json"

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


def plain(x):
    """JSON-able form of registry objects: tuples marked (a list/tuple change shows), package paths relative."""
    pkg = str(registry.PACKAGE_DIR)
    if dataclasses.is_dataclass(x):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return {"__tuple__": [plain(v) for v in x]}
    if isinstance(x, list):
        return [plain(v) for v in x]
    if isinstance(x, str) and x.startswith(pkg):
        return "package:" + x[len(pkg) + 1:]
    return x


def test_data_file_reproduces_the_registry_before_it():
    before = json.loads(BEFORE.read_text())["REGISTRY"]  # families added since are checked by their own tests
    # and so are paper tables transcribed since: table7 (tests/test_benchmarks.py checks it against table6)
    since = ("table7",)
    fams = {k: dataclasses.replace(v, variants={n: dataclasses.replace(
        x, paper={t: f for t, f in x.paper.items() if t not in since}) for n, x in v.variants.items()})
        for k, v in registry.REGISTRY.items() if k in before}
    now = {"REGISTRY": plain(fams),
           "CONSERVATIVE": plain(registry.CONSERVATIVE),
           "PAPER_INTERIOR_BAND": plain(registry.PAPER_INTERIOR_BAND), "TINY_DIR": plain(str(registry.TINY_DIR))}
    # Compared as text so that 1900 vs 1900.0 (int vs float) differs too.
    assert json.dumps(now, indent=1, sort_keys=True) + "\n" == BEFORE.read_text()


def test_families_after_the_paper():
    """Registry keys of the families with architecture records beyond the paper's; figures only where published."""
    fam = registry.REGISTRY
    assert list(fam["olmo2-7b"].variants) == ["sft", "dpo", "instruct"]  # 02 shows the stages in order
    assert fam["olmo2-7b"].variants["sft"].external["modeldelta"] == {"rel_frob": 0.049, "cos": 0.99942}
    assert fam["qwen3-4b"].variants["instruct"].external["shadow_ft_sigma"] == 0.0562
    assert {k for k in fam if k.startswith(("qwen3-", "mixtral", "olmo2", "gemma3", "phi4"))} == {
        "qwen3-4b", "qwen3-30b-a3b", "mixtral-8x7b", "olmo2-7b", "gemma3-1b", "gemma3-4b", "phi4"}
    for key in ("qwen3-4b", "qwen3-30b-a3b", "mixtral-8x7b", "olmo2-7b", "gemma3-1b", "gemma3-4b", "phi4"):
        assert (fam[key].tau_cos, fam[key].tau_frob) == (0.999, 0.05) and not fam[key].paper


def test_family_defaults_and_package_refs():
    tiny, qwen = registry.get("tiny"), registry.get("qwen15b")
    assert (tiny.eval_sequences, tiny.eval_seq_len) == (8, 256) and (qwen.eval_sequences, qwen.eval_seq_len) == (24, 512)
    assert Path(tiny.base) == registry.TINY_DIR / "base" and Path(tiny.variants["coder"].ref).is_dir()
    assert qwen.paper["appH"]["interior_range"] == registry.PAPER_INTERIOR_BAND  # the constant is the paper's band
    assert registry.load() == registry.REGISTRY


def _edited(tmp_path, old: str, new: str) -> Path:
    text = registry.DATA_FILE.read_text()
    assert old in text, old
    path = tmp_path / "registry.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("old, new, message", [
    # a misspelt field: named, with the allowed ones
    ("tau_frob = 0.06  # Table 8", "tua_frob = 0.06", r"qwen05b: unknown field 'tua_frob'; allowed fields: label, base, tau_cos, tau_frob"),
    ("paper.table4 = { tau_frob = 0.06, shared", "paper.table4 = { tau_frb = 0.06, shared",
     r"qwen05b\.variants\.instruct\.paper\.table4: unknown field 'tau_frb'; allowed fields: tau_frob, shared"),
    ("paper.table11 = { tol = 0.05, blocks = 24", "paper.tabel11 = { tol = 0.05, blocks = 24", r"unknown field 'tabel11'.*table11"),
    # a wrong type: the place and what was expected
    ("tau_cos = 0.998  #", 'tau_cos = "0.998"  #', r"qwen05b\.tau_cos: expected a number, got str '0\.998'"),
    ("naive_mib = 1900", "naive_mib = 1900.5", r"table4\.naive_mib: expected an integer, got float"),
    ("eps_range = [0.04, 0.05]", "eps_range = [0.04]", r"table1\.eps_range: expected an array of 2 items"),
    ("eval_sequences = 8", "eval_sequences = true", r"tiny\.eval_sequences: expected an integer, got bool"),
    # a missing required field
    ('ref = "Qwen/Qwen2.5-0.5B-Instruct"\n', "", r"qwen05b\.variants\.instruct: missing required field\(s\) ref"),
    ("tau_frob = 0.06  # Table 8\n", "", r"qwen05b: missing required field\(s\) tau_frob"),
    (", eps_mean = 0.045 }", " }", r"table1: missing required field\(s\) eps_mean"),
    # values and references
    ('kind = "continued-pretraining"', 'kind = "continued"', r"kind: 'continued' is not one of post-trained"),
    ('cross = [["instruct", "coder"]]  #', 'cross = [["instruct", "cdoer"]]  #', r"qwen7b: variant 'cdoer'"),
    ('vintage = ["llama2-7b"]', 'vintage = ["llama2-8b"]', r"llama8b\.vintage names 'llama2-8b'"),
    ("tau_frob = 0.20  # Table 8", "tau_frob = 20  # Table 8", r"llama1b\.tau_frob: 20\.0 is outside"),
    ("[qwen05b]", "[qwen05b", r"not valid TOML"),
])
def test_malformed_data_file_fails_naming_the_field(tmp_path, old, new, message):
    path = _edited(tmp_path, old, new)
    with pytest.raises(registry.RegistryError, match=message) as err:
        registry.load(path)
    assert str(path) in str(err.value)


def test_a_new_family_is_a_copied_table(tmp_path):
    path = tmp_path / "registry.toml"
    path.write_text(registry.DATA_FILE.read_text() + '''
[my-olmo2-7b]
label = "OLMo-2-7B (a copied table)"
base = "allenai/OLMo-2-1124-7B"
tau_cos = 0.999
tau_frob = 0.05

[my-olmo2-7b.variants.instruct]
ref = "allenai/OLMo-2-1124-7B-SFT"
kind = "post-trained"
external.modeldelta = { rel_frob = 0.049, cos = 0.99942 }
''')
    fam = registry.load(path)["my-olmo2-7b"]
    assert fam.variant.external["modeldelta"]["cos"] == 0.99942 and fam.eval_sequences == 24
    assert (fam.tau_cos, fam.tau_frob) == registry.CONSERVATIVE
