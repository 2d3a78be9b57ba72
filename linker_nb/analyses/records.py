"""What one scan measures, as records: per tensor (sub-parameter), per block (eqs. 1-2), per pair.

Per block i (paper eqs. 1-2): the mean over its K sub-parameters of cosine and of the relative Frobenius
distance epsilon, plus the min-cosine and max-over-K epsilon of Appendices G/P. Eq. (3) is
`BlockRecord.shareable`; `share_mask` applies it to a list of blocks, and every other place asks it.

What a sub-parameter is comes from the architecture record (`io.architectures`): a stored tensor, or one part of
a fused tensor (Phi-3's qkv_proj counts as q, k and v; gate_up_proj as gate and up), so K and the sub-means
match the unfused families. MoE aggregation (`AGGREGATION`): every expert matrix is a sub-parameter of its
block, like any other matrix, and so is the router; the MLP sub-mean is the mean over all expert (and shared
expert) matrices, the router has its own (`router_cos`, `router_frob`), and `ScanResult.expert_table` gives
the per-expert means. Block tensors the record does not know enter the block mean but no sub-mean, and are
listed (`BlockRecord.unknown`, `ScanResult.unknown_kind_tensors`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

from ..io.architectures import MLP_KINDS

__all__ = ["TensorRecord", "BlockRecord", "ScanResult", "mean_defined", "share_mask", "AGGREGATION"]

AGGREGATION = ("MoE blocks: every expert matrix (gate, up, down of each expert) and the router are sub-parameters "
               "of the block, so a block's mean cos / eps (eqs. 1-2) averages over attention, norms, router and all "
               "expert matrices alike; the MLP sub-mean is the mean over the expert matrices (each expert weighs "
               "the same); the router has its own sub-mean; per-expert means are in the blocks x experts table.")


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
    role: str = ""              # the record's role ("q", "gate", "router", ...); "" when unknown
    expert: int | None = None   # expert index of an expert matrix

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
    router_cos: float | None = None
    router_frob: float | None = None
    n_experts: int = 0
    unknown: list[str] = field(default_factory=list)    # sub-parameters of unknown kind: in no sub-mean

    def shareable(self, tau_cos: float, tau_frob: float) -> bool:
        """Eq. (3). A block with non-finite weights, or an undefined metric on a sub-parameter that is not
        byte-identical, is never shareable."""
        if self.nonfinite or self.undefined or self.cos is None or self.frob is None:
            return False
        return self.cos >= tau_cos and self.frob <= tau_frob

    @classmethod
    def from_records(cls, index: int, recs: list[TensorRecord]) -> "BlockRecord":
        def by(*kinds):
            return [r for r in recs if r.kind in kinds]
        l1 = [sum(r.l1[j] for r in recs if not r.nonfinite) for j in range(3)]
        return cls(
            index=index, n_sub=len(recs),
            cos=mean_defined(r.cos for r in recs), frob=mean_defined(r.frob for r in recs),
            cos_min=min((r.cos for r in recs if r.cos is not None), default=None),
            frob_max=max((r.frob for r in recs if r.frob is not None), default=None),
            attn_cos=mean_defined(r.cos for r in by("attn")), attn_frob=mean_defined(r.frob for r in by("attn")),
            mlp_cos=mean_defined(r.cos for r in by(*MLP_KINDS)), mlp_frob=mean_defined(r.frob for r in by(*MLP_KINDS)),
            sigma=l1[2] / (l1[0] + l1[1]) if (l1[0] + l1[1]) > 0 else None,
            nonfinite=[r.sub for r in recs if r.nonfinite],
            undefined=[r.sub for r in recs if not r.nonfinite and (r.cos is None or r.frob is None)
                       and not r.identical],
            router_cos=mean_defined(r.cos for r in by("router")),
            router_frob=mean_defined(r.frob for r in by("router")),
            n_experts=len({r.expert for r in recs if r.expert is not None}),
            unknown=[r.sub for r in recs if r.kind == "unknown"],
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
    architecture: str = ""      # the record used ("generic" when the model type has none)

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

    @property
    def unknown_kind_tensors(self) -> list[str]:
        """Block tensors whose kind the architecture record does not know: in the block means, in no sub-mean."""
        return [r.name for r in self.tensors if r.group == "block" and r.kind == "unknown"]

    @property
    def n_experts(self) -> int:
        return max((b.n_experts for b in self.blocks), default=0)

    def expert_table(self, metric: str = "frob"):
        """Blocks x experts table (pandas DataFrame) of the mean over each expert's matrices of "cos" or "frob";
        empty for a dense model."""
        import pandas as pd
        rows = [{"block": r.block, "expert": r.expert, metric: getattr(r, metric)} for r in self.tensors
                if r.group == "block" and r.expert is not None]
        if not rows:
            return pd.DataFrame()
        return pd.DataFrame(rows).groupby(["block", "expert"])[metric].mean().unstack("expert")

    def router_table(self):
        """Per block: the router's cosine and relative Frobenius distance (pandas DataFrame; empty if dense)."""
        import pandas as pd
        rows = [{"block": b.index, "router_cos": b.router_cos, "router_frob": b.router_frob} for b in self.blocks
                if b.router_cos is not None or b.router_frob is not None]
        return pd.DataFrame(rows).set_index("block") if rows else pd.DataFrame()

    def non_block(self) -> list[TensorRecord]:
        return [r for r in self.tensors if r.group != "block"]

    def share_mask(self, tau_cos: float, tau_frob: float) -> list[bool]:
        return share_mask(self.blocks, tau_cos, tau_frob)

    # -- tables and serialisation -----------------------------------------------------------------
    def block_table(self, tau_cos: float | None = None, tau_frob: float | None = None):
        """Per-block pandas DataFrame (one row per block); adds `shareable` when thresholds are given."""
        import pandas as pd
        drop = ("nonfinite", "undefined", "unknown") + (() if self.n_experts else ("router_cos", "router_frob",
                                                                                   "n_experts"))
        df = pd.DataFrame([{k: v for k, v in asdict(b).items() if k not in drop}
                           | {"flags": ", ".join(b.nonfinite + b.undefined + [f"unknown kind: {u}" for u in b.unknown])}
                           for b in self.blocks])
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
                "architecture": self.architecture, "unknown_kind_tensors": self.unknown_kind_tensors,
                "n_experts": self.n_experts,
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
