"""Reader fuzzing: seeded mutations of real checkpoint files; nothing but `CheckpointError` may escape.

Each mutation damages a copy of the embedded tiny checkpoint (`tiny_family/base`, one 1 MiB safetensors
file), a sharded tiny checkpoint (`make_pair(shard="20KB")`), a `.bin` one (`make_pair(fmt="bin")`) or a
cached share plan. Then the whole read path
runs: `open_checkpoint`, every tensor read, and `scan` against the intact copy (damaged side as base or as
variant, alternating). The damaged checkpoint must either be refused with a `CheckpointError` whose message
names the damaged directory, or read without error (damage the format cannot detect, e.g. flipped data bytes
or swapped equal-sized tensors). A damaged share plan must be rescanned (with a warning) and give the same
plan as a fresh scan. pytest-timeout guards against hangs.

Fuzz tier: 961 mutations in ~30 s on 2 shared cores (each group's count is in its docstring), 320 of them of a
GGUF file (`test_gguf_file_mutations`; the damaged side is then the .gguf file itself).
"""
from __future__ import annotations

import json
import random
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from linker_nb.analyses.scan import scan
from linker_nb.io import registry
from linker_nb.io.checkpoint import CheckpointError
from linker_nb.io.references import open_checkpoint
from linker_nb.linker import plans

SEED = 20240610
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"]
WEIRD = [None, True, -1, 0, 1.5, "x", "", [], {}, [1, 2, 3], 2**63, -(2**63), 1e300, [[]], {"a": 1}]


def _exercise(damaged: Path, intact: Path, flip: bool) -> str:
    """Open, read every tensor, scan against the intact copy: "accepted" or "refused" (CheckpointError that
    names the damaged directory). Any other exception propagates and fails the test."""
    try:
        with open_checkpoint(damaged) as ck:
            for name in ck.names:
                ck.get(name)
        pair = (intact, damaged) if flip else (damaged, intact)
        scan(*pair, progress=False, workers=1)
    except CheckpointError as exc:
        assert str(damaged) in str(exc), f"the error does not name {damaged}: {exc}"
        return "refused"
    return "accepted"


def _run(cases, intact: Path, tmp_path: Path, copy_from: Path) -> dict[str, int]:
    """Apply each (label, mutate) to a fresh copy of `copy_from`; collect what escaped, fail with all of it."""
    counts = {"refused": 0, "accepted": 0}
    escaped = []
    for k, (label, mutate) in enumerate(cases):
        d = tmp_path / f"m{k}"
        shutil.copytree(copy_from, d)
        mutate(d)
        try:
            counts[_exercise(d, intact, flip=k % 2 == 1)] += 1
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a bug
            escaped.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
        shutil.rmtree(d)
    assert not escaped, f"{len(escaped)} of {len(cases)} mutations escaped:\n" + "\n".join(escaped[:20])
    return counts


# -- safetensors file helpers -------------------------------------------------------------------------------

def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path: Path, header, data: bytes, text: str | None = None) -> None:
    blob = (text if text is not None else json.dumps(header)).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _edit_header(edit):
    """A mutation that rewrites model.safetensors' header through `edit(header, rng_name)`."""
    def mutate(d: Path) -> None:
        f = d / "model.safetensors"
        header, data = _split(f)
        out = edit(header)
        if isinstance(out, tuple):  # (header, raw text) for edits JSON cannot express (duplicate keys)
            _join(f, None, data, text=out[1])
        else:
            _join(f, header if out is None else out, data)
    return mutate


