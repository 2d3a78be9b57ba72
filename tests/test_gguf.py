"""Architecture tier: GGUF checkpoints read behind the `Checkpoint` interface and compared with their originals.

GGUF files are written from the embedded tiny family (`tiny_family/base`, Llama, bf16 safetensors) and from
tiny random-init checkpoints of every family in `linker_nb.testing.FAMILIES`, by `testing.write_gguf`: the
`gguf` package's own `GGUFWriter`, `TensorNameMap` and quantizer, with llama.cpp's Q/K row permutation and
Gemma norm shift. K and IQ types, which the package can dequantize but not quantize, are written as seeded
random blocks of the type. ~57 s on 2 shared cores (load ~4; the notebook-tier test ~15 s of it).
"""
from __future__ import annotations

import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from linker_nb.analyses.scan import scan
from linker_nb.io.checkpoint import CheckpointCorrupt, CheckpointError, CheckpointNotFound
from linker_nb.io.gguf import GGUFCheckpoint, UnsupportedGGUF
from linker_nb.io.references import open_checkpoint
from linker_nb.testing import FAMILIES, write_gguf

pytestmark = pytest.mark.timeout(120)
TINY = Path(__file__).resolve().parents[1] / "linker_nb" / "tiny_family"
F16_ROUNDOFF = 2.0 ** -11  # unit round-off of float16


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, Path]:
    """The tiny base in F32, F16, BF16, Q8_0, Q4_0, and the tiny instruct in Q4_0."""
    d = tmp_path_factory.mktemp("gguf")
    out = {q: write_gguf(TINY / "base", d / f"base-{q}.gguf", q) for q in ("F32", "F16", "BF16", "Q8_0", "Q4_0")}
    out["instruct-Q4_0"] = write_gguf(TINY / "instruct", d / "instruct-Q4_0.gguf", "Q4_0")
    return out


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """`LlamaModel.permute` from llama.cpp's convert_hf_to_gguf.py, restated here as the independent oracle."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_names_config_and_qk_order_round_trip_exactly(ggufs):
    """F32 holds every bf16 value exactly: every tensor comes back bit-equal under its Hugging Face name,
    although q_proj/k_proj are stored in llama.cpp's permuted row order."""
    base, ck = open_checkpoint(TINY / "base"), open_checkpoint(ggufs["F32"])
    assert isinstance(ck, GGUFCheckpoint) and ck.format == "gguf" and ck.model_type == "llama"
    assert ck.names == base.names or sorted(ck.names) == sorted(base.names)
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings"):
        assert ck.config[key] == base.config[key], key
    for name in base.names:
        assert ck.info(name).shape == base.info(name).shape
        assert torch.equal(ck.get(name), base.get(name).float()), name
    q = "model.layers.3.self_attn.q_proj.weight"
    k = "model.layers.3.self_attn.k_proj.weight"
    raw_q = torch.from_numpy(np.array(ck._tensors[q].data)).reshape(ck.info(q).shape)
    raw_k = torch.from_numpy(np.array(ck._tensors[k].data)).reshape(ck.info(k).shape)
    assert not torch.equal(raw_q, base.get(q).float())  # the file really is in llama.cpp's order
    assert torch.equal(raw_q, llama_cpp_permute(base.get(q).float(), 4))
    assert torch.equal(raw_k, llama_cpp_permute(base.get(k).float(), 2))  # k_proj: by KV heads
    r = scan(TINY / "base", ggufs["F32"], progress=False)
    assert all(b.frob == 0.0 and b.cos == pytest.approx(1.0, abs=1e-12) for b in r.blocks)


def test_f16_agrees_to_float16_roundoff_on_every_block(ggufs):
    r = scan(TINY / "base", ggufs["F16"], progress=False)
    assert len(r.blocks) == 8 and r.n_tensors == 75
    for b in r.blocks:
        assert b.frob_max <= F16_ROUNDOFF and b.cos_min >= 1 - F16_ROUNDOFF ** 2
    assert r.n_identical == 0  # bf16 bytes vs f16/f32 bytes: nothing stored alike, and the scan says why
    assert "GGUF" in r.identity_basis and "safetensors" in r.identity_basis
    assert r.summary()["identity_basis"] == r.identity_basis


