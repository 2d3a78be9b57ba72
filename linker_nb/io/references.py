"""Turn a reference (local directory, .gguf file, Hugging Face cache snapshot, hub id) into a local checkpoint."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import Checkpoint, CheckpointNotFound, weight_files

__all__ = ["HUB_PATTERNS", "HUB_BIN_PATTERNS", "resolve", "open_checkpoint"]

# Weights and config only (plus tokenizer files, which are small and needed to evaluate a loss).
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt"]
HUB_BIN_PATTERNS = ["*.json", "pytorch_model*.bin", "tokenizer.model", "merges.txt"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def resolve(ref: str | os.PathLike, *, revision: str | None = None,
            local_files_only: bool | None = None) -> Path:
    """Turn a reference into a local directory holding config and weights, or a .gguf file.

    Args:
        ref: a directory, a .gguf file (llama.cpp; see `linker_nb.io.gguf`), or a hub id such as
            ``"Qwen/Qwen2.5-7B"`` (resolved from the local Hugging Face cache first, then downloaded through `huggingface_hub`, weights and config only).
        revision: hub revision (branch, tag or commit).
        local_files_only: never touch the network. Defaults to ``HF_HUB_OFFLINE``.

    Returns:
        The directory (or the .gguf file).

    Raises:
        CheckpointNotFound: the path does not exist, or the id is neither cached nor downloadable; the
            message names the reference and how to pass a local path instead.
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.exists():
        raise CheckpointNotFound(f"{text!r} is a file; pass the checkpoint directory that contains it "
                                 f"(with config.json): {path.parent}, or a .gguf file")
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text) or text.lower().endswith(".gguf"):
        raise CheckpointNotFound(f"no checkpoint directory or .gguf file at {text!r} (and it is not a hub id).")
    offline = _offline() if local_files_only is None else local_files_only
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointNotFound(f"{text!r} is not a local directory and huggingface_hub is missing") from exc

    def fetch(patterns: list[str], only_local: bool) -> Path:
        return Path(snapshot_download(text, revision=revision, allow_patterns=patterns,
                                      local_files_only=only_local))

    how = (f"Download it where the Hub is reachable (`huggingface-cli download {text}`) and pass the "
           f"directory instead, e.g. `-p base /path/to/{text.split('/')[-1]}` (papermill) or "
           f"`open_checkpoint('/path/to/dir')`.")
    try:
        snap = fetch(HUB_PATTERNS, True)
        if weight_files(snap):
            return snap
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # malformed id, broken cache entry
        raise CheckpointNotFound(f"cannot resolve {text!r} from the local cache: {exc}. {how}") from exc
    if offline:
        raise CheckpointNotFound(f"{text!r} is not in the local Hugging Face cache and the Hub is offline "
                                 f"(HF_HUB_OFFLINE). {how}")
    try:
        snap = fetch(HUB_PATTERNS, False)
        if not weight_files(snap):  # an old repository with .bin weights only
            snap = fetch(HUB_BIN_PATTERNS, False)
        return snap
    except Exception as exc:
        raise CheckpointNotFound(f"could not download {text!r} from the Hugging Face Hub "
                                 f"({type(exc).__name__}: {str(exc)[:300]}). {how}") from exc



def open_checkpoint(ref: str | os.PathLike | Checkpoint, *, revision: str | None = None,
                    local_files_only: bool | None = None) -> Checkpoint:
    """`resolve` a reference and open it lazily; an open `Checkpoint` is returned as it is.

    The one way a reference becomes a `Checkpoint`: every analysis accepts either and calls this.
    """
    if isinstance(ref, Checkpoint):
        return ref
    return Checkpoint(resolve(ref, revision=revision, local_files_only=local_files_only), ref=os.fspath(ref))