def _header_edits(rng: random.Random, names: list[str], n: int):
    """n seeded header-JSON edits: dtype, shape, offsets, missing keys, non-object entries, overlaps, order."""
    def pick():
        return rng.choice(names)

    def set_field(name, key, value):
        def e(h):
            h[name][key] = value
        return e

    def drop(name, key):
        def e(h):
            del h[name][key]
        return e

    def replace_entry(name, value):
        def e(h):
            h[name] = value
        return e

    def shift(name, delta, which):
        def e(h):
            o = h[name]["data_offsets"]
            h[name]["data_offsets"] = [o[0] + delta * (which != 1), o[1] + delta * (which != 0)]
        return e

    def swap_offsets(a, b):
        def e(h):
            h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]
        return e

    def overlap(a, b):
        def e(h):
            ob, oa = h[b]["data_offsets"], h[a]["data_offsets"]
            h[a]["data_offsets"] = [ob[0], ob[0] + oa[1] - oa[0]]
        return e

    def reshape(name, how):
        def e(h):
            s = list(h[name]["shape"])
            if how == "grow":
                s[0] = s[0] + 1 if s else 2
            elif how == "add":
                s.append(2)
            elif how == "drop" and s:
                s.pop()
            elif how == "swap":
                s.reverse()
            elif how == "zero":
                s = [0] + s[1:]
            h[name]["shape"] = s
        return e

    def rename(name, new):
        def e(h):
            h[new] = h.pop(name)
        return e

    def duplicate_key(name, other):  # `name` a second time, with `other`'s entry (JSON objects cannot say it)
        def e(h):
            return h, json.dumps(h)[:-1] + ", " + json.dumps({name: h[other]})[1:-1] + "}"
        return e

    makers = [
        lambda: (f"dtype={(v := rng.choice(DTYPES + ['F33', 'bf16', 5, None]))!r}", set_field(pick(), "dtype", v)),
        lambda: (f"shape={(v := rng.choice(WEIRD + [[-1, 2], [2.0, 3], ['2']]))!r}", set_field(pick(), "shape", v)),
        lambda: (f"shape {(v := rng.choice(['grow', 'add', 'drop', 'swap', 'zero']))}", reshape(pick(), v)),
        lambda: (f"offsets={(v := rng.choice(WEIRD + [[5, 1], [0, 10**12], [-8, 0]]))!r}",
                 set_field(pick(), "data_offsets", v)),
        lambda: (f"offsets shift {(v := rng.choice([-8, -2, -1, 1, 2, 8, 4096]))}",
                 shift(pick(), v, rng.choice([0, 1, 2]))),
        lambda: (f"drop {(v := rng.choice(['dtype', 'shape', 'data_offsets']))}", drop(pick(), v)),
        lambda: (f"entry={(v := rng.choice(WEIRD))!r}", replace_entry(pick(), v)),
        lambda: ("offsets swapped", swap_offsets(pick(), pick())),
        lambda: ("offsets overlap", overlap(pick(), pick())),
        lambda: ("extra key", set_field(pick(), rng.choice(["extra", "dtype2"]), 1)),
        lambda: (f"rename to {(v := rng.choice(['', 'model.layers.99.x', 'lm_head.weight', '__metadata__']))!r}",
                 rename(pick(), v)),
        lambda: ("duplicate key", duplicate_key(pick(), pick())),
        lambda: (f"__metadata__={(v := rng.choice(WEIRD[:-1] + [{'format': 1}]))!r}",
                 replace_entry("__metadata__", v)),
        lambda: (f"header={(v := rng.choice([[], 5, 'x', None, True]))!r}", lambda h, v=v: (h, json.dumps(v))),
    ]
    out = []
    for _ in range(n):
        label, edit = rng.choice(makers)()
        out.append((f"header json {label}", _edit_header(edit)))
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """The intact embedded checkpoint, copied (the package copy is never touched)."""
    d = tmp_path_factory.mktemp("intact") / "base"
    shutil.copytree(registry.TINY_DIR / "base", d)
    return d


@pytest.mark.timeout(120)
def test_safetensors_file_mutations(tiny_base, tmp_path):
    """Flipped bytes (header and data), truncation, bad header length, edited header JSON: 400 mutations."""
    rng = random.Random(SEED)
    f = tiny_base / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    names = [k for k in json.loads(raw[8:8 + n]) if k != "__metadata__"]

    def write(data: bytes):
        return lambda d: (d / "model.safetensors").write_bytes(data)

    cases = []
    for _ in range(100):  # flipped bytes, mostly in the header
        data = bytearray(raw)
        hi = 8 + n if rng.random() < 0.8 else len(raw)
        for pos in rng.sample(range(hi), rng.choice([1, 1, 2, 4, 16])):
            data[pos] ^= rng.randrange(1, 256)
        cases.append(("flipped bytes", write(bytes(data))))
    for _ in range(60):  # truncation anywhere, header included
        cut = rng.choice([rng.randrange(0, 8 + n + 1), rng.randrange(0, len(raw))])
        cases.append((f"truncated at {cut}", write(raw[:cut])))
    cases.append(("appended bytes", write(raw + b"\0" * 8)))
    for _ in range(40):  # header length field
        bad = rng.choice([0, 1, 2, 7, n - 1, n + 1, n + 7, len(raw), len(raw) - 8, 2**63, 2**64 - 1,
                          rng.randrange(0, len(raw)), 100_000_001])
        cases.append((f"header length {bad}", write(struct.pack("<Q", bad) + raw[8:])))
    cases += _header_edits(rng, names, 200)
    counts = _run(cases, tiny_base, tmp_path, tiny_base)
    assert counts["refused"] > 0.8 * len(cases)  # almost all header damage is detected
    assert counts["accepted"] > 0  # undetectable damage (data bytes, equal-size swaps) reads through


