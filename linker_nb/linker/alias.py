"""The alias primitive and its guard (paper App. B/C): a recipient block over the donor's storage.

Each parameter of a recipient block becomes a frozen `nn.Parameter` over the donor's tensor storage
(`param_B.data = param_A.data`), so both report the same `data_ptr()`. A guard snapshot (tensor version
counters and a checksum of the bits) of every shared storage is taken at alias time, and `check_integrity`
raises `SharedWeightModified` naming the recipient and block if anything wrote into it. `unalias(model, block)`
gives a block its own copy (copy-on-write by hand) before it is trained.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..io.models import decoder_layers

__all__ = ["SharedWeightModified", "alias_block", "unalias", "shared_blocks", "check_integrity"]


class SharedWeightModified(RuntimeError):
    """Storage shared between a donor and a recipient was written in place."""



_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(t: torch.Tensor) -> str | tuple[int, int]:
    """A fingerprint of the raw bits: any in-place write changes it.

    On the CPU, xxh3-128 over the tensor's bytes without a copy (~tens of GB/s; the integer sums below built
    full-size int64 temporaries and were 88% of a cached-plan load, benchmarks/README.md). On an accelerator,
    two integer sums (plain and position-weighted) computed where the tensor lives, instead of a host copy.
    """
    t = t.detach()
    if t.device.type == "cpu":
        import xxhash
        return xxhash.xxh3_128_hexdigest(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    x = t.reshape(-1).view(_INT_VIEW[t.element_size()]).to(torch.int64)
    w = torch.arange(x.numel(), device=x.device, dtype=torch.int64) % 65521 + 1
    return int(x.sum()), int((x * w).sum())


def _guard(model: nn.Module) -> dict:
    """{block: {sub: (recipient param, donor param, versions, checksum)}} of a recipient's aliased tensors."""
    if not hasattr(model, "_linker_shared"):
        model._linker_shared = {}
    return model._linker_shared


def alias_block(recipient: nn.Module, donor: nn.Module, index: int) -> list[str]:
    """Make block `index` of `recipient` use the storage of the donor's block `index` (no copy).

    Each recipient parameter becomes a frozen `nn.Parameter` over the donor tensor's storage (same `data_ptr()`);
    the recipient may be on the meta device or materialised. The guard records versions and checksums.

    Returns:
        The aliased sub-parameter names (e.g. "self_attn.q_proj.weight").

    Raises:
        ValueError: the blocks differ in parameter names, shapes or dtypes (naming the first mismatch).
    """
    r_layer, d_layer = decoder_layers(recipient)[index], decoder_layers(donor)[index]
    d_params = dict(d_layer.named_parameters())
    r_params = dict(r_layer.named_parameters())
    if set(d_params) != set(r_params):
        raise ValueError(f"block {index}: recipient and donor parameters differ "
                         f"({sorted(set(d_params) ^ set(r_params))[:3]}); they are not the same architecture.")
    guard = _guard(recipient).setdefault(index, {})
    for sub, dp in d_params.items():
        rp = r_params[sub]
        if rp.shape != dp.shape or (rp.dtype != dp.dtype):
            raise ValueError(f"block {index} {sub}: recipient {tuple(rp.shape)} {rp.dtype} vs donor "
                             f"{tuple(dp.shape)} {dp.dtype}; build the recipient in the donor's dtype.")
        mod_name, _, leaf = sub.rpartition(".")
        mod = r_layer.get_submodule(mod_name) if mod_name else r_layer
        new = nn.Parameter(dp.data, requires_grad=False)  # the alias: a new Parameter over the same storage
        mod._parameters[leaf] = new
        guard[sub] = (new, dp, new._version, dp._version, _checksum(dp))
    return list(d_params)


def shared_blocks(model: nn.Module) -> list[int]:
    """Indices of the blocks of `model` that currently alias a donor."""
    return sorted(i for i, subs in _guard(model).items() if subs)


def unalias(model: nn.Module, index: int, requires_grad: bool = True) -> None:
    """Copy-on-write by hand: give block `index` of `model` its own storage (a clone) before it is trained.

    Raises:
        SharedWeightModified: the shared storage was already written (copying it would hide the corruption).
        KeyError: the block is not aliased.
    """
    guard = _guard(model)
    if not guard.get(index):
        raise KeyError(f"block {index} of this model is not aliased (aliased: {shared_blocks(model)})")
    check_integrity(model, blocks=[index])
    layer = decoder_layers(model)[index]
    for sub, (rp, *_rest) in guard.pop(index).items():
        mod_name, _, leaf = sub.rpartition(".")
        mod = layer.get_submodule(mod_name) if mod_name else layer
        mod._parameters[leaf] = nn.Parameter(rp.detach().clone(), requires_grad=requires_grad)


def check_integrity(model: nn.Module, *, name: str = "recipient", blocks: Iterable[int] | None = None,
                    deep: bool = True) -> int:
    """Raise if any storage `model` shares with its donor was modified in place since it was aliased.

    Args:
        model: a recipient built by `alias_block` / `Linker.add`.
        name: how to call the model in the message.
        blocks: restrict to these block indices.
        deep: also compare bit checksums (catches writes through `.data`, which bypass version counters).

    Returns:
        The number of shared tensors checked.

    Raises:
        SharedWeightModified: naming the model, block and sub-parameter.
    """
    n = 0
    for index, subs in _guard(model).items():
        if blocks is not None and index not in set(blocks):
            continue
        for sub, (rp, dp, rv, dv, ck) in subs.items():
            n += 1
            moved = rp.data_ptr() != dp.data_ptr()
            if moved or rp._version != rv or dp._version != dv or (deep and _checksum(dp) != ck):
                raise SharedWeightModified(
                    f"{name}: block {index} ({sub}) shares storage with the donor and was "
                    f"{'re-pointed' if moved else 'modified in place'} since it was aliased; every model "
                    f"sharing it is affected. Reload the donor, and call unalias(model, {index}) before "
                    f"training or editing a shared block.")
    return n

