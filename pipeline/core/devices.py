"""Device and dtype choices shared by the model loaders, the trainer and the caption backend."""

from __future__ import annotations

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None: the GPU when there is one, else the CPU."""
    if not device or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}'; choose one of {sorted(DTYPES)}") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype setting for ``device``: ``auto`` is bfloat16 on a GPU and float32 on the CPU;
    any other name as :func:`parse_dtype` reads it."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name)


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Half precision on a GPU; float32 on the CPU (CPU half-precision convolutions are slow or missing)."""
    return dtype if device.type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def free_memory(device: torch.device) -> None:
    """Give a deleted model's GPU memory back before the next model loads (VAE, then text encoder).
    On the CPU, reference counting frees it; a full ``gc.collect`` would cost a quarter second."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()
