"""Block-level similarity between two checkpoints, in one streaming pass.

Per tensor (sub-parameter) W_b, W_v, converted to float32 chunk by chunk with sums accumulated in float64:
cosine, relative Frobenius ||W_b - W_v||_F / ||W_b||_F, the L1 sums of Shadow-FT's
sigma = sum|W_b - W_v| / (sum|W_b| + sum|W_v|), and a content hash of the stored bytes.
Per block i (paper eqs. 1-2): the mean over its K sub-parameters of cosine and of the Frobenius ratio, plus the
min-cosine and max-over-K Frobenius of Appendices G/P. Eq. 3 decides sharing.

Cosine is computed from the difference, cos = 1 - (||d||^2 - (||a|| - ||b||)^2) / (2 ||a|| ||b||), so that
1 - cos keeps its digits when the two tensors agree to 1e-5; a plain dot product in float32 would not.
"""
from __future__ import annotations

import ctypes
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
import xxhash

from .architectures import Role, layout
from .checkpoints import Checkpoint, CheckpointError, open_checkpoint
from .models import torch_threads

__all__ = ["TensorRecord", "BlockRecord", "ScanResult", "ScanMismatch", "tensor_stats", "cosine", "rel_frob",
           "shadow_sigma", "scan", "share_mask", "granularity_gap", "aggregation_stats", "subparam_matrix",
           "pair_names", "mean_defined"]

CHUNK_ELEMS = 1 << 18  # 256K elements = 1 MiB of float32 per operand: stays in cache, bounds memory
_local = threading.local()  # per-thread chunk buffers, by chunk size


class ScanMismatch(CheckpointError):
    """The two checkpoints cannot be compared tensor by tensor."""


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


def _digest(t: torch.Tensor) -> str:
    """128-bit content hash of the stored bytes. xxh3 runs at tens of GB/s (blake2b at ~1 GB/s was the
    scan's bottleneck); it identifies byte-identical tensors, it is not meant to resist forgery."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
    return xxhash.xxh3_128_hexdigest(memoryview(raw))


_MADV_POPULATE_READ = 22  # Linux >= 5.14
try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _libc = None


def _populate(t: torch.Tensor) -> None:
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


def _read_pair(b_ck: "Checkpoint", v_ck: "Checkpoint", nb: str, nv: str, hash_tensors: bool):
    """Prefetch step of `scan` (runs one tensor ahead, in a thread): read, map and hash one pair."""
    a, b = b_ck.get(nb), v_ck.get(nv)
    _populate(a)
    _populate(b)
    return a, b, (_digest(a), _digest(b)) if hash_tensors else (None, None)


@dataclass
class TensorRecord:
    """One sub-parameter compared across the two checkpoints."""
    name: str
    group: str
    block: int | None
    sub: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    cos: float | None
    frob: float | None
    sigma: float | None
    base_norm: float
    var_norm: float
    diff_norm: float
    l1: tuple[float, float, float]  # sum|b|, sum|v|, sum|b-v|
    nonfinite: int
    identical: bool
    base_hash: str | None
    var_hash: str | None
    note: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def mean_defined(xs: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None (undefined metrics are reported, not averaged); None if none."""
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@dataclass
class BlockRecord:
    """Aggregates of one transformer block (eqs. 1-2 and the App. G/P worst cases)."""
    index: int
    n_sub: int
    cos: float | None          # eq. (1): mean over sub-parameters
    frob: float | None         # eq. (2)
    cos_min: float | None
    frob_max: float | None
    attn_cos: float | None
    attn_frob: float | None
    mlp_cos: float | None
    mlp_frob: float | None
    sigma: float | None
    nonfinite: list[str] = field(default_factory=list)
    undefined: list[str] = field(default_factory=list)  # zero-norm sub-parameters (cosine undefined)

    def shareable(self, tau_cos: float, tau_frob: float) -> bool:
        """Eq. (3). A block with non-finite weights, or an undefined metric on a sub-parameter that is not
        byte-identical, is never shareable."""
        if self.nonfinite or self.undefined or self.cos is None or self.frob is None:
            return False
        return self.cos >= tau_cos and self.frob <= tau_frob

    @classmethod
    def from_records(cls, index: int, recs: list[TensorRecord]) -> "BlockRecord":
        def by(kind):
            return [r for r in recs if r.kind == kind]
        l1 = [sum(r.l1[j] for r in recs if not r.nonfinite) for j in range(3)]
        return cls(
            index=index, n_sub=len(recs),
            cos=mean_defined(r.cos for r in recs), frob=mean_defined(r.frob for r in recs),
            cos_min=min((r.cos for r in recs if r.cos is not None), default=None),
            frob_max=max((r.frob for r in recs if r.frob is not None), default=None),
            attn_cos=mean_defined(r.cos for r in by("attn")), attn_frob=mean_defined(r.frob for r in by("attn")),
            mlp_cos=mean_defined(r.cos for r in by("mlp")), mlp_frob=mean_defined(r.frob for r in by("mlp")),
            sigma=l1[2] / (l1[0] + l1[1]) if (l1[0] + l1[1]) > 0 else None,
            nonfinite=[r.sub for r in recs if r.nonfinite],
            undefined=[r.sub for r in recs if not r.nonfinite and (r.cos is None or r.frob is None)
                       and not r.identical],
        )


