"""Unit tier: the fused scan kernel (numba) against float64, every stored dtype, and the candidate-only identity.

Tolerance: the kernel sums blocks of 1024 elements in float32 and everything above in float64 (see
`linker_nb.analyses.kernel`); against a float64 reference its sums agree to 1e-6 relative (measured: ~1e-8 on
random normal data). Runs in ~15 s on 2 cores once the kernels are cached (first compile ~10 s more).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from linker_nb.analyses import kernel
from linker_nb.analyses.kernel import cosine, rel_frob, shadow_sigma, tensor_stats
from linker_nb.analyses.scan import scan
from linker_nb.io.references import open_checkpoint
from linker_nb.io.stream import digest

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
SIZES = [1, 7, 1023, 1025, 65_537, 200_003]  # odd, around the block (1024) and chunk (65536) sizes


def reference(a: torch.Tensor, b: torch.Tensor) -> dict:
    x, y = a.double().reshape(-1), b.double().reshape(-1)
    d = x - y
    return {"na2": float(x @ x), "nb2": float(y @ y), "d2": float(d @ d), "l1a": float(x.abs().sum()),
            "l1b": float(y.abs().sum()), "l1d": float(d.abs().sum())}


def pair(n: int, dtype, seed: int = 0, eps: float = 0.01):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    return a.to(dtype), (a + eps * torch.randn(n, generator=g)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_sums_match_float64(dtype, n):
    a, b = pair(n, dtype, seed=n)
    for chunk in (kernel.CHUNK_ELEMS, 1000):  # 1000: chunks not a multiple of the block, last chunk partial
        s, ref = tensor_stats(a, b, chunk=chunk), reference(a, b)
        for k, v in ref.items():
            assert s[k] == pytest.approx(v, rel=1e-6, abs=1e-30), (k, dtype, n, chunk)
        assert s["nonfinite"] == 0
        assert s["converted_from"] == (None if dtype != torch.float64 else "float64")


def test_large_tensor_and_small_epsilon():
    """A 3M-element bf16 pair at eps ~ 1e-3: the difference sums keep 1e-6 relative too (d = x - y is computed
    from the exact float32 values of both sides)."""
    a, b = pair(3_000_001, torch.bfloat16, seed=3, eps=1e-3)
    s, ref = tensor_stats(a, b), reference(a, b)
    for k, v in ref.items():
        assert s[k] == pytest.approx(v, rel=1e-6), k
    x, y = a.double(), b.double()
    assert 1 - cosine(s) == pytest.approx(1 - float(x @ y / (x.norm() * y.norm())), rel=1e-4)


def test_results_do_not_depend_on_threads():
    import numba
    a, b = pair(1_000_003, torch.bfloat16, seed=5)
    runs = [tensor_stats(a, b, chunk=4099, threads=t) for t in (1, 2, 3, numba.config.NUMBA_NUM_THREADS)]
    assert all(r == runs[0] for r in runs[1:])  # bit for bit
    before = numba.get_num_threads()
    tensor_stats(a, b, threads=1)
    assert numba.get_num_threads() == before


def test_every_f16_bit_pattern_converts_exactly():
    """All 65536 f16 patterns: finite ones sum to the float64 sums, subnormals exactly, Inf/NaN are counted."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    h = torch.from_numpy(bits.view(np.float16).copy())
    finite = h[torch.isfinite(h)]
    s = tensor_stats(finite, torch.zeros_like(finite))
    r = finite.double()
    assert s["na2"] == pytest.approx(float(r @ r), rel=1e-6)
    assert s["l1a"] == pytest.approx(float(r.abs().sum()), rel=1e-6)
    sub = h[(bits & 0x7C00) == 0]  # zero and subnormals (both signs): sums exactly representable
    s = tensor_stats(sub, torch.zeros_like(sub))
    assert s["l1a"] == float(sub.double().abs().sum()) and s["d2"] == float((sub.double() ** 2).sum())
    s = tensor_stats(h, torch.zeros_like(h))
    assert s["nonfinite"] == int((~torch.isfinite(h)).sum()) == 2 * 1024  # 2 x (Inf + 1023 NaN)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_nonfinite_and_zero_norm(dtype):
    a, b = pair(5000, dtype)
    a[17], b[4000] = float("nan"), float("inf")
    s = tensor_stats(a, b)
    assert s["nonfinite"] == 2 and cosine(s) is None and rel_frob(s) is None and shadow_sigma(s) is None
    z = torch.zeros(3001, dtype=dtype)
    s = tensor_stats(z, b[:3001])
    assert s["na2"] == 0 and s["nonfinite"] == 0 and cosine(s) is None and rel_frob(s) is None
    assert shadow_sigma(s) == pytest.approx(1.0)
    s = tensor_stats(z, z)
    assert s["d2"] == 0 and shadow_sigma(s) is None


