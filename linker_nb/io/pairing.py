"""Which tensors of two checkpoints to compare with each other, and whether they can be compared at all.

A tied checkpoint stores no lm_head: its effective lm_head is the embedding matrix, so a tied base against an
untied variant compares the variant's lm_head with the base's embedding (and says so).
"""
from __future__ import annotations

from .architectures import get_architecture
from .checkpoint import Checkpoint, CheckpointError

__all__ = ["ScanMismatch", "tied_embeddings", "pair_names"]


class ScanMismatch(CheckpointError):
    """The two checkpoints cannot be compared tensor by tensor."""



def tied_embeddings(config) -> bool:
    """Whether a checkpoint ties lm_head to the embedding: from a `Checkpoint`, its config dict, or a
    `transformers` config (multimodal configs keep the flag in their text config)."""
    if isinstance(config, Checkpoint) or isinstance(getattr(config, "config", None), dict):  # also HubHeaders
        config = config.config
    if not isinstance(config, dict):
        config = config.to_dict()
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def pair_names(base: Checkpoint, var: Checkpoint) -> tuple[list[tuple[str, str, str]], bool]:
    """Check the two checkpoints are comparable and list (name, base_name, var_name) to read.

    Raises:
        ScanMismatch: different architecture or depth, a tensor on one side only, or a shape mismatch; the
            message names the first offending tensor and both shapes.
    """
    for key in ("model_type", "num_hidden_layers", "hidden_size"):
        vb, vv = base.config.get(key), var.config.get(key)
        if key == "model_type" and (vb in var.model_types or vv in base.model_types):
            continue  # e.g. a Mistral and its GGUF file, which llama.cpp labels "llama"
        if vb is not None and vv is not None and vb != vv:
            raise ScanMismatch(f"the checkpoints are of different architectures: {key} is {vb!r} in "
                               f"{base.ref} but {vv!r} in {var.ref}. Compare two checkpoints of one architecture.")
    arch = get_architecture(base.model_type, base.names)
    b_names, v_names = set(base.names), set(var.names)
    alias_b, alias_v = {}, {}
    # A tied checkpoint stores no lm_head: its effective lm_head is the token embedding (the record's first
    # `embed` name).
    for ck, other, alias in ((base, var, alias_b), (var, base, alias_v)):
        lm = [n for n in other.names if arch.classify(n).group == "lm_head" and n not in ck.names]
        emb = [n for n in ck.names if arch.key(n) == ("embed", arch.embed[0])]
        if lm and emb and tied_embeddings(ck):
            alias[lm[0]] = emb[0]
    names = [n for n in base.names] + [n for n in alias_b]
    only_b = sorted(b_names - v_names - set(alias_v))
    only_v = sorted(v_names - b_names - set(alias_b))
    if only_b or only_v:
        side, n = (base.ref, only_b[0]) if only_b else (var.ref, only_v[0])
        raise ScanMismatch(f"tensor {n!r} exists only in {side} ({len(only_b)} tensor(s) only in the base {base.ref}, "
                           f"{len(only_v)} only in the variant {var.ref}). The checkpoints do not share one layout: check "
                           f"that both are complete and of the same architecture.")
    out = []
    for n in names:
        nb, nv = alias_b.get(n, n), alias_v.get(n, n)
        sb, sv = base.info(nb).shape, var.info(nv).shape
        if sb != sv:
            raise ScanMismatch(f"shape mismatch at tensor {n!r}: {sb} in {base.ref} vs {sv} in {var.ref}. "
                               f"The checkpoints are of different sizes or architectures.")
        out.append((n, nb, nv))
    return out, tied_embeddings(base) and tied_embeddings(var)
