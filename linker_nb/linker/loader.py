"""The lazy loader (paper App. B, lazier): a recipient built on the meta device, its shareable blocks aliasing the
donor, only its other tensors read from its checkpoint, one at a time. No full copy of the recipient ever exists:
peak = |donor| + |unique(recipient)|. Every read is recorded in a `LoadReport`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..io.architectures import get_architecture
from ..io.conversions import ConversionError, sources
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
    expert_bytes_aliased: int = 0  # MoE: bytes of expert (and router) parameters of the aliased blocks
    expert_bytes_read: int = 0     # MoE: stored bytes of expert tensors read for the unique blocks
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
    arch = get_architecture(getattr(config, "model_type", None) or ck.model_type, ck.names)
    n_blocks = len(decoder_layers(model))
    bad = [i for i in shared if not 0 <= i < n_blocks]
    if bad:
        raise ValueError(f"shared blocks {bad} out of range: {ck.ref} has {n_blocks} blocks")
    t1 = time.perf_counter()
    for i in sorted(set(shared)):
        rep.n_aliased += len(alias_block(model, donor, i))
        rep.expert_bytes_aliased += sum(p.numel() * p.element_size() for sub, p in
                                        decoder_layers(model)[i].named_parameters()
                                        if arch.entry(sub, module=True) and arch.entry(sub, module=True)[0]["kind"]
                                        in ("expert", "shared_expert", "router"))
    t2 = time.perf_counter()
    rep.shared, rep.bytes_total = sorted(set(shared)), ck.nbytes
    todo = [name for name, p in model.named_parameters() if p.is_meta]  # the aliased ones are not
    try:  # module name -> checkpoint tensor(s): v5 builds fused MoE experts from one tensor per expert
        where = sources(arch, todo, ck, tied=tied_embeddings(config))
    except ConversionError as exc:
        raise ValueError(f"{exc} The lazy loader reads parameters through the architecture record; load this "
                         f"checkpoint with models.load_model and alias blocks with alias_block instead.") from exc
    for name in todo:
        src = where[name]
        if src is None:
            continue  # tied lm_head: tied below
        t = src.read(ck)
        n = src.nbytes(ck)
        rep.names_read.extend(src.flat)
        rep.bytes_read += n
        rep.max_tensor_bytes = max(rep.max_tensor_bytes, n)
        if arch.classify(name).kind in ("expert", "shared_expert"):
            rep.expert_bytes_read += n
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