def test_mixed_dtypes_and_bad_input():
    a, b = pair(999, torch.float32)
    s = tensor_stats(a.to(torch.bfloat16), b)
    ref = reference(a.to(torch.bfloat16), b)
    assert s["d2"] == pytest.approx(ref["d2"], rel=1e-6) and s["mixed"] and s["converted_from"] is None
    with pytest.raises(ValueError, match="numel differs: 999 vs 998"):
        tensor_stats(a, b[:998])
    with pytest.raises(ValueError, match="chunk must be a positive"):
        tensor_stats(a, b, chunk=0)
    s = tensor_stats(a[:0], b[:0])
    assert s["na2"] == 0 and s["nonfinite"] == 0


def test_noncontiguous_part_is_summed_as_its_values():
    a, b = pair(64 * 96, torch.bfloat16)
    a, b = a.view(64, 96)[:, 32:64], b.view(64, 96)[:, 32:64]  # a column part of a fused tensor
    s, ref = tensor_stats(a, b), reference(a, b)
    assert s["l1d"] == pytest.approx(ref["l1d"], rel=1e-6)


def test_compile_is_cached():
    """After the first call in this process the kernels are compiled: compile_kernels is fast."""
    kernel.compile_kernels()
    assert kernel.compile_kernels() < 1.0


# -- identity by hashing only the candidates --------------------------------------------------------------
def _write(d, tensors):
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, '
                                   '"num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 16}')
    return d


def test_identity_and_dedup_equal_hashing_everything(tmp_path):
    """Unchanged tensors, a variant tensor equal to a *different* base tensor (dedup across names), a tensor whose
    sums equal but bytes differ (-0.0 vs +0.0), a NaN tensor stored identically: identity count and dedup bytes
    equal what hashing every tensor gives, and only candidates are hashed."""
    g = torch.Generator().manual_seed(0)
    names = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.0.{m}.weight" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                               "mlp.down_proj", "input_layernorm", "post_attention_layernorm")]
    shapes = {"model.embed_tokens.weight": (32, 8), "model.norm.weight": (8,), "mlp.gate_proj": (16, 8),
              "mlp.up_proj": (16, 8), "mlp.down_proj": (8, 16), "layernorm": (8,)}

    def shape(n):
        return next((v for k, v in shapes.items() if k in n), (8, 8))
    base = {n: torch.randn(shape(n), generator=g).to(torch.bfloat16) for n in names}
    var = {n: (t.float() + 0.01 * torch.randn(t.shape, generator=g)).to(torch.bfloat16) for n, t in base.items()}
    var["model.norm.weight"] = base["model.norm.weight"].clone()                                   # identical
    var["model.layers.0.self_attn.k_proj.weight"] = base["model.layers.0.self_attn.q_proj.weight"].clone()  # dedup
    z = torch.zeros(8, 8, dtype=torch.bfloat16)
    v_name = "model.layers.0.self_attn.v_proj.weight"
    base[v_name], var[v_name] = z, -z  # equal values and sums, different bytes
    nan = base["model.layers.0.self_attn.o_proj.weight"].clone()
    nan[0, 0] = float("nan")
    base["model.layers.0.self_attn.o_proj.weight"], var["model.layers.0.self_attn.o_proj.weight"] = nan, nan.clone()
    b_dir, v_dir = _write(tmp_path / "b", base), _write(tmp_path / "v", var)

    r = scan(b_dir, v_dir)
    bk, vk = open_checkpoint(b_dir), open_checkpoint(v_dir)
    hb = {n: digest(bk.get(n)) for n in bk.names}
    hv = {n: digest(vk.get(n)) for n in vk.names}
    want_identical = {n for n in names if hb[n] == hv[n]}
    assert want_identical == {"model.norm.weight", "model.layers.0.self_attn.o_proj.weight"}
    assert {t.name for t in r.tensors if t.identical} == want_identical and r.n_identical == 2
    want_dedup = sum(vk.info(n).nbytes for n in names if hv[n] in set(hb.values()))
    assert r.dedup_bytes == want_dedup == 16 + 128 + 128  # norm, k_proj (= base q_proj), o_proj
    v = next(t for t in r.tensors if t.name.endswith("v_proj.weight"))
    assert not v.identical and v.base_hash and v.var_hash  # a candidate (equal sums), told apart by its hash
    hashed = {t.name for t in r.tensors if t.base_hash or t.var_hash}
    assert len(hashed) < len(names) and "model.layers.0.mlp.up_proj.weight" not in hashed
    r2 = scan(b_dir, v_dir, hash_tensors=False)
    assert r2.dedup_bytes == 0  # without hashes: "identical" means equal values, as before (+0.0 == -0.0)
    assert {t.name for t in r2.tensors if t.identical} == {"model.norm.weight", v_name}
    assert [t.cos for t in r2.tensors] == [t.cos for t in r.tensors]
    assert math.isnan(next(t for t in r.tensors if t.name.endswith("o_proj.weight")).base_norm)