@dataclass
class ScanResult:
    """Everything one pass over a (base, variant) pair measures."""
    base: str
    variant: str
    model_type: str
    tensors: list[TensorRecord]
    blocks: list[BlockRecord]
    tied_embeddings: bool
    elapsed_s: float
    bytes_read: int

    # -- headline numbers --------------------------------------------------------------------------
    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def n_identical(self) -> int:
        """Tensors whose stored bytes are identical in both checkpoints (by content hash)."""
        return sum(r.identical for r in self.tensors)

    @property
    def dedup_bytes(self) -> int:
        """Bytes of the variant that tensor-level hash dedup against the base would save: variant tensors
        whose content hash equals any base tensor's (ZipLLM-style exact dedup)."""
        base = {r.base_hash for r in self.tensors if r.base_hash}
        return sum(r.nbytes for r in self.tensors if r.var_hash and r.var_hash in base)

    @property
    def variant_bytes(self) -> int:
        return sum(r.nbytes for r in self.tensors)

    @property
    def mean_cos(self) -> float | None:
        """Mean over blocks of sim(i) (Table 1)."""
        return mean_defined(b.cos for b in self.blocks)

    @property
    def mean_frob(self) -> float | None:
        """Mean over blocks of epsilon(i): the paper's epsilon-bar."""
        return mean_defined(b.frob for b in self.blocks)

    @property
    def shadow_sigma(self) -> float | None:
        """Shadow-FT sigma over every tensor of the model."""
        l1 = [sum(r.l1[j] for r in self.tensors if not r.nonfinite) for j in range(3)]
        return l1[2] / (l1[0] + l1[1]) if l1[0] + l1[1] > 0 else None

    def tensor_mean(self, min_numel: int = 1000) -> dict[str, float | None]:
        """modeldelta-style whole-model mean over tensors with >= min_numel entries (embeddings and lm_head
        included): comparable to external-figures.md, not to the per-block means."""
        recs = [r for r in self.tensors if r.numel >= min_numel]
        return {"cos": mean_defined(r.cos for r in recs), "frob": mean_defined(r.frob for r in recs), "n": len(recs)}

    @property
    def nonfinite_tensors(self) -> list[str]:
        return [r.name for r in self.tensors if r.nonfinite]

    @property
    def undefined_tensors(self) -> list[str]:
        return [r.name for r in self.tensors if not r.nonfinite and (r.cos is None or r.frob is None)]

    def non_block(self) -> list[TensorRecord]:
        return [r for r in self.tensors if r.group != "block"]

    def share_mask(self, tau_cos: float, tau_frob: float) -> list[bool]:
        return share_mask(self.blocks, tau_cos, tau_frob)

    # -- tables and serialisation -----------------------------------------------------------------
    def block_table(self, tau_cos: float | None = None, tau_frob: float | None = None):
        """Per-block pandas DataFrame (one row per block); adds `shareable` when thresholds are given."""
        import pandas as pd
        df = pd.DataFrame([{k: v for k, v in asdict(b).items() if k not in ("nonfinite", "undefined")}
                           | {"flags": ", ".join(b.nonfinite + b.undefined)} for b in self.blocks])
        if tau_cos is not None and tau_frob is not None:
            df["shareable"] = self.share_mask(tau_cos, tau_frob)
        return df.set_index("index")

    def tensor_table(self):
        import pandas as pd
        rows = [{k: v for k, v in asdict(r).items() if k not in ("l1", "base_hash", "var_hash")}
                for r in self.tensors]
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        tm = self.tensor_mean()
        return {"base": self.base, "variant": self.variant, "model_type": self.model_type,
                "n_blocks": len(self.blocks), "n_tensors": self.n_tensors,
                "n_identical_tensors": self.n_identical, "dedup_bytes": self.dedup_bytes,
                "variant_bytes": self.variant_bytes, "mean_cos": self.mean_cos, "mean_frob": self.mean_frob,
                "shadow_sigma": self.shadow_sigma, "tensor_mean_cos": tm["cos"], "tensor_mean_frob": tm["frob"],
                "nonfinite_tensors": self.nonfinite_tensors, "undefined_tensors": self.undefined_tensors,
                "tied_embeddings": self.tied_embeddings, "elapsed_s": self.elapsed_s,
                "bytes_read": self.bytes_read}

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        mc, mf = self.mean_cos, self.mean_frob
        return (f"ScanResult({self.base} -> {self.variant}: {len(self.blocks)} blocks, {self.n_tensors} tensors, "
                f"{self.n_identical} identical, mean cos {mc if mc is None else round(mc, 6)}, mean eps "
                f"{mf if mf is None else round(mf, 5)}, {self.bytes_read / 2**20:.1f} MiB in {self.elapsed_s:.2f} s)")

    @classmethod
    def from_dict(cls, d: dict) -> "ScanResult":
        tensors = [TensorRecord(**{**t, "shape": tuple(t["shape"]), "l1": tuple(t["l1"])}) for t in d["tensors"]]
        blocks = [BlockRecord(**b) for b in d["blocks"]]
        return cls(**{**d, "tensors": tensors, "blocks": blocks})


