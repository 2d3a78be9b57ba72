"""The spectral view of post-training: what happens to the SVD of each linear sub-parameter.

Per 2-D tensor of a block (q/k/v/o, gate/up/down), W_b = U_b S_b V_bᵀ and W_v = U_v S_v V_vᵀ:

* **Singular-value scaling** (He & Cao 2025): the ratios σ_i(W_v)/σ_i(W_b) over the spectrum (σ_i(W_b) above
  `RATIO_RTOL`·σ_1); their mean and std per matrix. A std near 0 is near-uniform scaling.
* **Rotation consistency** on the top r pairs: Q_U = U_bᵀU_v and Q_V = V_bᵀV_v (r×r).
  ``orth_u`` = ‖Q_UᵀQ_U − I‖_F/√r is 0 when the top-r left subspace is kept (Q_U orthogonal), ``orth_v`` likewise;
  ``consistency`` = 1 − ‖Q_U − Q_V‖_F/(‖Q_U‖_F + ‖Q_V‖_F) lies in [0, 1] (triangle inequality); it is 1 when
  both sides rotate by the same Q (W_v = U_b Q S Qᵀ V_bᵀ) and ≈ 1 − 1/√2 ≈ 0.29 when Q_U and Q_V are unrelated.
  For orthogonal Q_U, Q_V the denominator is 2√r; normalising by the norms instead keeps an unrelated model from
  scoring high merely because its Q's are small (subspaces that barely overlap, shown by the orthogonality defects).
  SVD's sign ambiguity flips (u_i, v_i) together, which flips column (or row) i of Q_U and Q_V alike, and a
  rotation inside a degenerate singular space acts on U and V alike, so the score needs no sign alignment.
* **Effective rank** (Timber; Roy & Vetterli at γ = 1): p_i = σ_i^γ / Σ_j σ_j^γ, eRank = exp(−Σ p_i log p_i),
  of W_b, W_v and ΔW = W_v − W_b.
* **LoRA-extraction baseline** (App. K): the smallest r with ‖ΔW − ΔW_r‖_F/‖ΔW‖_F ≤ tol, i.e.
  √(Σ_{i>r} σ_i²(ΔW)) ≤ tol·‖ΔW‖_F, stored as r(d_in + d_out) numbers; the block ratio is Σ r(d_in+d_out) over
  Σ d_in·d_out of the block's linears (Table 11: > 1 means LoRA costs more than the block).
The ablations on a loaded model (SV swap, broken rotation) and App. Q's gradient locality are in
`spectral_ablations`.

SVD cost: exact `torch.linalg.svd` when min(d_out, d_in) ≤ `EXACT_MAX_DIM`; above it `torch.svd_lowrank`
(Halko et al. randomized range finder, `RANDOMIZED_NITER` power iterations, `OVERSAMPLE` extra columns) for the top
`RANDOMIZED_K` pairs. Then the σ-ratio and eRank use the top-k spectrum only (eRank over the top k is then an
approximation, flagged by ``method == "randomized"``), the LoRA rank is found within the top k using the exact
‖ΔW‖_F (None when the top k do not reach the tolerance: the ratio is then a lower bound), and the ablations
edit the top k pairs only (W + U_k(S'_k − S_k)V_kᵀ). `randomized_error` measures the approximation against
exact SVD on a sample; the tests check it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..io.architectures import block_count, layout
from ..io.models import torch_threads
from ..io.pairing import pair_names
from ..io.references import open_checkpoint
from .records import mean_defined

__all__ = ["EXACT_MAX_DIM", "RANDOMIZED_K", "svd", "randomized_error", "sv_ratios", "rotation_scores", "erank",
           "lora_rank", "compare_matrices", "MatrixSpectrum", "SpectralResult", "spectral_scan", "check_blocks",
           "check_params", "count_blocks"]

EXACT_MAX_DIM = 1024     # min(d_out, d_in) up to which exact SVD is cheap on a CPU (~0.3 s at 1024 x 4096)
RANDOMIZED_K = 256       # singular pairs kept by the randomized method
RANDOMIZED_NITER = 4     # power iterations: errors ~1e-3 on slowly decaying weight spectra (see tests)
OVERSAMPLE = 16
SMALL_DIM = 256          # scans whose matrices all have min(d_out, d_in) <= this run single-threaded
RATIO_RTOL = 1e-6        # σ_i(W_b) below this fraction of σ_1 is numerically zero: no ratio taken


# -- primitives --------------------------------------------------------------------------------------------------
def svd(w: torch.Tensor, k: int | None = None, *, method: str = "auto", niter: int = RANDOMIZED_NITER,
        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Thin SVD of a matrix in float32, exact or randomized.

    Args:
        w: [d_out, d_in].
        k: pairs wanted from the randomized method (default `RANDOMIZED_K`); exact returns all min(d_out, d_in).
        method: "exact", "randomized", or "auto" (exact when min(d_out, d_in) <= EXACT_MAX_DIM).
        seed: seeds the randomized sketch (the global RNG is left untouched).

    Returns:
        (U [d_out, k], S [k] descending, V [d_in, k], method used); W ≈ U diag(S) Vᵀ.
    """
    if w.dim() != 2:
        raise ValueError(f"svd needs a matrix, got shape {tuple(w.shape)}")
    if method not in ("auto", "exact", "randomized"):
        raise ValueError(f"unknown SVD method {method!r}; use 'auto', 'exact' or 'randomized'")
    w = w.float()
    small = min(w.shape)
    if method == "exact" or (method == "auto" and small <= EXACT_MAX_DIM):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u, s, vh.mT, "exact"
    k = min(k or RANDOMIZED_K, small)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(w, q=min(k + OVERSAMPLE, small), niter=niter)
    return u[:, :k], s[:k], v[:, :k], "randomized"


