"""The cross-family panel (Table 1, Figure 1, Table 2, Table 10, Figure 2) as one Dask task per pair.

`panel_pairs` lists the pairs of some registry families (or explicit [base, variant] references);
`connect` starts a `LocalCluster` sized to the machine or joins an existing Dask scheduler; `run_panel`
submits `scan_pair` once per pair and reports each as it finishes. On its worker, `scan_pair`
  1. checks the two checkpoints' headers against each other (`io.headers.check_pair`: local headers, or the
     Hub's safetensors metadata), so an incompatible pair fails in seconds, before any download;
  2. resolves both references (downloading on the worker when needed) and skips the pair when the store
     already holds the scan of these exact files (`Checkpoint.fingerprint()`);
  3. scans and writes the result to the store at once (`panel_store.Store`, atomic).
A `CheckpointError` (missing, damaged, incompatible, offline) is recorded as the pair's failure and the
panel goes on; any other exception is retried (`retries=`), and a pair whose worker dies is rescheduled
by the Dask scheduler on another worker (up to `distributed.scheduler.allowed-failures` times).
The aggregates are in `panel_tables`.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..io import registry
from ..io.checkpoint import CheckpointError
from ..io.headers import HubHeaders, check_pair
from ..io.references import open_checkpoint
from .boundary import family_pairs
from .panel_store import Store, pair_id
from .scan import scan

__all__ = ["PAPER", "RECENT", "EMBEDDED", "PanelPair", "PanelRun", "embedded_families", "paper_families", "recent_families", "family_list",
           "panel_pairs", "scan_pair", "connect", "run_panel", "submit", "outcomes"]

PAPER = "paper"        # `models` value: every family of the paper (registry keys holding the paper's figures)
RECENT = "recent"      # `models` value: every Hub family the paper does not cover (Qwen3, Mixtral, OLMo-2, ...)
EMBEDDED = "embedded"  # `models` value: every family whose checkpoints ship inside the package (no download)


@dataclass(frozen=True)
class PanelPair:
    """One (base, variant) comparison of the panel.

    Attributes:
        family: registry key, or None for an explicit pair of references.
        base, variant: labels of the two ends ("base", a variant name, or a directory name).
        base_ref, variant_ref: the references scanned.
        kind: the variant's kind (`registry.KINDS`), "cross-variant", or "given" (explicit pair).
        default: the family's base -> default variant pair (Table 1's row, Table 10, Figure 2).
        paper: the paper's figures for this pair (the variant's `paper` tables; Table 2's for a cross pair).
    """
    family: str | None
    base: str
    variant: str
    base_ref: str
    variant_ref: str
    kind: str
    default: bool = False
    paper: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.family + ' ' if self.family else ''}{self.base} → {self.variant}"

    @property
    def id(self) -> str:
        return pair_id(self.base_ref, self.variant_ref)

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def embedded_families() -> list[str]:
    """Registry keys whose base checkpoint ships inside the package (today: `tiny`)."""
    return [k for k in registry.keys() if registry.is_embedded(registry.get(k).base)]


def _in_paper(key: str) -> bool:
    fam = registry.get(key)
    return bool(fam.paper) or any(v.paper for v in fam.variants.values())


def paper_families() -> list[str]:
    """Registry keys of the paper's checkpoints (families with figures transcribed from it), in file order."""
    embedded = set(embedded_families())
    return [k for k in registry.REGISTRY if k not in embedded and _in_paper(k)]


def recent_families() -> list[str]:
    """Registry keys of Hub families the paper does not cover (no transcribed figures), in file order."""
    embedded = set(embedded_families())
    return [k for k in registry.REGISTRY if k not in embedded and not _in_paper(k)]


def family_list(models: list[str] | None = None, model: str | None = None) -> list[str]:
    """The registry keys a panel covers.

    Args:
        models: registry keys; the special values `"paper"` (the paper's whole panel), `"recent"` (the Hub
            families the paper does not cover) and `"embedded"` (every family shipped in the package) expand
            in place. None: every embedded family when `model` is one
            of them (or None), else `[model]`.
        model: the notebooks' common `model` parameter.

    Raises:
        registry.UnknownModel: an unknown key, listing the known ones.
    """
    if models is None:
        embedded = embedded_families()
        models = [EMBEDDED] if model is None or model in embedded else [model]
    out: list[str] = []
    for m in models:
        groups = {PAPER: paper_families, RECENT: recent_families, EMBEDDED: embedded_families}
        keys = groups[m]() if m in groups else [registry.get(m).key]
        out += [k for k in keys if k not in out]
    return out


def _explicit(pairs: list) -> list[PanelPair]:
    out = []
    for i, p in enumerate(pairs):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) and x for x in p)):
            raise ValueError(f"pairs[{i}] = {p!r}: each pair is [base, variant], two checkpoint directories or "
                             f"hub ids, e.g. -p pairs '[[\"/ckpt/base\", \"/ckpt/instruct\"]]'.")
        b, v = (os.fspath(x) for x in p)
        out.append(PanelPair(None, Path(b).name or b, Path(v).name or v, b, v, "given"))
    return out


