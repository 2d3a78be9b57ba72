"""The scan's arithmetic: float64 sums over two same-shape tensors, read in float32 chunks.

Per tensor pair (a, b) six sums: sum a^2, sum b^2, sum (a-b)^2 and the L1 sums of Shadow-FT's
sigma = sum|a - b| / (sum|a| + sum|b|). From them: cosine, relative Frobenius ratio, sigma.

Cosine is computed from the difference, cos = 1 - (||d||^2 - (||a|| - ||b||)^2) / (2 ||a|| ||b||), so that
1 - cos keeps its digits when the two tensors agree to 1e-5; a plain dot product in float32 would not.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["CHUNK_ELEMS", "tensor_stats", "cosine", "rel_frob", "shadow_sigma"]

CHUNK_ELEMS = 1 << 18  # 256K elements = 1 MiB of float32 per operand: stays in cache, bounds memory
_local = threading.local()  # per-thread chunk buffers, by chunk size


def _chunk_sums(a: torch.Tensor, b: torch.Tensor, start: int, k: int, chunk: int) -> list[float]:
    """The six float32 partial sums of a[start:start+k], b[start:start+k], in a reused per-thread buffer.

    One [3, chunk] buffer holds x, y and d = x - y, so the L1 sums are one abs_ and one row-sum over it: 9 passes
    over cache-resident data, no allocation per chunk. Every thread's buffer has the same shape, so the float32
    partials (whose last bits depend on alignment in the vectorised kernels) are the same in any thread.
    """
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(chunk)
    if buf is None:
        if len(bufs) > 64:  # many distinct small-tensor sizes: start over
            bufs.clear()
        buf = bufs[chunk] = torch.empty(3, chunk)
    v = buf[:, :k]
    x, y, d = v
    x.copy_(a[start:start + k])
    y.copy_(b[start:start + k])
    torch.sub(x, y, out=d)
    sq = (torch.dot(x, x).item(), torch.dot(y, y).item(), torch.dot(d, d).item())
    l1 = v.abs_().sum(1).tolist()
    return [*sq, *l1]


def tensor_stats(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK_ELEMS,
                 pool: ThreadPoolExecutor | None = None) -> dict[str, float]:
    """Float64 sums over two same-shape tensors, read in float32 chunks.

    Args:
        a, b: tensors of any float dtype and equal numel (e.g. [d_out, d_in]).
        chunk: elements per chunk; bounds the float32 working memory to 3 * chunk * 4 bytes per thread.
        pool: threads to spread the chunks over (`scan` passes its own); the per-chunk float32 partials are
            added in chunk order in float64, so the result does not depend on the number of threads.

    Returns:
        dict with na2 = sum a^2, nb2 = sum b^2, d2 = sum (a-b)^2, l1a = sum|a|, l1b = sum|b|, l1d = sum|a-b|,
        nonfinite (count of non-finite entries in a or b; 0 when all are finite).
    """
    a, b = a.reshape(-1), b.reshape(-1)
    if a.numel() != b.numel():
        raise ValueError(f"numel differs: {a.numel()} vs {b.numel()}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of elements, got {chunk}")
    n = a.numel()
    chunk = min(chunk, max(n, 1))  # small tensors: no oversized buffer
    starts = range(0, n, chunk)
    if pool is not None and len(starts) > 1:
        parts = pool.map(lambda s: _chunk_sums(a, b, s, min(chunk, n - s), chunk), starts)
    else:
        parts = (_chunk_sums(a, b, s, min(chunk, n - s), chunk) for s in starts)
    acc = [0.0] * 6
    for p in parts:  # chunk order: deterministic
        for j in range(6):
            acc[j] += p[j]
    out = dict(zip(("na2", "nb2", "d2", "l1a", "l1b", "l1d"), acc))
    nonfinite = 0
    if not all(math.isfinite(v) for v in acc):  # NaN/Inf propagate into the sums; confirm and count
        nonfinite = int((~torch.isfinite(a.float())).sum() + (~torch.isfinite(b.float())).sum())
    out["nonfinite"] = nonfinite
    return out


def cosine(s: dict[str, float]) -> float | None:
    """Cosine from `tensor_stats` sums; None when either tensor has zero norm or non-finite values."""
    if s["nonfinite"] or s["na2"] == 0 or s["nb2"] == 0:
        return None
    na, nb = math.sqrt(s["na2"]), math.sqrt(s["nb2"])
    return 1.0 - (s["d2"] - (na - nb) ** 2) / (2 * na * nb)


def rel_frob(s: dict[str, float]) -> float | None:
    """||a - b||_F / ||a||_F; None when the base tensor has zero norm or non-finite values."""
    if s["nonfinite"] or s["na2"] == 0:
        return None
    return math.sqrt(s["d2"] / s["na2"])


def shadow_sigma(s: dict[str, float]) -> float | None:
    """Shadow-FT sigma = sum|a-b| / (sum|a| + sum|b|)."""
    den = s["l1a"] + s["l1b"]
    return None if s["nonfinite"] or den == 0 else s["l1d"] / den