# -- the CUDA path -----------------------------------------------------------------------------------------
def test_block_sums_match_float64():
    """The GPU path's arithmetic, run on the CPU (device-agnostic): float32 blocks of 1024, float64 above."""
    from linker_nb.analyses.kernel_cuda import block_sums
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        a, b = pair(70_001, dtype, seed=7)
        got, ref = block_sums(a, b).tolist(), reference(a, b)
        assert got == pytest.approx([ref[k] for k in kernel._SUMS], rel=1e-6)


def test_unknown_device_is_a_clear_error():
    a, b = pair(10, torch.float32)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tensor_stats(a, b, device="tpu")
    if not torch.cuda.is_available():
        assert tensor_stats(a, b, device="auto") == tensor_stats(a, b)  # auto without a GPU: the CPU kernel
        with pytest.raises(RuntimeError, match="no CUDA device"):
            tensor_stats(a, b, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype):
    """Streamed through pinned buffers in pieces smaller than the tensor (the copy/compute overlap path), from a
    CPU tensor and from a GPU tensor: the same sums as the CPU kernel to 1e-6."""
    from linker_nb.analyses.kernel_cuda import tensor_stats_cuda
    a, b = pair(3_000_017, dtype, seed=11)
    a[5] = float("nan")
    cpu = tensor_stats(a, b)
    for got in (tensor_stats_cuda(a, b, piece=1 << 20), tensor_stats(a.cuda(), b.cuda(), device="cuda")):
        assert got["nonfinite"] == cpu["nonfinite"] == 1
    a[5] = 0.0
    cpu = tensor_stats(a, b)
    for got in (tensor_stats_cuda(a, b, piece=1 << 20), tensor_stats(a, b, device="auto")):
        for k in kernel._SUMS:
            assert got[k] == pytest.approx(cpu[k], rel=1e-6), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scan_matches_cpu_scan():
    import linker_nb
    from pathlib import Path
    tiny = Path(linker_nb.__file__).parent / "tiny_family"
    c, g = scan(tiny / "base", tiny / "chat"), scan(tiny / "base", tiny / "chat", device="auto")
    assert [t.name for t in c.tensors] == [t.name for t in g.tensors]
    for x, y in zip(c.tensors, g.tensors):
        assert y.frob == pytest.approx(x.frob, rel=1e-5) and y.identical == x.identical
