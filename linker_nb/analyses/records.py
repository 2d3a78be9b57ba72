"""What one scan measures, as records: per tensor (sub-parameter), per block (eqs. 1-2), per pair.

Per block i (paper eqs. 1-2): the mean over its K sub-parameters of cosine and of the relative Frobenius
distance epsilon, plus the min-cosine and max-over-K epsilon of Appendices G/P. Eq. (3) is
`BlockRecord.shareable`; `share_mask` applies it to a list of blocks, and every other place asks it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

__all__ = ["TensorRecord", "BlockRecord", "ScanResult", "mean_defined", "share_mask"]


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
    # What "byte-identical" compares: the stored bytes of each side; for GGUF the quantized blocks (the metrics
    # are computed on the dequantized float32 values).
    identity_basis: str = "stored bytes"

    # -- headline numbers --------------------------------------------------------------------------
    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def n_identical(self) -> int:
        """Tensors whose stored bytes (and stored type) are identical in both checkpoints, by content hash; see
        `identity_basis`."""
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
                "tied_embeddings": self.tied_embeddings, "identity_basis": self.identity_basis,
                "elapsed_s": self.elapsed_s,
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


def share_mask(blocks: list[BlockRecord], tau_cos: float, tau_frob: float) -> list[bool]:
    """Eq. (3) for each block, in block order."""
    return [b.shareable(tau_cos, tau_frob) for b in blocks]
