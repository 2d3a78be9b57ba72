"""The per-block interpolation sweep without recomputation (paper §3.4: L_i(α) for every block i and α).

The plain loop evaluates the whole model for every (block i, α): n_blocks x n_α forward passes, each through
every block. Two things in it do not depend on α:

- the hidden states entering block i are the variant's (blocks before i keep their weights): computed once,
  by advancing one block per outer step;
- the blocks after i have the variant's weights for every α: they run once, on the α values' outputs of block i
  stacked along the batch dimension.

So block i runs once per α on the stored hidden states, blocks i+1.. run once on the stacked batch (as many α
as `max_stack_tokens` allows), and the final norm + lm_head + loss run per α on slabs of positions (the loop's
head computes the same logits for the whole batch at once). Same numbers as the loop up to float32 round-off
(tested to 1e-5 nats).

How the layers are run: `transformers` builds each decoder layer's keyword arguments (attention mask, rotary
position embeddings, ...) inside the model's forward. They are captured by calling the model with every
decoder layer's `forward` replaced by a recorder that returns its input unchanged (cost: the embedding only),
once for the batch and once for the α-stacked batch, so every argument has the shape the model itself gives it.
The head is run the same way: the model is called with the first layer replaced by one that returns the final
hidden states and the others by the identity, so the final norm, lm_head and any logit soft-capping are the
model's own code.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..io.models import decoder_layers

__all__ = ["per_block_sweep"]


class _Stop(Exception):
    pass


@dataclass
class _Calls:
    """One batch's captured layer calls: the hidden states entering layer 0 and each layer's other arguments."""
    h0: torch.Tensor
    args: list[tuple[tuple, dict]]


@contextlib.contextmanager
def _replaced(layers, fn):
    """Replace every layer's `forward` by `fn(i, hidden, *args, **kwargs)` inside the block (instance attributes,
    so `nn.Module.__call__` and its hooks still run); always restored."""
    own = [layer.__dict__.get("forward") for layer in layers]  # e.g. an accelerate hook's wrapper
    try:
        for i, layer in enumerate(layers):
            layer.forward = (lambda i: lambda h, *a, **kw: fn(i, h, *a, **kw))(i)
        yield
    finally:
        for layer, f in zip(layers, own):
            if f is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = f


def _returns_tuple(model, layers, batch: torch.Tensor) -> bool:
    """Whether the model's decoder layers return a tuple (older families) or the hidden states (transformers v5),
    from one real call of layer 0 on one short row."""
    seen = {}

    def hook(mod, args, out):
        seen["tuple"] = isinstance(out, tuple)
        raise _Stop
    h = layers[0].register_forward_hook(hook)
    try:
        model(input_ids=batch[:1, :2], use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return seen["tuple"]


def _capture(model, layers, batch: torch.Tensor, as_tuple: bool) -> _Calls:
    """Every layer's call arguments for `batch`, with the layers skipped (identity) and the call stopped after the
    last one (no head)."""
    h0, calls = [], []

    def record(i, h, *args, **kwargs):
        if i == 0:
            h0.append(h)
        calls.append((args, kwargs))
        if i == len(layers) - 1:
            raise _Stop
        return (h,) if as_tuple else h
    with _replaced(layers, record), contextlib.suppress(_Stop):
        model(input_ids=batch, use_cache=False)  # no KV cache: the recorded layers are called many times
    return _Calls(h0[0], calls)


def _run(layer, h: torch.Tensor, call) -> torch.Tensor:
    args, kwargs = call
    out = layer(h, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _head_loss(model, layers, batch: torch.Tensor, h: torch.Tensor, as_tuple: bool, slab: int = 256) -> float:
    """Summed next-token cross-entropy (float64) of `batch` [rows, seq] from final hidden states `h`
    [rows, seq, hidden], through the model's own final norm and head: the model is called with the first layer
    replaced by one that returns a slab of `h` and the others by the identity.

    The head is position-wise, so it runs on slabs of at most `slab` positions of one row, skipping the last
    position (it predicts nothing): logits stay ~50 MB instead of rows x seq x vocab (200 MB for 4 x 256 x
    49152), which measured ~35% faster than the loop's whole-batch head on the 2-core machine. Each slab's
    float32 sum is added in float64 (the loop adds per-batch sums: the two differ by float32 round-off)."""
    x, t = h[:, :-1], batch[:, 1:]
    total = 0.0
    for r in range(x.shape[0]):
        for s in range(0, x.shape[1], slab):
            xs, ts = x[r:r + 1, s:s + slab], t[r, s:s + slab]

            def feed(i, y, *args, **kwargs):
                z = xs if i == 0 else y
                return (z,) if as_tuple else z
            with _replaced(layers, feed):
                logits = model(input_ids=ts.unsqueeze(0), use_cache=False).logits
            total += F.cross_entropy(logits[0].float(), ts, reduction="sum").double().item()
    return total


def per_block_sweep(model, path, tokens: torch.Tensor, alphas: list[float], blocks: list[int], batch_size: int = 8,
                    max_stack_tokens: int | None = None, progress=None) -> list[list[float]]:
    """L_i(α) for every block i in `blocks` and every α in `alphas` (usually without 0), without recomputation.

    Args:
        model: the variant, a `transformers` causal LM (weights restored exactly on return).
        path: the `interpolation.WeightPath` on `model` (reads the base's block tensors).
        tokens: [n_sequences, seq_len] token ids.
        alphas: α values to evaluate (0 = variant, 1 = base).
        blocks: block indices, any order (evaluated in increasing order).
        batch_size: rows per batch, as in `loss.lm_loss` (the loss is summed per batch in the same way).
        max_stack_tokens: at most this many tokens (α copies x batch rows x seq_len) go through the blocks after
            i at once (at least one α). Default: 1024 on the CPU, where activations that stay in cache matter more
            than call count (measured on the 2-core machine, SmolLM2-135M shape: a block pass on 40 rows of 256
            tokens took ~25% longer per row than on 4 rows), 65536 on a GPU.
        progress: a tqdm bar to advance by len(alphas) per block (optional).

    Returns:
        [len(blocks)][len(alphas)] mean losses in nats, in the order of `blocks`.

    Memory: the hidden states of the whole token set entering the current block are held (n_sequences x seq_len
    x hidden float32 on the model's device), plus block i's outputs for every α.
    """
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    batches = [tokens[s:s + batch_size].to(device) for s in range(0, tokens.shape[0], batch_size)]
    count = sum(b[:, 1:].numel() for b in batches)
    order = sorted(set(blocks))
    if max_stack_tokens is None:
        max_stack_tokens = 1024 if device.type == "cpu" else 65536
    k_stack = max(1, min(len(alphas), max_stack_tokens // max(1, batches[0].numel())))
    out: dict[int, list[float]] = {}
    with torch.inference_mode():
        as_tuple = _returns_tuple(model, layers, batches[0])
        one = [_capture(model, layers, b, as_tuple) for b in batches]
        stacked: dict[tuple[int, int], _Calls] = {}  # (batch, k) -> calls for k stacked copies of the batch

        def calls(j: int, k: int) -> _Calls:
            if (j, k) not in stacked:
                stacked[j, k] = _capture(model, layers, batches[j].repeat(k, 1), as_tuple)
            return stacked[j, k]
        hidden = [c.h0 for c in one]  # entering block `nxt`
        nxt = 0
        for i in order:
            for j in range(nxt, i):  # advance the variant's hidden states to block i
                hidden = [_run(layers[j], h, c.args[j]) for h, c in zip(hidden, one)]
            nxt = i
            sums = [0.0] * len(alphas)
            with path.hold(path.names([i])) as set_alpha:
                for g in range(0, len(alphas), k_stack):
                    group = list(range(g, min(g + k_stack, len(alphas))))
                    outs = []  # [alpha][batch] block i's output
                    for a in group:
                        set_alpha(alphas[a])
                        outs.append([_run(layers[i], h, c.args[i]) for h, c in zip(hidden, one)])
                    for j, batch in enumerate(batches):
                        x = torch.cat([o[j] for o in outs])
                        c = calls(j, len(group))
                        for m in range(i + 1, len(layers)):
                            x = _run(layers[m], x, c.args[m])
                        rows = batch.shape[0]
                        for q, a in enumerate(group):
                            sums[a] += _head_loss(model, layers, batch, x[q * rows:(q + 1) * rows], as_tuple)
                    if progress is not None:
                        progress.update(len(group))
            out[i] = [s / count for s in sums]
    return [out[i] for i in blocks]
