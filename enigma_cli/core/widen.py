"""The estimators compute in float32 at least: half-precision inputs (a bf16 model's, or one under autocast) are
cast up first, so that a loss, a critic or an advantage never rounds to bf16's 8 bits of mantissa. The cast is
differentiable, so gradients flow back to the half-precision input unchanged in meaning."""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 or bfloat16; float32 and float64 tensors (and integers) as they are."""
    return t.float() if t.dtype in HALF else t
