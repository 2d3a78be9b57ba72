"""The panel's store: one directory per scanned pair, written atomically, found again by fingerprints.

Layout of a store directory:

    pairs/<key>/summary.json    the pair (references, labels), both fingerprints, `ScanResult.summary()`
    pairs/<key>/blocks.parquet  one row per block (`BlockRecord`)
    pairs/<key>/tensors.parquet one row per tensor (`TensorRecord`; l1 as three columns)
    failures/<pair id>.json     the last error of a pair that could not be scanned (removed on success)
    tmp/                        entries being written

`<key>` is derived from the two checkpoints' `Checkpoint.fingerprint()` alone, so the same pair of files
always lands in the same place. An entry is written under tmp/ and renamed into pairs/ in one `os.replace`:
a reader sees a whole entry or none, and when two workers finish the same pair (a task re-run after its
worker was presumed lost) the second rename finds the key taken and discards its copy, so each pair is
stored exactly once. A rewritten checkpoint gets a new fingerprint, hence a new key: stale entries are never
read for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from .records import BlockRecord, ScanResult, TensorRecord

__all__ = ["STORE_VERSION", "Store", "entry_key", "pair_id"]

STORE_VERSION = 1  # bumped when an entry's files change meaning; entries of another version are rescanned
_TMP_MAX_AGE_S = 6 * 3600  # leftovers of a killed worker older than this are removed by `Store.clean_tmp`


def entry_key(base_fingerprint: str, variant_fingerprint: str) -> str:
    """The store key of a pair: a hash of both fingerprints, in order (base -> variant differs from the reverse)."""
    return hashlib.sha256(f"{base_fingerprint}->{variant_fingerprint}".encode()).hexdigest()[:24]


def pair_id(base_ref: str, variant_ref: str) -> str:
    """A stable name for a pair of references (failure records, Dask task keys), before anything is resolved."""
    return hashlib.sha256(f"{base_ref}\0{variant_ref}".encode()).hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _tensor_rows(result: ScanResult) -> list[dict]:
    rows = []
    for r in result.tensors:
        d = asdict(r)
        l1 = d.pop("l1")
        rows.append({**d, "shape": list(r.shape), "l1_base": l1[0], "l1_var": l1[1], "l1_diff": l1[2]})
    return rows


def _block_rows(result: ScanResult) -> list[dict]:
    return [asdict(b) for b in result.blocks]


class Store:
    """A directory of per-pair scan results (see the module docstring for the layout).

    Args:
        root: the store directory; created when missing.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        for sub in ("pairs", "failures", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, {len(self.keys())} pairs, {len(self.failures())} failures)"

    # -- reading -----------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / "pairs" / key

    def keys(self) -> list[str]:
        """Keys of every complete entry."""
        return sorted(p.name for p in (self.root / "pairs").iterdir() if (p / "summary.json").is_file())

    def summary(self, key: str) -> dict | None:
        """An entry's summary.json, or None when the key is absent or was written by another store version."""
        f = self.path(key) / "summary.json"
        if not f.is_file():
            return None
        try:
            d = json.loads(f.read_text())
        except ValueError:  # a damaged entry is rescanned (and replaced by `write`)
            return None
        return d if d.get("store_version") == STORE_VERSION else None

    def has(self, base_fingerprint: str, variant_fingerprint: str) -> str | None:
        """The key when an entry for these fingerprints is stored, else None."""
        key = entry_key(base_fingerprint, variant_fingerprint)
        s = self.summary(key)
        ok = s is not None and (s["base_fingerprint"], s["variant_fingerprint"]) == (base_fingerprint,
                                                                                      variant_fingerprint)
        return key if ok else None

    def load(self, key: str) -> ScanResult:
        """The stored scan as a `ScanResult` (per-tensor and per-block records read back from Parquet).

        Raises:
            KeyError: no complete entry under `key`.
        """
        import pyarrow.parquet as pq
        s = self.summary(key)
        if s is None:
            raise KeyError(f"no stored pair {key!r} in {self.root}")
        tensors = []
        for d in pq.read_table(self.path(key) / "tensors.parquet").to_pylist():
            l1 = (d.pop("l1_base"), d.pop("l1_var"), d.pop("l1_diff"))
            tensors.append(TensorRecord(**{**d, "shape": tuple(d["shape"]), "l1": l1}))
        blocks = [BlockRecord(**d) for d in pq.read_table(self.path(key) / "blocks.parquet").to_pylist()]
        sc = s["scan"]
        return ScanResult(base=sc["base"], variant=sc["variant"], model_type=sc["model_type"], tensors=tensors,
                          blocks=blocks, tied_embeddings=sc["tied_embeddings"], elapsed_s=sc["elapsed_s"],
                          bytes_read=sc["bytes_read"],
                          **{k: sc[k] for k in ("identity_basis", "architecture") if k in sc})

    def blocks(self, key: str):
        """The per-block rows of an entry as a pandas DataFrame (no `ScanResult` rebuilt)."""
        import pandas as pd
        return pd.read_parquet(self.path(key) / "blocks.parquet")

    # -- writing -----------------------------------------------------------------------------------------
    def write(self, result: ScanResult, base_fingerprint: str, variant_fingerprint: str,
              pair: dict | None = None) -> tuple[str, bool]:
        """Store a scan under its fingerprints' key, atomically.

        Args:
            result: the scan.
            base_fingerprint, variant_fingerprint: `Checkpoint.fingerprint()` of the two checkpoints scanned.
            pair: what to record about the pair besides the scan (labels, references, family).

        Returns:
            (key, written): written is False when a complete entry already held the key (another worker
            finished the same pair first); the store is unchanged then.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq
        key = entry_key(base_fingerprint, variant_fingerprint)
        tmp = self.root / "tmp" / f"{key}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            pq.write_table(pa.Table.from_pylist(_tensor_rows(result)), tmp / "tensors.parquet")
            pq.write_table(pa.Table.from_pylist(_block_rows(result)), tmp / "blocks.parquet")
            _write_json(tmp / "summary.json", {
                "store_version": STORE_VERSION, "key": key, "base_fingerprint": base_fingerprint,
                "variant_fingerprint": variant_fingerprint, "pair": pair or {}, "written": time.time(),
                "scan": result.summary()})
            dest = self.path(key)
            if dest.exists() and self.summary(key) is None:  # damaged or older-version entry: replace it
                shutil.rmtree(dest, ignore_errors=True)
            try:
                os.replace(tmp, dest)  # atomic; fails when dest is a non-empty directory
            except OSError:
                if self.summary(key) is None:
                    raise
                return key, False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return key, True

    # -- failures ----------------------------------------------------------------------------------------
    def record_failure(self, base_ref: str, variant_ref: str, error: str, pair: dict | None = None) -> None:
        """Remember why a pair could not be scanned (the rerun tries it again)."""
        _write_json(self.root / "failures" / f"{pair_id(base_ref, variant_ref)}.json",
                    {"base_ref": base_ref, "variant_ref": variant_ref, "error": error, "pair": pair or {},
                     "written": time.time()})

    def clear_failure(self, base_ref: str, variant_ref: str) -> None:
        (self.root / "failures" / f"{pair_id(base_ref, variant_ref)}.json").unlink(missing_ok=True)

    def failures(self) -> list[dict]:
        """Every recorded failure, oldest first."""
        out = []
        for f in (self.root / "failures").glob("*.json"):
            try:
                out.append(json.loads(f.read_text()))
            except (ValueError, OSError):
                continue
        return sorted(out, key=lambda d: d.get("written", 0))

    def clean_tmp(self, max_age_s: float = _TMP_MAX_AGE_S) -> int:
        """Remove partial entries left by killed workers (older than `max_age_s`, so that a panel writing to
        the same store right now keeps its own). Returns how many were removed."""
        n, now = 0, time.time()
        for p in (self.root / "tmp").iterdir():
            try:
                if now - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
            except FileNotFoundError:
                continue
        return n
