"""06's interventions on a loaded model: the spectral ablations and gradient locality (App. Q).

* **Ablations** on the loaded variant (LM loss): (a) the variant's singular vectors with the base's singular
  values; (b) one side's singular vectors rotated by a random orthogonal R (W = U S (V R)ᵀ), breaking consistency.
  With randomized SVD (`spectral.svd` above `EXACT_MAX_DIM`) they edit the top k pairs only
  (W + U_k(S'_k − S_k)V_kᵀ).
* **Gradient locality** (App. Q): ‖g_i‖/‖θ_i‖ of the base's LM loss per block against 1 − cos_i.

Every edited parameter is restored bit for bit on exit (`io.models.restoring`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..io.architectures import block_count, get_architecture, layout
from ..io.conversions import ConversionError, sources
from ..io.models import decoder_layers, restoring, torch_threads
from ..io.references import open_checkpoint
from .records import mean_defined
from .spectral import SMALL_DIM, check_blocks, svd

__all__ = ["random_orthogonal", "sv_swapped", "rotation_broken", "ablation", "ablation_table", "GradientLocality",
           "gradient_locality"]


# -- ablations on the loaded variant -----------------------------------------------------------------------------
def _linears(model, blocks: Sequence[int] | None) -> dict[str, tuple[int, str, torch.nn.Parameter]]:
    """Model parameter name -> (block, sub, parameter) for the 2-D parameters of the chosen blocks."""
    params = dict(model.named_parameters())
    _, roles = layout(list(params), getattr(model.config, "model_type", "llama"))
    n = block_count(roles.values())
    chosen = set(check_blocks(blocks, n))
    return {k: (r.block, r.sub, params[k]) for k, r in roles.items()
            if r.group == "block" and r.block in chosen and params[k].dim() == 2}


@contextlib.contextmanager
def _edited(model, blocks, new_weight):
    """Replace each chosen linear W by new_weight(block, sub, W float32); restore the exact originals on exit."""
    lin = _linears(model, blocks)
    with restoring({k: p for k, (_, _, p) in lin.items()}):
        with torch.no_grad(), torch_threads(1 if all(min(p.shape) <= SMALL_DIM for _, _, p in lin.values()) else None):
            for k, (b, sub, p) in lin.items():
                p.copy_(new_weight(b, sub, p.detach().float()).to(p.dtype))
        yield model


def sv_swapped(model, base_ref, blocks: Sequence[int] | None = None, method: str = "auto"):
    """Context: every chosen linear of the variant becomes U_v diag(σ(W_b)) V_vᵀ (ablation a).

    The base's singular values are read from `base_ref` one tensor at a time. Randomized SVD swaps the top k only.
    """
    ck = open_checkpoint(base_ref)
    arch = get_architecture(getattr(model.config, "model_type", None) or ck.model_type)
    lin = _linears(model, blocks)
    try:  # the model's module names -> the base checkpoint's tensors (through the record's conversions)
        where = {(b, sub): src for name, src in sources(arch, list(lin), ck).items()
                 for b, sub, _ in [lin[name]]}
    except ConversionError as exc:
        raise ValueError(f"{exc} Base and variant must share an architecture.") from exc

    def new(b, sub, w):
        u, s, v, how = svd(w, method=method)
        _, s_b, _, _ = svd(where[(b, sub)].read(ck), s.numel(), method=how)
        return w + (u * (s_b[:s.numel()].to(w.device) - s)) @ v.mT
    return _edited(model, blocks, new)


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random n×n orthogonal matrix (QR of a Gaussian with the sign of diag(R) fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def rotation_broken(model, blocks: Sequence[int] | None = None, seed: int = 0, method: str = "auto"):
    """Context: every chosen linear W = U S Vᵀ becomes U S (V R)ᵀ with R random orthogonal on the right side only
    (ablation b; σ and U untouched, the U/V consistency broken). Randomized SVD rotates the top k only."""
    g = torch.Generator().manual_seed(seed)

    def new(b, sub, w):
        u, s, v, _ = svd(w, method=method)
        rot = random_orthogonal(s.numel(), g).to(w.device)
        return w + (u * s) @ (v @ rot - v).mT
    return _edited(model, blocks, new)


def ablation(model, base_ref, tokens: torch.LongTensor, *, blocks: Sequence[int] | None = None, seed: int = 0,
             batch_size: int = 8, method: str = "auto") -> dict[str, float]:
    """LM loss of the variant, of ablation (a) and of ablation (b), on `tokens` [n, L].

    Returns:
        {loss_variant, loss_sv_swapped, loss_rotation_broken, loss_restored}; loss_restored is the variant's loss
        after both edits were undone (equal to loss_variant: the weights are restored bit for bit).
    """
    from .loss import lm_loss
    out = {"loss_variant": lm_loss(model, tokens, batch_size)}
    with sv_swapped(model, base_ref, blocks, method):
        out["loss_sv_swapped"] = lm_loss(model, tokens, batch_size)
    with rotation_broken(model, blocks, seed, method):
        out["loss_rotation_broken"] = lm_loss(model, tokens, batch_size)
    out["loss_restored"] = lm_loss(model, tokens, batch_size)
    if out["loss_restored"] != out["loss_variant"]:
        raise RuntimeError(f"ablation weights were not restored: loss {out['loss_restored']!r} after the edits vs "
                           f"{out['loss_variant']!r} before; the model is no longer the variant.")
    return out


def ablation_table(abl: dict[str, float], corpus_label: str = ""):
    """The ablation losses and their change from the variant's (pandas DataFrame, nats)."""
    import pandas as pd
    return pd.DataFrame({"loss (nats)": abl, "Δ vs variant": {k: v - abl["loss_variant"] for k, v in abl.items()}}
                        ).rename_axis(corpus_label)


