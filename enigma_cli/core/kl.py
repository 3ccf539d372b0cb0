"""The k3 estimator of KL(π_θ ‖ π_ref) per token (method.md §2), shared by the loss and the logged metric.

With ``p = log π_θ(y_t | ·)`` and ``q = log π_ref(y_t | ·)`` for a token ``y_t`` sampled from π_θ,

.. math::  k_3 = e^{q-p} - (q - p) - 1 \\;\\ge 0,

an unbiased, always non-negative estimate of ``KL(π_θ ‖ π_ref)`` at that position [1] (its expectation under π_θ
is the KL because ``E[e^{q-p}] = 1``). The GRPO paper [2] and TRL add ``β·k3`` to every token's loss; `enigma
train` also logs its token mean as ``kl_ref``. Both call :func:`k3_kl`, so the two can never disagree.

References
----------
[1] J. Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (2020).
[2] Shao et al., DeepSeekMath (GRPO), arXiv 2402.03300 (2024).
"""

from __future__ import annotations

from torch import Tensor

from .widen import widen

__all__ = ["k3_kl", "masked_token_mean"]


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate ``exp(q − p) − (q − p) − 1`` with ``p = logp``, ``q = ref_logp`` (same shape).

    The reference is detached (π_ref is a constant); the gradient flows through ``logp`` only.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"k3_kl: logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape.")
    diff = widen(ref_logp.detach()) - widen(logp)
    return diff.exp() - diff - 1.0


def masked_token_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, T) over the positions where ``mask`` is 1 (0 for an empty mask).

    A (B, 1) tensor holds one value per sequence (sequence-level importance weights) and is averaged over the B
    sequences, as TRL's metrics do.
    """
    if x.shape[1] == 1:
        return x.sum() / max(x.shape[0], 1)
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)
