"""Unit tier: the metrics on hand-made tensors with known answers, and the scan's handling of bad weights."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from linker_nb.analyses import granularity, kernel, records  # noqa: F401
from linker_nb.analyses.scan import scan
from linker_nb.io import pairing, stream  # noqa: F401
from linker_nb.analyses.kernel import cosine, rel_frob, shadow_sigma, tensor_stats
from linker_nb.analyses.records import BlockRecord, TensorRecord


def stats(a, b, **kw):
    return tensor_stats(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), **kw)


def test_identical_scaled_orthogonal_opposite():
    a = [3.0, 4.0, 0.0]
    assert cosine(stats(a, a)) == pytest.approx(1.0, abs=1e-15)
    assert rel_frob(stats(a, a)) == 0.0
    s = stats(a, [6.0, 8.0, 0.0])  # uniform scaling: cosine 1 but Frobenius ratio 1 (why both metrics)
    assert cosine(s) == pytest.approx(1.0, abs=1e-12) and rel_frob(s) == pytest.approx(1.0)
    assert cosine(stats(a, [-4.0, 3.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    s = stats(a, [-3.0, -4.0, 0.0])
    assert cosine(s) == pytest.approx(-1.0) and rel_frob(s) == pytest.approx(2.0)
    # Shadow-FT sigma = sum|a-b| / (sum|a| + sum|b|) = 14 / 14
    assert shadow_sigma(s) == pytest.approx(1.0)
    assert shadow_sigma(stats([1.0, 1.0], [1.0, 2.0])) == pytest.approx(1 / 5)


def test_cosine_keeps_digits_near_one():
    """1 - cos to ~1e-9 absolute where a float32 dot product would lose it; float64 reference."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300_000, generator=g)
    b = a + 1e-4 * torch.randn(300_000, generator=g)
    a64, b64 = a.double(), b.double()
    ref = float(a64 @ b64 / (a64.norm() * b64.norm()))
    s = tensor_stats(a, b, chunk=4096)  # many chunks
    assert 1 - cosine(s) == pytest.approx(1 - ref, rel=1e-3)
    assert rel_frob(s) == pytest.approx(float((a64 - b64).norm() / a64.norm()), rel=1e-6)


def test_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 77, generator=g), torch.randn(64, 77, generator=g)
    s1, s2 = tensor_stats(a, b, chunk=1 << 20), tensor_stats(a, b, chunk=97)
    for k in ("na2", "nb2", "d2", "l1a", "l1b", "l1d"):
        assert s1[k] == pytest.approx(s2[k], rel=1e-6)


def test_bf16_inputs_are_compared_in_float32():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    s = tensor_stats(a, a.float() * 2)
    assert rel_frob(s) == pytest.approx(1.0)


def test_zero_norm_is_undefined_not_a_crash():
    s = stats([0.0, 0.0], [1.0, 0.0])
    assert cosine(s) is None and rel_frob(s) is None
    s = stats([1.0, 0.0], [0.0, 0.0])
    assert cosine(s) is None and rel_frob(s) == pytest.approx(1.0)


def test_nonfinite_values_are_counted():
    s = stats([1.0, float("nan"), float("inf")], [1.0, 2.0, 3.0])
    assert s["nonfinite"] == 2
    assert cosine(s) is None and rel_frob(s) is None and shadow_sigma(s) is None


def _rec(sub, kind, cos, frob, block=0, **kw):
    base = dict(name=f"model.layers.{block}.{sub}", group="block", block=block, sub=sub, kind=kind, shape=(2, 2),
                dtype="float32", nbytes=16, cos=cos, frob=frob, sigma=0.0, base_norm=1.0, var_norm=1.0,
                diff_norm=0.0, l1=(1.0, 1.0, 0.1), nonfinite=0, identical=False, base_hash="a", var_hash="b")
    return TensorRecord(**(base | kw))


def test_block_aggregates_and_eq3():
    recs = [_rec("self_attn.q_proj.weight", "attn", 0.999, 0.02), _rec("self_attn.k_proj.weight", "attn", 0.997, 0.06),
            _rec("mlp.up_proj.weight", "mlp", 1.0, 0.01), _rec("input_layernorm.weight", "norm", 1.0, 0.0)]
    b = BlockRecord.from_records(0, recs)
    assert b.n_sub == 4
    assert b.cos == pytest.approx((0.999 + 0.997 + 1 + 1) / 4)       # eq. (1)
    assert b.frob == pytest.approx((0.02 + 0.06 + 0.01 + 0.0) / 4)    # eq. (2)
    assert b.cos_min == 0.997 and b.frob_max == 0.06                  # App. P / App. G
    assert b.attn_cos == pytest.approx(0.998) and b.mlp_frob == pytest.approx(0.01)
    assert b.sigma == pytest.approx(0.4 / 8)
    assert b.shareable(0.998, 0.03)          # mean passes both
    assert not b.shareable(0.9995, 0.03)     # cosine fails
    assert not b.shareable(0.99, 0.02)       # Frobenius fails
    assert records.share_mask([b, b], 0.998, 0.03) == [True, True]


