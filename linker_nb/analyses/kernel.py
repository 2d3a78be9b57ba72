"""The scan's arithmetic: six sums over two same-shape tensors in one fused pass over the stored bits.

Per tensor pair (a, b) six sums: sum a^2, sum b^2, sum (a-b)^2 and the L1 sums of Shadow-FT's
sigma = sum|a - b| / (sum|a| + sum|b|). From them: cosine, relative Frobenius ratio, sigma.

Cosine is computed from the difference, cos = 1 - (||d||^2 - (||a|| - ||b||)^2) / (2 ||a|| ||b||), so that
1 - cos keeps its digits when the two tensors agree to 1e-5; a plain dot product in float32 would not.

The kernel (numba, `parallel=True`) reads each stored element once: bf16 as uint16 shifted into float32 bits, f16
as uint16 widened to float32 bits (exact, subnormals, Inf and NaN included), f32 as is; other dtypes are converted
to float32 first (`stats["converted_from"]` says so). `prange` runs over chunks of `chunk` elements; inside a
chunk, blocks of `_BLOCK` elements are summed in float32 (vectorised: reassociation is allowed, NaN/Inf semantics
are kept, no `nnan`/`ninf` fast-math) and each block's sums are added into the chunk's float64 partials. The chunk
partials are added in chunk order in float64, so results do not depend on the number of threads.

Accumulation error: a float32 block sum over `_BLOCK` = 1024 elements (8-16 vector lanes of 64-128 terms each)
has a relative error of a few 1e-7 (bounded by ~128 * 2^-24 = 8e-6 in the worst case); everything above a block is
float64. `tests/test_kernel.py` checks every dtype against float64 to 1e-6 relative.

Compilation: the kernels are compiled on first use (~5-10 s) and cached on disk (`cache=True`, ~1 s to load in a
new process). numba writes its cache beside this file; where the package directory is not writable (a system or
read-only install) the cache goes to a user cache directory instead, see `_cache_dir`.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
import torch

__all__ = ["CHUNK_ELEMS", "tensor_stats", "stored_bits", "cosine", "rel_frob", "shadow_sigma", "compile_kernels"]

CHUNK_ELEMS = 1 << 16  # elements per parallel task: 128 KiB of bf16 per operand, many tasks per large tensor
_BLOCK = 1024           # elements per float32 block sum (see the module docstring's error bound)
_SUMS = ("na2", "nb2", "d2", "l1a", "l1b", "l1d")


def _cache_dir() -> None:
    """numba caches compiled kernels in `__pycache__` beside this file; where that is not writable (read-only
    install), point NUMBA_CACHE_DIR at a user cache directory before numba is imported, so that `cache=True`
    still caches across processes instead of recompiling (~5-10 s) in every one."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).resolve().parent
    pyc = here / "__pycache__"
    if os.access(pyc if pyc.exists() else here, os.W_OK):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ["NUMBA_CACHE_DIR"] = str(base / "linker_nb" / "numba")


_cache_dir()
import numba  # noqa: E402  (after NUMBA_CACHE_DIR is settled)
from numba import njit, prange  # noqa: E402

# numba's own work queue, not OpenMP, unless the user chose a layer: on the shared 2-core machine (load ~10) the
# OpenMP layer ran the kernel at 0.2-0.9 GB/s (its threads spin beside torch's OpenMP team), the work queue at
# 1.3-1.7 GB/s on the same mapped checkpoint, back to back. The work queue must not be entered from two threads
# at once: `tensor_stats` serialises its calls (`_lock`).
if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER = "workqueue"

_FAST = {"reassoc", "contract"}  # vectorised reductions; NaN and Inf still propagate (no nnan / ninf)


@njit(cache=True)
def _f32(bits):
    """float32 value of uint32 bits."""
    return np.uint32(bits).view(np.float32)


