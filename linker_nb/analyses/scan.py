"""Block-level similarity between two checkpoints, in one streaming pass (`scan`)."""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..io.architectures import Part, Role, block_count, layout
from ..io.models import torch_threads
from ..io.pairing import pair_names
from ..io.references import open_checkpoint
from ..io.stream import digest, read_pair
from .kernel import CHUNK_ELEMS, cosine, rel_frob, shadow_sigma, tensor_stats
from .records import BlockRecord, ScanResult, TensorRecord

__all__ = ["scan"]


def scan(base, variant, *, progress: bool | None = None, hash_tensors: bool = True,
         chunk: int = CHUNK_ELEMS, workers: int | None = None, device: str = "cpu") -> ScanResult:
    """Compare two checkpoints tensor by tensor, holding a few tensors in memory at a time.

    Every stored byte is read once: a prefetch thread maps the next pair's pages (memory-mapped,
    `MADV_POPULATE_READ`) while the fused kernel (`kernel.tensor_stats`, numba, GIL released) sums the current
    pair on `workers` threads, so the scan costs max(read, compute), not their sum.

    Identity needs no second pass over every byte: identical stored bytes imply the same stored dtype, shape and
    the same per-side sums, so only tensors whose (dtype, shape, sum of squares, L1 sum) match a tensor on the
    other side are hashed (xxh3), after the pass. The byte-identical count and the dedup saving are exactly what
    hashing every tensor gives; other tensors keep `base_hash` / `var_hash` None.

    Args:
        base, variant: `Checkpoint`s or references (`resolve` accepts directories and hub ids).
        progress: show a tqdm bar over bytes; default: when the pair is larger than 256 MiB.
        hash_tensors: establish byte identity (identity count, dedup saving; for GGUF over the quantized bytes,
            see `ScanResult.identity_basis`) by hashing the candidates.
        chunk: elements per parallel task of the kernel (see `tensor_stats`).
        workers: threads computing the sums; default `torch.get_num_threads()`. Results do not depend on it.
        device: where the sums run: "cpu" (the numba kernel), "cuda", or "auto" (the GPU when torch sees one,
            streamed from pinned host buffers; see `kernel_cuda`).

    Returns:
        ScanResult with per-tensor records and per-block aggregates.

    Raises:
        ScanMismatch: the checkpoints are not comparable (see `pair_names`).
        CheckpointError: a file is missing, damaged or truncated.
    """
    b_ck, v_ck = open_checkpoint(base), open_checkpoint(variant)
    triples, tied = pair_names(b_ck, v_ck)
    arch, roles = layout([t[0] for t in triples], b_ck.model_type)
    dims = arch.dims(b_ck.config)
    total = sum(b_ck.info(nb).nbytes + v_ck.info(nv).nbytes for _, nb, nv in triples)
    if progress is None:
        progress = total > 256 * 2**20
    workers = max(1, workers or torch.get_num_threads())
    from tqdm.auto import tqdm
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="scan", disable=not progress)
    t0 = time.perf_counter()
    records: list[TensorRecord] = []
    pending: list[_Pending] = []
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-read")
    try:
        with torch_threads(1):  # the kernel parallelises over chunks itself
            nxt = reader.submit(read_pair, b_ck, v_ck, triples[0][1], triples[0][2], False)
            for k, (name, nb, nv) in enumerate(triples):
                a, b, _ = nxt.result()
                if k + 1 < len(triples):  # map one pair ahead while this one is summed
                    nxt = reader.submit(read_pair, b_ck, v_ck, triples[k + 1][1], triples[k + 1][2], False)
                role: Role = roles[name]
                ib, iv = b_ck.info(nb), v_ck.info(nv)
                stored = [f"{side}: {n}" for side, n in (("base", b_ck.note(nb)), ("variant", v_ck.note(nv))) if n]
                p = _Pending(nb, nv, ib.dtype, iv.dtype, tuple(a.shape), len(records))
                for part in arch.parts(role, tuple(a.shape), dims):
                    rec, s = _record(name, role, part, a, b, nb, nv, iv, stored, chunk, workers, device)
                    records.append(rec)
                    p.add(part.sub[len(role.sub):], bool(part.index), s)
                pending.append(p)
                bar.update(ib.nbytes + iv.nbytes)
                del a, b
    finally:
        bar.close()
        reader.shutdown(wait=True, cancel_futures=True)
    if hash_tensors:
        _identity(b_ck, v_ck, pending, records)
    n_blocks = block_count(records)
    blocks = [BlockRecord.from_records(i, [r for r in records if r.block == i and r.group == "block"])
              for i in range(n_blocks)]
    basis = (b_ck.identity_basis if b_ck.identity_basis == v_ck.identity_basis
             else f"base: {b_ck.identity_basis}; variant: {v_ck.identity_basis}")
    return ScanResult(base=b_ck.ref, variant=v_ck.ref, model_type=b_ck.model_type, tensors=records, blocks=blocks,
                      tied_embeddings=tied, elapsed_s=time.perf_counter() - t0, bytes_read=total,
                      architecture=arch.name, identity_basis=basis)


