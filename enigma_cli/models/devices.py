"""Which device and dtype a command runs on: ``--device auto|cpu|cuda[:N]`` and ``--dtype``.

Choices (ours): ``auto`` is ``cuda:$LOCAL_RANK`` when CUDA is available (so the same call does the right thing
under ``torchrun`` / ``accelerate launch``), else the CPU. ``--dtype`` is `precision`'s: ``auto`` is bfloat16
weights on a CUDA device that supports it, float32 weights under bf16 autocast (``bf16-mixed``) on a CPU with bf16
instructions for a model that gains from it, else float32 (float16 without a loss scaler is unsafe for training).
"""

from __future__ import annotations

import os

import torch

from enigma_cli.errors import InputError
from enigma_cli.models.precision import DTYPE_NAMES, DTYPES, choose  # noqa: F401 - re-exported

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
    """The dtype the weights are loaded in (`precision.choose`): ``auto`` → bfloat16 on a CUDA device that supports
    it, else float32; ``bf16-mixed`` → float32 (autocast does the rest). An unknown name is an InputError."""
    return choose(dtype, device).weights
