"""Header-only views of a checkpoint, local or on the Hub, so an incompatible pair fails before any download.

A local directory (or a hub id already in the Hugging Face cache) is opened as a `Checkpoint`, which reads
only the safetensors headers. A hub id that is not cached is described from the Hub without fetching a
weight: `huggingface_hub.get_safetensors_metadata` reads each shard's header with HTTP range requests, and
`config.json` (a few KiB) is downloaded. Either view answers what `pairing.pair_names` asks (`config`,
`names`, `info(name)`, `ref`), so `check_pair` runs the same checks on both before the scan downloads
anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import _ST_DTYPES, Checkpoint, CheckpointNotFound, TensorIndex, TensorInfo
from .pairing import pair_names
from .references import _offline, open_checkpoint

__all__ = ["HubHeaders", "header_view", "check_pair"]


class HubHeaders(TensorIndex):
    """What the Hub says about a safetensors repository: its config and each tensor's shape and dtype.

    Attributes:
        ref: the hub id (with "@revision" when one was asked for).
        config: the repository's config.json as a dict.
    """

    def __init__(self, ref: str, config: dict, files: dict[str, dict]):
        self.ref, self.config = ref, config
        self._info: dict[str, TensorInfo] = {}
        for fname, tensors in files.items():
            for name, t in tensors.items():
                dtype, width = _ST_DTYPES.get(t.dtype, (t.dtype.lower(), 0))
                numel = 1
                for s in t.shape:
                    numel *= s
                self._info[name] = TensorInfo(name, tuple(t.shape), dtype, fname, numel * width)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    @property
    def model_types(self) -> set[str]:
        """As `Checkpoint.model_types` (pairing accepts a match on any)."""
        return {self.model_type}

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self._info.values())

    def __repr__(self) -> str:
        return f"HubHeaders({self.ref!r}, {len(self._info)} tensors, {self.nbytes / 2**30:.2f} GiB)"


def _hub_headers(ref: str, revision: str | None) -> HubHeaders | None:
    """The Hub's header view of `ref`; None for a repository without safetensors (nothing to check cheaply)."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import NotASafetensorsRepoError
    how = ("Check the id, your access to it (gated repositories need `huggingface-cli login`), or download it "
           "where the Hub is reachable and pass the directory instead.")
    try:
        meta = get_safetensors_metadata(ref, revision=revision)
    except NotASafetensorsRepoError:
        return None
    except Exception as exc:  # unknown or gated repository, no network
        raise CheckpointNotFound(f"cannot read the safetensors headers of {ref!r} from the Hugging Face Hub "
                                 f"({type(exc).__name__}: {str(exc)[:300]}). {how}") from exc
    try:
        config = json.loads(Path(hf_hub_download(ref, "config.json", revision=revision)).read_text())
    except Exception as exc:
        raise CheckpointNotFound(f"cannot fetch config.json of {ref!r} from the Hugging Face Hub "
                                 f"({type(exc).__name__}: {str(exc)[:300]}). {how}") from exc
    files = {fname: fm.tensors for fname, fm in meta.files_metadata.items()}
    return HubHeaders(ref if revision is None else f"{ref}@{revision}", config, files)


def header_view(ref: str | os.PathLike, *, revision: str | None = None,
                local_files_only: bool | None = None) -> Checkpoint | HubHeaders | None:
    """A checkpoint's headers without reading or downloading a weight.

    Args:
        ref: a checkpoint directory or a hub id.
        revision: hub revision.
        local_files_only: never touch the network (default: ``HF_HUB_OFFLINE``).

    Returns:
        An opened checkpoint when the weights are local (a directory, a .gguf file, or a hub id in the cache, as
        `open_checkpoint` returns it); `HubHeaders` for a
        hub id that is not; None for a hub repository with `.bin` weights only (its headers cannot be read
        without downloading it).

    Raises:
        CheckpointError: a missing directory, damaged headers, an unknown id, or a hub id that is neither
            cached nor reachable; the message names the reference.
    """
    try:
        return open_checkpoint(ref, revision=revision, local_files_only=True)
    except CheckpointNotFound:
        text = os.fspath(ref)
        offline = _offline() if local_files_only is None else local_files_only
        if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or offline:
            raise  # resolve's message: missing directory, or not cached while offline
    return _hub_headers(os.fspath(ref), revision)


def check_pair(base_ref: str, variant_ref: str) -> tuple[object | None, object | None]:
    """Header views of both ends, checked against each other with `pairing.pair_names` when both are known
    (see `header_view`): an incompatible pair fails here, before a weight is read or downloaded.

    Raises:
        CheckpointError: either end is unusable, or the two cannot be compared (`ScanMismatch`, naming the
            first offending tensor or config field and both references).
    """
    b, v = header_view(base_ref), header_view(variant_ref)
    if b is not None and v is not None:
        pair_names(b, v)
    return b, v
