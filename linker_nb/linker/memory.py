"""What co-residence costs (bytes of distinct storages), and `Linker`: one donor with any number of recipients."""
from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..io.models import load_model, pick_device, pick_dtype
from .alias import check_integrity
from .loader import LoadReport, load_recipient
from .plans import DEFAULT_PLAN_CACHE, SharePlan, share_plan

__all__ = ["storage_bytes", "peak_rss_bytes", "Linker"]


def storage_bytes(*models: nn.Module) -> int:
    """Bytes of the distinct storages (by device and storage pointer) held by the parameters and buffers of
    `models` together: what co-residence costs, shared storage counted once."""
    seen: dict[tuple, int] = {}
    for m in models:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_meta:
                continue
            s = t.untyped_storage()
            seen[(t.device.type, t.device.index, s.data_ptr())] = s.nbytes()
    return sum(seen.values())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Linker:
    """One donor and any number of co-resident recipients whose shareable blocks alias the donor's.

    Args:
        base: donor checkpoint (loaded with `models.load_model`).
        tau_cos, tau_frob: eq. (3) thresholds for the share plans.
        device, dtype: as `models.pick_device` / `pick_dtype` ("auto": CUDA + bf16, else CPU + float32).
        plan_cache: share-plan directory (default `DEFAULT_PLAN_CACHE`).
    """

    def __init__(self, base, *, tau_cos: float, tau_frob: float, device: str = "auto", dtype: str = "auto",
                 plan_cache: str | os.PathLike | None = None):
        self.base = base
        self.tau_cos, self.tau_frob = tau_cos, tau_frob
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.plan_cache = Path(plan_cache).expanduser() if plan_cache else DEFAULT_PLAN_CACHE
        t0 = time.perf_counter()
        self.donor = load_model(base, device=str(self.device), dtype=self.dtype)
        self.donor.requires_grad_(False)  # the donor serves every recipient: never trained in place
        self.donor_load_s = time.perf_counter() - t0
        self.recipients: dict[str, nn.Module] = {}
        self.plans: dict[str, tuple[SharePlan, str]] = {}
        self.reports: dict[str, LoadReport] = {}

    def add(self, name: str, ref, *, shared: Sequence[int] | None = None, refresh_plan: bool = False) -> nn.Module:
        """Load recipient `ref` as `name`: its share plan (cached or scanned), then `load_recipient`.

        Args:
            shared: block indices to alias instead of the plan's (no scan; e.g. the tuner's sets).
        """
        if name in self.recipients:
            raise ValueError(f"a recipient named {name!r} is already loaded; remove() it or pick another name")
        rep = LoadReport()
        if shared is None:
            plan, status = share_plan(self.base, ref, self.tau_cos, self.tau_frob, cache_dir=self.plan_cache,
                                      refresh=refresh_plan)
            self.plans[name] = (plan, status)
            shared = plan.shared
        self.recipients[name] = load_recipient(ref, self.donor, shared, report=rep)
        self.reports[name] = rep
        return self.recipients[name]

    def remove(self, name: str) -> None:
        del self.recipients[name]
        self.reports.pop(name, None)
        self.plans.pop(name, None)

    def check_integrity(self, deep: bool = True) -> int:
        """`check_integrity` over every recipient; returns the number of shared tensors checked."""
        return sum(check_integrity(m, name=f"recipient {n!r}", deep=deep) for n, m in self.recipients.items())

    def memory(self) -> dict:
        """Bytes held now: `distinct` (shared storage once), `naive` (each model counted in full, as independent
        loads would hold), saving, peak RSS, and CUDA allocator stats on CUDA."""
        models = [self.donor, *self.recipients.values()]
        naive = sum(storage_bytes(m) for m in models)
        distinct = storage_bytes(*models)
        out = {"n_models": len(models), "naive": naive, "distinct": distinct,
               "saving": 1 - distinct / naive if naive else 0.0, "peak_rss": peak_rss_bytes()}
        if self.device.type == "cuda":
            out |= {f"cuda_{k}": v for k, v in
                    {"allocated": torch.cuda.memory_allocated(self.device),
                     "peak_allocated": torch.cuda.max_memory_allocated(self.device)}.items()}
        return out