@pytest.mark.timeout(120)
def test_config_mutations(tiny_base, tmp_path):
    """config.json: a list, not JSON, not UTF-8, truncated, wrong field types: 60 mutations."""
    rng = random.Random(SEED + 1)
    cfg_text = (tiny_base / "config.json").read_text()
    cfg = json.loads(cfg_text)

    def write(data: bytes):
        return lambda d: (d / "config.json").write_bytes(data)

    cases = [(f"config {v[:20]!r}", write(v)) for v in (b"[]", b"[1, 2]", b"5", b"null", b"\"x\"", b"", b"{",
                                                   b"\xff\xfe{}", b"{\"model_type\": \"\xe9\"}", b"[" * 100_000)]
    for _ in range(20):
        cut = rng.randrange(0, len(cfg_text))
        cases.append((f"config truncated at {cut}", write(cfg_text[:cut].encode())))
    keys = ["model_type", "num_hidden_layers", "hidden_size", "tie_word_embeddings", "text_config"]
    for _ in range(30):
        key, value = rng.choice(keys), rng.choice(WEIRD + [[{"tie_word_embeddings": "yes"}], "llama"])
        if key == "text_config" and rng.random() < 0.5:
            value = {rng.choice(keys[:4]): rng.choice(WEIRD)}
        cases.append((f"config {key}={value!r}", write(json.dumps(cfg | {key: value}).encode())))
    _run(cases, tiny_base, tmp_path, tiny_base)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from linker_nb.testing import make_pair
    base, _ = make_pair(tmp_path_factory.mktemp("sharded"), "llama", shard="20KB")
    assert (base / "model.safetensors.index.json").exists() and len(list(base.glob("*.safetensors"))) > 2
    return base


@pytest.mark.timeout(120)
def test_sharded_index_mutations(sharded, tmp_path):
    """model.safetensors.index.json damaged (and shards lost or renamed): 80 mutations."""
    rng = random.Random(SEED + 2)
    idx_path = sharded / "model.safetensors.index.json"
    text = idx_path.read_text()
    index = json.loads(text)
    wm = index["weight_map"]
    shards = sorted(set(wm.values()))

    def write(data: bytes):
        return lambda d: (d / "model.safetensors.index.json").write_bytes(data)

    def with_map(m):
        return write(json.dumps(index | {"weight_map": m}).encode())

    cases = [(f"index {v[:20]!r}", write(v)) for v in (b"[]", b"{}", b"null", b"", b"{", b"\xff\xfe", b"[" * 100_000,
                                                  b'{"weight_map": []}', b'{"weight_map": {}}', b'{"weight_map": 5}')]
    for _ in range(15):
        cut = rng.randrange(0, len(text))
        cases.append((f"index truncated at {cut}", write(text[:cut].encode())))
    for _ in range(40):
        m = dict(wm)
        name = rng.choice(list(m))
        how = rng.choice(["weird", "other shard", "missing file", "path", "extra tensor", "drop"])
        if how == "weird":
            m[name] = rng.choice(WEIRD)
        elif how == "other shard":
            m[name] = rng.choice(shards)
        elif how == "missing file":
            m[name] = "model-99999-of-99999.safetensors"
        elif how == "path":
            m[name] = rng.choice(["../" + m[name], "/etc/passwd", "sub/" + m[name], "config.json"])
        elif how == "extra tensor":
            m["model.layers.7.extra.weight"] = rng.choice(shards)
        else:
            del m[name]
        cases.append((f"weight_map {how} {name}", with_map(m)))
    for _ in range(15):
        lost = rng.choice(shards)
        if rng.random() < 0.5:
            cases.append((f"shard {lost} deleted", lambda d, s=lost: (d / s).unlink()))
        else:
            cases.append((f"shard {lost} truncated", lambda d, s=lost: (d / s).write_bytes((d / s).read_bytes()[:100])))
    _run(cases, sharded, tmp_path, sharded)


