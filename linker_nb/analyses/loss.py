"""Language-model loss on a fixed evaluation corpus, shared by the notebooks and the tiny-family recipe.

The corpus is tokenized once and cut into contiguous, non-overlapping sequences (the usual
"perplexity on WikiText-2" protocol, without a sliding window), so every model compared on the same
tokenizer sees exactly the same tokens. WikiText-2 is used only when `datasets` can load it from the local
cache; otherwise the embedded held-out pydoc topics (`linker_nb.corpus.heldout_text`) stand in, and the
corpus name says which one was used.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..io import corpus as _corpus

__all__ = ["CORPORA", "EvalCorpus", "wikitext2_text", "eval_corpus", "lm_loss", "next_token_predictions"]

CORPORA = ("auto", "wikitext2", "embedded")
EMBEDDED_NAME = "embedded held-out pydoc topics"
WIKITEXT_NAME = "wikitext-2-raw-v1 test"


@dataclass(frozen=True)
class EvalCorpus:
    """Token sequences to evaluate on.

    Attributes:
        tokens: [n_sequences, seq_len] token ids, contiguous chunks of one tokenized text.
        name: which text they came from, e.g. "embedded held-out pydoc topics" or "wikitext-2-raw-v1 test".
        n_tokens: number of tokens in `tokens` (n_sequences * seq_len).
    """
    tokens: torch.LongTensor
    name: str
    n_tokens: int


@contextlib.contextmanager
def _hub_offline():
    """Make `datasets`/`huggingface_hub` read only their local caches for the duration of the block.

    Both libraries read their offline switches from the environment at import time, so setting
    `HF_DATASETS_OFFLINE=1` here would be too late; the module-level flags are patched instead.
    """
    import datasets
    patches = [(datasets.config, name) for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
               if hasattr(datasets.config, name)]
    try:
        import huggingface_hub.constants as hub_constants
        patches.append((hub_constants, "HF_HUB_OFFLINE"))
    except ImportError:
        pass
    saved = [(obj, name, getattr(obj, name)) for obj, name in patches]
    try:
        for obj, name in patches:
            setattr(obj, name, True)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def wikitext2_text() -> str:
    """The WikiText-2 (raw) test split as one string, read from the local `datasets` cache only.

    Returns:
        The split's lines joined by blank lines, as in the Hugging Face perplexity guide.

    Raises:
        RuntimeError: `datasets` is not installed or the data set is not in the local cache (never downloads).
    """
    how = ("to use it, install `datasets` and run once with network access: "
           "`python -c \"import datasets; datasets.load_dataset('wikitext', 'wikitext-2-raw-v1', split='test')\"`; "
           "or use corpus='embedded'")
    try:
        import datasets
    except ImportError as err:
        raise RuntimeError(f"WikiText-2 needs the `datasets` package, which is not installed; {how}") from err
    try:
        with _hub_offline():
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as err:    # datasets raises several types (ConnectionError, FileNotFoundError, ...)
        raise RuntimeError(f"WikiText-2 is not in the local Hugging Face cache ({err!r}); {how}") from err
    return "\n\n".join(ds["text"])


def eval_corpus(tokenizer, corpus: str = "auto", n_sequences: int = 24, seq_len: int = 512) -> EvalCorpus:
    """Tokenize an evaluation text once and cut it into `n_sequences` chunks of `seq_len` tokens.

    Args:
        tokenizer: a `transformers` tokenizer; no special tokens are added (chunks start mid-text).
        corpus: "wikitext2" (local cache only, error if absent), "embedded" (`corpus.heldout_text()`),
            or "auto" (WikiText-2 if it loads offline, else embedded).
        n_sequences: number of chunks to return (the first ones, in text order).
        seq_len: tokens per chunk.

    Returns:
        An `EvalCorpus` with `tokens` of shape [n_sequences, seq_len].

    Raises:
        ValueError: unknown `corpus`, or the text has fewer than n_sequences * seq_len tokens (the message
            gives how many sequences of `seq_len` fit).
        RuntimeError: corpus="wikitext2" but it cannot be loaded offline.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown eval corpus {corpus!r}; expected one of {CORPORA}")
    if n_sequences < 1 or seq_len < 2:
        raise ValueError(f"need n_sequences >= 1 and seq_len >= 2, got {n_sequences} and {seq_len}")
    text, name = None, EMBEDDED_NAME
    if corpus in ("wikitext2", "auto"):
        try:
            text, name = wikitext2_text(), WIKITEXT_NAME
        except RuntimeError:
            if corpus == "wikitext2":
                raise
    if text is None:
        text = _corpus.heldout_text()
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]    # long text: no length warning
    need = n_sequences * seq_len
    if len(ids) < need:
        raise ValueError(
            f"the {name} text has {len(ids)} tokens with this tokenizer, fewer than n_sequences * seq_len = "
            f"{n_sequences} * {seq_len} = {need}; at most {len(ids) // seq_len} sequences of {seq_len} fit")
    tokens = torch.tensor(ids[:need], dtype=torch.long).view(n_sequences, seq_len)
    return EvalCorpus(tokens=tokens, name=name, n_tokens=need)


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _batched_logits(model, tokens: torch.LongTensor, batch_size: int):
    """Yield (batch on the model's device, logits) for consecutive row batches of `tokens`."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [n_sequences, seq_len], got shape {tuple(tokens.shape)}")
    device = _device(model)
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(device)
        yield batch, model(input_ids=batch).logits


def lm_loss(model, tokens: torch.LongTensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy in nats over all predicted positions.

    Args:
        model: a `transformers` causal LM (anything returning `.logits` [batch, seq, vocab]).
        tokens: [n_sequences, seq_len] token ids; each row predicts its tokens 1..seq_len-1.
        batch_size: rows per forward pass.

    Returns:
        The mean loss: per-token losses summed per batch in float32 logits, accumulated in float64, divided
        by n_sequences * (seq_len - 1).
    """
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch, logits in _batched_logits(model, tokens, batch_size):
            logits = logits[:, :-1].float()
            targets = batch[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     reduction="sum").double().item()
            count += targets.numel()
    return total / count


def next_token_predictions(model, tokens: torch.LongTensor, batch_size: int = 8) -> torch.LongTensor:
    """Greedy (argmax) next-token prediction at every position that has a target.

    Args:
        model: a `transformers` causal LM.
        tokens: [n_sequences, seq_len] token ids.
        batch_size: rows per forward pass.

    Returns:
        [n_sequences, seq_len - 1] predicted ids on the CPU; column t is the prediction for tokens[:, t + 1].
    """
    out = []
    with torch.inference_mode():
        for _, logits in _batched_logits(model, tokens, batch_size):
            out.append(logits[:, :-1].argmax(dim=-1).cpu())
    return torch.cat(out)
