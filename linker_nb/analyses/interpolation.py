"""Loss along linear weight-space paths between a variant and its base (paper §3.4, App. L), and the layer-wise
amplification factor of shared blocks (App. H).

Per-block path: the variant with block i set to W_i(α) = α·W_i^base + (1 − α)·W_i^var, every other tensor at its
variant value; ΔL_i(α) = L_i(α) − L_variant, and block i's barrier is max_α ΔL_i(α). Full-model path: every block
jointly (and, as a separate curve, every non-block tensor too: embeddings, final norm, lm_head).

The model is loaded once (the variant). `WeightPath` swaps tensors in place: for one block it keeps that block's
two endpoint copies (the variant's values, cloned from the live parameters, and the base's, read from the base
checkpoint one tensor at a time), writes torch.lerp(var, base, α) into the parameters, and writes the saved
variant values back on exit. `torch.lerp` is exact at both ends, so α = 0 is the variant and α = 1 the base,
bit for bit. The full path holds variant copies of all tensors on the CPU and moves one block's endpoints to the
model's device at a time.

Tied embeddings: when the model ties lm_head to embed_tokens there is one parameter, so interpolating the
embedding interpolates the lm_head with it (`WeightPath.tied` says so); the base's own lm_head tensor, if its
checkpoint stores one, is not used.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..io.architectures import get_architecture
from ..io.conversions import ConversionError, Source, sources
from ..io.models import decoder_layers, restoring
from ..io.references import open_checkpoint
from .sweep import per_block_sweep

__all__ = ["DEFAULT_ALPHAS", "SHARED_SETS", "InterpolationError", "WeightPath", "check_alphas", "amplification",
           "AmplificationResult", "InterpolationResult", "interpolation_scan", "per_block_loop", "substituted_blocks",
           "table13"]

DEFAULT_ALPHAS = tuple(round(0.1 * k, 1) for k in range(11))  # §3.4: α ∈ {0, 0.1, ..., 1.0}
SHARED_SETS = ("all", "scan")


class InterpolationError(ValueError):
    """The model and the base checkpoint cannot be interpolated; the message names the tensor and what to do."""


def check_alphas(alphas) -> list[float]:
    """Validate an α grid: numbers in [0, 1], strictly increasing, starting at 0 (the variant's loss, ΔL's origin).

    Raises:
        ValueError: naming the offending value.
    """
    a = [float(x) for x in alphas]
    if len(a) < 2:
        raise ValueError(f"alphas = {list(alphas)} needs at least two points, e.g. [0.0, 0.5, 1.0]")
    bad = [x for x in a if not (0.0 <= x <= 1.0)]
    if bad:
        raise ValueError(f"alphas must lie in [0, 1] (0 = variant, 1 = base); got {bad}")
    if any(y <= x for x, y in zip(a, a[1:])):
        raise ValueError(f"alphas must be strictly increasing; got {a}")
    if a[0] != 0.0:
        raise ValueError(f"alphas must start at 0.0 (the variant's own loss, where ΔL = 0); got {a[0]}")
    return a


class WeightPath:
    """In-place interpolation of a loaded variant model towards a base checkpoint.

    Args:
        model: the variant, a `transformers` causal LM (from `models.load_model`).
        base_ref: the base checkpoint (directory or hub id); read lazily, one tensor at a time.

    Attributes:
        blocks: block index -> list of the model's parameter names in it.
        non_block: names of the model's embedding / final-norm / lm_head parameters.
        tied: True when lm_head shares the embedding's parameter (interpolated together).

    Raises:
        InterpolationError: a model parameter has no base tensor, or their shapes differ.
    """

    def __init__(self, model, base_ref):
        self.model = model
        self.ckpt = open_checkpoint(base_ref)
        self.params = dict(model.named_parameters())     # tied weights appear once, under the embedding's name
        model_type = getattr(model.config, "model_type", None) or self.ckpt.model_type
        arch = get_architecture(model_type, list(self.params))
        try:  # module name -> checkpoint tensor(s), through the record's v5 conversions (fused MoE experts)
            self.source: dict[str, Source] = sources(arch, list(self.params), self.ckpt)
        except ConversionError as exc:
            raise InterpolationError(f"{exc} Base and variant must share an architecture: check the `base` "
                                     f"reference.") from exc
        self.blocks: dict[int, list[str]] = {}
        self.non_block: list[str] = []
        for name, src in self.source.items():
            shape = src.shape(self.ckpt)
            if shape != tuple(self.params[name].shape):
                raise InterpolationError(
                    f"shape mismatch for {name!r}: model {tuple(self.params[name].shape)} vs base {src.flat[0]!r} "
                    f"{shape} in {self.ckpt.path}; a path needs the same architecture and sizes on both ends.")
            role = arch.classify(name)
            if role.group == "block":
                self.blocks.setdefault(role.block, []).append(name)
            else:
                self.non_block.append(name)
        n = len(decoder_layers(model))
        if sorted(self.blocks) != list(range(n)):
            raise InterpolationError(f"found parameters for blocks {sorted(self.blocks)} but the model has {n} "
                                     f"decoder layers; unsupported parameter naming.")
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        self.tied = out_emb is not None and out_emb.weight is in_emb.weight

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def names(self, blocks=None, non_block: bool = False) -> list[str]:
        """Parameter names of the given block indices (all when None), plus the non-block ones if asked."""
        idx = range(self.n_blocks) if blocks is None else blocks
        return [n for i in idx for n in self.blocks[i]] + (list(self.non_block) if non_block else [])

    def _base(self, name: str, device) -> torch.Tensor:
        return self.source[name].read(self.ckpt).to(device=device, dtype=torch.float32)

    @contextlib.contextmanager
    def hold(self, names: list[str]):
        """Keep both endpoints of `names` (a block: on the model's device) and yield `set(alpha)`.

        On exit, however it exits, the parameters get their saved variant values back, bit for bit.
        """
        base = {n: self._base(n, self.params[n].device) for n in names}
        with restoring({n: self.params[n] for n in names}) as var:
            def set_alpha(alpha: float) -> None:
                with torch.no_grad():
                    for n in names:
                        p = self.params[n]
                        p.copy_(torch.lerp(var[n].float(), base[n], float(alpha)).to(p.dtype))
            yield set_alpha

    @contextlib.contextmanager
    def hold_all(self, names: list[str]):
        """Like `hold` for many tensors (the full-model path): variant copies wait on the CPU, and `set(alpha)`
        moves one tensor's two endpoints to the device at a time (base tensors re-read from the checkpoint)."""
        with restoring({n: self.params[n] for n in names}, offload=True) as var:
            def set_alpha(alpha: float) -> None:
                with torch.no_grad():
                    for n in names:     # one tensor's two endpoints on the device at a time
                        p = self.params[n]
                        v = var[n].to(p.device, torch.float32)
                        p.copy_(torch.lerp(v, self._base(n, p.device), float(alpha)).to(p.dtype))
            yield set_alpha


@dataclass
class AmplificationResult:
    """Appendix H's per-layer amplification of shared-block divergence.

    Attributes:
        shared: indices of the blocks replaced by the base's.
        divergence: d_l = mean over tokens of ‖h_l^shared − h_l^var‖ / ‖h_l^var‖, h_l the output of layer l.
        factor: α(l) = d_l / d_{l−1}; None for layer 0 (its input, the embedding, is not shared, so d_{−1} = 0)
            and wherever d_{l−1} = 0 (no shared block yet).
        interior_range: (min, max) of α(l) over the interior layers 1..L−2 (first and last layers excluded;
            the paper's Figure 6 shows spikes at both ends); None when no interior value is defined.
    """
    shared: list[int]
    divergence: list[float]
    factor: list[float | None]
    interior_range: tuple[float, float] | None

    def relative_depth(self) -> list[float]:
        """x of Figure 6: i / L."""
        n = len(self.factor)
        return [i / n for i in range(n)]

    def table(self):
        """One row per layer: shared?, d_l, α(l), relative depth (pandas DataFrame)."""
        import pandas as pd
        return pd.DataFrame({"shared": [i in self.shared for i in range(len(self.factor))],
                             "divergence d_l": self.divergence, "α(l) = d_l/d_(l-1)": self.factor,
                             "depth i/L": self.relative_depth()},
                            index=pd.RangeIndex(len(self.factor), name="layer"))


def _layer_outputs(model, tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Output hidden states of every decoder layer, [n, seq, hidden] float32 on the CPU, via forward hooks (the
    `output_hidden_states` tuple applies the final norm to its last entry in some families)."""
    layers = decoder_layers(model)
    outs: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [layer.register_forward_hook(
        lambda mod, args, out, i=i: outs[i].append((out[0] if isinstance(out, tuple) else out).float().cpu()))
        for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for s in range(0, tokens.shape[0], batch_size):
                model(input_ids=tokens[s:s + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(o) for o in outs]


def amplification(path: WeightPath, tokens: torch.Tensor, shared: list[int] | None = None,
                  batch_size: int = 8) -> AmplificationResult:
    """Divergence of hidden states when `shared` blocks take the base's weights, layer by layer (App. H).

    Args:
        path: a `WeightPath` on the variant model (left unchanged afterwards).
        tokens: [n, seq_len] inputs.
        shared: block indices to substitute; None = all blocks.
        batch_size: rows per forward pass.

    Returns:
        An `AmplificationResult` with one entry per decoder layer.
    """
    shared = list(range(path.n_blocks)) if shared is None else sorted(shared)
    bad = [i for i in shared if not 0 <= i < path.n_blocks]
    if bad:
        raise ValueError(f"shared block indices {bad} out of range; the model has {path.n_blocks} blocks")
    ref = _layer_outputs(path.model, tokens, batch_size)
    with path.hold_all(path.names(shared)) as set_alpha:
        set_alpha(1.0)
        sub = _layer_outputs(path.model, tokens, batch_size)
    div = [float(((s - r).norm(dim=-1) / r.norm(dim=-1).clamp_min(1e-30)).mean()) for s, r in zip(sub, ref)]
    factor: list[float | None] = [None] + [d / p if p > 0 else None for p, d in zip(div, div[1:])]
    interior = [f for f in factor[1:-1] if f is not None and math.isfinite(f)]
    return AmplificationResult(shared, div, factor, (min(interior), max(interior)) if interior else None)


@dataclass
class InterpolationResult:
    """Losses (nats) along the paths of §3.4.

    Attributes:
        alphas: the α grid (0 = variant, 1 = base).
        loss_variant / loss_base: the endpoints' losses (loss_base: every tensor at α = 1, i.e. the base model).
        per_block: [n_blocks][n_alphas] L_i(α).
        full_model: L(α) with every block interpolated (non-block tensors at the variant's values).
        full_model_all: L(α) with every tensor interpolated, blocks and non-block (None if not computed).
        corpus, n_tokens, device, dtype, tied: what was evaluated, where, and whether lm_head is tied.
        amplification: App. H's result, when computed.
    """
    alphas: list[float]
    loss_variant: float
    loss_base: float | None
    per_block: list[list[float]]
    full_model: list[float]
    full_model_all: list[float] | None
    corpus: str = ""
    n_tokens: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    tied: bool = False
    amplification: AmplificationResult | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def delta(self) -> np.ndarray:
        """[n_blocks, n_alphas] ΔL_i(α) = L_i(α) − L_variant."""
        return np.asarray(self.per_block) - self.loss_variant

    @property
    def per_block_max_delta(self) -> list[float]:
        """Barrier of each block: max over α of ΔL_i(α) (≥ 0, since ΔL_i(0) = 0)."""
        return self.delta.max(axis=1).tolist()

    def band(self, q=(10, 50, 90)) -> np.ndarray:
        """Percentiles over blocks of ΔL_i(α), [len(q), n_alphas] (Figure 3's median and 10/90 band)."""
        return np.percentile(self.delta, q, axis=0)

    def summary(self) -> dict:
        """Table 13's quantities. The full-model "peak" is max over α > 0 of L(α) − L_variant (α = 0 is 0 by
        definition), so a downhill path gives a negative peak; its minimum and argmin α are reported too."""
        barriers = self.per_block_max_delta
        full = np.asarray(self.full_model) - self.loss_variant
        out = {"per_block_max_delta": max(barriers), "argmax_block": int(np.argmax(barriers)),
               "per_block_median_delta": float(np.median(barriers)),
               "full_model_peak_delta": float(full[1:].max()), "full_model_min_delta": float(full.min()),
               "full_model_argmin_alpha": self.alphas[int(full.argmin())], "full_model_end_delta": float(full[-1]),
               "loss_variant": self.loss_variant, "loss_base": self.loss_base}
        if self.full_model_all is not None:
            out["full_model_all_peak_delta"] = float((np.asarray(self.full_model_all) - self.loss_variant)[1:].max())
        if self.amplification is not None:
            out["amplification_interior_range"] = self.amplification.interior_range
        return out

    def describe(self) -> str:
        """One line: both endpoint losses, whether lm_head is tied, and the time each kind of path took."""
        base = "not measured (non_block=False)" if self.loss_base is None else f"{self.loss_base:.4f} nats"
        return (f"L_variant = {self.loss_variant:.4f} nats, L_base = {base}; tied embeddings: {self.tied}; "
                f"{self.seconds['per_block']:.1f} s per-block paths, {self.seconds['full']:.1f} s full-model paths")

    def full_delta(self) -> tuple[list[float], list[float] | None]:
        """The full-model paths as ΔL = L(α) − L_variant: (all blocks, all tensors or None)."""
        full = [x - self.loss_variant for x in self.full_model]
        return full, [x - self.loss_variant for x in self.full_model_all] if self.full_model_all else None

    def block_table(self):
        """One row per block: barrier, the α where it peaks, and ΔL at α = 1 (pandas DataFrame)."""
        import pandas as pd
        d = self.delta
        return pd.DataFrame({"barrier (max ΔL)": d.max(axis=1), "at α": [self.alphas[j] for j in d.argmax(axis=1)],
                             "ΔL(α=1)": d[:, -1]}, index=pd.RangeIndex(len(d), name="block"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_block_max_delta"] = self.per_block_max_delta
        return d


def table13(summary: dict, paper: dict | None):
    """Measured Table 13 quantities beside the paper's (pandas DataFrame); `paper` = `Family.paper["table13"]`.

    The paper's "full-model peak ΔL" is a signed extreme (−0.012 for a downhill path, +2.68 for a rising one), so
    it is put on the measured min row when negative and on the peak row when positive.
    """
    import pandas as pd
    p = paper or {}
    peak = p.get("full_model_peak_delta")
    end = p["loss_base"] - p["loss_variant"] if "loss_base" in p and "loss_variant" in p else None
    rows = [("per-block max ΔL", summary["per_block_max_delta"], p.get("per_block_max_delta")),
            ("  at block", summary["argmax_block"], p.get("argmax_block")),
            ("full-model peak ΔL (α > 0)", summary["full_model_peak_delta"], peak if peak and peak > 0 else None),
            ("full-model min ΔL", summary["full_model_min_delta"], peak if peak and peak < 0 else None),
            ("  at α", summary["full_model_argmin_alpha"], p.get("full_model_argmin_alpha")),
            ("full-model ΔL at α = 1", summary["full_model_end_delta"], end),
            ("L_variant", summary["loss_variant"], p.get("loss_variant")),
            ("L_base (every tensor at α = 1)", summary["loss_base"], None)]
    return pd.DataFrame(rows, columns=["quantity", "measured", "paper (Table 13)"], dtype=object).set_index("quantity")


def substituted_blocks(how: str, n_blocks: int, base_ref=None, variant_ref=None, tau_cos: float | None = None,
                  tau_frob: float | None = None) -> list[int]:
    """Which blocks App. H substitutes: "all", or "scan" = the blocks passing eq. (3) at (tau_cos, tau_frob) in a
    `metrics.scan` of the two checkpoints (the deployed share set).

    Raises:
        ValueError: unknown `how`, or "scan" without checkpoints and thresholds.
    """
    if how not in SHARED_SETS:
        raise ValueError(f"unknown shared set {how!r}; use one of {SHARED_SETS}")
    if how == "all":
        return list(range(n_blocks))
    if base_ref is None or variant_ref is None or tau_cos is None or tau_frob is None:
        raise ValueError("shared='scan' needs base_ref, variant_ref, tau_cos and tau_frob")
    from .scan import scan
    mask = scan(base_ref, variant_ref, hash_tensors=False).share_mask(tau_cos, tau_frob)
    return [i for i, ok in enumerate(mask) if ok]


def per_block_loop(model, path: WeightPath, tokens: torch.Tensor, alphas: list[float], blocks: list[int],
                   batch_size: int = 8, progress=None) -> list[list[float]]:
    """L_i(α) by the plain loop: for every block i and α, block i set to W_i(α) and the whole model evaluated.
    The reference `sweep.per_block_sweep` is tested against (same arguments and result layout)."""
    from .loss import lm_loss
    out = []
    for i in blocks:
        row = []
        with path.hold(path.names([i])) as set_alpha:
            for a in alphas:
                set_alpha(a)
                row.append(lm_loss(model, tokens, batch_size))
                if progress is not None:
                    progress.update()
        out.append(row)
    return out


def interpolation_scan(model, base_ref, tokens, alphas=DEFAULT_ALPHAS, *, blocks=None,
                       non_block: bool = True, batch_size: int = 8, progress: bool | None = None,
                       fast: bool = True) -> InterpolationResult:
    """Every per-block path, the full-model path and (optionally) the all-tensor path, on one loaded model.

    Args:
        model: the variant (`models.load_model`); its weights are restored exactly before returning.
        base_ref: base checkpoint (directory or hub id).
        tokens: an `evaluation.EvalCorpus` (its name is recorded) or [n_sequences, seq_len] token ids.
        alphas: α grid, starting at 0 (`check_alphas`).
        blocks: which per-block paths to run (default all).
        non_block: also the path where embeddings / final norm / lm_head move with the blocks; its α = 1 end is
            the base model, so `loss_base` is only measured when this is on.
        batch_size: rows per forward pass.
        progress: tqdm bar over evaluations; default on when the model has more than 100M parameters.
        fast: the per-block paths by `sweep.per_block_sweep` (hidden states entering block i computed once, the
            blocks after i run once on the α values stacked in the batch); False: the plain loop, a whole
            forward pass per (block, α). Same numbers to float32 round-off (tested to 1e-5 nats).

    Returns:
        An `InterpolationResult` (α = 0 is evaluated once: every path starts at the variant).
    """
    import time

    from tqdm.auto import tqdm

    from .loss import lm_loss
    alphas = check_alphas(alphas)
    corpus_name = getattr(tokens, "name", "")
    tokens = getattr(tokens, "tokens", tokens)
    path = WeightPath(model, base_ref)
    blocks = list(range(path.n_blocks)) if blocks is None else list(blocks)
    n_eval = 1 + (len(alphas) - 1) * (len(blocks) + 1 + int(non_block))
    if progress is None:
        progress = sum(p.numel() for p in model.parameters()) > 100_000_000
    bar = tqdm(total=n_eval, desc="interpolation", disable=not progress)
    t0 = time.perf_counter()

    def curve(hold, names) -> list[float]:
        out = [loss_variant]
        with hold(names) as set_alpha:
            for a in alphas[1:]:
                set_alpha(a)
                out.append(lm_loss(model, tokens, batch_size))
                bar.update()
        return out

    loss_variant = lm_loss(model, tokens, batch_size)
    bar.update()
    sweep = per_block_sweep if fast else per_block_loop
    per_block = [[loss_variant, *row] for row in sweep(model, path, tokens, alphas[1:], blocks, batch_size,
                                                       progress=bar)]
    t1 = time.perf_counter()
    full = curve(path.hold_all, path.names())
    full_all = curve(path.hold_all, path.names(non_block=True)) if non_block else None
    bar.close()
    p = next(model.parameters())
    return InterpolationResult(
        alphas, loss_variant, full_all[-1] if full_all and alphas[-1] == 1.0 else None, per_block, full, full_all,
        corpus=corpus_name, n_tokens=int(tokens.numel()), device=str(p.device), dtype=str(p.dtype).removeprefix("torch."),
        tied=path.tied, seconds={"per_block": t1 - t0, "full": time.perf_counter() - t1})
