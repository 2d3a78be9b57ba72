"""Share plans: the scan's per-block table and eq. (3) decision, cached as JSON beside both checkpoints'
fingerprints and the thresholds. A repeat load skips the scan; a plan whose fingerprints no longer match the
checkpoints is stale and is rescanned."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..analyses.records import BlockRecord, share_mask
from ..analyses.scan import scan
from ..io.checkpoint import Checkpoint
from ..io.references import open_checkpoint

__all__ = ["DEFAULT_PLAN_CACHE", "PLAN_VERSION", "SharePlan", "plan_path", "share_plan"]

DEFAULT_PLAN_CACHE = Path(os.environ.get("LINKER_NB_PLAN_CACHE", "~/.cache/linker_nb/plans")).expanduser()
PLAN_VERSION = 2  # 2: the file carries a checksum of its contents


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
        return share_mask([BlockRecord(**b) for b in self.blocks], tc, tf)

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


_PLAN_TYPES = {"base": str, "variant": str, "base_fingerprint": str, "variant_fingerprint": str,
               "tau_cos": float, "tau_frob": float, "shared": list, "blocks": list, "scan_s": float, "version": int}


_BLOCK_FIELDS = {f.name: str(f.type) for f in fields(BlockRecord)}


def _checksum(fields: dict) -> str:
    """sha256 of a plan's fields: a cached plan edited or damaged in any value is rescanned, not trusted."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _read_plan(path: Path, tau_cos: float, tau_frob: float) -> tuple[SharePlan | None, str]:
    """(plan, "") from a cache file, or (None, why) when it cannot be trusted: not JSON, other fields or
    types, a checksum that does not match, another PLAN_VERSION, other thresholds, or a `shared` list that
    its own block table contradicts."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON and UTF-8 errors
        return None, f"unreadable: {str(exc)[:120]}"
    if not isinstance(raw, dict) or set(raw) != set(_PLAN_TYPES) | {"checksum"}:
        return None, "not a share-plan object of this version"
    if raw.pop("checksum") != _checksum(raw):
        return None, "its checksum does not match its contents (edited or damaged)"
    for key, typ in _PLAN_TYPES.items():
        value = raw[key]
        ok = (isinstance(value, (int, float)) and math.isfinite(value)) if typ is float else isinstance(value, typ)
        if not ok or isinstance(value, bool):
            return None, f"{key} is {str(value)[:60]}, not a {typ.__name__}"
    if raw["version"] != PLAN_VERSION:
        return None, f"version {raw['version']}, this is {PLAN_VERSION}"
    if (raw["tau_cos"], raw["tau_frob"]) != (tau_cos, tau_frob):
        return None, f"thresholds {raw['tau_cos']}, {raw['tau_frob']} instead of {tau_cos}, {tau_frob}"
    for i, block in enumerate(raw["blocks"]):
        why = _block_problem(block, i)
        if why:
            return None, f"block {i} {why}"
    plan = SharePlan(**raw)
    if plan.shared != [i for i, m in enumerate(plan.mask()) if m]:
        return None, "its shared blocks contradict its own block table"
    return plan, ""


def _block_problem(block, i: int) -> str:
    """What makes `block` not the `asdict` of a `BlockRecord` numbered i ("" when nothing)."""
    if not isinstance(block, dict) or set(block) != set(_BLOCK_FIELDS):
        return "does not have a BlockRecord's fields"
    for key, kind in _BLOCK_FIELDS.items():
        v = block[key]
        if kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        elif kind == "list[str]":
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        else:  # "float | None": a number (NaN allowed: a metric may be undefined) or null
            ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            return f"has {key} = {str(v)[:60]}"
    return "" if block["index"] == i else f"is numbered {block['index']}"


def share_plan(base, variant, tau_cos: float, tau_frob: float, *, cache_dir: str | os.PathLike | None = None,
               refresh: bool = False) -> tuple[SharePlan, str]:
    """The share plan of a pair: from the cache when it is current, else by `metrics.scan` (and cached).

    Args:
        base, variant: references or open `Checkpoint`s.
        tau_cos, tau_frob: eq. (3) thresholds.
        cache_dir: plan directory (default `DEFAULT_PLAN_CACHE`, `~/.cache/linker_nb/plans`).
        refresh: rescan even when a current plan exists.

    Returns:
        (plan, status) with status "cached", "scanned" (no plan, or an unusable one: damaged or of another
        version, which is rescanned with a warning) or "stale" (a checkpoint changed: rescanned).
    """
    b, v = open_checkpoint(base), open_checkpoint(variant)
    path = plan_path(cache_dir or DEFAULT_PLAN_CACHE, b, v, tau_cos, tau_frob)
    fb, fv = b.fingerprint(), v.fingerprint()
    status = "scanned"
    if path.exists() and not refresh:
        plan, why = _read_plan(path, tau_cos, tau_frob)
        if plan is None:  # damaged, or written by another version: rescan and overwrite, and say so
            warnings.warn(f"share plan {path} is not usable ({why}); rescanning and overwriting it.", stacklevel=2)
        elif (plan.base_fingerprint, plan.variant_fingerprint) == (fb, fv):
            return plan, "cached"
        else:
            status = "stale"
    t0 = time.perf_counter()
    result = scan(b, v)
    mask = result.share_mask(tau_cos, tau_frob)
    plan = SharePlan(base=b.ref, variant=v.ref, base_fingerprint=fb, variant_fingerprint=fv, tau_cos=tau_cos,
                     tau_frob=tau_frob, shared=[i for i, m in enumerate(mask) if m],
                     blocks=[asdict(blk) for blk in result.blocks], scan_s=time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fields_ = asdict(plan)
    tmp.write_text(json.dumps(fields_ | {"checksum": _checksum(fields_)}, indent=1))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a plan
    return plan, status
