"""Architecture tier: every family with an architecture record, end to end on tiny random-init checkpoints.

Each family's `tiny_config` recipe (its record, `linker_nb/_data/architectures/<model_type>.json`) builds a
`transformers` model with the real module names; `save_pretrained` writes the real checkpoint names (a MoE's
one tensor per expert, Gemma 3's `language_model.model.*`). Through: the scan (01), all 03 controls proved on
the real decoder layer, 04's WeightPath, 05's lazy loader and aliasing, 06's spectral scan and ablations.
Tolerances: symmetry.TOLERANCE (1e-5 relative) for function preservation; exact equality for aliasing and for
the interpolation endpoints. Measured: ~100 s for the whole file on 2 shared cores (see tests/README.md).
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from linker_nb.analyses import controls as C
from linker_nb.analyses import interpolation as I
from linker_nb.analyses import spectral, spectral_ablations
from linker_nb.analyses import symmetry as S
from linker_nb.analyses.loss import lm_loss
from linker_nb.analyses.scan import scan
from linker_nb.io import architectures as A
from linker_nb.io.checkpoint import Checkpoint
from linker_nb.io.models import decoder_layers, load_model
from linker_nb.linker import alias, loader
from linker_nb.nb import plots, schemas
from linker_nb.testing import ARCH_FAMILIES, perturb_state, tiny_config

MOE = ("mixtral", "qwen3_moe")
CONTROLLED = tuple(f for f in ARCH_FAMILIES if A.get_architecture(f).norm_type == "rmsnorm")


def _ids(seed=0):
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(seed))


# -- 01: the scan -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_scan_knows_every_tensor(tiny_pairs, family):
    b, v = tiny_pairs(family)
    res = scan(b, v)
    arch = A.get_architecture(family)
    assert res.architecture == family and res.unknown_kind_tensors == []
    assert len(res.blocks) == 3 and all(blk.attn_cos is not None and blk.mlp_cos is not None for blk in res.blocks)
    assert 0.99 < res.mean_cos < 1.0 and 0.005 < res.mean_frob < 0.03
    # no tensor leaves a sub-mean: the measured parts of each stored tensor add up to it, element for element
    ck = Checkpoint(b)
    numel = {}
    for r in res.tensors:
        stored = r.name.split("[")[0]
        numel[stored] = numel.get(stored, 0) + r.numel
    assert numel == {n: math.prod(ck.info(n).shape) for n in numel} and set(numel) == set(ck.names)
    s = res.summary()
    assert s["architecture"] == family and s["unknown_kind_tensors"] == []
    if family in MOE:
        assert res.n_experts == 4 and all(blk.router_cos is not None for blk in res.blocks)
        t = res.expert_table("frob")
        assert t.shape == (3, 4) and (t > 0.005).all().all()
        assert res.router_table().shape == (3, 2)
        fig = plots.expert_heatmap(t, router=res.router_table())
        assert list(fig.data[0].x) == ["expert 0", "expert 1", "expert 2", "expert 3", "router"]
        moe = schemas._moe(res)
        assert moe["n_experts"] == 4 and len(moe["experts"]["frob"]) == 3 and len(moe["router"]) == 3
        assert "every expert matrix" in moe["moe_aggregation"]
        assert all(blk.n_sub == 4 + 2 + 1 + 3 * 4 + 2 * (family == "qwen3_moe") for blk in res.blocks)
    else:
        assert res.n_experts == 0 and res.expert_table().empty and schemas._moe(res) == {}
        with pytest.raises(ValueError, match="no experts to plot"):
            plots.expert_heatmap(res.expert_table())
    if arch.name == "phi3":  # the fused projections measured as the parts the unfused families store
        shapes = {r.sub: r.shape for r in res.tensors if r.block == 0}
        assert shapes["self_attn.qkv_proj.weight[q]"] == (32, 32) and shapes["self_attn.qkv_proj.weight[k]"] == (16, 32)
        assert shapes["mlp.gate_up_proj.weight[gate]"] == shapes["mlp.gate_up_proj.weight[up]"] == (48, 32)
        assert res.blocks[0].n_sub == 9  # as llama: q, k, v, o, gate, up, down, 2 norms


def test_unknown_architecture_scans_as_generic_and_lists_its_tensors(tiny_pairs, tmp_path):
    b, v = tiny_pairs("llama")
    pair = []
    for src in (b, v):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(cfg | {"model_type": "mystery_lm"}))
        pair.append(dst)
    res = scan(*pair)
    assert res.architecture == "generic" and res.model_type == "mystery_lm"
    blocks = [r.name for r in res.tensors if r.group == "block"]
    assert res.unknown_kind_tensors == blocks and len(blocks) == 27
    assert all(blk.attn_cos is None and blk.mlp_cos is None and blk.cos is not None for blk in res.blocks)
    assert res.summary()["unknown_kind_tensors"] == blocks
    assert "unknown kind" in res.block_table()["flags"].iloc[0]


# -- 03: every control proved on the real layer ---------------------------------------------------------------
def _block_pair(family: str, seed: int = 0) -> tuple[S.Block, S.Block]:
    """Middle block with O(1) updates (initializer 0.25) and non-trivial norms/biases; variant = block + 1%."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = tiny_config(family)
    cfg.get_text_config().initializer_range = 0.25
    b = S.block_from_model(AutoModelForCausalLM.from_config(cfg), 1)
    g = torch.Generator().manual_seed(seed)
    for k, t in b.weights.items():
        if k.endswith("bias") or "norm" in k:
            t.copy_((1.0 - b.arch.norm_offset) + 0.3 * torch.randn(t.shape, generator=g))
    return b, b.with_weights(perturb_state(b.weights, 0.01, seed + 1))