# -- gradient locality (App. Q) ----------------------------------------------------------------------------------
@dataclass
class GradientLocality:
    """Per-block relative gradient norm of the base's LM loss against the measured 1 − cos_i."""
    rel_grad: list[float]
    one_minus_cos: list[float]
    pearson: float
    spearman: float
    loss: float

    def table(self):
        """Per block: relative gradient norm (`rel_grad`) and measured divergence 1 - cos (`omc`) (DataFrame)."""
        import pandas as pd
        return pd.DataFrame({"rel_grad": self.rel_grad, "omc": self.one_minus_cos})

    def describe(self, paper: dict | None = None) -> str:
        """One line: the two correlations, with the paper's (Table 17) when given."""
        ref = f" (paper: {paper['pearson']}, {paper['spearman']})" if paper else ""
        return f"Pearson r = {self.pearson:.3f}, Spearman rho = {self.spearman:.3f}{ref}"

    def table17(self, shared: Sequence[bool], paper: dict | None = None):
        """Table 17's layout: mean ‖g‖/‖θ‖ and 1 − cos over shared vs rejected blocks (eq. 3 mask)."""
        import pandas as pd
        rows = []
        for name, flag in (("shared", True), ("rejected", False)):
            idx = [i for i, s in enumerate(shared) if bool(s) == flag]
            rows.append({"group": f"{name} ({len(idx)} blocks)",
                         "‖g‖/‖θ‖": mean_defined(self.rel_grad[i] for i in idx),
                         "1 − cos": mean_defined(self.one_minus_cos[i] for i in idx)})
        df = pd.DataFrame(rows).set_index("group")
        df.attrs["correlation"] = {"pearson": self.pearson, "spearman": self.spearman,
                                   "paper": paper}
        return df


def gradient_locality(model, tokens: torch.LongTensor, one_minus_cos: Sequence[float],
                      batch_size: int = 4) -> GradientLocality:
    """‖g_i‖/‖θ_i‖ per block of the mean next-token loss on `tokens`, correlated with `one_minus_cos`.

    Args:
        model: the base causal LM (gradients are accumulated into .grad and cleared afterwards).
        tokens: [n, L] calibration token ids.
        one_minus_cos: 1 − sim(i) per block from `metrics.scan` (all blocks of the model, in order).

    Returns:
        GradientLocality with Pearson and Spearman correlations over blocks (scipy.stats).
    """
    import torch.nn.functional as F
    from scipy import stats
    layers = decoder_layers(model)
    if len(one_minus_cos) != len(layers):
        raise ValueError(f"one_minus_cos has {len(one_minus_cos)} entries but the model has {len(layers)} blocks; "
                         f"pass 1 - cos for every block of a full metrics.scan")
    dev = next(model.parameters()).device
    n_pred = tokens.shape[0] * (tokens.shape[1] - 1)
    model.zero_grad(set_to_none=True)
    total = 0.0
    with torch.enable_grad():
        for s in range(0, tokens.shape[0], batch_size):
            batch = tokens[s:s + batch_size].to(dev)
            logits = model(input_ids=batch).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            (loss / n_pred).backward()    # the gradient of the mean loss over all batches
            total += float(loss.detach())
    rel = []
    for layer in layers:
        g2 = sum(float(p.grad.double().square().sum()) for p in layer.parameters() if p.grad is not None)
        t2 = sum(float(p.detach().double().square().sum()) for p in layer.parameters())
        rel.append(math.sqrt(g2 / t2) if t2 > 0 else float("nan"))
    model.zero_grad(set_to_none=True)
    omc = [float(x) for x in one_minus_cos]
    return GradientLocality(rel_grad=rel, one_minus_cos=omc, pearson=float(stats.pearsonr(rel, omc)[0]),
                            spearman=float(stats.spearmanr(rel, omc)[0]), loss=total / n_pred)