@njit(cache=True)
def _load(x, k, kind):
    """Element k of a stored array as float32: kind 0 = float32, 1 = bf16 bits (uint16), 2 = f16 bits (uint16)."""
    if kind == 0:
        return x[k]
    h = np.uint32(x[k])
    if kind == 1:
        return _f32(h << np.uint32(16))
    # f16 -> f32 exactly: exponent and mantissa moved up 13 bits, then scaled by 2^112 (re-bias 15 -> 127;
    # a float multiply also renormalises subnormals); exponent 31 (Inf/NaN) gets the all-ones f32 exponent.
    v = _f32((h & np.uint32(0x7FFF)) << np.uint32(13)) * np.float32(5.192296858534828e33)  # 2^112
    if v >= np.float32(65536.0):
        v = _f32(np.float32(v).view(np.uint32) | np.uint32(0x7F800000))
    return _f32(np.float32(v).view(np.uint32) | ((h & np.uint32(0x8000)) << np.uint32(16)))


@njit(fastmath=_FAST, cache=True)
def _chunk(a, b, kind, lo, hi, out, c):
    """out[c, :] = the six sums over a[lo:hi], b[lo:hi] in float64, from float32 sums over blocks of `_BLOCK`."""
    p0 = p1 = p2 = p3 = p4 = p5 = 0.0
    for s in range(lo, hi, _BLOCK):
        e = min(s + _BLOCK, hi)
        s0 = s1 = s2 = s3 = s4 = s5 = np.float32(0.0)
        for k in range(s, e):
            x = _load(a, k, kind)
            y = _load(b, k, kind)
            d = x - y
            s0 += x * x
            s1 += y * y
            s2 += d * d
            s3 += abs(x)
            s4 += abs(y)
            s5 += abs(d)
        p0 += s0
        p1 += s1
        p2 += s2
        p3 += s3
        p4 += s4
        p5 += s5
    out[c, 0] = p0
    out[c, 1] = p1
    out[c, 2] = p2
    out[c, 3] = p3
    out[c, 4] = p4
    out[c, 5] = p5


# One kernel per stored dtype, so that the dtype branch in `_load` is a constant the compiler removes.
@njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)
def _sums_f32(a, b, chunk, out):
    for c in prange(out.shape[0]):
        _chunk(a, b, 0, c * chunk, min(c * chunk + chunk, a.size), out, c)


@njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)
def _sums_bf16(a, b, chunk, out):
    for c in prange(out.shape[0]):
        _chunk(a, b, 1, c * chunk, min(c * chunk + chunk, a.size), out, c)


@njit(parallel=True, fastmath=_FAST, cache=True, nogil=True)
def _sums_f16(a, b, chunk, out):
    for c in prange(out.shape[0]):
        _chunk(a, b, 2, c * chunk, min(c * chunk + chunk, a.size), out, c)


_KERNELS = (_sums_f32, _sums_bf16, _sums_f16)


_KIND = {torch.float32: (0, torch.float32), torch.bfloat16: (1, torch.int16), torch.float16: (2, torch.int16)}
_lock = threading.Lock()  # numba's default (workqueue) threading layer must not be entered from two threads at once


def stored_bits(t: torch.Tensor) -> tuple[np.ndarray, int, str | None]:
    """A flat numpy view of a tensor's stored bits for the kernel: (array, kind, converted_from).

    bf16 and f16 are viewed as uint16 (no copy), f32 as float32; any other dtype (float64, float8, integer) is
    converted to a float32 copy and `converted_from` names the dtype it came from. Non-contiguous tensors (a part
    of a fused tensor) are made contiguous first (a copy of that part only).
    """
    t = t.detach().reshape(-1)
    if t.device.type != "cpu":
        raise ValueError(f"the CPU kernel needs CPU tensors, got one on {t.device}; use device='auto' in "
                         f"`tensor_stats` or move it with .cpu()")
    spec = _KIND.get(t.dtype)
    converted = None
    if spec is None:
        converted = str(t.dtype).removeprefix("torch.")
        t, spec = t.to(torch.float32), _KIND[torch.float32]
    kind, view = spec
    arr = t.contiguous().view(view).numpy()
    return (arr.view(np.uint16) if kind else arr), kind, converted


def compile_kernels() -> float:
    """Compile (or load from the on-disk cache) every dtype's kernel now; return the seconds it took."""
    import time
    t0 = time.perf_counter()
    for dtype in _KIND:
        x = torch.zeros(3, dtype=dtype)
        tensor_stats(x, x)
    return time.perf_counter() - t0


