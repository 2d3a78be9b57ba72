"""Unit tier: the tiny-family recipe (`scripts/train_tiny_family.py`) at smoke scale.

Runs the real script functions with `--steps-scale 0.005` (a few optimizer steps) on a 200 kB code cap,
twice, and checks bitwise reproducibility, loading, and the SFT loss mask. Measured ~20 s on 2 idle cores
when run alone (~6 s after tests/test_corpus.py has warmed the corpus caches).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--steps-scale", "0.005", "--code-bytes", "200000"]


@pytest.fixture(scope="module")
def recipe_module():
    spec = importlib.util.spec_from_file_location("train_tiny_family", REPO / "scripts" / "train_tiny_family.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def two_runs(recipe_module, tmp_path_factory):
    dirs = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    for d in dirs:
        recipe_module.main(["--out", str(d), "--only", "base,instruct", *SMOKE])
    return dirs


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == torch.bfloat16
        assert torch.equal(a[name], b[name]), name


@pytest.mark.timeout(120)
def test_two_runs_are_bitwise_identical(two_runs):
    for variant in ("base", "instruct"):
        _assert_identical(_weights(two_runs[0] / variant), _weights(two_runs[1] / variant))
        # the BPE tokenizer is retrained in each run: its merges must come out the same
        assert (two_runs[0] / variant / "tokenizer.json").read_bytes() == \
            (two_runs[1] / variant / "tokenizer.json").read_bytes()
    assert not all(torch.equal(a, b) for a, b in zip(_weights(two_runs[0] / "base").values(),
                                                      _weights(two_runs[0] / "instruct").values()))


@pytest.mark.timeout(120)
def test_derived_variant_alone_reproduces_full_run(recipe_module, two_runs):
    # `--only instruct` starts from the saved base, exactly as the full run does.
    before = _weights(two_runs[1] / "instruct")
    recipe_module.main(["--out", str(two_runs[1]), "--only", "instruct", *SMOKE])
    _assert_identical(before, _weights(two_runs[1] / "instruct"))


def test_checkpoint_loads_generates_and_records_recipe(two_runs):
    path = two_runs[0] / "instruct"
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == len(tok) == 1024
    ids = tok("### Instruction:\nExplain the Python topic 'for'.\n### Response:\n", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    recipe = json.loads((two_runs[0] / "recipe.json").read_text())
    assert set(recipe["variants"]) == {"base", "instruct"}
    assert all(0 < v["heldout_loss"] < 10 for v in recipe["variants"].values())
    assert (two_runs[0] / "README.md").exists()


def test_sft_loss_mask_excludes_prompt(recipe_module, two_runs):
    tok = AutoTokenizer.from_pretrained(two_runs[0] / "base")
    prompt, answer = "Q: What does `len` do?\nA: ", "Return the number of items in a container."
    ids, labels = recipe_module.sft_example(tok, prompt, answer)
    n_prompt = 1 + len(tok(prompt, add_special_tokens=False).input_ids)    # bos + prompt
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:-1]) == answer

    batch = recipe_module.sft_batch([(ids, labels), (ids[:5], labels[:5])], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids))
    assert (batch["labels"][1, 5:] == -100).all() and (batch["attention_mask"][1, 5:] == 0).all()
    assert (batch["input_ids"][1, 5:] == tok.pad_token_id).all()


def test_unknown_variant_is_rejected(recipe_module):
    with pytest.raises(SystemExit):
        recipe_module.parse_args(["--out", "x", "--only", "base,dpo"])