def randomized_error(w: torch.Tensor, k: int = RANDOMIZED_K, niter: int = RANDOMIZED_NITER, seed: int = 0) -> dict:
    """How far the randomized top-k SVD is from the exact one on one matrix.

    Returns:
        dict with sigma_rel_err = max_i |σ̃_i − σ_i| / σ_1, energy_rel_err = relative error of Σ σ_i² over the
        top k, and recon_excess = ‖W − W̃_k‖_F / ‖W − W_k‖_F − 1 (0 for the optimal rank-k approximation).
    """
    u, s, v, _ = svd(w, k, method="randomized", niter=niter, seed=seed)
    k = s.numel()
    ue, se, ve, _ = svd(w, method="exact")
    w = w.float()
    best = torch.linalg.norm(w - (ue[:, :k] * se[:k]) @ ve[:, :k].mT)
    got = torch.linalg.norm(w - (u * s) @ v.mT)
    return {"k": k, "sigma_rel_err": float((s - se[:k]).abs().max() / se[0]),
            "energy_rel_err": float(abs(s.square().sum() - se[:k].square().sum()) / se[:k].square().sum()),
            "recon_excess": float(got / best - 1) if best > 0 else float(got)}


def sv_ratios(s_base: torch.Tensor, s_var: torch.Tensor) -> torch.Tensor:
    """σ_i(W_v)/σ_i(W_b) for i where σ_i(W_b) > RATIO_RTOL·σ_1(W_b) (over the shorter of the two spectra)."""
    n = min(s_base.numel(), s_var.numel())
    sb, sv = s_base[:n].double(), s_var[:n].double()
    keep = sb > RATIO_RTOL * sb[0] if n else sb > 0
    return (sv[keep] / sb[keep]).float()


def rotation_scores(u_b: torch.Tensor, v_b: torch.Tensor, u_v: torch.Tensor, v_v: torch.Tensor,
                    r: int) -> dict[str, float]:
    """Orthogonality defects of Q_U, Q_V and their consistency on the top r pairs (module docstring).

    Args:
        u_b, u_v: [d_out, ≥r] left singular vectors; v_b, v_v: [d_in, ≥r] right ones, in descending σ order.
    """
    r = min(r, u_b.shape[1], u_v.shape[1])
    qu = u_b[:, :r].double().mT @ u_v[:, :r].double()
    qv = v_b[:, :r].double().mT @ v_v[:, :r].double()
    eye = torch.eye(r, dtype=torch.float64)
    root = math.sqrt(r)
    den = float(torch.linalg.norm(qu) + torch.linalg.norm(qv))
    return {"r": r, "orth_u": float(torch.linalg.norm(qu.mT @ qu - eye) / root),
            "orth_v": float(torch.linalg.norm(qv.mT @ qv - eye) / root),
            "consistency": float(1 - torch.linalg.norm(qu - qv) / den) if den > 0 else None}