def tensor_stats(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK_ELEMS, threads: int | None = None,
                 device: str = "cpu") -> dict:
    """Float64 sums over two same-shape tensors, one fused pass over their stored bits.

    Args:
        a, b: tensors of any float dtype and equal numel (e.g. [d_out, d_in]); bf16 / f16 / f32 are read as
            stored, others converted to float32 (`converted_from`).
        chunk: elements per parallel task; the chunk partials are added in chunk order, so the result does not
            depend on `threads` (it may depend on `chunk` in the last bits).
        threads: numba threads for this call (default: numba's current setting).
        device: "cpu"; "cuda" / "cuda:N" for the GPU path (`kernel_cuda.tensor_stats_cuda`: same sums, streamed
            from pinned host buffers); "auto": the GPU when torch sees one, else the CPU.

    Returns:
        dict with na2 = sum a^2, nb2 = sum b^2, d2 = sum (a-b)^2, l1a = sum|a|, l1b = sum|b|, l1d = sum|a-b|,
        nonfinite (count of non-finite entries in a or b; 0 when all are finite), converted_from (None, or the
        dtype(s) other than bf16 / f16 / f32 converted to float32), mixed (a and b had different dtypes and
        were both widened to float32: exact, but not the kernel a same-dtype pair runs).

    Raises:
        ValueError: different element counts, chunk < 1, or an unknown device.
    """
    if a.numel() != b.numel():
        raise ValueError(f"numel differs: {a.numel()} vs {b.numel()} (shapes {tuple(a.shape)}, {tuple(b.shape)})")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of elements, got {chunk}")
    if device != "cpu":
        from .kernel_cuda import cuda_available, tensor_stats_cuda
        if str(device).startswith("cuda"):
            return tensor_stats_cuda(a, b, chunk, device=device)
        if device != "auto":
            raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' (or 'cuda:N') or 'auto'")
        if cuda_available():
            return tensor_stats_cuda(a, b, chunk)
    (x, kx, cx), (y, ky, cy) = stored_bits(a), stored_bits(b)
    mixed = kx != ky
    if mixed:  # two stored dtypes (e.g. bf16 against a dequantized f32): widen both to float32, exactly
        (x, kx, _), (y, ky, _) = stored_bits(a.float()), stored_bits(b.float())
    n = x.size
    out = np.zeros(((n + chunk - 1) // chunk, 6), dtype=np.float64)
    if n:
        with _lock:
            old = numba.get_num_threads()
            try:
                if threads:
                    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
                _KERNELS[kx](x, y, chunk, out)
            finally:
                numba.set_num_threads(old)
    acc = [0.0] * 6
    for row in out.tolist():  # chunk order, float64: deterministic
        for j in range(6):
            acc[j] += row[j]
    res: dict = dict(zip(_SUMS, acc))
    res["nonfinite"] = _nonfinite(a, b) if not all(math.isfinite(v) for v in acc) else 0
    conv = sorted({c for c in (cx, cy) if c})
    res["converted_from"] = ", ".join(conv) if conv else None
    res["mixed"] = mixed
    return res


def _nonfinite(a: torch.Tensor, b: torch.Tensor) -> int:
    """Count non-finite entries (only called when a sum came out non-finite: NaN/Inf, or an overflow)."""
    return int((~torch.isfinite(a.float())).sum() + (~torch.isfinite(b.float())).sum())


def cosine(s: dict) -> float | None:
    """Cosine from `tensor_stats` sums; None when either tensor has zero norm or non-finite values."""
    if s["nonfinite"] or s["na2"] == 0 or s["nb2"] == 0:
        return None
    na, nb = math.sqrt(s["na2"]), math.sqrt(s["nb2"])
    return 1.0 - (s["d2"] - (na - nb) ** 2) / (2 * na * nb)


def rel_frob(s: dict) -> float | None:
    """||a - b||_F / ||a||_F; None when the base tensor has zero norm or non-finite values."""
    if s["nonfinite"] or s["na2"] == 0:
        return None
    return math.sqrt(s["d2"] / s["na2"])


def shadow_sigma(s: dict) -> float | None:
    """Shadow-FT sigma = sum|a-b| / (sum|a| + sum|b|)."""
    den = s["l1a"] + s["l1b"]
    return None if s["nonfinite"] or den == 0 else s["l1d"] / den
