"""Checkpoint tensors -> `transformers` module parameters, as an architecture record's `module` entries say.

Most parameters are stored under their module name (up to a prefix: `Architecture.key`). transformers v5 builds
some from several checkpoint tensors: a MoE layer's `mlp.experts.gate_up_proj` [E, 2I, H] is
cat([stack_e(gate_e), stack_e(up_e)], dim 1) and `mlp.experts.down_proj` [E, H, I] is stack_e(down_e), from
`experts.{e}.w1/w3/w2` (Mixtral) or `experts.{e}.gate_proj/up_proj/down_proj` (Qwen3-MoE) — the
`WeightConverter(MergeModulelist(dim=0), Concatenate(dim=1))` of `transformers.conversion_mapping`. A `Source`
reads one such parameter, holding only its own checkpoint tensors (the fused parameter's size) at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .architectures import Architecture

__all__ = ["ConversionError", "Source", "sources", "to_module"]


class ConversionError(ValueError):
    """A module parameter has no checkpoint tensors to be built from; the message names both sides."""


@dataclass(frozen=True)
class Source:
    """How one module parameter is read from a checkpoint.

    Attributes:
        module_name: the parameter's name in the model.
        names: per `from` template, the checkpoint names in expert order (one name when not stacked).
        stacked: the names of each template are stacked along a new dim 0 (experts).
        cat_dim: dimension along which the templates' results are concatenated.
    """
    module_name: str
    names: tuple[tuple[str, ...], ...]
    stacked: bool = False
    cat_dim: int = 0

    @property
    def flat(self) -> list[str]:
        return [n for group in self.names for n in group]

    @property
    def renamed(self) -> bool:
        """True when the parameter is one checkpoint tensor under another name (or itself)."""
        return not self.stacked and len(self.names) == 1

    def read(self, ck) -> torch.Tensor:
        """The module parameter's value from `ck` (a `Checkpoint`), in the stored dtype."""
        return _combine([[ck.get(n) for n in group] for group in self.names], self.stacked, self.cat_dim)

    def shape(self, ck) -> tuple[int, ...]:
        """The module parameter's shape, from the checkpoint's headers (nothing is read)."""
        shapes = [[tuple(ck.info(n).shape) for n in group] for group in self.names]
        parts = [(len(g), *g[0]) if self.stacked else g[0] for g in shapes]
        if len(parts) == 1:
            return parts[0]
        d = self.cat_dim
        return (*parts[0][:d], sum(p[d] for p in parts), *parts[0][d + 1:])

    def nbytes(self, ck) -> int:
        return sum(ck.info(n).nbytes for n in self.flat)


def _combine(groups: list[list[torch.Tensor]], stacked: bool, cat_dim: int) -> torch.Tensor:
    parts = [torch.stack(g) if stacked else g[0] for g in groups]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=cat_dim)


def _expand(template: str, block: int, present) -> list[str]:
    """Names of `template` ({e} = 0, 1, ...) present for `block`; stops at the first missing expert."""
    out, e = [], 0
    while present(block, template.format(e=e)):
        out.append(template.format(e=e))
        e += 1
    return out


def _groups(arch: Architecture, sub: str, block: int | None, present) -> tuple[list[list[str]], bool, int] | None:
    found = arch.entry(sub, module=True)
    e = found[0] if found else None
    if e is None or "from" not in e:
        return None
    stacked = bool(e.get("experts"))
    groups = [_expand(t, block, present) if stacked else [t] for t in e["from"]]
    if stacked and len({len(g) for g in groups}) != 1:
        raise ConversionError(f"block {block} {sub}: expert tensors {e['from']} are missing or uneven "
                              f"({[len(g) for g in groups]} found); the checkpoint is incomplete.")
    return groups, stacked, int(e.get("cat_dim", 0))


def sources(arch: Architecture, module_names, ck, *, tied: bool = False) -> dict[str, Source | None]:
    """Where each module parameter comes from in checkpoint `ck`.

    Args:
        arch: the record. module_names: the model's parameter names. tied: the model ties lm_head to the
            embedding (its lm_head then maps to None: nothing to read).

    Raises:
        ConversionError: a parameter has no checkpoint tensor(s), naming it and the checkpoint.
    """
    index = {arch.key(n): n for n in ck.names}

    def present(block, sub):
        return ("block", block, sub) in index
    out: dict[str, Source | None] = {}
    for name in module_names:
        role = arch.classify(name)
        conv = _groups(arch, role.sub, role.block, present) if role.group == "block" else None
        if conv is not None:
            groups, stacked, cat_dim = conv
            if all(g and all(present(role.block, s) for s in g) for g in groups):
                out[name] = Source(name, tuple(tuple(index[("block", role.block, s)] for s in g) for g in groups),
                                   stacked, cat_dim)
                continue
        else:
            src = index.get(arch.key(name))
            if src is not None:
                out[name] = Source(name, ((src,),))
                continue
            if role.group == "lm_head" and tied:
                out[name] = None
                continue
        raise ConversionError(f"model parameter {name!r} has no counterpart in the checkpoint {ck.ref} "
                              f"({role.group} {role.sub!r}; {arch.source} maps module names to checkpoint names): "
                              f"check that the checkpoint is of this architecture, or fix the record's `module` "
                              f"entries.")
    return out


def to_module(arch: Architecture, block: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One block's checkpoint tensors (sub-name -> tensor) in the module layout (sub-name -> parameter value).

    Tensors no `module` entry consumes keep their names."""
    out, used = {}, set()
    for e in arch.module_entries:
        conv = _groups(arch, e["name"], block, lambda _b, s: s in tensors)
        groups, stacked, cat_dim = conv
        if not all(g and all(s in tensors for s in g) for g in groups):
            continue  # e.g. a dense layer of a MoE model: no experts here
        out[e["name"]] = _combine([[tensors[s] for s in g] for g in groups], stacked, cat_dim)
        used.update(s for g in groups for s in g)
    out.update({k: v for k, v in tensors.items() if k not in used})
    return out