def erank(s: torch.Tensor, gamma: float = 1.0) -> float | None:
    """Timber's effective rank exp(H(p)), p_i = σ_i^γ/Σσ^γ (γ = 1: Roy & Vetterli). None for a zero matrix."""
    if gamma <= 0:
        raise ValueError(f"erank_gamma = {gamma} must be > 0 (Timber uses 1: the Roy & Vetterli effective rank)")
    x = s.double().clamp_min(0) ** gamma
    total = x.sum()
    if not total > 0:
        return None
    p = x[x > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def lora_rank(s_delta: torch.Tensor, delta_norm: float, tol: float = 0.05) -> int | None:
    """Smallest r with √(Σ_{i>r} σ_i²) ≤ tol·‖ΔW‖_F; 0 for ΔW = 0.

    Args:
        s_delta: singular values of ΔW, descending (all of them, or the top k).
        delta_norm: the exact ‖ΔW‖_F (so a truncated spectrum still gives the right tail energy).

    Returns:
        r, or None when even all of `s_delta` leave too much energy (a top-k spectrum: r > k).
    """
    if not 0 < tol < 1:
        raise ValueError(f"lora_tol = {tol} must lie in (0, 1) (paper App. K: 0.05)")
    total = float(delta_norm) ** 2
    if total == 0:
        return 0
    captured = torch.cumsum(s_delta.double() ** 2, 0)
    ok = torch.nonzero(total - captured <= (tol ** 2) * total * (1 + 1e-12))
    return int(ok[0]) + 1 if ok.numel() else None


def compare_matrices(w_b: torch.Tensor, w_v: torch.Tensor, *, top_r: int = 16, erank_gamma: float = 1.0,
                     lora_tol: float = 0.05, method: str = "auto", seed: int = 0) -> dict:
    """Every per-matrix quantity of the module docstring for one (W_b, W_v) pair of shape [d_out, d_in].

    Returns:
        dict with method, k, ratios (tensor), ratio_mean, ratio_std, r, orth_u, orth_v, consistency,
        erank_base, erank_var, erank_delta, lora_rank, lora_params, full_params.
    """
    if w_b.shape != w_v.shape or w_b.dim() != 2:
        raise ValueError(f"need two matrices of one shape, got {tuple(w_b.shape)} and {tuple(w_v.shape)}")
    w_b, w_v = w_b.float(), w_v.float()
    ub, sb, vb, how = svd(w_b, max(top_r, RANDOMIZED_K), method=method, seed=seed)
    uv, sv, vv, _ = svd(w_v, max(top_r, RANDOMIZED_K), method=how, seed=seed)
    d = w_v - w_b
    _, sd, _, _ = svd(d, method=how, seed=seed)
    ratios = sv_ratios(sb, sv)
    rot = rotation_scores(ub, vb, uv, vv, top_r)
    r = lora_rank(sd, float(torch.linalg.norm(d.double())), lora_tol)
    d_out, d_in = w_b.shape
    return {"method": how, "k": int(sb.numel()), "ratios": ratios,
            "ratio_mean": float(ratios.mean()) if ratios.numel() else None,
            "ratio_std": float(ratios.std(correction=0)) if ratios.numel() else None, **rot,
            "erank_base": erank(sb, erank_gamma), "erank_var": erank(sv, erank_gamma),
            "erank_delta": erank(sd, erank_gamma), "lora_rank": r,
            "lora_params": (r if r is not None else int(sd.numel())) * (d_in + d_out), "full_params": d_in * d_out}


# -- streaming scan over two checkpoints -------------------------------------------------------------------------
@dataclass
class MatrixSpectrum:
    """Spectral comparison of one linear sub-parameter (see `compare_matrices`)."""
    block: int
    sub: str
    kind: str
    shape: tuple[int, int]
    method: str
    k: int
    ratio_mean: float | None
    ratio_std: float | None
    r: int
    orth_u: float
    orth_v: float
    consistency: float | None    # None: the top-r subspaces are orthogonal (Q_U = Q_V = 0)
    erank_base: float | None
    erank_var: float | None
    erank_delta: float | None
    lora_rank: int | None        # None: not reached within the top k (lora_params is then a lower bound)
    lora_params: int
    full_params: int
    ratios: list[float] = field(repr=False, default_factory=list)


@dataclass
class SpectralResult:
    """Per-matrix spectra of a (base, variant) pair and their per-block aggregates."""
    base: str
    variant: str
    model_type: str
    n_blocks: int
    blocks: list[int]
    top_r: int
    erank_gamma: float
    lora_tol: float
    matrices: list[MatrixSpectrum]
    elapsed_s: float

    def _by_block(self):
        return {b: [m for m in self.matrices if m.block == b] for b in self.blocks}

    def matrix_table(self):
        """One row per matrix (pandas DataFrame), without the ratio spectra."""
        import pandas as pd
        return pd.DataFrame([{k: v for k, v in asdict(m).items() if k != "ratios"} for m in self.matrices])

    def layer_table(self):
        """One row per block: sv_ratio_mean (mean over matrices of their mean σ-ratio), sv_ratio_std (mean of
        their within-matrix std: the non-uniformity), consistency, orth_u, orth_v (means), eRank means of base,
        variant and ΔW, and the LoRA ratio."""
        import pandas as pd
        rows = []
        lora = self.lora_ratio()
        for b, ms in self._by_block().items():
            rows.append({"block": b, "sv_ratio_mean": mean_defined(m.ratio_mean for m in ms),
                         "sv_ratio_std": mean_defined(m.ratio_std for m in ms),
                         "consistency": mean_defined(m.consistency for m in ms), "orth_u": mean_defined(m.orth_u for m in ms),
                         "orth_v": mean_defined(m.orth_v for m in ms), "erank_base": mean_defined(m.erank_base for m in ms),
                         "erank_var": mean_defined(m.erank_var for m in ms), "erank_delta": mean_defined(m.erank_delta for m in ms),
                         "lora_ratio": lora[b], "lora_lower_bound": any(m.lora_rank is None for m in ms)})
        return pd.DataFrame(rows).set_index("block")

    def lora_ratio(self) -> dict[int, float]:
        """Block -> Σ r(d_in + d_out) / Σ d_in·d_out over its linears (App. K, Table 11)."""
        return {b: sum(m.lora_params for m in ms) / sum(m.full_params for m in ms)
                for b, ms in self._by_block().items()}

    def table11(self, label: str = "measured", paper: dict | None = None):
        """Table 11's layout (blocks, mean/min/max ratio), with the paper's row for the family when given."""
        import pandas as pd
        vals = list(self.lora_ratio().values())
        rows = [{"source": f"{label} (tol={self.lora_tol:g})", "blocks": len(vals), "mean ratio": sum(vals) / len(vals),
                 "min": min(vals), "max": max(vals)}]
        if paper:
            rows.append({"source": f"paper (tol={paper['tol']:g})", "blocks": paper["blocks"],
                         "mean ratio": paper["mean_ratio"], "min": paper["min"], "max": paper["max"]})
        return pd.DataFrame(rows).set_index("source")

    def summary(self) -> dict:
        """Results-JSON entries: per-block dicts keyed by block index."""
        t = self.layer_table()
        return {"sv_scaling": {str(b): {"mean": r.sv_ratio_mean, "std": r.sv_ratio_std} for b, r in t.iterrows()},
                "rotation_consistency": {str(b): {"consistency": r.consistency, "orth_u": r.orth_u,
                                                  "orth_v": r.orth_v} for b, r in t.iterrows()},
                "erank": {str(b): {"base": r.erank_base, "var": r.erank_var, "delta": r.erank_delta}
                          for b, r in t.iterrows()},
                "lora_ratio": {str(b): v for b, v in self.lora_ratio().items()},
                "svd_methods": sorted({m.method for m in self.matrices}), "n_matrices": len(self.matrices)}


def check_blocks(blocks: Sequence[int] | None, n_blocks: int) -> list[int]:
    """None -> all blocks; otherwise a non-empty list of distinct indices in 0..n_blocks-1 (sorted).

    Raises:
        ValueError: naming the offending index and the valid range.
    """
    if blocks is None:
        return list(range(n_blocks))
    blocks = list(blocks)
    if not blocks:
        raise ValueError(f"blocks = [] selects nothing; pass None for all {n_blocks} blocks or indices in "
                         f"0..{n_blocks - 1}")
    bad = [b for b in blocks if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < n_blocks]
    if bad:
        raise ValueError(f"blocks contains {bad}: the model has {n_blocks} blocks, use indices in 0..{n_blocks - 1} "
                         f"(or None for all)")
    return sorted(set(blocks))


def check_params(top_r: int, lora_tol: float, erank_gamma: float) -> None:
    """Range checks of the notebook's spectral parameters, with what to pass instead."""
    if not (isinstance(top_r, int) and top_r >= 1):
        raise ValueError(f"top_r = {top_r!r} must be an integer >= 1 (singular pairs in the consistency score)")
    if not 0 < lora_tol < 1:
        raise ValueError(f"lora_tol = {lora_tol} must lie in (0, 1) (paper App. K: 0.05)")
    if not erank_gamma > 0:
        raise ValueError(f"erank_gamma = {erank_gamma} must be > 0 (Timber: 1, the Roy & Vetterli effective rank)")


def count_blocks(ref) -> int:
    """Number of transformer blocks of a checkpoint (from its tensor names; nothing is read)."""
    ck = open_checkpoint(ref)
    _, roles = layout(ck.names, ck.model_type)
    return block_count(roles.values())


def spectral_scan(base, variant, *, blocks: Sequence[int] | None = None, top_r: int = 16, erank_gamma: float = 1.0,
                  lora_tol: float = 0.05, method: str = "auto", seed: int = 0,
                  progress: bool | None = None) -> SpectralResult:
    """Compare the SVDs of every linear (2-D) sub-parameter of the chosen blocks, one tensor pair at a time.

    Args:
        base, variant: checkpoint references (directories or hub ids) or `Checkpoint`s.
        blocks: block indices; None for all.
        top_r: singular pairs in the rotation-consistency score (clipped to each matrix's rank).
        erank_gamma: Timber's γ. lora_tol: App. K's Frobenius tolerance.
        method: SVD method (`svd`). progress: tqdm over matrices (default: when any matrix is randomized).

    Raises:
        metrics.ScanMismatch: the checkpoints are not comparable. ValueError: bad `blocks` or parameters.
    """
    check_params(top_r, lora_tol, erank_gamma)
    b_ck, v_ck = open_checkpoint(base), open_checkpoint(variant)
    triples, _ = pair_names(b_ck, v_ck)
    arch, roles = layout([t[0] for t in triples], b_ck.model_type)
    dims = arch.dims(b_ck.config)
    n_blocks = block_count(roles.values())
    chosen = check_blocks(blocks, n_blocks)
    # (name, base name, variant name, part): fused tensors are compared part by part (Phi-3's qkv_proj as q, k, v)
    todo = [(n, nb, nv, part) for n, nb, nv in triples if roles[n].group == "block" and roles[n].block in chosen
            and len(b_ck.info(nb).shape) == 2 for part in arch.parts(roles[n], tuple(b_ck.info(nb).shape), dims)]
    if progress is None:
        progress = any(min(b_ck.info(nb).shape) > EXACT_MAX_DIM for _, nb, _, _ in todo)
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    out = []
    # Small SVDs gain nothing from an OpenMP team, and on a loaded machine its spin-waits made them ~10x slower
    # (tiny family: 7 s -> 0.4 s for 56 matrices); large ones keep torch's thread count.
    with torch_threads(1 if all(min(b_ck.info(nb).shape) <= SMALL_DIM for _, nb, _, _ in todo) else None):
        for name, nb, nv, part in tqdm(todo, desc="spectral", disable=not progress):
            wb, wv = b_ck.get(nb), v_ck.get(nv)
            if part.index:
                wb, wv = wb[part.index], wv[part.index]
            c = compare_matrices(wb, wv, top_r=top_r, erank_gamma=erank_gamma,
                                 lora_tol=lora_tol, method=method, seed=seed)
            out.append(MatrixSpectrum(block=roles[name].block, sub=part.sub, kind=part.kind,
                                      shape=tuple(wb.shape), **{k: v for k, v in c.items() if k != "ratios"},
                                      ratios=c["ratios"].tolist()))
    return SpectralResult(base=b_ck.ref, variant=v_ck.ref, model_type=b_ck.model_type, n_blocks=n_blocks,
                          blocks=chosen, top_r=top_r, erank_gamma=erank_gamma, lora_tol=lora_tol, matrices=out,
                          elapsed_s=time.perf_counter() - t0)
