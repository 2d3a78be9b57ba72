"""Find a checkpoint and read it one tensor at a time.

A reference is a local directory, a Hugging Face cache snapshot, a hub id, or a .gguf file. Weights are read
lazily: safetensors through `safe_open` (memory-mapped, one tensor materialised per `get`), or, when a
repository has no safetensors, `pytorch_model*.bin` through `torch.load(weights_only=True, mmap=True)`; a GGUF
file through `linker_nb.io.gguf.GGUFCheckpoint` (a subclass `Checkpoint(path)` returns for one). Nothing here
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


class TensorIndex:
    """Tensor names and their `TensorInfo`, by name (`_info`); what a checkpoint and a header-only view share."""
    ref: str
    _info: dict[str, TensorInfo]

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


class Checkpoint(TensorIndex):
    """Lazy, read-only view of one checkpoint's tensors.

    Use as a context manager, or call `close()`. `names` are in the file order of the index (stable), so two
    checkpoints of one architecture are walked in the same order. `Checkpoint(path)` on a .gguf file (or a
    directory holding one and no safetensors/.bin) returns a `linker_nb.io.gguf.GGUFCheckpoint`, which keeps
    this interface and overrides the hooks marked "format hook" below.
    """

    def __new__(cls, path: str | os.PathLike, ref: str | None = None):
        if cls is Checkpoint:
            from .gguf import GGUFCheckpoint, gguf_file
            if gguf_file(Path(path)) is not None:
                return super().__new__(GGUFCheckpoint)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike, ref: str | None = None):
        self.path = Path(path)
        self.ref = ref or str(path)
        self.config: dict = _read_config(self.path / "config.json")
        files = weight_files(self.path)
        if not files:
            raise CheckpointNotFound(f"no *.safetensors or pytorch_model*.bin in {self.path} ({self.ref}); "
                                     f"is this a checkpoint directory?")
        self.format = next(iter(files))
        self._files = files[self.format]
        self._weight_map: dict[str, str] | None = None
        index = self.path / "model.safetensors.index.json"
        if self.format == "safetensors" and index.exists():
            # A sharded checkpoint is the shards its index names; other *.safetensors beside them (Mistral's
            # consolidated.safetensors holds the same weights under other names) are not read.
            self._weight_map = _read_index(index)
            self._files = sorted(set(self._weight_map.values()))
        self._handles: dict[str, object] = {}
        self._bin_cache: tuple[str, dict] | None = None
        self._info: dict[str, TensorInfo] = {}
        if self.format == "safetensors":
            self._index_safetensors()
        else:
            self._index_bin()

    # -- indexing (headers only) -------------------------------------------------------------------
    def _index_safetensors(self) -> None:
        index = self.path / "model.safetensors.index.json"
        wanted = self._weight_map or {}
        for fname in self._files:
            if not (self.path / fname).is_file():
                lost = sorted(n for n, f in wanted.items() if f == fname)
                raise CheckpointCorrupt(f"{index} lists {len(lost)} tensor(s) absent from the shards, e.g. "
                                        f"{lost[0]!r}: their shard {fname} is missing from {self.path}; "
                                        f"re-download {self.ref}.")
            for name, (shape, dtype, nbytes) in _read_safetensors_header(self.path / fname).items():
                if name in self._info:
                    raise CheckpointCorrupt(f"tensor {name!r} is stored twice ({self._info[name].file} and "
                                            f"{fname}) in {self.path}")
                self._info[name] = TensorInfo(name, shape, dtype, fname, nbytes)
        missing = sorted(set(wanted) - set(self._info))
        if missing:
            raise CheckpointCorrupt(f"{index} lists {len(missing)} tensor(s) absent from the shards, e.g. "
                                    f"{missing[0]!r} (expected in {wanted[missing[0]]}); a shard is missing "
                                    f"or incomplete: re-download {self.ref}.")
        moved = [n for n, f in wanted.items() if self._info[n].file != f]
        if moved:
            n = moved[0]
            raise CheckpointCorrupt(f"{index} places tensor {n!r} in {wanted[n]}, but it is stored in "
                                    f"{self._info[n].file} ({len(moved)} such tensor(s)); the index and the shards "
                                    f"do not belong together: re-download {self.ref}.")

    def _index_bin(self) -> None:
        for fname in self._files:
            sd = self._load_bin(fname)
            if not isinstance(sd, dict):
                raise CheckpointCorrupt(f"{self.path / fname} holds a {type(sd).__name__}, not a state dict of "
                                        f"tensors; re-download {self.ref} or re-save it with torch.save(state_dict).")
            for name, t in sd.items():
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

    # -- format hooks (GGUFCheckpoint overrides them) -----------------------------------------------
    def stored(self, name: str, loaded: torch.Tensor):
        """What the identity hash covers: the stored bytes of `name`, here the tensor `get` returned."""
        return loaded

    def note(self, name: str) -> str:
        """A remark the scan records on `name` (e.g. that it was dequantized); empty here."""
        return ""

    @property
    def identity_basis(self) -> str:
        """What "byte-identical" compares for this checkpoint."""
        return f"stored bytes ({self.format})"

    @property
    def model_types(self) -> set[str]:
        """The model_types this checkpoint's layout stands for (pairing accepts a match on any)."""
        return {self.model_type}

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
            if self.format == "safetensors":  # headers were validated on open
                with open(p, "rb") as f:
                    raw = f.read(8)
                    n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
                    h.update(f.read(min(n, MAX_HEADER)))
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