def test_q8_0_within_the_quantizer_error_bound(ggufs):
    """Q8_0 stores d = max|x| / 127 per block of 32 as float16 and round(x / d): |x - x^| <= d/2 + 127 |d16 - d|
    <= d (1/2 + 127 * 2^-11) per value. Each tensor's relative Frobenius distance is checked against the bound
    summed over its own blocks, and every value against its block's bound."""
    base, ck = open_checkpoint(TINY / "base"), open_checkpoint(ggufs["Q8_0"])
    r = scan(base, ck, progress=False)
    checked = 0
    for rec in r.tensors:
        x = base.get(rec.name).float()
        if x.ndim != 2:
            assert rec.frob == 0.0  # norms stay F32, as llama.cpp's converter keeps them
            continue
        assert rec.dtype == "Q8_0" and rec.note == "variant: dequantized from Q8_0"
        assert rec.nbytes == x.numel() // 32 * 34  # stored bytes, not float32
        blocks = x.reshape(-1, 32)
        bound = blocks.abs().amax(1, keepdim=True) / 127 * (0.5 + 127 * 2.0 ** -11)
        err = (ck.get(rec.name) - x).reshape(-1, 32).abs()
        assert (err <= bound * (1 + 1e-6)).all(), rec.name
        tensor_bound = float((bound ** 2 * 32).sum().sqrt() / x.norm())
        assert 0 < rec.frob <= tensor_bound, rec.name
        checked += 1
    assert checked == 8 * 7 + 2
    assert r.variant_bytes == ck.nbytes


def test_quantization_error_grows_as_bits_shrink(ggufs):
    eps = {q: scan(TINY / "base", ggufs[q], progress=False).mean_frob for q in ("F16", "Q8_0", "Q4_0")}
    assert eps["F16"] < 1e-6 < eps["Q8_0"] < 0.01 < eps["Q4_0"] < 0.15


def test_identity_compares_stored_bytes(ggufs, tmp_path):
    """BF16 GGUF vs bf16 safetensors: the 2-D tensors stored unchanged hash equal; q/k (rows permuted) and the
    norms (widened to F32) do not. Two GGUF files compare their quantized blocks."""
    r = scan(TINY / "base", ggufs["BF16"], progress=False)
    ident = {t.name for t in r.tensors if t.identical}
    assert len(ident) == 8 * 5 + 2 and not any("q_proj" in n or "k_proj" in n or "norm" in n for n in ident)
    twin = tmp_path / "twin.gguf"
    shutil.copy(ggufs["Q4_0"], twin)
    same = scan(ggufs["Q4_0"], twin, progress=False)
    assert same.n_identical == same.n_tensors and same.dedup_bytes == same.variant_bytes
    assert same.identity_basis.startswith("stored GGUF bytes (Q4_0")
    post = scan(ggufs["Q4_0"], ggufs["instruct-Q4_0"], progress=False)
    assert post.n_identical <= 3 and 0 < post.mean_frob < 0.3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_every_family_lines_up_tensor_for_tensor(family, tied, tiny_pairs, tmp_path):
    """Name map (gguf's TensorNameMap inverted), Q/K permutation (llama, mistral) and Gemma's norm shift are
    all undone: an F32 GGUF scans against its safetensors original at zero distance, tied or not."""
    b, _ = tiny_pairs(family, dtype=torch.float32, tied=tied, layers=2)
    g = write_gguf(b, tmp_path / f"{family}.gguf", "F32")
    ck = open_checkpoint(g)
    always_tied = family == "gemma2"  # llama.cpp drops Gemma / Gemma 2's lm_head
    assert family in ck.model_types and ck.config["tie_word_embeddings"] == (tied or always_tied)
    assert ("lm_head.weight" in ck) != (tied or always_tied)
    r = scan(b, g, progress=False)
    assert r.n_tensors == len(open_checkpoint(b).names) and len(r.blocks) == 2
    shift = "gemma" in family  # (w + 1) - 1 in float32: exact up to float32 rounding
    for t in r.tensors:  # (qwen2's zero-initialised biases have no relative distance: compare absolute)
        if always_tied and not tied and t.name == "lm_head.weight":
            assert "tied embedding compared as model.embed_tokens.weight" in t.note
            continue
        assert t.diff_norm <= (1e-7 * t.base_norm if shift else 0.0), t.name