def granularity_gap(result: ScanResult, tau_cos: float, tau_frob: float) -> dict:
    """Tensor-level identity vs block-level similarity (paper section 3.1), with the one-sentence statement."""
    mask = result.share_mask(tau_cos, tau_frob)
    saving = result.dedup_bytes / result.variant_bytes if result.variant_bytes else 0.0
    out = {"n_tensors": result.n_tensors, "n_identical_tensors": result.n_identical,
           "dedup_bytes": result.dedup_bytes, "variant_bytes": result.variant_bytes, "dedup_saving": saving,
           "n_blocks": len(result.blocks), "n_shareable": sum(mask), "mean_cos": result.mean_cos,
           "mean_frob": result.mean_frob, "tau_cos": tau_cos, "tau_frob": tau_frob}
    fmt = lambda x, spec: "undefined" if x is None else format(x, spec)  # noqa: E731
    out["sentence"] = (
        f"{result.n_identical} of {result.n_tensors} tensors are byte-identical, so tensor-hash dedup saves "
        f"{saving:.1%} of the variant's {result.variant_bytes / 2**20:.1f} MiB; yet at the block level the mean "
        f"cosine is {fmt(result.mean_cos, '.5f')} and the mean relative Frobenius distance "
        f"{fmt(result.mean_frob, '.4f')}, and {sum(mask)}/{len(mask)} blocks pass eq. (3) at "
        f"tau_cos={tau_cos:g}, tau_frob={tau_frob:g}.")
    return out


