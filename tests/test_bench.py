"""Benchmark smoke tier: `make bench`'s code path on a 2-layer Qwen2 configuration, so it cannot rot.

Runs the measurement functions in-process (the real run isolates each in a fresh interpreter) on the
`tiny-qwen2` configuration of benchmarks/configs.py; asserts on structure and sanity, not on speed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import configs, run  # noqa: E402
from linker_nb.analyses import granularity, kernel, records  # noqa: E402,F401
from linker_nb.analyses.scan import scan  # noqa: E402
from linker_nb.io import pairing, stream  # noqa: E402,F401
from linker_nb.io.references import open_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return configs.write_pair("tiny-qwen2", tmp_path_factory.mktemp("bench"), log=lambda *a: None)


def test_real_configs_have_the_real_shapes():
    """Qwen2.5-0.5B: 494,032,768 parameters stored in 290 tensors (24 x 12 + embed + norm; tied lm_head not stored)."""
    specs = configs.tensor_specs(configs.qwen2_config("qwen2.5-0.5b"))
    assert len(specs) == 24 * 12 + 2
    assert sum(torch.Size(s).numel() for _, s in specs) == 494_032_768
    assert dict(specs)["model.embed_tokens.weight"] == (151936, 896)
    assert "lm_head.weight" not in dict(specs)
    specs = dict(configs.tensor_specs(configs.qwen2_config("qwen2.5-1.5b")))
    assert specs["model.layers.27.mlp.down_proj.weight"] == (1536, 8960)
    assert specs["model.layers.0.self_attn.k_proj.weight"] == (256, 1536)  # 2 KV heads x head_dim 128


def test_written_pair_is_a_valid_sharded_checkpoint(pair, tmp_path):
    base, var = pair
    b, v = open_checkpoint(base), open_checkpoint(var)
    assert b.format == "safetensors" and len(list(base.glob("*.safetensors"))) == 2
    assert (base / "model.safetensors.index.json").exists()
    assert b.names == v.names and all(b.info(n).dtype == "bfloat16" for n in b.names)
    # reused, not rewritten, when nothing changed
    mtime = (base / "model-00001-of-00002.safetensors").stat().st_mtime_ns
    configs.write_pair("tiny-qwen2", base.parents[1], log=lambda *a: None)
    assert (base / "model-00001-of-00002.safetensors").stat().st_mtime_ns == mtime
    # transformers loads it (the naive-load baseline of the loader benchmark)
    from linker_nb.io.models import load_model
    m = load_model(var, device="cpu", dtype="bfloat16")
    assert m.config.num_hidden_layers == 2


def test_unknown_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark configuration 'qwen9b'.*known"):
        configs.write_pair("qwen9b", tmp_path)
    with pytest.raises(SystemExit):
        run.main(["--configs", "qwen9b", "--scratch", str(tmp_path)])


def test_scan_measurement_path(pair):
    base, var = pair
    r = run.measure_pair(str(base), str(var), repeats=1)
    assert r["tensor_bytes"] == open_checkpoint(base).nbytes * 2
    assert r["file_bytes"] > r["tensor_bytes"]  # headers are read too
    assert set(r["gbps"]) == {"readinto", "read_stage", "arith_stage", "scan"} and all(x > 0 for x in r["gbps"].values())
    assert r["largest_tensor"]["name"] == "model.embed_tokens.weight"
    assert r["scan_peak_anon_bytes"] >= r["baseline_anon_bytes"] > 0
    # scan agrees with a plain full-tensor float64 computation
    assert r["scan_summary"]["n_blocks"] == 2
    assert 0.03 < r["scan_summary"]["mean_frob"] < 0.07  # written with scale 0.05


def test_scan_threads_do_not_change_results(pair):
    base, var = pair
    r1, r2 = scan(base, var, workers=1, chunk=97), scan(base, var, workers=2, chunk=97)
    assert [t.cos for t in r1.tensors] == [t.cos for t in r2.tensors]
    assert [t.base_hash for t in r1.tensors] == [t.base_hash for t in r2.tensors]
    b, v = open_checkpoint(base), open_checkpoint(var)
    x, y = b.get("model.embed_tokens.weight").double(), v.get("model.embed_tokens.weight").double()
    rec = next(t for t in r1.tensors if t.name == "model.embed_tokens.weight")
    assert rec.frob == pytest.approx(float((x - y).norm() / x.norm()), rel=1e-6)


@pytest.mark.timeout(120)  # ~8 s measured on the shared 2-core machine
def test_loader_measurement_path(pair, tmp_path):
    if not run.loader_available():
        pytest.skip("linker_nb.linker is not available")
    base, var = pair
    phases = {ph: run.measure_loader(ph, str(base), str(var), str(tmp_path / "plans"))
              for ph in ("cold", "cached", "naive", "cached_no_guard")}
    assert phases["cold"]["plan_status"] in ("scanned", "stale") and phases["cached"]["plan_status"] == "cached"
    from linker_nb.linker import alias
    assert alias._checksum((torch.ones(3))) != (0, 0)  # the diagnostic patch did not leak
    s = run.loader_summary(phases)
    assert s["all_blocks_shared"] and s["unique_bytes"] > 0
    results = {"configs": {"tiny-qwen2": run.measure_pair(str(base), str(var), 1) | {"loader": s}}}
    text = run.table(results)
    assert "tiny-qwen2" in text and "cached/naive" in text
    json.dumps(results)  # serialisable as results.json