def test_references(ggufs, tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    shutil.copy(ggufs["Q8_0"], d / "model-Q8_0.gguf")
    assert open_checkpoint(d).file == d / "model-Q8_0.gguf"
    assert open_checkpoint(str(ggufs["Q8_0"])).ref == str(ggufs["Q8_0"])
    shutil.copy(ggufs["Q4_0"], d / "model-Q4_0.gguf")
    with pytest.raises(CheckpointNotFound, match="holds 2 .gguf files.*pass one of them"):
        open_checkpoint(d)
    with pytest.raises(CheckpointNotFound, match="no checkpoint directory or .gguf file"):
        open_checkpoint(tmp_path / "absent-Q4_0.gguf")
    with pytest.raises(CheckpointNotFound, match="no checkpoint directory or .gguf file"):
        open_checkpoint("absent-Q4_0.gguf")


def test_scan_memory_is_bounded_by_a_few_tensors(ggufs, monkeypatch):
    """Live tensors handed out by `get` never exceed the current pair and the prefetched pair, and one Q8_0
    dequantization allocates at most a few times the float32 tensor (numpy allocations, by tracemalloc)."""
    from conftest import count_live_tensors
    orig = GGUFCheckpoint.get
    peak = count_live_tensors(monkeypatch, GGUFCheckpoint)
    r = scan(ggufs["Q8_0"], ggufs["Q4_0"], progress=False)
    assert r.n_tensors == 75 and peak[0] <= 4
    ck = open_checkpoint(ggufs["Q8_0"])
    name = "model.embed_tokens.weight"  # the largest tensor: 1024 x 64
    tracemalloc.start()
    t = orig(ck, name)
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert t.dtype == torch.float32 and top <= 3 * t.numel() * 4


# -- bad input ---------------------------------------------------------------------------------------------
def _damaged(src: Path, tmp_path: Path, edit) -> Path:
    p = tmp_path / "damaged.gguf"
    raw = bytearray(src.read_bytes())
    p.write_bytes(bytes(edit(raw)))
    return p


def _tensor_type_offset(path: Path, gguf_name: str) -> int:
    """Byte offset of a tensor info's type field (after name, n_dims and dims)."""
    import gguf
    f = next(t.field for t in gguf.GGUFReader(path).tensors if t.name == gguf_name)
    return f.offset + sum(int(p.nbytes) for p in f.parts[:4])


@pytest.mark.parametrize("cut", [0, 3, 20, 200, 2000, -1000, -1])
def test_truncated_file_is_refused(ggufs, tmp_path, cut):
    p = _damaged(ggufs["Q4_0"], tmp_path, lambda raw: raw[:cut] if cut else raw[:0])
    with pytest.raises(CheckpointCorrupt, match=str(p).replace(".", r"\.")):
        open_checkpoint(p)


def test_bad_magic_unknown_type_and_unmapped_architecture(ggufs, tmp_path):
    p = _damaged(ggufs["Q4_0"], tmp_path, lambda raw: b"GGML" + raw[4:])
    with pytest.raises(CheckpointCorrupt, match=r"not a GGUF file: it starts with b'GGML'"):
        open_checkpoint(p)
    at = _tensor_type_offset(ggufs["Q4_0"], "blk.0.attn_q.weight")
    p = _damaged(ggufs["Q4_0"], tmp_path, lambda raw: raw[:at] + struct.pack("<I", 99) + raw[at + 4:])
    with pytest.raises(UnsupportedGGUF, match=r"'blk.0.attn_q.weight' has quantization type id 99.*pip install -U gguf"):
        open_checkpoint(p)
    i = bytes(ggufs["Q4_0"].read_bytes()).index(b"llama")  # general.architecture's value
    p = _damaged(ggufs["Q4_0"], tmp_path, lambda raw: raw[:i] + b"llamb" + raw[i + 5:])
    with pytest.raises(UnsupportedGGUF, match=r"architecture 'llamb' has no mapping.*`gguf` field"):
        open_checkpoint(p)
    assert issubclass(UnsupportedGGUF, CheckpointError)


def test_a_type_the_package_cannot_dequantize_is_refused_on_open(ggufs, tmp_path):
    """Q8_1 has the layout of a known type but no dequantizer in the gguf package: refused before any scan."""
    import gguf
    at = _tensor_type_offset(ggufs["F32"], "blk.0.attn_norm.weight")  # 64 F32 values = 256 bytes
    q81 = int(gguf.GGMLQuantizationType.Q8_1)  # 36 bytes per 32 values: 72 bytes, inside the original span
    p = _damaged(ggufs["F32"], tmp_path, lambda raw: raw[:at] + struct.pack("<I", q81) + raw[at + 4:])
    with pytest.raises(UnsupportedGGUF, match="stored as Q8_1.*cannot dequantize"):
        open_checkpoint(p)


def test_side_by_side_says_which_pair_moves_a_block_more(ggufs):
    from linker_nb.analyses import granularity
    from linker_nb.nb import plots
    quant = scan(TINY / "base", ggufs["Q4_0"], progress=False)
    cmp = granularity.compare_with(quant, str(TINY / "instruct"), progress=False)
    post = scan(TINY / "base", TINY / "instruct", progress=False)
    assert cmp["labels"] == ["base-Q4_0.gguf", "instruct"] and len(cmp["blocks"]) == 8
    for row, q, p in zip(cmp["blocks"], quant.blocks, post.blocks):
        assert (row["eps_a"], row["eps_b"]) == (q.frob, p.frob)
        assert row["ratio"] == pytest.approx(q.frob / p.frob)
        assert row["more"] == ("base-Q4_0.gguf" if q.frob > p.frob else "instruct")
    assert cmp["n_blocks_a_more"] == sum(r["more"] == "base-Q4_0.gguf" for r in cmp["blocks"])
    assert cmp["mean_eps"] == {"base-Q4_0.gguf": quant.mean_frob, "instruct": post.mean_frob}
    assert f"moves {cmp['n_blocks_a_more']} of 8 blocks more than instruct" in cmp["sentence"]
    fig = plots.side_by_side(cmp)
    assert [t.name for t in fig.data] == ["base-Q4_0.gguf", "instruct", "ratio"]
    short = scan(*[open_checkpoint(p) for p in (TINY / "base", ggufs["Q4_0"])], progress=False)
    short.blocks = short.blocks[:3]
    with pytest.raises(ValueError, match="3 blocks.*8 blocks"):
        granularity.side_by_side(short, post)


@pytest.mark.notebook
@pytest.mark.timeout(300)  # ~12 s on 2 shared cores
def test_notebook_01_quantization_vs_post_training(ggufs, notebook_runner):
    """`-p variant x.gguf -p compare_to instruct`: the tiny base against its Q4_0 file, beside post-training."""
    r = notebook_runner("01_granularity_gap", variant=str(ggufs["Q4_0"]), compare_to="instruct")
    assert r["custom"] and r["variant"] == str(ggufs["Q4_0"]) and r["n_blocks"] == 8 and r["n_tensors"] == 75
    assert r["identity_basis"].startswith("base: stored bytes (safetensors); variant: stored GGUF bytes (Q4_0")
    assert r["n_identical_tensors"] == 0 and 0.01 < r["mean_frob"] < 0.15
    c = r["comparison"]
    assert c["labels"] == ["base-Q4_0.gguf", "instruct"] and len(c["blocks"]) == 8
    assert [b["eps_a"] for b in c["blocks"]] == [b["frob"] for b in r["blocks"]]
    assert c["mean_eps"]["base-Q4_0.gguf"] == pytest.approx(r["mean_frob"])
    only = notebook_runner("01_granularity_gap", variant=str(ggufs["Q8_0"]))
    assert only["comparison"] is None and only["mean_frob"] < r["mean_frob"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """A one-block llama whose rows hold 256 values, so that K-quant super-blocks (256) fit."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=64)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("wide") / "llama-256"
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_0", "Q5_1", "TQ2_0", "MXFP4"])
def test_types_the_package_quantizes_scan_within_range(wide, tmp_path, qtype):
    r = scan(wide, write_gguf(wide, tmp_path / f"{qtype}.gguf", qtype), progress=False)
    assert r.nonfinite_tensors == [] and all(0 < b.frob < 1.0 and b.cos > 0.5 for b in r.blocks)
    assert {t.dtype for t in r.tensors if len(t.shape) == 2} == {qtype}


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ2_XXS"])
def test_dequantize_only_types_are_read_in_hf_order(wide, tmp_path, qtype, monkeypatch):
    """K and IQ types have no quantizer in the gguf package: the file is written with seeded random blocks of
    the type instead. `get` must return the package's dequantization of the stored blocks, with llama.cpp's
    row permutation of q/k undone (checked by re-applying the converter's permutation)."""
    import gguf
    from gguf.quants import dequantize, quantize
    rng = np.random.default_rng(7)

    def random_blocks(arr, t):
        if t.name in ("F32", "F16"):
            return quantize(arr, t)
        block, size = gguf.GGML_QUANT_SIZES[t]
        return rng.integers(0, 256, (*arr.shape[:-1], arr.shape[-1] // block * size), dtype=np.uint8)
    monkeypatch.setattr(gguf.quants, "quantize", random_blocks)
    ck = open_checkpoint(write_gguf(wide, tmp_path / f"{qtype}.gguf", qtype))
    heads = {"q_proj": 4, "k_proj": 2}
    for name in ck.names:
        info, t = ck.info(name), ck._tensors[name]
        if len(info.shape) == 1:
            continue
        assert info.dtype == qtype and info.nbytes == t.data.nbytes
        with np.errstate(invalid="ignore", over="ignore"):  # random scales include inf/NaN
            stored = torch.from_numpy(dequantize(t.data, t.tensor_type)).reshape(info.shape)
        got = ck.get(name)
        assert got.dtype == torch.float32 and got.shape == info.shape
        sub = name.split(".")[-2]
        back = llama_cpp_permute(got, heads[sub]) if sub in heads else got
        assert torch.equal(back.nan_to_num(0, 0, 0), stored.nan_to_num(0, 0, 0)), name


def test_gguf_storage_comes_from_the_architecture_records():
    """Each record's `gguf` field is the storage the reader and writer use: q/k rows permuted only where the
    converter permutes them, Gemma's norm shift from the record's norm_offset, a tied lm_head dropped for
    Gemma 1/2, and every record module mapped by the gguf package's own TensorNameMap."""
    from linker_nb.io.architectures import get_architecture
    from linker_nb.io.gguf import GGUF_ARCHITECTURES, hf_to_gguf_names, model_type_of
    assert set(GGUF_ARCHITECTURES) == {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}
    llama, qwen3 = GGUF_ARCHITECTURES["llama"], GGUF_ARCHITECTURES["qwen3"]
    assert llama.permute == (("self_attn.q_proj", "num_attention_heads"), ("self_attn.k_proj", "num_key_value_heads"))
    assert qwen3.permute == () and {"self_attn.q_norm", "self_attn.k_norm"} <= set(qwen3.block)
    assert GGUF_ARCHITECTURES["gemma2"].norm_shift == get_architecture("gemma2").norm_offset == 1.0
    assert "lm_head" not in GGUF_ARCHITECTURES["gemma"].non_block and "lm_head" in llama.non_block
    assert model_type_of("llama") == "llama" and model_type_of("gemma3") == "gemma3_text"
    assert model_type_of("phi3") is None  # no gguf field in the phi3 record: no reader, said on open
    for mt in GGUF_ARCHITECTURES:
        names = hf_to_gguf_names(mt, 2)
        assert all(v.startswith(("blk.", "token_embd", "output")) for v in names.values()), mt