def aggregation_stats(result: ScanResult) -> dict:
    """Appendix G / Table 9 and Appendix P statistics: mean-over-K vs max-over-K and the global extremes."""
    recs = [r for r in result.tensors if r.group == "block"]
    frobs = [(r.frob, r.name) for r in recs if r.frob is not None]
    coss = [(r.cos, r.name) for r in recs if r.cos is not None]
    gmax, gmin = max(frobs, default=(None, None)), min(coss, default=(None, None))
    return {"mean_eps": result.mean_frob,
            "maxK_mean": mean_defined(b.frob_max for b in result.blocks),
            "global_max": gmax[0], "global_max_tensor": gmax[1],
            "mean_cos": result.mean_cos, "minK_mean_cos": mean_defined(b.cos_min for b in result.blocks),
            "global_min_cos": gmin[0], "global_min_cos_tensor": gmin[1]}


def subparam_matrix(result: ScanResult, metric: str = "frob"):
    """Blocks x sub-parameters table of one per-tensor metric ("cos" or "frob"): the App. G/P breakdown."""
    import pandas as pd
    rows = [{"block": r.block, "sub": r.sub, metric: getattr(r, metric)} for r in result.tensors
            if r.group == "block"]
    return pd.DataFrame(rows).pivot(index="block", columns="sub", values=metric)


def share_mask(blocks: list[BlockRecord], tau_cos: float, tau_frob: float) -> list[bool]:
    """Eq. (3) for each block, in block order."""
    return [b.shareable(tau_cos, tau_frob) for b in blocks]


def _as_checkpoint(x) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else open_checkpoint(x)


def _tied(ck: Checkpoint) -> bool:
    return bool(ck.config.get("tie_word_embeddings", ck.config.get("text_config", {}).get(
        "tie_word_embeddings", False)))


def pair_names(base: Checkpoint, var: Checkpoint) -> tuple[list[tuple[str, str, str]], bool]:
    """Check the two checkpoints are comparable and list (name, base_name, var_name) to read.

    Raises:
        ScanMismatch: different architecture or depth, a tensor on one side only, or a shape mismatch; the
            message names the first offending tensor and both shapes.
    """
    for key in ("model_type", "num_hidden_layers", "hidden_size"):
        vb, vv = base.config.get(key), var.config.get(key)
        if vb is not None and vv is not None and vb != vv:
            raise ScanMismatch(f"the checkpoints are of different architectures: {key} is {vb!r} in "
                               f"{base.ref} but {vv!r} in {var.ref}. Compare two checkpoints of one architecture.")
    lm, emb_b = "lm_head.weight", [n for n in base.names if n.endswith("embed_tokens.weight")]
    emb_v = [n for n in var.names if n.endswith("embed_tokens.weight")]
    b_names, v_names = set(base.names), set(var.names)
    alias_b, alias_v = {}, {}
    # A tied checkpoint stores no lm_head: its effective lm_head is the embedding matrix.
    if lm in v_names and lm not in b_names and emb_b and _tied(base):
        alias_b[lm] = emb_b[0]
    if lm in b_names and lm not in v_names and emb_v and _tied(var):
        alias_v[lm] = emb_v[0]
    names = [n for n in base.names] + [n for n in alias_b]
    only_b = sorted(b_names - v_names - set(alias_v))
    only_v = sorted(v_names - b_names - set(alias_b))
    if only_b or only_v:
        side, n = (base.ref, only_b[0]) if only_b else (var.ref, only_v[0])
        raise ScanMismatch(f"tensor {n!r} exists only in {side} ({len(only_b)} tensor(s) only in the base, "
                           f"{len(only_v)} only in the variant). The checkpoints do not share one layout: check "
                           f"that both are complete and of the same architecture.")
    out = []
    for n in names:
        nb, nv = alias_b.get(n, n), alias_v.get(n, n)
        sb, sv = base.info(nb).shape, var.info(nv).shape
        if sb != sv:
            raise ScanMismatch(f"shape mismatch at tensor {n!r}: {sb} in {base.ref} vs {sv} in {var.ref}. "
                               f"The checkpoints are of different sizes or architectures.")
        out.append((n, nb, nv))
    return out, _tied(base) and _tied(var)


