"""Block-level similarity between two checkpoints, in one streaming pass (`scan`)."""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ..io.architectures import Part, Role, block_count, layout
from ..io.models import torch_threads
from ..io.pairing import pair_names
from ..io.references import open_checkpoint
from ..io.stream import read_pair
from .kernel import CHUNK_ELEMS, cosine, rel_frob, shadow_sigma, tensor_stats
from .records import BlockRecord, ScanResult, TensorRecord

__all__ = ["scan"]


def scan(base, variant, *, progress: bool | None = None, hash_tensors: bool = True,
         chunk: int = CHUNK_ELEMS, workers: int | None = None) -> ScanResult:
    """Compare two checkpoints tensor by tensor, holding a few tensors in memory at a time.

    Every stored byte is read once: a prefetch thread reads (memory-mapped), maps and hashes the next pair
    while `workers` threads compute the current pair's sums chunk by chunk.

    Args:
        base, variant: `Checkpoint`s or references (`resolve` accepts directories and hub ids).
        progress: show a tqdm bar over bytes; default: when the pair is larger than 256 MiB.
        hash_tensors: hash every tensor's stored bytes (identity count, dedup saving; for GGUF the quantized
            bytes, see `ScanResult.identity_basis`); done in the prefetch thread.
        chunk: float32 chunk size in elements (see `tensor_stats`).
        workers: threads computing the sums; default `torch.get_num_threads()`. Results do not depend on it.

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
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-read")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan-sums") if workers > 1 else None
    try:
        with torch_threads(1):  # the scan parallelises over chunks itself
            nxt = reader.submit(read_pair, b_ck, v_ck, triples[0][1], triples[0][2], hash_tensors)
            for k, (name, nb, nv) in enumerate(triples):
                a, b, (hb, hv) = nxt.result()
                if k + 1 < len(triples):  # read one pair ahead
                    nxt = reader.submit(read_pair, b_ck, v_ck, triples[k + 1][1], triples[k + 1][2],
                                        hash_tensors)
                role: Role = roles[name]
                ib, iv = b_ck.info(nb), v_ck.info(nv)
                identical = (hb == hv and ib.dtype == iv.dtype) if hb else None
                stored = [f"{side}: {n}" for side, n in (("base", b_ck.note(nb)), ("variant", v_ck.note(nv))) if n]
                for part in arch.parts(role, tuple(a.shape), dims):
                    records.append(_record(name, role, part, a, b, nb, nv, (hb, hv), identical, iv, stored,
                                           chunk, pool))
                bar.update(ib.nbytes + iv.nbytes)
                del a, b
    finally:
        bar.close()
        reader.shutdown(wait=True, cancel_futures=True)
        if pool:
            pool.shutdown()
    n_blocks = block_count(records)
    blocks = [BlockRecord.from_records(i, [r for r in records if r.block == i and r.group == "block"])
              for i in range(n_blocks)]
    basis = (b_ck.identity_basis if b_ck.identity_basis == v_ck.identity_basis
             else f"base: {b_ck.identity_basis}; variant: {v_ck.identity_basis}")
    return ScanResult(base=b_ck.ref, variant=v_ck.ref, model_type=b_ck.model_type, tensors=records, blocks=blocks,
                      tied_embeddings=tied, elapsed_s=time.perf_counter() - t0, bytes_read=total,
                      architecture=arch.name, identity_basis=basis)


def _record(name: str, role: Role, part: Part, a: torch.Tensor, b: torch.Tensor, nb: str, nv: str, hashes,
            identical: bool | None, iv, stored_notes: list[str], chunk: int, pool) -> TensorRecord:
    """The record of one measured piece (`Part`) of a tensor pair: the whole tensor, or one part of a fused
    tensor (its name gets the part's "[q]" / "[gate]" suffix; its hash is the tensor's, suffixed likewise, so
    dedup counts a part as identical exactly when its whole tensor is). Stored bytes (`iv`: the variant's
    `TensorInfo`, quantized for GGUF) are shared out over the parts by element count."""
    hb, hv = hashes
    pa, pb = (a[part.index], b[part.index]) if part.index else (a, b)
    s = tensor_stats(pa, pb, chunk, pool)
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
    note += stored_notes
    return TensorRecord(
        name=name + suffix, group=role.group, block=role.block, sub=part.sub, kind=part.kind,
        shape=tuple(pa.shape), dtype=iv.dtype, nbytes=iv.nbytes * pb.numel() // max(b.numel(), 1),
        cos=cosine(s), frob=rel_frob(s), sigma=shadow_sigma(s),
        base_norm=math.sqrt(s["na2"]) if math.isfinite(s["na2"]) else float("nan"),
        var_norm=math.sqrt(s["nb2"]) if math.isfinite(s["nb2"]) else float("nan"),
        diff_norm=math.sqrt(s["d2"]) if math.isfinite(s["d2"]) else float("nan"),
        l1=(s["l1a"], s["l1b"], s["l1d"]), nonfinite=s["nonfinite"],
        identical=bool(identical) or ((identical is None or bool(part.index)) and s["d2"] == 0 and not s["nonfinite"]),
        base_hash=hb and hb + suffix, var_hash=hv and hv + suffix, note="; ".join(note),
        role=part.role, expert=part.expert)
