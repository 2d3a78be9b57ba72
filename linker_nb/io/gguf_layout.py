"""A GGUF file's structure checked against its size before the `gguf` package parses it.

`gguf.GGUFReader` trusts every count in the header; `check_layout` is the guard that makes a damaged file a
`CheckpointError` instead of a hang, an IndexError or a numpy reshape error deep inside the package.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from .checkpoint import CheckpointCorrupt, CheckpointError

__all__ = ["UnsupportedGGUF", "check_layout"]


class UnsupportedGGUF(CheckpointError):
    """A well-formed GGUF file this package cannot read (version, architecture, quantization type); the message
    says what to do."""


_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY, _MAX_DIMS = 8, 9, 4


def check_layout(path: Path) -> None:
    """Walk the header with every count and offset bounded by the file size, before `GGUFReader` does.

    `GGUFReader` trusts counts: a damaged array length makes it loop for hours over reads past the end, which
    return empty arrays instead of failing. This walk is linear in the header's size and raises
    `CheckpointCorrupt` (truncated, bad magic, impossible counts, tensor data past the end) or `UnsupportedGGUF`
    (version, byte order, quantization type) naming the file.
    """
    import gguf
    fix = "The file is damaged or truncated: delete it and download or convert it again."
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise CheckpointCorrupt(f"{path} is not a GGUF file: {size} bytes, shorter than the 24-byte header. {fix}")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if buf[:4] != b"GGUF":
            raise CheckpointCorrupt(f"{path} is not a GGUF file: it starts with {bytes(buf[:4])!r}, not b'GGUF'. "
                                    f"Pass a .gguf file written by llama.cpp or the gguf package. {fix}")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            swapped = version != 0 and version & 0xFFFF == 0  # the reader's own test for the other byte order
            raise UnsupportedGGUF(f"{path}: GGUF version {version}{' (a big-endian file?)' if swapped else ''} "
                                  f"is not readable (versions 2 and 3, little-endian); re-convert it with a current "
                                  f"llama.cpp.")
        pos, alignment = 24, 32

        def take(n: int, what: str) -> int:
            nonlocal pos
            if n < 0 or pos + n > size:
                raise CheckpointCorrupt(f"{path} is truncated: {what} needs {n} bytes at byte {pos} of a "
                                        f"{size}-byte file. {fix}")
            pos += n
            return pos - n

        def u(fmt: str, what: str):
            return struct.unpack_from(fmt, buf, take(struct.calcsize(fmt), what))[0]

        def string(what: str) -> bytes:
            n = u("<Q", what)
            return bytes(buf[take(n, what):pos])

        def value(t: int, what: str, depth: int = 0):
            if t in _SCALAR:
                take(_SCALAR[t], what)
            elif t == _STRING:
                string(what)
            elif t == _ARRAY and depth < 2:
                it, n = u("<I", what), u("<Q", what)
                if it in _SCALAR:
                    take(n * _SCALAR[it], what)
                elif it in (_STRING, _ARRAY):
                    if n > (size - pos) // 8:  # every element needs at least an 8-byte length
                        raise CheckpointCorrupt(f"{path}: {what} claims {n} elements, more than the file holds. {fix}")
                    for _ in range(n):
                        value(it, what, depth + 1)
                else:
                    raise CheckpointCorrupt(f"{path}: {what} is an array of unknown value type {it}. {fix}")
            else:
                raise CheckpointCorrupt(f"{path}: {what} has unknown value type {t}. {fix}")

        if n_kv > size // 13 or n_tensors > size // 24:  # smallest key/value: 13 bytes; tensor info: 24
            raise CheckpointCorrupt(f"{path}: header claims {n_kv} metadata keys and {n_tensors} tensors, more "
                                    f"than a {size}-byte file can hold. {fix}")
        for k in range(n_kv):
            key = string(f"metadata key #{k}")
            t = u("<I", f"metadata {key[:60]!r}")
            start = pos
            value(t, f"metadata {key[:60]!r}")
            if key == b"general.alignment" and t == 4:
                alignment = struct.unpack_from("<I", buf, start)[0]
                if alignment == 0 or alignment & (alignment - 1):
                    raise CheckpointCorrupt(f"{path}: general.alignment is {alignment}, not a power of two. {fix}")
        infos = []
        for k in range(n_tensors):
            name = string(f"tensor info #{k}").decode("utf-8", "replace")
            nd = u("<I", f"tensor {name!r}")
            if not 1 <= nd <= _MAX_DIMS:
                raise CheckpointCorrupt(f"{path}: tensor {name!r} has {nd} dimensions (1..{_MAX_DIMS} allowed). {fix}")
            dims = struct.unpack_from(f"<{nd}Q", buf, take(8 * nd, f"tensor {name!r}"))
            qt, offset = u("<I", f"tensor {name!r}"), u("<Q", f"tensor {name!r}")
            infos.append((name, dims, qt, offset))
        data = pos + (-pos) % alignment
        for name, dims, qt, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(qt)
            except ValueError:
                raise UnsupportedGGUF(f"{path}: tensor {name!r} has quantization type id {qt}, unknown to the "
                                      f"installed gguf package ({gguf.__name__} reads "
                                      f"{', '.join(t.name for t in gguf.GGMLQuantizationType)}). Upgrade it "
                                      f"(pip install -U gguf) or re-quantize the file to a known type.") from None
            block, tsize = gguf.GGML_QUANT_SIZES[qtype]
            numel = 1
            for d in dims:
                numel *= d
            if dims[0] % block:
                raise CheckpointCorrupt(f"{path}: tensor {name!r} has rows of {dims[0]} values, not a multiple of "
                                        f"{qtype.name}'s block of {block}. {fix}")
            end = data + offset + numel // block * tsize
            if offset % alignment or end > size:
                raise CheckpointCorrupt(f"{path} is truncated or damaged: tensor {name!r} ({qtype.name}, shape "
                                        f"{tuple(reversed(dims))}) spans bytes {data + offset}..{end} of a "
                                        f"{size}-byte file. {fix}")
    finally:
        buf.close()
