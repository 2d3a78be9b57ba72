"""The lazy loader (paper App. B, lazier): a recipient built on the meta device, its shareable blocks aliasing the
donor, only its other tensors read from its checkpoint, one at a time. No full copy of the recipient ever exists:
peak = |donor| + |unique(recipient)|. Every read is recorded in a `LoadReport`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..io.models import decoder_layers
from ..io.pairing import tied_embeddings
from ..io.references import open_checkpoint
from .alias import alias_block

__all__ = ["LoadReport", "load_recipient"]


@dataclass
class LoadReport:
    """What `load_recipient` did: every tensor it read, and how long each step took."""
    names_read: list[str] = field(default_factory=list)
    bytes_read: int = 0          # stored bytes read from the checkpoint
    bytes_total: int = 0         # stored bytes of the whole checkpoint
    max_tensor_bytes: int = 0    # largest single read: the loader's CPU working set
    shared: list[int] = field(default_factory=list)
    n_aliased: int = 0
    build_s: float = 0.0
    alias_s: float = 0.0
    load_unique_s: float = 0.0


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, requires_grad: bool) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=requires_grad and value.is_floating_point())
    else:
        mod._buffers[leaf] = value


def load_recipient(ref, donor: nn.Module, shared: Sequence[int], *, report: LoadReport | None = None) -> nn.Module:
    """Build a recipient on the meta device, alias `shared` blocks to `donor`, read only the rest from disk.

    Args:
        ref: recipient checkpoint (directory or hub id; weights read with `Checkpoint.get`, one at a time).
        donor: the loaded donor model (its device and dtype are used for the recipient).
        shared: block indices to alias.
        report: filled with the reads and timings.

    Returns:
        The recipient causal LM in eval mode, usable like any `transformers` model (forward, `generate`).

    Raises:
        ValueError: a recipient parameter is missing from its checkpoint, or the architectures differ.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    rep = report if report is not None else LoadReport()
    ck = open_checkpoint(ref)
    p0 = next(donor.parameters())
    device, dtype = p0.device, p0.dtype
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(ck.path)
    with init_empty_weights():  # parameters on meta; buffers (rotary inv_freq, embed scales) stay real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        model.generation_config = GenerationConfig.from_pretrained(ck.path)
    except OSError:
        pass
    n_blocks = len(decoder_layers(model))
    bad = [i for i in shared if not 0 <= i < n_blocks]
    if bad:
        raise ValueError(f"shared blocks {bad} out of range: {ck.ref} has {n_blocks} blocks")
    t1 = time.perf_counter()
    for i in sorted(set(shared)):
        rep.n_aliased += len(alias_block(model, donor, i))
    t2 = time.perf_counter()
    rep.shared, rep.bytes_total = sorted(set(shared)), ck.nbytes
    for name, p in list(model.named_parameters()):
        if not p.is_meta:
            continue  # aliased
        if name not in ck:
            if name.endswith("lm_head.weight") and tied_embeddings(config):
                continue  # tied below
            raise ValueError(f"{ck.ref} has no tensor {name!r} that {type(model).__name__} needs; the lazy loader "
                             f"reads parameters by their module names. Load this checkpoint with "
                             f"models.load_model and alias blocks with alias_block instead.")
        t = ck.get(name)
        rep.names_read.append(name)
        rep.bytes_read += ck.info(name).nbytes
        rep.max_tensor_bytes = max(rep.max_tensor_bytes, ck.info(name).nbytes)
        _set_tensor(model, name, t.to(device=device, dtype=dtype), requires_grad=True)
        del t
    for name, b in list(model.named_buffers()):
        if b.device != device:
            _set_tensor(model, name, b.to(device), requires_grad=False)
    if tied_embeddings(config):
        model.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"{ck.ref}: parameters left unloaded: {leftover[:3]}")
    t3 = time.perf_counter()
    rep.build_s, rep.alias_s, rep.load_unique_s = t1 - t0, t2 - t1, t3 - t2
    return model.eval()
