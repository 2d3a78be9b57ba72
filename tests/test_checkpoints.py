"""Architecture tier: real `save_pretrained` layouts of every supported family, and bad input.

Checkpoints are tiny random-init models built locally from `transformers` config classes
(`linker_nb.testing`): sharded and unsharded, tied and untied, bf16 and fp32, safetensors and `.bin`.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from linker_nb.analyses import granularity, kernel, records  # noqa: F401
from linker_nb.analyses.scan import scan
from linker_nb.io import architectures, pairing, stream  # noqa: F401
from linker_nb.io.checkpoint import CheckpointCorrupt, CheckpointNotFound
from linker_nb.io.references import open_checkpoint, resolve
from linker_nb.testing import FAMILIES, tiny_config


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_of_a_real_model_is_placed(family):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers=3))
    names = [n for n, _ in model.named_parameters()]
    arch, roles = architectures.layout(names, model.config.model_type)
    assert arch.name == model.config.model_type
    blocks = [r for r in roles.values() if r.group == "block"]
    assert sorted({r.block for r in blocks}) == [0, 1, 2]
    assert len(blocks) == 3 * len([n for n in names if ".layers.0." in n])
    assert {r.group for r in roles.values()} == {"block", "embed", "final_norm", "lm_head"}
    kinds = {r.sub: r.kind for r in blocks if r.block == 0}
    assert kinds["self_attn.q_proj.weight"] == "attn" and kinds["mlp.down_proj.weight"] == "mlp"
    assert kinds["input_layernorm.weight"] == "norm"
    assert sum(k == "unknown" for k in kinds.values()) == 0  # the record knows every tensor
    assert (arch.norm_offset == 1.0) == family.startswith("gemma")


def test_multimodal_gemma3_names_and_generic_fallback():
    names = ["model.language_model.layers.0.self_attn.q_proj.weight", "model.language_model.norm.weight",
             "model.language_model.embed_tokens.weight", "lm_head.weight",
             "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"]
    _, roles = architectures.layout(names, "gemma3")
    assert roles[names[0]].block == 0 and roles[names[1]].group == "final_norm"
    assert roles[names[4]].group == "other"  # the vision tower is not a language block
    gen, roles = architectures.layout(["transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight",
                                       "transformer.ln_f.weight"], "some_new_arch")
    assert gen.name == "generic" and roles["transformer.h.1.mlp.c_fc.weight"].block == 1


def test_unknown_architecture_without_blocks_fails_clearly():
    with pytest.raises(architectures.UnsupportedArchitecture, match="not supported.*Supported: gemma"):
        architectures.layout(["encoder.weight", "decoder.weight"], "mystery")
    with pytest.raises(architectures.UnsupportedArchitecture, match="missing \\[1\\]"):
        architectures.layout(["model.layers.0.a.weight", "model.layers.2.a.weight"], "llama")


@pytest.mark.parametrize("family", FAMILIES)
def test_layouts_scan_identically(family, tiny_pairs):
    """Unsharded, sharded, tied, fp32 .bin: same architecture, same blocks, same metrics."""
    ref = scan(*tiny_pairs(family))
    sharded = scan(*tiny_pairs(family, shard="20KB"))
    assert len(list(tiny_pairs(family, shard="20KB")[0].glob("*.safetensors"))) > 1
    assert [b.frob for b in sharded.blocks] == pytest.approx([b.frob for b in ref.blocks], rel=1e-12)
    n0 = [n for n in open_checkpoint(tiny_pairs(family)[0]).names if ".layers.0." in n]
    assert len(ref.blocks) == 3 and ref.blocks[0].n_sub == len(n0) and not ref.unknown_kind_tensors
    assert 0.99 < ref.mean_cos < 1.0 and 0.005 < ref.mean_frob < 0.03
    assert ref.n_identical < ref.n_tensors // 4
    tied = scan(*tiny_pairs(family, tied=True))
    assert tied.tied_embeddings and "lm_head.weight" not in [t.name for t in tied.tensors]
    b = scan(*tiny_pairs(family, fmt="bin", dtype=torch.float32))
    assert open_checkpoint(tiny_pairs(family, fmt="bin", dtype=torch.float32)[0]).format == "bin"
    assert b.mean_frob == pytest.approx(ref.mean_frob, rel=0.1)  # fp32 vs bf16 rounding of the same noise


def test_tied_base_against_untied_variant(tiny_pairs, tmp_path):
    """A tied checkpoint's effective lm_head is its embedding: compared against the untied lm_head."""
    b, v = tiny_pairs("llama", tied=True)
    untied = tmp_path / "untied"
    shutil.copytree(v, untied)
    from safetensors.torch import load_file, save_file
    sd = load_file(untied / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, untied / "model.safetensors", metadata={"format": "pt"})
    r = scan(b, untied)
    lm = next(t for t in r.tensors if t.name == "lm_head.weight")
    emb = next(t for t in r.tensors if t.name == "model.embed_tokens.weight")
    assert lm.frob == pytest.approx(emb.frob) and "tied embedding" in lm.note