def test_flagged_blocks_are_never_shareable():
    nan = BlockRecord.from_records(0, [_rec("a.weight", "attn", None, None, nonfinite=3), _rec("b.weight", "mlp", 1.0, 0.0)])
    assert nan.nonfinite == ["a.weight"] and not nan.shareable(-1, 1e9)
    assert nan.cos == 1.0  # the mean over defined sub-parameters is still reported, flagged
    zero = BlockRecord.from_records(0, [_rec("a.weight", "attn", None, None), _rec("b.weight", "mlp", 1.0, 0.0)])
    assert zero.undefined == ["a.weight"] and not zero.shareable(-1, 1e9)
    both_zero = BlockRecord.from_records(0, [_rec("a.weight", "attn", None, None, identical=True)])
    assert both_zero.undefined == []  # identical zero tensors: nothing undefined about sharing them


def _write(d, tensors, cfg=None):
    import json
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg or {"model_type": "llama", "num_hidden_layers": 2}))
    return d


def _two_block_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(10, 4, generator=g), "model.norm.weight": torch.ones(4),
          "lm_head.weight": torch.randn(10, 4, generator=g)}
    for i in range(2):
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g)
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(6, 4, generator=g)
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(4)
    return sd


def test_scan_known_pair_and_dedup(tmp_path):
    base = _two_block_state()
    var = {k: v.clone() for k, v in base.items()}
    var["model.layers.1.self_attn.q_proj.weight"] = 2 * base["model.layers.1.self_attn.q_proj.weight"]
    var["lm_head.weight"] = base["model.embed_tokens.weight"].clone()  # dedups against another name
    r = scan(_write(tmp_path / "b", base), _write(tmp_path / "v", var))
    assert r.n_tensors == 9 and len(r.blocks) == 2
    assert r.n_identical == 7  # all but block 1 q_proj and lm_head
    assert r.blocks[0].cos == pytest.approx(1.0) and r.blocks[0].frob == 0.0
    assert r.blocks[1].frob == pytest.approx(1 / 3)  # q_proj ratio 1, the others 0
    assert r.blocks[1].cos == pytest.approx(1.0)
    assert r.dedup_bytes == r.variant_bytes - 4 * 4 * 4  # everything but the doubled q_proj
    gap = granularity.granularity_gap(r, 0.999, 0.05)
    assert gap["n_shareable"] == 1 and "7 of 9 tensors are byte-identical" in gap["sentence"]


def test_scan_flags_nan_and_zero_norm(tmp_path):
    base = _two_block_state()
    var = {k: v.clone() for k, v in base.items()}
    var["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    base["model.layers.1.input_layernorm.weight"] = torch.zeros(4)
    var["model.layers.1.input_layernorm.weight"] = torch.full((4,), 0.5)
    r = scan(_write(tmp_path / "b", base), _write(tmp_path / "v", var))
    assert r.nonfinite_tensors == ["model.layers.0.mlp.up_proj.weight"]
    assert r.undefined_tensors == ["model.layers.1.input_layernorm.weight"]
    assert r.blocks[0].nonfinite == ["mlp.up_proj.weight"] and r.blocks[1].undefined == ["input_layernorm.weight"]
    assert math.isfinite(r.mean_cos) and math.isfinite(r.mean_frob)  # not a silent NaN mean
    assert r.share_mask(-1.0, 1e9) == [False, False]
    assert "non-finite" in r.tensors[[t.name for t in r.tensors].index("model.layers.0.mlp.up_proj.weight")].note


def test_scan_result_round_trips_through_dict(tmp_path):
    base = _two_block_state()
    r = scan(_write(tmp_path / "b", base), _write(tmp_path / "v", _two_block_state(1)))
    r2 = records.ScanResult.from_dict(r.to_dict())
    assert r2.blocks == r.blocks and r2.tensors == r.tensors and r2.mean_cos == r.mean_cos