@pytest.mark.parametrize("family", CONTROLLED)
def test_every_control_preserves_function_and_moves_weights(family):
    b, v = _block_pair(family)
    r = S.run_controls(b, v, seed=0)
    rows = r.rows
    assert set(rows) == set(S.MOE_CONTROLS if family in MOE else S.CONTROLS)
    assert rows["ref"]["max_abs_update"] > 0.3  # the block's own contribution is not negligible
    for name, row in rows.items():
        assert row["relative_diff"] <= S.TOLERANCE, (family, name, row)
    assert rows["mlp_perm"]["mlp_cos"] < 0.3 and rows["head_perm"]["attn_cos"] < 0.5
    assert rows["rmsnorm"]["attn_frob"] > 5 * rows["ref"]["attn_frob"]
    if family in MOE:
        assert rows["expert_perm"]["mlp_cos"] < 0.3 and rows["expert_perm"]["router_cos"] < 0.3
        assert rows["expert_perm"]["attn_cos"] == rows["ref"]["attn_cos"]
        assert "router cosine" in r.table3().index
    if family == "olmo2":
        assert "post-norm" in r.notes["rmsnorm"]


@pytest.mark.parametrize("family", ["phi3", "olmo2", "mixtral"])
def test_the_oracle_catches_wrong_variants(family):
    """A wrong transformation of each new layout breaks the function far beyond the tolerance."""
    b, _ = _block_pair(family)
    n_q, n_kv, hd = C._heads(b)
    wrong = {}
    if family == "phi3":  # permute the whole fused qkv in head chunks, as if it were q alone
        w = dict(b.weights)
        qkv = w["self_attn.qkv_proj.weight"]
        w["self_attn.qkv_proj.weight"] = qkv.reshape(-1, hd, qkv.shape[1]).roll(1, 0).reshape(qkv.shape)
        wrong["qkv as one projection"] = w
    if family == "olmo2":  # move the heads but leave the full-width q/k norms in place
        right = S.head_permutation(b, torch.tensor([1, 0]), torch.tensor([[1, 0], [1, 0]])).weights
        wrong["q/k norms left behind"] = right | {k: b.weights[k] for k in ("self_attn.q_norm.weight",
                                                                           "self_attn.k_norm.weight")}
        with pytest.raises(S.SymmetryError, match="no norm at a sublayer's input.*residual"):
            S.norm_rescale(b, torch.ones(32), torch.ones(32))
    if family == "mixtral":  # permute the experts without the router
        wrong["experts without router"] = b.weights | {k: b.weights[k][torch.tensor([1, 2, 3, 0])] for k in
                                                       ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")}
    for what, w in wrong.items():
        assert S.prove(b, b.with_weights(w))["relative"] > 1000 * S.TOLERANCE, (family, what)


@pytest.mark.parametrize("family", ["phi3", "olmo2", "mixtral", "qwen3_moe", "gemma3"])
def test_controls_from_checkpoints_read_the_module_layout(tiny_pairs, family):
    """load_block converts checkpoint names to the layer's (v5 fused experts, Gemma 3's prefix) exactly."""
    from transformers import AutoModelForCausalLM
    base, var = tiny_pairs(family, dtype=torch.float32)
    blk = S.load_block(base, 1)
    ref = decoder_layers(AutoModelForCausalLM.from_pretrained(base))[1].state_dict()
    assert set(blk.weights) == set(ref) and all(torch.equal(blk.weights[k], ref[k]) for k in ref)
    r = S.run_controls(base, var, seed=1)
    assert all(row["relative_diff"] <= S.TOLERANCE for row in r.rows.values())


def test_layernorm_family_is_refused_with_the_reason(tiny_pairs):
    b, v = tiny_pairs("gpt2")
    with pytest.raises(S.SymmetryError, match="gpt2 has layernorm norms"):
        S.run_controls(b, v)


# -- 04, 05, 06 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_interpolation_endpoints_are_exact(tiny_pairs, family):
    b, v = tiny_pairs(family)
    model = load_model(v, device="cpu", dtype="float32")
    tokens = _ids()
    loss_var, loss_base = lm_loss(model, tokens), lm_loss(load_model(b, device="cpu", dtype="float32"), tokens)
    path = I.WeightPath(model, b)
    assert path.n_blocks == 3
    with path.hold(path.names([1])) as set_alpha:
        set_alpha(0.0)
        assert lm_loss(model, tokens) == loss_var
    with path.hold_all(path.names(non_block=True)) as set_alpha:
        set_alpha(1.0)
        assert lm_loss(model, tokens) == loss_base  # every module parameter, fused experts included, is the base's
    assert lm_loss(model, tokens) == loss_var


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_lazy_loader_and_aliasing(tiny_pairs, family):
    b, v = tiny_pairs(family)
    donor = load_model(b, device="cpu", dtype=torch.float32)
    rep = loader.LoadReport()
    rec = loader.load_recipient(v, donor, [0, 2], report=rep)
    assert not any(p.is_meta for p in rec.parameters())
    for i in (0, 2):  # whole blocks, experts and router included, over the donor's storage
        for (n, p), (_, q) in zip(decoder_layers(rec)[i].named_parameters(), decoder_layers(donor)[i].named_parameters()):
            assert p.data_ptr() == q.data_ptr(), n
    assert alias.shared_blocks(rec) == [0, 2]
    oracle = load_model(v, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for i in (0, 2):
            for p, q in zip(decoder_layers(oracle)[i].parameters(), decoder_layers(donor)[i].parameters()):
                p.copy_(q)
        assert torch.equal(rec(input_ids=_ids()).logits, oracle(input_ids=_ids()).logits)
    ck = Checkpoint(v)
    assert len(rep.names_read) == len(set(rep.names_read)) and set(rep.names_read) < set(ck.names)
    arch = A.get_architecture(family)
    assert {arch.classify(n).block for n in rep.names_read} <= {1, None}  # block 1 and the non-block tensors
    if family in MOE:
        assert rep.expert_bytes_aliased > 0 and rep.expert_bytes_read > 0
        expert_ck = sum(ck.info(n).nbytes for n in rep.names_read if arch.classify(n).kind == "expert")
        assert rep.expert_bytes_read == expert_ck  # one layer's experts, read once each
    else:
        assert rep.expert_bytes_aliased == rep.expert_bytes_read == 0


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_spectral_scan_and_ablations(tiny_pairs, family):
    b, v = tiny_pairs(family)
    res = spectral.spectral_scan(b, v, top_r=4, blocks=[1])
    assert res.blocks == [1] and res.matrices and all(m.block == 1 for m in res.matrices)
    assert all(m.kind in A.KINDS for m in res.matrices)
    if family == "phi3":
        assert {m.sub for m in res.matrices} >= {"self_attn.qkv_proj.weight[q]", "mlp.gate_up_proj.weight[up]"}
    if family in MOE:
        assert sum(m.kind == "expert" for m in res.matrices) == 12
    model = load_model(v, device="cpu", dtype="float32")
    out = spectral_ablations.ablation(model, b, _ids(), blocks=[1])
    assert out["loss_restored"] == out["loss_variant"] and out["loss_sv_swapped"] != out["loss_variant"]


# -- the records themselves ---------------------------------------------------------------------------------
def test_every_record_loads_and_every_real_parameter_is_known():
    from transformers import AutoModelForCausalLM
    assert set(ARCH_FAMILIES) >= {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
                                  "phi3", "olmo2", "mixtral", "qwen3_moe"}
    for family in ARCH_FAMILIES:
        model = AutoModelForCausalLM.from_config(tiny_config(family, layers=2))
        arch = A.get_architecture(model.config.model_type)
        roles = {n: arch.classify(n) for n, _ in model.named_parameters()}
        unknown = [n for n, r in roles.items() if r.group == "block" and r.kind == "unknown"]
        assert not unknown, (family, unknown)
        assert {r.group for r in roles.values()} >= {"block", "embed", "final_norm"}
        assert len(decoder_layers(model)) == 2


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.pop("block"), "lacks the field 'block'"),
    (lambda r: r["block"][0].update(kind="attention"), "kind 'attention' is not one of"),
    (lambda r: r["block"][0].update(feeds=["qkv"]), "feeds role 'qkv', which no entry has"),
    (lambda r: r.update(norm_offset="one"), "field 'norm_offset' must be"),
    (lambda r: r.update(colour="red"), "unknown field 'colour'"),
    (lambda r: r["block"][1].update(split={"dim": 0, "parts": [["q", 1]]}), "split needs"),
    (lambda r: r.update(module=[{"name": "x", "kind": "mlp", "role": "up", "from": ["nope.weight"]}]),
     "built from \\['nope.weight'\\], which no block entry names"),
    (lambda r: r.update(gguf={"permute_qk": True}), "gguf lacks the field 'arch'"),
    (lambda r: r.update(gguf={"arch": "llama", "permute": True}), "gguf has an unknown field 'permute'"),
])
def test_malformed_records_are_refused_naming_the_field(edit, match):
    record = json.loads(json.dumps(A.get_architecture("llama").record, default=lambda o: None))
    for e in record["block"]:
        e.pop("_re", None)
    edit(record)
    with pytest.raises(A.ArchitectureError, match=match):
        A.Architecture(record, "test.json")


def test_fused_split_must_match_the_config():
    arch = A.get_architecture("phi3")
    dims = arch.dims({"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 1})
    with pytest.raises(A.ArchitectureError, match="qkv_proj.weight has 64 rows.*need \\[32, 8, 8\\]"):
        arch.parts("model.layers.0.self_attn.qkv_proj.weight", (64, 32), dims)
