"""The scan's six sums on a CUDA GPU, streamed from pinned host buffers (`kernel.tensor_stats(device="auto")`).

A CPU tensor (usually a memory-mapped checkpoint tensor) is cut into pieces of `PIECE_ELEMS` elements. Two pinned
host buffers per operand alternate: while the GPU sums piece k (on the current stream), the CPU copies piece k+1
into the other pinned buffer and a second stream copies it to the device, so the host copy, the host-to-device
copy and the arithmetic overlap. Each piece is summed like the CPU kernel: float32 sums over blocks of 1024
elements, added in float64, in a fixed order (torch's CUDA reductions do not use atomics for these shapes), so
the result does not depend on timing; it agrees with the CPU kernel to float32 round-off of the block sums
(`tests/test_kernel.py::test_cuda_matches_cpu`, marked `gpu`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["PIECE_ELEMS", "cuda_available", "tensor_stats_cuda", "block_sums"]

PIECE_ELEMS = 1 << 24  # 16M elements per transfer: 32 MiB of bf16 per operand per pinned buffer
_BLOCK = 1024
_SUMS = ("na2", "nb2", "d2", "l1a", "l1b", "l1d")
_state: dict = {}  # (dtype, device index) -> pinned buffers, copy stream and events, reused across calls


def cuda_available() -> bool:
    return torch.cuda.is_available()


def block_sums(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The six sums of one piece, [6] float64 on x's device: float32 sums over blocks of 1024 elements (zero-
    padded), then float64. Device-agnostic (unit-tested on the CPU against float64)."""
    xf, yf = x.float(), y.float()
    d = xf - yf
    terms = torch.stack([xf * xf, yf * yf, d * d, xf.abs(), yf.abs(), d.abs()])
    pad = (-terms.shape[1]) % _BLOCK
    if pad:
        terms = F.pad(terms, (0, pad))
    return terms.view(6, -1, _BLOCK).sum(-1).double().sum(-1)


def _buffers(dtype: torch.dtype, device: torch.device, piece: int):
    key = (dtype, device.index, piece)
    st = _state.get(key)
    if st is None:
        host = [[torch.empty(piece, dtype=dtype, pin_memory=True) for _ in range(2)] for _ in range(2)]
        st = _state[key] = {"host": host, "stream": torch.cuda.Stream(device),
                            "done": [torch.cuda.Event(), torch.cuda.Event()]}
        for e in st["done"]:
            e.record(torch.cuda.current_stream(device))
    return st


def tensor_stats_cuda(a: torch.Tensor, b: torch.Tensor, chunk: int = 0, piece: int = PIECE_ELEMS,
                      device: str | torch.device = "cuda") -> dict:
    """`kernel.tensor_stats` on the GPU: same keys, same meaning.

    Args:
        a, b: same-numel tensors on the CPU (streamed through pinned buffers) or already on the GPU.
        chunk: accepted for the CPU kernel's signature; the GPU sums in fixed blocks of 1024 elements.
        piece: elements per host-to-device transfer.
        device: the CUDA device.

    Raises:
        RuntimeError: torch sees no CUDA device.
        ValueError: different element counts.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("tensor_stats on 'cuda' but torch sees no CUDA device; use device='auto' or 'cpu'")
    if a.numel() != b.numel():
        raise ValueError(f"numel differs: {a.numel()} vs {b.numel()} (shapes {tuple(a.shape)}, {tuple(b.shape)})")
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    a, b = a.detach().reshape(-1), b.detach().reshape(-1)
    mixed = a.dtype != b.dtype
    converted = sorted({str(t.dtype).removeprefix("torch.") for t in (a, b)
                        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16)})
    if mixed or converted:
        a, b = a.float(), b.float()
    n = a.numel()
    acc = torch.zeros(6, dtype=torch.float64, device=dev)
    if a.is_cuda and b.is_cuda:
        acc += block_sums(a.to(dev), b.to(dev))
    elif n:
        st = _buffers(a.dtype, dev, piece)
        compute = torch.cuda.current_stream(dev)
        for k, s in enumerate(range(0, n, piece)):
            slot, m = k % 2, min(piece, n - s)
            st["done"][slot].synchronize()  # this slot's previous transfer has left the host buffer
            ha, hb = st["host"][slot][0][:m], st["host"][slot][1][:m]
            ha.copy_(a[s:s + m])
            hb.copy_(b[s:s + m])
            with torch.cuda.stream(st["stream"]):
                da, db = ha.to(dev, non_blocking=True), hb.to(dev, non_blocking=True)
                st["done"][slot].record(st["stream"])
            compute.wait_event(st["done"][slot])
            da.record_stream(compute)
            db.record_stream(compute)
            acc += block_sums(da, db)
    sums = acc.tolist()
    res: dict = dict(zip(_SUMS, sums))
    res["nonfinite"] = 0
    if not all(math.isfinite(v) for v in sums):
        res["nonfinite"] = int((~torch.isfinite(a.float())).sum() + (~torch.isfinite(b.float())).sum())
    res["converted_from"] = ", ".join(converted) if converted else None
    res["mixed"] = mixed
    return res
