"""LinkerLLM (paper §4, App. B/C/N): co-resident variants whose shareable blocks alias the donor's storage.

* **Alias primitive** (`alias_block`): each parameter of a recipient block becomes a frozen `nn.Parameter` over
  the donor's tensor storage (`param_B.data = param_A.data`), so both report the same `data_ptr()`.
* **Lazy loader** (`Linker.add`): the donor is a normally loaded model. A recipient is built on the meta device
  (`accelerate.init_empty_weights`, which keeps buffers such as rotary `inv_freq` real), its shareable blocks
  alias the donor, and only its other tensors are read from its checkpoint, one at a time, and placed on the
  device. No full copy of the recipient ever exists: peak = |donor| + |unique(recipient)|. Better than the
  paper's loader, which first loads B on the CPU. Every read is recorded in a `LoadReport`.
* **Share plans** (`share_plan`): the scan's per-block table and decision, saved as JSON in a cache directory
  with both checkpoints' fingerprints and the thresholds. A repeat load skips the scan; a plan whose
  fingerprints no longer match the checkpoints is stale and is rescanned.
* **Safety**: aliased parameters are frozen; a guard snapshot (tensor version counters and an integer checksum
  of the bits) of every shared storage is taken at alias time and `check_integrity` raises `SharedWeightModified`
  naming the recipient and block if anything wrote into it. `unalias(model, block)` gives a block its own copy
  (copy-on-write by hand) before it is trained.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .checkpoints import Checkpoint, open_checkpoint
from .metrics import BlockRecord, scan
from .models import decoder_layers, load_model, pick_device, pick_dtype

__all__ = ["DEFAULT_PLAN_CACHE", "SharedWeightModified", "SharePlan", "LoadReport", "share_plan", "plan_path",
           "alias_block", "unalias", "shared_blocks", "check_integrity", "load_recipient", "Linker",
           "storage_bytes", "peak_rss_bytes", "pair_table", "n_variant_scaling", "cold_start",
           "table4", "table14", "table15"]

DEFAULT_PLAN_CACHE = Path(os.environ.get("LINKER_NB_PLAN_CACHE", "~/.cache/linker_nb/plans")).expanduser()
PLAN_VERSION = 1


class SharedWeightModified(RuntimeError):
    """Storage shared between a donor and a recipient was written in place."""


# -- share plans ---------------------------------------------------------------------------------------------
@dataclass
class SharePlan:
    """Which blocks of `variant` may alias `base`'s, and the scan table that decided it.

    Attributes:
        base, variant: checkpoint references as given.
        base_fingerprint, variant_fingerprint: `Checkpoint.fingerprint()` at scan time (staleness check).
        tau_cos, tau_frob: eq. (3) thresholds the decision used.
        shared: indices of shareable blocks.
        blocks: the scan's per-block records (dicts of `BlockRecord`), so other thresholds need no rescan.
        scan_s: seconds the scan took.
    """
    base: str
    variant: str
    base_fingerprint: str
    variant_fingerprint: str
    tau_cos: float
    tau_frob: float
    shared: list[int]
    blocks: list[dict]
    scan_s: float
    version: int = PLAN_VERSION

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def mask(self, tau_cos: float | None = None, tau_frob: float | None = None) -> list[bool]:
        """Eq. (3) per block at other thresholds (defaults: the plan's), from the stored table."""
        tc = self.tau_cos if tau_cos is None else tau_cos
        tf = self.tau_frob if tau_frob is None else tau_frob
        return [BlockRecord(**b).shareable(tc, tf) for b in self.blocks]

    def block_table(self):
        import pandas as pd
        df = pd.DataFrame([{k: b[k] for k in ("index", "cos", "frob", "cos_min", "frob_max")} for b in self.blocks])
        df["shared"] = [i in set(self.shared) for i in df["index"]]
        return df.set_index("index")


def plan_path(cache_dir: str | os.PathLike, base: Checkpoint, variant: Checkpoint, tau_cos: float,
              tau_frob: float) -> Path:
    """Cache file of a (base, variant, thresholds) plan: named by the resolved directories and thresholds, so a
    rewritten checkpoint finds its old plan and sees the fingerprint mismatch (stale), rather than missing it."""
    key = f"{base.path.resolve()}\0{variant.path.resolve()}\0{tau_cos!r}\0{tau_frob!r}"
    return Path(cache_dir).expanduser() / f"plan-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def share_plan(base, variant, tau_cos: float, tau_frob: float, *, cache_dir: str | os.PathLike | None = None,
               refresh: bool = False) -> tuple[SharePlan, str]:
    """The share plan of a pair: from the cache when it is current, else by `metrics.scan` (and cached).

    Args:
        base, variant: references or open `Checkpoint`s.
        tau_cos, tau_frob: eq. (3) thresholds.
        cache_dir: plan directory (default `DEFAULT_PLAN_CACHE`, `~/.cache/linker_nb/plans`).
        refresh: rescan even when a current plan exists.

    Returns:
        (plan, status) with status "cached", "scanned" (no plan) or "stale" (a checkpoint changed: rescanned).
    """
    b = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    v = variant if isinstance(variant, Checkpoint) else open_checkpoint(variant)
    path = plan_path(cache_dir or DEFAULT_PLAN_CACHE, b, v, tau_cos, tau_frob)
    fb, fv = b.fingerprint(), v.fingerprint()
    status = "scanned"
    if path.exists() and not refresh:
        try:
            plan = SharePlan(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            plan = None  # unreadable or an older layout: rescan and overwrite
        if plan is not None and plan.version == PLAN_VERSION:
            if (plan.base_fingerprint, plan.variant_fingerprint) == (fb, fv):
                return plan, "cached"
            status = "stale"
    t0 = time.perf_counter()
    result = scan(b, v)
    mask = result.share_mask(tau_cos, tau_frob)
    plan = SharePlan(base=b.ref, variant=v.ref, base_fingerprint=fb, variant_fingerprint=fv, tau_cos=tau_cos,
                     tau_frob=tau_frob, shared=[i for i, m in enumerate(mask) if m],
                     blocks=[asdict(blk) for blk in result.blocks], scan_s=time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=1))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a plan
    return plan, status