# -- bad input -------------------------------------------------------------------------------------------------

def test_missing_directory_and_file_instead_of_directory(tmp_path, tiny_pairs):
    with pytest.raises(CheckpointNotFound, match="no checkpoint directory"):
        resolve(str(tmp_path / "nope"))
    b, _ = tiny_pairs("llama")
    with pytest.raises(CheckpointNotFound, match="is a file; pass the checkpoint directory"):
        resolve(b / "config.json")
    with pytest.raises(CheckpointNotFound, match="no \\*.safetensors"):
        open_checkpoint(tmp_path)


def test_offline_hub_id_names_the_id_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointNotFound) as err:
        resolve("Qwen/Qwen2.5-7B")
    msg = str(err.value)
    assert "'Qwen/Qwen2.5-7B'" in msg and "offline" in msg and "-p base /path/to/Qwen2.5-7B" in msg


def test_cached_hub_snapshot_resolves_offline(monkeypatch, tmp_path, tiny_pairs):
    """A Hugging Face cache snapshot layout is found without the network."""
    b, _ = tiny_pairs("llama")
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(b, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve("org/tiny") == snap


def test_corrupt_and_truncated_files(tmp_path, tiny_pairs):
    b, v = tiny_pairs("llama")
    bad = tmp_path / "garbage"
    shutil.copytree(b, bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointCorrupt, match="not a readable safetensors file"):
        open_checkpoint(bad)
    cut = tmp_path / "truncated"
    shutil.copytree(b, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointCorrupt, match="truncated.*re-download"):
        scan(cut, v)
    cfg = tmp_path / "badcfg"
    shutil.copytree(b, cfg)
    (cfg / "config.json").write_text("{")
    with pytest.raises(CheckpointCorrupt, match="config.json is not valid JSON"):
        open_checkpoint(cfg)


def test_missing_shard_is_reported(tmp_path, tiny_pairs):
    b, _ = tiny_pairs("llama", shard="20KB")
    broken = tmp_path / "broken"
    shutil.copytree(b, broken)
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointCorrupt, match="absent from the shards.*re-download"):
        open_checkpoint(broken)


def test_mismatched_architectures_and_shapes(tmp_path, tiny_pairs):
    lb, _ = tiny_pairs("llama")
    qb, _ = tiny_pairs("qwen2")
    with pytest.raises(pairing.ScanMismatch, match="model_type is 'llama'.*'qwen2'"):
        scan(lb, qb)
    _, lv = tiny_pairs("llama")
    odd = tmp_path / "odd"
    shutil.copytree(lv, odd)
    from safetensors.torch import load_file, save_file
    sd = load_file(odd / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(50, 32, dtype=torch.bfloat16)
    save_file(sd, odd / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(pairing.ScanMismatch, match=r"model.layers.1.mlp.up_proj.weight.*\(48, 32\).*\(50, 32\)"):
        scan(lb, odd)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, odd / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(pairing.ScanMismatch, match="'model.layers.1.mlp.up_proj.weight' exists only in"):
        scan(lb, odd)


def test_fingerprint_changes_when_weights_are_rewritten(tmp_path, tiny_pairs):
    b, _ = tiny_pairs("llama")
    c = tmp_path / "copy"
    shutil.copytree(b, c)
    fp = open_checkpoint(c).fingerprint()
    assert open_checkpoint(c).fingerprint() == fp
    from safetensors.torch import load_file, save_file
    sd = load_file(c / "model.safetensors")
    sd["model.norm.weight"] = sd["model.norm.weight"] * 2
    save_file(sd, c / "model.safetensors", metadata={"format": "pt"})
    assert open_checkpoint(c).fingerprint() != fp


def test_scan_memory_is_bounded_by_tensors_not_model(tiny_pairs, monkeypatch):
    """The scan holds the current pair of tensors and the pair prefetched behind it, never more, whatever the
    model size: count live tensors handed out by `Checkpoint.get`."""
    from conftest import count_live_tensors
    from linker_nb.io import references as checkpoints
    peak = count_live_tensors(monkeypatch, checkpoints.Checkpoint)
    r = scan(*tiny_pairs("llama"))
    assert r.n_tensors > 20 and peak[0] <= 4


def test_progress_bar_shows_on_request(tiny_pairs, capsys):
    scan(*tiny_pairs("llama"), progress=True)
    assert "scan" in capsys.readouterr().err


def test_config_json_written_by_transformers_is_read(tiny_pairs):
    b, _ = tiny_pairs("gemma2")
    ck = open_checkpoint(b)
    assert ck.model_type == "gemma2" and json.loads((b / "config.json").read_text())["num_hidden_layers"] == 3