def scan(base, variant, *, progress: bool | None = None, hash_tensors: bool = True,
         chunk: int = CHUNK_ELEMS, workers: int | None = None) -> ScanResult:
    """Compare two checkpoints tensor by tensor, holding a few tensors in memory at a time.

    Every stored byte is read once: a prefetch thread reads (memory-mapped), maps and hashes the next pair
    while `workers` threads compute the current pair's sums chunk by chunk.

    Args:
        base, variant: `Checkpoint`s or references (`resolve` accepts directories and hub ids).
        progress: show a tqdm bar over bytes; default: when the pair is larger than 256 MiB.
        hash_tensors: hash every tensor's bytes (identity count, dedup saving); done in the prefetch thread.
        chunk: float32 chunk size in elements (see `tensor_stats`).
        workers: threads computing the sums; default `torch.get_num_threads()`. Results do not depend on it.

    Returns:
        ScanResult with per-tensor records and per-block aggregates.

    Raises:
        ScanMismatch: the checkpoints are not comparable (see `pair_names`).
        CheckpointError: a file is missing, damaged or truncated.
    """
    b_ck, v_ck = _as_checkpoint(base), _as_checkpoint(variant)
    triples, tied = pair_names(b_ck, v_ck)
    arch, roles = layout([t[0] for t in triples], b_ck.model_type)
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
            nxt = reader.submit(_read_pair, b_ck, v_ck, triples[0][1], triples[0][2], hash_tensors)
            for k, (name, nb, nv) in enumerate(triples):
                a, b, (hb, hv) = nxt.result()
                if k + 1 < len(triples):  # read one pair ahead
                    nxt = reader.submit(_read_pair, b_ck, v_ck, triples[k + 1][1], triples[k + 1][2],
                                        hash_tensors)
                s = tensor_stats(a, b, chunk, pool)
                role: Role = roles[name]
                note = []
                if s["nonfinite"]:
                    note.append(f"{s['nonfinite']} non-finite values")
                if not s["nonfinite"] and (s["na2"] == 0 or s["nb2"] == 0):
                    note.append("zero norm: cosine undefined"
                                + ("" if s["na2"] else ", Frobenius ratio undefined"))
                if nb != nv or nb != name:
                    note.append(f"tied embedding compared as {nb if nb != name else nv}")
                records.append(TensorRecord(
                    name=name, group=role.group, block=role.block, sub=role.sub, kind=role.kind,
                    shape=tuple(a.shape), dtype=str(b.dtype).replace("torch.", ""),
                    nbytes=b.numel() * b.element_size(),
                    cos=cosine(s), frob=rel_frob(s), sigma=shadow_sigma(s),
                    base_norm=math.sqrt(s["na2"]) if math.isfinite(s["na2"]) else float("nan"),
                    var_norm=math.sqrt(s["nb2"]) if math.isfinite(s["nb2"]) else float("nan"),
                    diff_norm=math.sqrt(s["d2"]) if math.isfinite(s["d2"]) else float("nan"),
                    l1=(s["l1a"], s["l1b"], s["l1d"]), nonfinite=s["nonfinite"],
                    identical=((hb == hv and a.dtype == b.dtype) if hb
                               else (s["d2"] == 0 and not s["nonfinite"])),
                    base_hash=hb, var_hash=hv, note="; ".join(note)))
                bar.update(a.numel() * a.element_size() + b.numel() * b.element_size())
                del a, b
    finally:
        bar.close()
        reader.shutdown(wait=True, cancel_futures=True)
        if pool:
            pool.shutdown()
    n_blocks = 1 + max(r.block for r in records if r.group == "block")
    blocks = [BlockRecord.from_records(i, [r for r in records if r.block == i and r.group == "block"])
              for i in range(n_blocks)]
    return ScanResult(base=b_ck.ref, variant=v_ck.ref, model_type=arch.name, tensors=records, blocks=blocks,
                      tied_embeddings=tied, elapsed_s=time.perf_counter() - t0, bytes_read=total)
