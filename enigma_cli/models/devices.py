"""Which device and dtype a command runs on: ``--device auto|cpu|cuda[:N]`` and ``--dtype``.

Choices (ours): ``auto`` is ``cuda:$LOCAL_RANK`` when CUDA is available (so the same call does the right thing
under ``torchrun`` / ``accelerate launch``), else the CPU; ``--dtype auto`` is bfloat16 on a CUDA device that
supports it, else float32 (float16 without a loss scaler is unsafe for training).
"""

from __future__ import annotations

import os

import torch

from enigma_cli.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("auto", *DTYPES)
DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda:$LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` without CUDA is an InputError."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device '{device}' is not one of {', '.join(DEVICE_NAMES)}.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device} was asked for, but CUDA is not available on this machine.")
        if resolved.index is None and "LOCAL_RANK" in os.environ:
            resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device} names a GPU that does not exist ({torch.cuda.device_count()} visible)."
            )
    elif resolved.type != "cpu":
        raise InputError(f"--device '{device}' is not one of {', '.join(DEVICE_NAMES)}.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` → bfloat16 on a CUDA device that supports it, else float32; names as in `DTYPES`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    aliases = {
        "fp32": "float32",
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "float": "float32",
    }
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise InputError(f"--dtype '{dtype}' is not one of {', '.join(DTYPE_NAMES)}.")
    return DTYPES[name]
