"""The scan's read path: map a stored tensor's pages in one call, hash its bytes, read one pair ahead.

Nothing here computes a metric; `analyses.scan` calls `read_pair` in a prefetch thread.
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np
import torch
import xxhash

from .checkpoint import Checkpoint

__all__ = ["digest", "populate", "read_pair"]


def digest(t: torch.Tensor | np.ndarray) -> str:
    """128-bit content hash of the stored bytes (a tensor, or a numpy view of a file's bytes). xxh3 runs at
    tens of GB/s (blake2b at ~1 GB/s was the scan's bottleneck); it identifies byte-identical tensors, it is
    not meant to resist forgery."""
    if isinstance(t, np.ndarray):
        raw = np.ascontiguousarray(t).reshape(-1).view(np.uint8)
    else:
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
    return xxhash.xxh3_128_hexdigest(memoryview(raw))


_MADV_POPULATE_READ = 22  # Linux >= 5.14
try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _libc = None


def populate(t: torch.Tensor) -> None:
    """Map a memory-mapped tensor's pages in one call instead of one page fault per 4 KiB on first touch.

    safetensors hands out tensors backed by the file's mmap; touching 1 GB of them page by page costs ~1 s of
    minor faults, MADV_POPULATE_READ ~0.1 s. Page-cache pages are file-backed: no anonymous memory is added.
    A no-op where unsupported (other OSes, older kernels).
    """
    n = t.numel() * t.element_size()
    if _libc is None or n == 0:
        return
    start = t.data_ptr() & ~4095
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(t.data_ptr() + n - start), _MADV_POPULATE_READ)


def read_pair(b_ck: Checkpoint, v_ck: Checkpoint, nb: str, nv: str, hash_tensors: bool):
    """Prefetch step of `scan` (runs one tensor ahead, in a thread): read, map and hash one pair.

    The hash covers what each checkpoint stores (`Checkpoint.stored`): for a quantized GGUF tensor the quantized
    blocks, not the float32 values `get` dequantized them to."""
    a, b = b_ck.get(nb), v_ck.get(nv)
    populate(a)
    populate(b)
    if not hash_tensors:
        return a, b, (None, None)
    return a, b, (digest(b_ck.stored(nb, a)), digest(v_ck.stored(nv, b)))

