"""Build and run the models themselves (only where a notebook needs function, not just weights).

`transformers` builds and runs every model; this module only picks the device and dtype, loads from a
resolved reference, and finds the decoder layers, so the rest of the package never hard-codes
`model.model.layers`.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from .architectures import get_architecture
from .references import resolve

__all__ = ["pick_device", "pick_dtype", "load_model", "load_tokenizer", "decoder_layers", "torch_threads", "restoring"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU. An explicit "cuda" without a GPU is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use device='auto' or 'cpu'.")
    return dev


def pick_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """"auto" -> bfloat16 on CUDA, float32 on CPU (CPU bf16 matmuls are slow and lossy for loss curves)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}") from None


def load_model(ref: str | os.PathLike, *, device: str = "auto", dtype: str | torch.dtype = "auto",
               eval_mode: bool = True) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained` on a resolved reference, placed on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM
    dev = pick_device(device)
    path = resolve(ref)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev)).to(dev)
    return model.eval() if eval_mode else model


def load_tokenizer(ref: str | os.PathLike):
    from transformers import AutoTokenizer
    path = resolve(ref)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise RuntimeError(f"no usable tokenizer in {path} ({exc}); a loss needs one: pass a checkpoint "
                           f"directory that includes tokenizer files.") from exc


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a model, at the path its architecture record names
    (`model.layers` for a llama-style causal LM, `model.language_model.layers` for Gemma 3, `layers` for a
    base model)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(config, "model_type", None) or "generic"
    arch = get_architecture(model_type)
    if arch.is_generic and text is not None and text is not config:
        arch = get_architecture(getattr(text, "model_type", "generic"))
    return arch.decoder_layers(model)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run torch with `n` intra-op threads inside the block (None: unchanged), restoring the count afterwards.

    Small or chunked work runs single-threaded: on a loaded 2-core machine OpenMP teams of 2 spin at every
    barrier and made each op 15-70x slower (measured in the scan and in small SVDs).
    """
    old = torch.get_num_threads()
    try:
        if n is not None:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def restoring(params: dict[str, torch.Tensor], offload: bool = False):
    """Snapshot `params` and copy the snapshot back, bit for bit, however the block exits.

    Args:
        params: name -> parameter to be edited in place inside the block.
        offload: keep the snapshot on the CPU (many tensors, e.g. a full-model path) instead of beside the
            parameter on its device.

    Yields:
        The snapshot, name -> tensor (the unedited values, for the block's own use).
    """
    saved = {n: p.detach().to("cpu", copy=True) if offload else p.detach().clone() for n, p in params.items()}
    try:
        yield saved
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device))