@pytest.mark.timeout(120)
def test_share_plan_cache_mutations(tmp_path):
    """A damaged cached share plan is rescanned (with a warning), never trusted and never a crash: 60
    mutations; the plan returned is always the fresh scan's."""
    rng = random.Random(SEED + 3)
    base, variant = registry.TINY_DIR / "base", registry.TINY_DIR / "instruct"
    tau = registry.get("tiny").tau_cos, registry.get("tiny").tau_frob
    cache = tmp_path / "plans"
    fresh, status = plans.share_plan(base, variant, *tau, cache_dir=cache)
    assert status == "scanned"
    path = next(cache.glob("plan-*.json"))
    text = path.read_text()
    good = json.loads(text)

    def mutations():
        for v in (b"[]", b"{}", b"null", b"", b"{", b"\xff\xfe", b"[" * 100_000):
            yield f"plan {v[:20]!r}", v
        for _ in range(10):
            cut = rng.randrange(0, len(text))
            yield f"plan truncated at {cut}", text[:cut].encode()
        for _ in range(10):
            data = bytearray(text.encode())
            for pos in rng.sample(range(len(data)), rng.choice([1, 2, 4])):
                data[pos] ^= rng.randrange(1, 256)
            yield "plan flipped bytes", bytes(data)
        for _ in range(33):
            p = json.loads(text)
            how = rng.choice(["field", "drop", "extra", "shared", "block", "block field", "thresholds"])
            if how == "field":
                key = rng.choice(list(p))
                p[key] = rng.choice(WEIRD)
            elif how == "drop":
                del p[rng.choice(list(p))]
            elif how == "extra":
                p["extra"] = 1
            elif how == "shared":
                p["shared"] = rng.choice([[0, 0], [99], [-1], list(range(len(p["blocks"]) + 1)), ["0"], []])
            elif how == "block":
                p["blocks"][rng.randrange(len(p["blocks"]))] = rng.choice(WEIRD)
            elif how == "block field":
                b = p["blocks"][rng.randrange(len(p["blocks"]))]
                b[rng.choice(list(b))] = rng.choice(WEIRD + [float("nan")])
            else:
                p["tau_cos"] = rng.choice([0.5, 1.0, float("inf")])
            if p != json.loads(text):  # a no-op mutation (None over None) is not one
                yield f"plan {how}", json.dumps(p).encode()

    cases = list(mutations())
    escaped, reused = [], 0
    for label, data in cases:
        path.write_bytes(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                plan, status = plans.share_plan(base, variant, *tau, cache_dir=cache)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            continue
        except Exception as exc:  # noqa: BLE001
            escaped.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        same = (plan.shared, plan.blocks) == (fresh.shared, fresh.blocks)
        if status == "cached":  # only a mutation that left the plan intact in meaning may be reused
            reused += 1
            same = same or json.loads(data) == good
        elif not any(str(path) in str(w.message) for w in caught):
            escaped.append(f"{label}: rescanned ({status}) without a warning naming {path}")
        if not same:
            escaped.append(f"{label}: {status} plan differs from a fresh scan's")
    assert not escaped, f"{len(escaped)} of {len(cases)} plan mutations mishandled:\n" + "\n".join(escaped[:20])
    assert reused == 0  # every mutation changes the file, and the checksum sees it


@pytest.mark.timeout(120)
def test_bin_file_mutations(tmp_path_factory, tmp_path):
    """pytorch_model.bin (zip + pickle, read with weights_only): truncated or with flipped bytes, 40 mutations."""
    from linker_nb.testing import make_pair
    base, _ = make_pair(tmp_path_factory.mktemp("bin"), "llama", fmt="bin")
    rng = random.Random(SEED + 4)
    raw = (base / "pytorch_model.bin").read_bytes()

    def write(data: bytes):
        return lambda d: (d / "pytorch_model.bin").write_bytes(data)

    cases = [(f"bin truncated at {cut}", write(raw[:cut])) for cut in rng.sample(range(len(raw)), 20)]
    for _ in range(20):
        data = bytearray(raw)
        # the zip directory and the pickle sit at the ends; the tensor bytes in between
        for pos in rng.sample(list(range(0, 2048)) + list(range(len(raw) - 4096, len(raw))), rng.choice([1, 4])):
            data[pos] ^= rng.randrange(1, 256)
        cases.append(("bin flipped bytes", write(bytes(data))))
    counts = _run(cases, base, tmp_path, base)
    assert counts["refused"] >= 20


# -- GGUF ---------------------------------------------------------------------------------------------------

def _gguf_layout(path: Path) -> tuple[list[tuple[str, int]], int]:
    """(label, byte offset) of every integer field in a GGUF header worth damaging, and the data offset."""
    import gguf
    r = gguf.GGUFReader(path)
    spots = [("tensor_count", 8), ("kv_count", 16)]
    for f in list(r.fields.values())[3:] + [t.field for t in r.tensors]:
        pos = f.offset
        for k, part in enumerate(f.parts):  # strings' lengths, value types, array lengths, dims, types, offsets
            if part.dtype.itemsize in (4, 8) and part.size == 1 or (part.dtype == np.uint64 and part.size <= 4):
                spots += [(f"{f.name}[{k}]@{pos + j * part.dtype.itemsize}", pos + j * part.dtype.itemsize)
                          for j in range(part.size)]
            pos += int(part.nbytes)
    return spots, r.data_offset


def test_gguf_file_mutations(tmp_path_factory, tmp_path):
    """320 seeded mutations of a Q8_0 GGUF of the tiny base (the gguf package's writer): 120 flipped header
    bytes, 60 truncations (a third inside the header), 100 integer fields of the header (counts, string and
    array lengths, value types, n_dims, dims, tensor types, data offsets) set to boundary values, 20 rewritten
    magic/version words, 20 flipped data bytes (undetectable: accepted). Open, dequantize every tensor, scan
    against the intact file: only `CheckpointError` naming the damaged file may escape, and nothing may hang
    (pytest-timeout). 280 refused, 40 accepted; ~14 s on 2 shared cores."""
    from linker_nb.testing import write_gguf
    src = write_gguf(registry.TINY_DIR / "base", tmp_path_factory.mktemp("gguf") / "base-Q8_0.gguf", "Q8_0")
    raw = src.read_bytes()
    spots, data_offset = _gguf_layout(src)
    rng = random.Random(SEED)
    values = [0, 1, 2, 3, 4, 5, 8, 9, 12, 31, 33, 99, 255, 2**16, 2**31 - 1, 2**32 - 1, 2**40, 2**63, 2**64 - 1]

    def put(at: int, width: int, v: int):
        return lambda b: b[:at] + (v % 2**(8 * width)).to_bytes(width, "little") + b[at + width:]

    cases = []
    for _ in range(120):
        at = rng.randrange(data_offset)
        cases.append((f"flip header byte {at}", lambda b, at=at, x=rng.randrange(1, 256):
                      b[:at] + bytes([b[at] ^ x]) + b[at + 1:]))
    for k in range(60):
        cut = rng.randrange(data_offset) if k % 3 == 0 else rng.randrange(len(raw))
        cases.append((f"truncate at {cut}", lambda b, cut=cut: b[:cut]))
    for _ in range(100):
        label, at = rng.choice(spots)
        width = 8 if label in ("tensor_count", "kv_count") or rng.random() < 0.5 else 4
        v = rng.choice(values)
        cases.append((f"{label} := {v} ({width} bytes)", put(at, width, v)))
    for _ in range(20):
        at, v = rng.choice([0, 4]), rng.choice(values + [0x46554747, 3 << 24])
        cases.append((f"word {at} := {v}", put(at, 4, v)))
    for _ in range(20):
        at = rng.randrange(data_offset, len(raw))
        cases.append((f"flip data byte {at}", lambda b, at=at: b[:at] + bytes([b[at] ^ 0x40]) + b[at + 1:]))
    counts, escaped = {"refused": 0, "accepted": 0}, []
    for k, (label, mutate) in enumerate(cases):
        damaged = tmp_path / f"m{k}.gguf"
        damaged.write_bytes(mutate(raw))
        try:
            counts[_exercise(damaged, src, flip=k % 2 == 1)] += 1
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a bug
            escaped.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
        damaged.unlink()
    assert not escaped, f"{len(escaped)} of {len(cases)} mutations escaped:\n" + "\n".join(escaped[:20])
    assert counts["refused"] >= 200 and counts["accepted"] >= 20, counts