@dataclass
class _Pending:
    """One scanned tensor pair waiting for its identity: stored names and dtypes, and its records (from `first`),
    with each record's name suffix, whether it is a part of a fused tensor, and the sums' bit patterns per side."""
    nb: str
    nv: str
    b_dtype: str
    v_dtype: str
    shape: tuple[int, ...]
    first: int
    suffixes: list[str] = field(default_factory=list)
    partial: list[bool] = field(default_factory=list)
    sums: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    exact: bool = True  # sums by the stored dtype's own kernel (else, converted or mixed: always hashed)

    def add(self, suffix: str, partial: bool, s: dict) -> None:
        self.suffixes.append(suffix)
        self.partial.append(partial)
        self.sums[0].extend(float(s[k]).hex() for k in ("na2", "l1a"))
        self.sums[1].extend(float(s[k]).hex() for k in ("nb2", "l1b"))
        self.exact = self.exact and not s["converted_from"] and not s["mixed"]

    def key(self, side: int) -> tuple:
        return (self.b_dtype, self.v_dtype)[side], self.shape, tuple(self.sums[side])


def _identity(b_ck, v_ck, pending: list[_Pending], records: list[TensorRecord]) -> None:
    """Byte identity and dedup hashes, hashing only the tensors that can be identical to one on the other side.

    A tensor's key is (stored dtype, shape, and per measured part the bit patterns of its own sum of squares and
    L1 sum). Equal stored bytes give equal keys (the same bits through the same deterministic kernel), so a tensor
    whose key no tensor on the other side has is byte-identical to none of them and is not hashed. The candidates
    are read again (memory-mapped) and hashed; the records get `base_hash` / `var_hash` and `identical` exactly
    as if every tensor had been hashed.
    """
    b_keys, v_keys = {p.key(0) for p in pending}, {p.key(1) for p in pending}
    hashes: dict[tuple[int, str], str] = {}

    def h(side: int, name: str) -> str:
        if (side, name) not in hashes:
            ck = (b_ck, v_ck)[side]
            hashes[side, name] = digest(ck.stored(name, ck.get(name)))
        return hashes[side, name]

    for p in pending:
        hb = h(0, p.nb) if not p.exact or p.key(0) in v_keys else None
        hv = h(1, p.nv) if not p.exact or p.key(1) in b_keys else None
        same = hb is not None and hb == hv and p.b_dtype == p.v_dtype
        for j, (suffix, partial) in enumerate(zip(p.suffixes, p.partial)):
            r = records[p.first + j]
            r.base_hash, r.var_hash = hb and hb + suffix, hv and hv + suffix
            # as when every tensor was hashed: a part of a fused tensor is also identical when its values are
            r.identical = same or (partial and r.identical)


def _record(name: str, role: Role, part: Part, a: torch.Tensor, b: torch.Tensor, nb: str, nv: str, iv,
            stored_notes: list[str], chunk: int, workers: int, device: str) -> tuple[TensorRecord, dict]:
    """The record of one measured piece (`Part`) of a tensor pair: the whole tensor, or one part of a fused
    tensor (its name gets the part's "[q]" / "[gate]" suffix; its hash is the tensor's, suffixed likewise, so
    dedup counts a part as identical exactly when its whole tensor is; `_identity` sets both after the pass, and
    until then `identical` means equal values). Stored bytes (`iv`: the variant's `TensorInfo`, quantized for
    GGUF) are shared out over the parts by element count. Returns the record and the kernel's sums."""
    pa, pb = (a[part.index], b[part.index]) if part.index else (a, b)
    s = tensor_stats(pa, pb, chunk, workers, device)
    suffix = part.sub[len(role.sub):]
    note = []
    if s["nonfinite"]:
        note.append(f"{s['nonfinite']} non-finite values")
    if not s["nonfinite"] and (s["na2"] == 0 or s["nb2"] == 0):
        note.append("zero norm: cosine undefined" + ("" if s["na2"] else ", Frobenius ratio undefined"))
    if nb != nv or nb != name:
        note.append(f"tied embedding compared as {nb if nb != name else nv}")
    if role.group == "block" and role.kind == "unknown":
        note.append("kind unknown to the architecture record: in the block mean, in no sub-mean")
    if s["converted_from"]:
        note.append(f"{s['converted_from']} converted to float32 for the sums")
    note += stored_notes
    rec = TensorRecord(
        name=name + suffix, group=role.group, block=role.block, sub=part.sub, kind=part.kind,
        shape=tuple(pa.shape), dtype=iv.dtype, nbytes=iv.nbytes * pb.numel() // max(b.numel(), 1),
        cos=cosine(s), frob=rel_frob(s), sigma=shadow_sigma(s),
        base_norm=math.sqrt(s["na2"]) if math.isfinite(s["na2"]) else float("nan"),
        var_norm=math.sqrt(s["nb2"]) if math.isfinite(s["nb2"]) else float("nan"),
        diff_norm=math.sqrt(s["d2"]) if math.isfinite(s["d2"]) else float("nan"),
        l1=(s["l1a"], s["l1b"], s["l1d"]), nonfinite=s["nonfinite"],
        identical=s["d2"] == 0 and not s["nonfinite"], base_hash=None, var_hash=None, note="; ".join(note),
        role=part.role, expert=part.expert)
    return rec, s