def panel_pairs(models: list[str] | None = None, pairs: list | None = None, model: str | None = None) -> list[PanelPair]:
    """The pairs of a panel, each (base_ref, variant_ref) once.

    Args:
        models: registry keys (see `family_list`); every family contributes base -> each variant and its
            registered cross-variant pairs (Table 2), and the older releases it lists under `vintage` are added
            (Table 10).
        pairs: explicit [[base, variant], ...] references instead of `models`.
        model: the notebooks' `model` parameter (`family_list`'s default).

    Raises:
        ValueError: a malformed explicit pair; registry.UnknownModel: an unknown key.
    """
    if pairs is not None:
        out = _explicit(pairs)
    else:
        keys = family_list(models, model)
        keys += [old for k in keys for old in registry.get(k).vintage if old not in keys]
        out = []
        for key in keys:
            fam = registry.get(key)
            for p in family_pairs(fam):
                spec = fam.variants.get(p.variant) if p.base == "base" else None
                out.append(PanelPair(key, p.base, p.variant, p.base_ref, p.variant_ref, p.kind,
                                     default=spec is fam.variant, paper=spec.paper if spec else dict(p.paper)))
    seen, unique = set(), []
    for p in out:
        if (p.base_ref, p.variant_ref) not in seen:
            seen.add((p.base_ref, p.variant_ref))
            unique.append(p)
    if not unique:
        raise ValueError("the panel has no pairs: give registry keys (-p models '[\"tiny\"]') or explicit pairs.")
    return unique


# -- the task ------------------------------------------------------------------------------------------------
def _outcome(pair: PanelPair, status: str, t0: float, **kw) -> dict:
    from distributed import get_worker
    try:
        worker = get_worker().address
    except ValueError:  # called outside a Dask worker (tests, a plain loop)
        worker = None
    return {"pair": pair.to_dict(), "status": status, "key": None, "error": None, "seconds": time.perf_counter() - t0,
            "worker": worker, "pid": os.getpid(), **kw}


def scan_pair(pair: PanelPair, store: str, scan_threads: int = 1) -> dict:
    """The Dask task: check headers, resolve, skip if stored, scan, store. Runs on a worker.

    Args:
        pair: the pair.
        store: the store directory (visible from every worker: a shared filesystem on a multi-node cluster).
        scan_threads: threads of the scan's arithmetic. A Dask worker runs as many pairs at once as it has
            threads, so 1 keeps its cores busy without oversubscribing them; for a few large pairs, give workers
            one thread and the scan more.

    Returns:
        An outcome: {pair, status ("scanned", "stored": found in the store, "failed"), key (store key), error
        (message naming the checkpoint), seconds, worker, pid, base_fingerprint, variant_fingerprint}.

    Raises:
        Exception: anything but a `CheckpointError` (a transient I/O or network error), for Dask to retry.
    """
    t0, st = time.perf_counter(), Store(store)
    try:
        b_view, v_view = check_pair(pair.base_ref, pair.variant_ref)  # seconds, before any download
        # a header view from the Hub (or None: .bin-only repository) is replaced by the downloaded checkpoint
        b_ck = open_checkpoint(pair.base_ref) if b_view is None or isinstance(b_view, HubHeaders) else b_view
        v_ck = open_checkpoint(pair.variant_ref) if v_view is None or isinstance(v_view, HubHeaders) else v_view
        fps = {"base_fingerprint": b_ck.fingerprint(), "variant_fingerprint": v_ck.fingerprint()}
        key = st.has(*fps.values())
        if key is None:
            result = scan(b_ck, v_ck, progress=False, workers=scan_threads)
            key, written = st.write(result, *fps.values(), pair=pair.to_dict())
        else:
            written = False
    except CheckpointError as exc:
        error = f"{type(exc).__name__}: {exc}"
        st.record_failure(pair.base_ref, pair.variant_ref, error, pair.to_dict())
        return _outcome(pair, "failed", t0, error=error)
    st.clear_failure(pair.base_ref, pair.variant_ref)
    return _outcome(pair, "scanned" if written else "stored", t0, key=key, **fps)


# -- Dask ----------------------------------------------------------------------------------------------------
def connect(scheduler: str = "", n_workers: int | None = None, dashboard_address: str = ":8787", **cluster_kw):
    """A `distributed.Client`: to `scheduler` (e.g. "tcp://host:8786") when given, else to a new `LocalCluster`
    of `n_workers` single-threaded worker processes (default: one per available core). `client.close()` also
    closes a cluster started here.

    The local workers run without a memory limit: Dask's nanny counts a process's RSS, which includes the
    memory-mapped checkpoint pages a scan touches (file-backed page cache, reclaimable), and would restart a
    worker mid-scan of a 30 GB pair; the scan's own memory is a few tensors.
    """
    from distributed import Client
    if scheduler:
        return Client(scheduler, timeout="60s")
    if not n_workers:
        n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Client(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=0,
                  dashboard_address=dashboard_address, **cluster_kw)