# safetensors dtype -> (torch dtype name, bytes per element). Sub-byte types (F4, F6_*) are not read.
_ST_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
              "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
              "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
              "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
              "F8_E8M0": ("float8_e8m0fnu", 1), "C64": ("complex64", 8)}
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header (bytes)
# Config fields this package reads (pairing, architectures), with the JSON type each must have when present.
_CONFIG_TYPES = {"model_type": str, "num_hidden_layers": int, "hidden_size": int, "tie_word_embeddings": bool,
                 "text_config": dict}
_FIX = "The download is damaged or truncated: delete and re-download it."


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointCorrupt(f"{path} is not valid JSON ({str(exc)[:200]}); re-download or fix the "
                                f"{what}.") from exc
    except OSError as exc:
        raise CheckpointCorrupt(f"cannot read {path} ({exc}).") from exc


def _read_config(path: Path) -> dict:
    """config.json as a dict ({} when absent), with the fields this package reads type-checked."""
    if not path.exists():
        return {}
    cfg = _read_json(path, "config")
    if not isinstance(cfg, dict):
        raise CheckpointCorrupt(f"{path} holds a JSON {type(cfg).__name__}, not an object of config fields; "
                                f"re-download or fix the config.")
    for where, table in (("", cfg), ("text_config.", cfg.get("text_config") or {})):
        for key, typ in _CONFIG_TYPES.items():
            value = table.get(key)
            ok = value is None or (_is_int(value) if typ is int else isinstance(value, typ))
            if not ok or (typ is int and value is not None and value < 0):
                raise CheckpointCorrupt(f"{path}: {where}{key} is {value!r}, expected a"
                                        f"{' non-negative integer' if typ is int else ' ' + typ.__name__}; "
                                        f"re-download or fix the config.")
    return cfg


def _read_index(path: Path) -> dict[str, str]:
    """The weight_map (tensor -> shard file) of a model.safetensors.index.json."""
    index = _read_json(path, "index")
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointCorrupt(f"{path} has no \"weight_map\" object (tensor name -> shard file); it is "
                                f"damaged: re-download it with the shards.")
    for name, fname in wm.items():
        if not isinstance(fname, str) or not fname.endswith(".safetensors") or Path(fname).name != fname:
            raise CheckpointCorrupt(f"{path}: weight_map maps {name!r} to {fname!r}, not a .safetensors file "
                                    f"in the checkpoint directory; the index is damaged: re-download it.")
    return wm


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook: a key given twice (a tensor listed twice) makes the header ambiguous."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"{dup!r} is listed twice")
    return out


def _read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Parse a safetensors header and validate it as the format requires, before any tensor is read.

    Every entry must be an object with a known dtype, a shape of non-negative integers and [begin, end]
    data_offsets whose span is shape x dtype bytes; the entries must tile the data section exactly (no
    overlap, no gap, nothing past the end: the check `safetensors` itself makes, here with a message).

    Returns:
        {tensor name: (shape, torch dtype name, nbytes)}.

    Raises:
        CheckpointCorrupt: naming the file, the tensor and what is wrong.
    """
    def bad(why: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"{path} is not a readable safetensors file: {why}. {_FIX}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise bad(f"{len(raw)} bytes, shorter than the 8-byte header length")
            n = struct.unpack("<Q", raw)[0]
            if n > size - 8:
                raise bad(f"header length {n} exceeds the file ({size} bytes)")
            if n > MAX_HEADER:
                raise bad(f"header length {n} exceeds safetensors' limit of {MAX_HEADER} bytes")
            header = json.loads(f.read(n), object_pairs_hook=_unique_keys)
    except OSError as exc:
        raise CheckpointCorrupt(f"cannot read {path} ({exc}).") from exc
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8
        raise bad(f"the header is not JSON ({str(exc)[:200]})") from exc
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad(f"__metadata__ is {str(meta)[:100]}, not an object of strings")
    data_len = size - 8 - n
    out, spans = {}, []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise bad(f"the entry of tensor {name!r} is {str(entry)[:100]}, not an object with dtype, shape "
                      f"and data_offsets")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise bad(f"the entry of tensor {name!r} has no {' / '.join(missing)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise bad(f"tensor {name!r} has dtype {dtype!r}; readable: {', '.join(_ST_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
        if offsets[1] > data_len:
            raise CheckpointCorrupt(f"{path} is truncated: tensor {name!r} ends at byte {offsets[1]} of a "
                                    f"{data_len}-byte data section. {_FIX}")
        torch_dtype, width = _ST_DTYPES[dtype]
        numel = 1
        for s in shape:
            numel *= s
        if numel * width != offsets[1] - offsets[0]:
            raise bad(f"tensor {name!r} of shape {shape} and dtype {dtype} needs {numel * width} bytes but its "
                      f"data_offsets {offsets} span {offsets[1] - offsets[0]}")
        out[name] = (tuple(shape), torch_dtype, offsets[1] - offsets[0])
        spans.append((offsets[0], offsets[1], name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise bad(f"tensor {name!r} starts at byte {begin} of the data section, where byte {pos} was expected "
                      f"(overlapping or misplaced data_offsets)")
        pos = end
    if pos != data_len:
        raise bad(f"its tensors end at byte {pos} of a {data_len}-byte data section (extra bytes after them)")
    return out