# -- alias primitive and guard -------------------------------------------------------------------------------
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(t: torch.Tensor) -> str | tuple[int, int]:
    """A fingerprint of the raw bits: any in-place write changes it.

    On the CPU, xxh3-128 over the tensor's bytes without a copy (~tens of GB/s; the integer sums below built
    full-size int64 temporaries and were 88% of a cached-plan load, benchmarks/README.md). On an accelerator,
    two integer sums (plain and position-weighted) computed where the tensor lives, instead of a host copy.
    """
    t = t.detach()
    if t.device.type == "cpu":
        import xxhash
        return xxhash.xxh3_128_hexdigest(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    x = t.reshape(-1).view(_INT_VIEW[t.element_size()]).to(torch.int64)
    w = torch.arange(x.numel(), device=x.device, dtype=torch.int64) % 65521 + 1
    return int(x.sum()), int((x * w).sum())


def _guard(model: nn.Module) -> dict:
    """{block: {sub: (recipient param, donor param, versions, checksum)}} of a recipient's aliased tensors."""
    if not hasattr(model, "_linker_shared"):
        model._linker_shared = {}
    return model._linker_shared


def alias_block(recipient: nn.Module, donor: nn.Module, index: int) -> list[str]:
    """Make block `index` of `recipient` use the storage of the donor's block `index` (no copy).

    Each recipient parameter becomes a frozen `nn.Parameter` over the donor tensor's storage (same `data_ptr()`);
    the recipient may be on the meta device or materialised. The guard records versions and checksums.

    Returns:
        The aliased sub-parameter names (e.g. "self_attn.q_proj.weight").

    Raises:
        ValueError: the blocks differ in parameter names, shapes or dtypes (naming the first mismatch).
    """
    r_layer, d_layer = decoder_layers(recipient)[index], decoder_layers(donor)[index]
    d_params = dict(d_layer.named_parameters())
    r_params = dict(r_layer.named_parameters())
    if set(d_params) != set(r_params):
        raise ValueError(f"block {index}: recipient and donor parameters differ "
                         f"({sorted(set(d_params) ^ set(r_params))[:3]}); they are not the same architecture.")
    guard = _guard(recipient).setdefault(index, {})
    for sub, dp in d_params.items():
        rp = r_params[sub]
        if rp.shape != dp.shape or (rp.dtype != dp.dtype):
            raise ValueError(f"block {index} {sub}: recipient {tuple(rp.shape)} {rp.dtype} vs donor "
                             f"{tuple(dp.shape)} {dp.dtype}; build the recipient in the donor's dtype.")
        mod_name, _, leaf = sub.rpartition(".")
        mod = r_layer.get_submodule(mod_name) if mod_name else r_layer
        new = nn.Parameter(dp.data, requires_grad=False)  # the alias: a new Parameter over the same storage
        mod._parameters[leaf] = new
        guard[sub] = (new, dp, new._version, dp._version, _checksum(dp))
    return list(d_params)


def shared_blocks(model: nn.Module) -> list[int]:
    """Indices of the blocks of `model` that currently alias a donor."""
    return sorted(i for i, subs in _guard(model).items() if subs)


def unalias(model: nn.Module, index: int, requires_grad: bool = True) -> None:
    """Copy-on-write by hand: give block `index` of `model` its own storage (a clone) before it is trained.

    Raises:
        SharedWeightModified: the shared storage was already written (copying it would hide the corruption).
        KeyError: the block is not aliased.
    """
    guard = _guard(model)
    if not guard.get(index):
        raise KeyError(f"block {index} of this model is not aliased (aliased: {shared_blocks(model)})")
    check_integrity(model, blocks=[index])
    layer = decoder_layers(model)[index]
    for sub, (rp, *_rest) in guard.pop(index).items():
        mod_name, _, leaf = sub.rpartition(".")
        mod = layer.get_submodule(mod_name) if mod_name else layer
        mod._parameters[leaf] = nn.Parameter(rp.detach().clone(), requires_grad=requires_grad)


def check_integrity(model: nn.Module, *, name: str = "recipient", blocks: Iterable[int] | None = None,
                    deep: bool = True) -> int:
    """Raise if any storage `model` shares with its donor was modified in place since it was aliased.

    Args:
        model: a recipient built by `alias_block` / `Linker.add`.
        name: how to call the model in the message.
        blocks: restrict to these block indices.
        deep: also compare bit checksums (catches writes through `.data`, which bypass version counters).

    Returns:
        The number of shared tensors checked.

    Raises:
        SharedWeightModified: naming the model, block and sub-parameter.
    """
    n = 0
    for index, subs in _guard(model).items():
        if blocks is not None and index not in set(blocks):
            continue
        for sub, (rp, dp, rv, dv, ck) in subs.items():
            n += 1
            moved = rp.data_ptr() != dp.data_ptr()
            if moved or rp._version != rv or dp._version != dv or (deep and _checksum(dp) != ck):
                raise SharedWeightModified(
                    f"{name}: block {index} ({sub}) shares storage with the donor and was "
                    f"{'re-pointed' if moved else 'modified in place'} since it was aliased; every model "
                    f"sharing it is affected. Reload the donor, and call unalias(model, {index}) before "
                    f"training or editing a shared block.")
    return n


# -- lazy loader ---------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What `load_recipient` did: every tensor it read, and how long each step took."""
    names_read: list[str] = field(default_factory=list)
    bytes_read: int = 0          # stored bytes read from the checkpoint
    bytes_total: int = 0         # stored bytes of the whole checkpoint
    max_tensor_bytes: int = 0    # largest single read: the loader's CPU working set
    shared: list[int] = field(default_factory=list)
    n_aliased: int = 0
    build_s: float = 0.0
    alias_s: float = 0.0
    load_unique_s: float = 0.0


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, requires_grad: bool) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=requires_grad and value.is_floating_point())
    else:
        mod._buffers[leaf] = value