def submit(client, pairs: list[PanelPair], store: Store, *, retries: int = 2, scan_threads: int = 1):
    """One `scan_pair` future per pair, keyed `scan_pair-<pair id>-<run token>`: a fresh token per call, so a
    rerun in the same session is not answered from the scheduler's memory of the last one (the store decides
    what is skipped)."""
    token = uuid.uuid4().hex[:8]
    return [client.submit(scan_pair, p, str(store.root), scan_threads, key=f"scan_pair-{p.id}-{token}",
                          retries=retries) for p in pairs]


def _line(i: int, n: int, o: dict) -> str:
    head = f"[{i}/{n}] {o['pair']['label']}: "
    if o["status"] == "failed":
        return head + f"FAILED ({o['error']})"
    s = o.get("summary") or {}
    eps = s.get("mean_frob")
    return head + (f"{o['status']} in {o['seconds']:.1f} s" + (f", ε̄ {eps:.4f}" if eps is not None else "")
                   + (f" on {o['worker']}" if o.get("worker") else ""))


def outcomes(futures, pairs: list[PanelPair], store: Store, echo: Callable[[str], None] | None = print
             ) -> Iterator[dict]:
    """Each pair's outcome as its future completes (`distributed.as_completed`), with one `echo` line each.

    A future that failed after its retries (a persistent non-checkpoint error, or `KilledWorker`: the workers
    running it kept dying) becomes a "failed" outcome, recorded in the store like a checkpoint error.
    """
    from distributed import as_completed
    by_id = {p.id: p for p in pairs}
    for i, fut in enumerate(as_completed(futures), 1):
        p = by_id[fut.key.split("-")[1]]
        if fut.status == "finished":
            o = fut.result()
        else:
            exc = fut.exception()
            error = f"{type(exc).__name__}: {exc}"
            store.record_failure(p.base_ref, p.variant_ref, error, p.to_dict())
            o = {"pair": p.to_dict(), "status": "failed", "key": None, "error": error, "seconds": None,
                 "worker": None, "pid": None}
        if o["key"]:
            o["summary"] = store.summary(o["key"])["scan"]
        if echo:
            echo(_line(i, len(futures), o))
        yield o


@dataclass
class PanelRun:
    """A finished panel: every pair's outcome (in panel order) and where they are stored."""
    pairs: list[PanelPair]
    outcomes: list[dict]
    store: Store
    wall_s: float
    scheduler: str
    n_workers: int

    def status(self, status: str) -> list[dict]:
        return [o for o in self.outcomes if o["status"] == status]

    @property
    def failures(self) -> list[dict]:
        """[{label, base_ref, variant_ref, error}] for the pairs that could not be scanned."""
        return [{"label": o["pair"]["label"], "base_ref": o["pair"]["base_ref"],
                 "variant_ref": o["pair"]["variant_ref"], "error": o["error"]} for o in self.status("failed")]

    def __repr__(self) -> str:
        counts = {s: len(self.status(s)) for s in ("scanned", "stored", "failed")}
        return (f"PanelRun({len(self.pairs)} pairs in {self.wall_s:.1f} s on {self.n_workers} worker(s): "
                f"{counts['scanned']} scanned, {counts['stored']} already stored, {counts['failed']} failed)")


def run_panel(client, pairs: list[PanelPair], store: str | os.PathLike | Store, *, progress: bool = True,
              echo: Callable[[str], None] | None = print, retries: int = 2,
              scan_threads: int = 1) -> PanelRun:
    """Scan every pair on the cluster behind `client`, storing each result as it completes.

    Args:
        client: a `distributed.Client` (`connect`).
        pairs: `panel_pairs(...)`.
        store: the store directory or `Store`.
        progress: show Dask's progress bar when running in a Jupyter kernel.
        echo: called with one line per finished pair (None: silent).
        retries: Dask retries of a pair whose task raised something other than a `CheckpointError`.
        scan_threads: threads per scan (see `scan_pair`).

    Returns:
        PanelRun with one outcome per pair, in the order of `pairs`.
    """
    st = store if isinstance(store, Store) else Store(store)
    st.clean_tmp()
    t0 = time.perf_counter()
    futures = submit(client, pairs, st, retries=retries, scan_threads=scan_threads)
    if progress:
        from distributed.utils import is_kernel
        if is_kernel():
            from distributed import progress as dask_progress
            from IPython.display import display
            display(dask_progress(futures, notebook=True, multi=False))
    done = {pair_id(o["pair"]["base_ref"], o["pair"]["variant_ref"]): o for o in outcomes(futures, pairs, st, echo)}
    info = client.scheduler_info()
    return PanelRun(pairs, [done[p.id] for p in pairs], st, time.perf_counter() - t0,
                    info.get("address", ""), len(info.get("workers", {})))
