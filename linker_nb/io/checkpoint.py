"""Find a checkpoint and read it one tensor at a time.

A reference is a local directory, a Hugging Face cache snapshot, or a hub id. Weights are read lazily:
safetensors through `safe_open` (memory-mapped, one tensor materialised per `get`), or, when a repository
has no safetensors, `pytorch_model*.bin` through `torch.load(weights_only=True, mmap=True)`. Nothing here
instantiates a model, so scanning two 8B checkpoints holds a few tensors in memory, not two models.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CheckpointError", "CheckpointNotFound", "CheckpointCorrupt", "TensorInfo", "Checkpoint", "weight_files"]


class CheckpointError(Exception):
    """A checkpoint could not be used; the message says which one and what to do."""


class CheckpointNotFound(CheckpointError):
    pass


class CheckpointCorrupt(CheckpointError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    """Header facts about one stored tensor (no data read)."""
    name: str
    shape: tuple[int, ...]
    dtype: str          # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    file: str           # file name inside the checkpoint directory
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n



def weight_files(directory: Path) -> dict[str, list[str]]:
    """The weight files of a directory, by format: {"safetensors": [...]} or {"bin": [...]}."""
    st = sorted(p.name for p in directory.glob("*.safetensors"))
    if st:
        return {"safetensors": st}
    bins = sorted(p.name for p in directory.glob("pytorch_model*.bin"))
    return {"bin": bins} if bins else {}


class Checkpoint:
    """Lazy, read-only view of one checkpoint's tensors.

    Use as a context manager, or call `close()`. `names` are in the file order of the index (stable), so two
    checkpoints of one architecture are walked in the same order.
    """

    def __init__(self, path: str | os.PathLike, ref: str | None = None):
        self.path = Path(path)
        self.ref = ref or str(path)
        cfg_path = self.path / "config.json"
        try:
            self.config: dict = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        except json.JSONDecodeError as exc:
            raise CheckpointCorrupt(f"{cfg_path} is not valid JSON ({exc}); re-download or fix it.") from exc
        files = weight_files(self.path)
        if not files:
            raise CheckpointNotFound(f"no *.safetensors or pytorch_model*.bin in {self.path} ({self.ref}); "
                                     f"is this a checkpoint directory?")
        self.format = next(iter(files))
        self._files = files[self.format]
        self._handles: dict[str, object] = {}
        self._bin_cache: tuple[str, dict] | None = None
        self._info: dict[str, TensorInfo] = {}
        if self.format == "safetensors":
            self._index_safetensors()
        else:
            self._index_bin()

    # -- indexing (headers only) -------------------------------------------------------------------
    def _index_safetensors(self) -> None:
        for fname in self._files:
            for name, (shape, dtype, nbytes) in _read_safetensors_header(self.path / fname).items():
                if name in self._info:
                    raise CheckpointCorrupt(f"tensor {name!r} is stored twice ({self._info[name].file} and "
                                            f"{fname}) in {self.path}")
                self._info[name] = TensorInfo(name, shape, dtype, fname, nbytes)
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            try:
                wanted = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointCorrupt(f"{index} is not a valid safetensors index ({exc}).") from exc
            missing = sorted(set(wanted) - set(self._info))
            if missing:
                raise CheckpointCorrupt(f"{index} lists {len(missing)} tensor(s) absent from the shards, e.g. "
                                        f"{missing[0]!r} (expected in {wanted[missing[0]]}); a shard is missing "
                                        f"or incomplete: re-download {self.ref}.")

    def _index_bin(self) -> None:
        for fname in self._files:
            for name, t in self._load_bin(fname).items():
                if isinstance(t, torch.Tensor):
                    self._info[name] = TensorInfo(name, tuple(t.shape), str(t.dtype).replace("torch.", ""),
                                                  fname, t.numel() * t.element_size())

    def _load_bin(self, fname: str) -> dict:
        if self._bin_cache and self._bin_cache[0] == fname:
            return self._bin_cache[1]
        path = self.path / fname
        try:  # mmap keeps the shard on disk; only tensors that are touched are paged in
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            try:  # legacy (non-zip) format cannot be memory-mapped: one shard in memory at a time
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointCorrupt(f"cannot read {path}: {exc}") from exc
        except Exception as exc:
            raise CheckpointCorrupt(f"cannot read {path} (weights_only load refused or file damaged): "
                                    f"{exc}") from exc
        self._bin_cache = (fname, sd)
        return sd

    # -- access ------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._info)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._info[name]
        except KeyError:
            raise KeyError(f"{self.ref} has no tensor {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def __len__(self) -> int:
        return len(self._info)

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self._info.values())

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor in its stored dtype (a fresh CPU tensor; nothing else is loaded)."""
        info = self.info(name)
        if self.format == "bin":
            return self._load_bin(info.file)[name]
        handle = self._handles.get(info.file)
        try:
            if handle is None:
                from safetensors import safe_open
                handle = self._handles[info.file] = safe_open(str(self.path / info.file), "pt", device="cpu")
            return handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointCorrupt(f"cannot read tensor {name!r} from {self.path / info.file}: {exc}. The "
                                    f"file is damaged or truncated; re-download {self.ref}.") from exc

    def fingerprint(self) -> str:
        """Content fingerprint: file names, sizes, modification times and safetensors headers.

        Cheap (no tensor data read) and changes whenever a weight file is rewritten, which is what a cached
        share plan needs to detect staleness.
        """
        h = hashlib.sha256()
        for fname in self._files:
            p = self.path / fname
            st = p.stat()
            h.update(f"{fname}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if self.format == "safetensors":
                with open(p, "rb") as f:
                    n = struct.unpack("<Q", f.read(8))[0]
                    h.update(f.read(min(n, 100_000_000)))
        return h.hexdigest()[:32]

    def close(self) -> None:
        self._handles.clear()
        self._bin_cache = None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Checkpoint({self.ref!r}, {self.model_type}, {len(self)} tensors, "
                f"{self.nbytes / 2**20:.1f} MiB, {self.format} x{len(self._files)})")


_ST_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
              "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
              "U8": ("uint8", 1), "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1),
              "F8_E5M2": ("float8_e5m2", 1)}


def _read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Parse a safetensors header and check it against the file size (catches truncation early)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than the 8-byte header length")
            n = struct.unpack("<Q", raw)[0]
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointCorrupt(f"{path} is not a readable safetensors file ({exc}); the download is damaged "
                                f"or truncated: delete and re-download it.") from exc
    out = {}
    data_len = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, width = _ST_DTYPES.get(meta.get("dtype"), (str(meta.get("dtype")).lower(), 0))
        begin, end = meta["data_offsets"]
        if end > data_len:
            raise CheckpointCorrupt(f"{path} is truncated: tensor {name!r} ends at byte {end} of a "
                                    f"{data_len}-byte data section. Delete and re-download it.")
        out[name] = (tuple(meta["shape"]), dtype, end - begin)
    return out