def load_recipient(ref, donor: nn.Module, shared: Sequence[int], *, report: LoadReport | None = None) -> nn.Module:
    """Build a recipient on the meta device, alias `shared` blocks to `donor`, read only the rest from disk.

    Args:
        ref: recipient checkpoint (directory or hub id; weights read with `Checkpoint.get`, one at a time).
        donor: the loaded donor model (its device and dtype are used for the recipient).
        shared: block indices to alias.
        report: filled with the reads and timings.

    Returns:
        The recipient causal LM in eval mode, usable like any `transformers` model (forward, `generate`).

    Raises:
        ValueError: a recipient parameter is missing from its checkpoint, or the architectures differ.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    rep = report if report is not None else LoadReport()
    ck = ref if isinstance(ref, Checkpoint) else open_checkpoint(ref)
    p0 = next(donor.parameters())
    device, dtype = p0.device, p0.dtype
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(ck.path)
    with init_empty_weights():  # parameters on meta; buffers (rotary inv_freq, embed scales) stay real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        model.generation_config = GenerationConfig.from_pretrained(ck.path)
    except OSError:
        pass
    n_blocks = len(decoder_layers(model))
    bad = [i for i in shared if not 0 <= i < n_blocks]
    if bad:
        raise ValueError(f"shared blocks {bad} out of range: {ck.ref} has {n_blocks} blocks")
    t1 = time.perf_counter()
    for i in sorted(set(shared)):
        rep.n_aliased += len(alias_block(model, donor, i))
    t2 = time.perf_counter()
    rep.shared, rep.bytes_total = sorted(set(shared)), ck.nbytes
    for name, p in list(model.named_parameters()):
        if not p.is_meta:
            continue  # aliased
        if name not in ck:
            if name.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False):
                continue  # tied below
            raise ValueError(f"{ck.ref} has no tensor {name!r} that {type(model).__name__} needs; the lazy loader "
                             f"reads parameters by their module names. Load this checkpoint with "
                             f"models.load_model and alias blocks with alias_block instead.")
        t = ck.get(name)
        rep.names_read.append(name)
        rep.bytes_read += ck.info(name).nbytes
        rep.max_tensor_bytes = max(rep.max_tensor_bytes, ck.info(name).nbytes)
        _set_tensor(model, name, t.to(device=device, dtype=dtype), requires_grad=True)
        del t
    for name, b in list(model.named_buffers()):
        if b.device != device:
            _set_tensor(model, name, b.to(device), requires_grad=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"{ck.ref}: parameters left unloaded: {leftover[:3]}")
    t3 = time.perf_counter()
    rep.build_s, rep.alias_s, rep.load_unique_s = t1 - t0, t2 - t1, t3 - t2
    return model.eval()


# -- memory ------------------------------------------------------------------------------------------------
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


# -- the paper's tables --------------------------------------------------------------------------------------
def pair_table(linker: Linker) -> list[dict]:
    """Table 4 per recipient: the donor + that recipient alone, naive (two independent models) vs shared bytes."""
    rows = []
    for name, model in linker.recipients.items():
        naive = storage_bytes(linker.donor) + storage_bytes(model)
        shared = storage_bytes(linker.donor, model)
        rep = linker.reports[name]
        rows.append({"variant": name, "blocks_shared": len(rep.shared), "n_blocks": len(decoder_layers(model)),
                     "bytes_naive": naive, "bytes_shared": shared, "saving": 1 - shared / naive,
                     "bytes_read": rep.bytes_read, "bytes_total": rep.bytes_total})
    return rows


def n_variant_scaling(linker: Linker, names: Sequence[str] | None = None) -> list[dict]:
    """Table 14: bytes of the donor plus the first N-1 recipients, for N = 1..1+len(names), and the saving
    against N independent models (1 - bytes / naive)."""
    names = list(linker.recipients) if names is None else list(names)
    rows = []
    for n in range(1, len(names) + 2):
        models = [linker.donor] + [linker.recipients[k] for k in names[:n - 1]]
        naive = sum(storage_bytes(m) for m in models)
        held = storage_bytes(*models)
        rows.append({"n": n, "bytes": held, "bytes_naive": naive, "saving": 1 - held / naive,
                     "marginal": held - rows[-1]["bytes"] if rows else held})
    return rows


def cold_start(linker: Linker, ref, name: str = "_cold") -> dict:
    """Table 15: seconds of scan, build (meta), alias and read-unique/move for one recipient with no plan
    (forced rescan), the total with a cached plan, and the naive `from_pretrained` time, beside each other."""
    linker.add(name, ref, refresh_plan=True)
    rep, (plan, _) = linker.reports[name], linker.plans[name]
    linker.remove(name)
    t0 = time.perf_counter()
    linker.add(name, ref)
    cached_total = time.perf_counter() - t0
    cached_status = linker.plans[name][1]
    linker.remove(name)
    t0 = time.perf_counter()
    naive = load_model(ref, device=str(linker.device), dtype=linker.dtype)
    naive_s = time.perf_counter() - t0
    del naive
    return {"scan_s": plan.scan_s, "build_s": rep.build_s, "alias_s": rep.alias_s,
            "load_unique_s": rep.load_unique_s,
            "total_s": plan.scan_s + rep.build_s + rep.alias_s + rep.load_unique_s,
            "cached_plan_total_s": cached_total, "cached_plan_status": cached_status, "naive_s": naive_s,
            "donor_load_s": linker.donor_load_s}


def _mib(x: int) -> float:
    return x / 2**20


def table4(rows: list[dict], paper: dict[str, dict] | None = None):
    """Table 4's layout (MiB): naive vs lazy (shared) vs saving per pair, with the paper's row where it has one.

    Args:
        rows: `pair_table` rows.
        paper: variant name -> the registry's `paper["table4"]` dict (naive_mib, lazy_mib, save, shared).
    """
    import pandas as pd
    paper = paper or {}
    out = []
    for r in rows:
        p = paper.get(r["variant"]) or {}
        out.append({"variant": r["variant"], "shared": f"{r['blocks_shared']}/{r['n_blocks']}",
                    "naive MiB": _mib(r["bytes_naive"]), "lazy MiB": _mib(r["bytes_shared"]),
                    "save": r["saving"], "read from disk MiB": _mib(r["bytes_read"]),
                    "paper shared": p.get("shared"), "paper naive MiB": p.get("naive_mib"),
                    "paper lazy MiB": p.get("lazy_mib"), "paper save": p.get("save")})
    return pd.DataFrame(out).set_index("variant").dropna(axis=1, how="all")


def table14(rows: list[dict], paper_mib: list[float] | None = None):
    """Table 14's layout: MiB held and saving for N = 1..k co-resident variants (paper MiB beside, if given)."""
    import pandas as pd
    df = pd.DataFrame([{"N": r["n"], "MiB": _mib(r["bytes"]), "naive MiB": _mib(r["bytes_naive"]),
                        "save": r["saving"], "marginal MiB": _mib(r["marginal"])} for r in rows]).set_index("N")
    if paper_mib:
        df["paper MiB"] = pd.Series({i: m for i, m in enumerate(paper_mib, 1)})
        df["paper save"] = pd.Series({i: 1 - m / (i * paper_mib[0]) for i, m in enumerate(paper_mib, 1)})
    return df


def table15(cold: dict, paper: dict | None = None):
    """Table 15's layout (seconds): scan, build, alias, read-unique/move, total, cached-plan total, naive load."""
    import pandas as pd
    cols = {"scan": "scan_s", "build (meta)": "build_s", "alias": "alias_s", "read unique + move": "load_unique_s",
            "total": "total_s", "total, cached plan": "cached_plan_total_s", "naive": "naive_s"}
    rows = {"measured": {k: cold[v] for k, v in cols.items()}}
    if paper:
        rows["paper"] = {"scan": paper.get("scan"), "alias": paper.get("alias"),
                         "read unique + move": paper.get("move"), "total": paper.get("total"),
                         "naive": paper.get("naive")}
    return pd.DataFrame(rows).T
