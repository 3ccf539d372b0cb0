"""Loss aggregation: from per-token losses to the scalar of one micro-batch, gradient accumulation included.

A generation batch is split into ``accum_steps`` micro-batches whose gradients are summed before one optimizer
step. Every aggregator returns the micro-batch's *share*: the shares of the ``accum_steps`` micro-batches **sum
to the loss of the whole batch** (exactly for ``dapo``; for ``grpo``, ``dr_grpo`` and ``luspo`` when the
micro-batches hold equally many sequences, as `enigma train` and TRL arrange; for ``bnpo``, TRL's per-micro-batch
token mean, only when they also hold equally many tokens). The caller adds the shares and never rescales them, so the
objective needs no per-aggregator case. With ``ℓ`` the per-token loss, ``m`` the completion mask, ``B`` the
micro-batch's sequences and ``a = accum_steps``:

===========  ========================================================================  ==========================
name         share of one micro-batch                                                  reference
===========  ========================================================================  ==========================
``grpo``     ``(1/a)·mean_i (Σ_t ℓ_{i,t} m_{i,t} / max(Σ_t m_{i,t}, 1))``              GRPO [1], GSPO
``bnpo``     ``(1/a)·Σ ℓ·m / max(Σ m, 1)``                                             TRL
``dr_grpo``  ``(1/a)·Σ ℓ·m / (B · max_completion_length)``                             Dr. GRPO [2]
``dapo``     ``Σ ℓ·m / max(N, 1)``, N = completion tokens of the whole batch           DAPO [3]
``luspo``    ``(1/a)·mean_i Σ_t ℓ_{i,t} m_{i,t}``  (each sequence weighted by its length) LUSPO [4]
===========  ========================================================================  ==========================

These are TRL's definitions (TRL 1.16 divides the first four and luspo by its ``current_gradient_accumulation_steps``
and normalises dapo by ``num_items_in_batch``, the token count of the generation batch): with TRL's usual setup,
one generation batch per accumulation window, the shares are TRL's losses exactly. Under DDP pass the local
share's token count as ``num_items_in_batch`` (TRL divides the global count by the number of processes).

References
----------
[1] Shao et al., DeepSeekMath (GRPO), arXiv 2402.03300 (2024).
[2] Liu et al., Understanding R1-Zero-Like Training (Dr. GRPO), arXiv 2503.20783 (2025).
[3] Yu et al., DAPO, arXiv 2503.14476 (2025).
[4] Length-Unbiased Sequence Policy Optimization (LUSPO), arXiv 2602.05261 (2026).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["AGGREGATIONS", "aggregate"]


def _grpo(masked: Tensor, mask: Tensor, n_items: Tensor, max_len: int | None) -> Tensor:
    return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _bnpo(masked: Tensor, mask: Tensor, n_items: Tensor, max_len: int | None) -> Tensor:
    return masked.sum() / mask.sum().clamp(min=1.0)


def _dr_grpo(masked: Tensor, mask: Tensor, n_items: Tensor, max_len: int | None) -> Tensor:
    return masked.sum() / (masked.shape[0] * max_len)


def _dapo(masked: Tensor, mask: Tensor, n_items: Tensor, max_len: int | None) -> Tensor:
    return masked.sum() / n_items.clamp(min=1.0)


def _luspo(masked: Tensor, mask: Tensor, n_items: Tensor, max_len: int | None) -> Tensor:
    return masked.sum(-1).mean()


#: name -> (reduce, whole_batch): a `whole_batch` reduction is already normalised by the whole batch's size, so
#: its micro-batch shares add up without the 1/accum_steps factor.
AGGREGATIONS: dict[str, tuple[Callable[..., Tensor], bool]] = {
    "grpo": (_grpo, False),
    "bnpo": (_bnpo, False),
    "dr_grpo": (_dr_grpo, False),
    "dapo": (_dapo, True),
    "luspo": (_luspo, False),
}


def aggregate(name: str, per_token: Tensor, mask: Tensor, *, accum_steps: int = 1,
              max_completion_length: int | None = None,
              num_items_in_batch: float | Tensor | None = None) -> Tensor:
    """This micro-batch's share of the batch loss (see the module docstring).

    Parameters
    ----------
    name : {"grpo", "bnpo", "dr_grpo", "dapo", "luspo"}
    per_token : Tensor, (B, T) or (B, 1)
        Per-token losses; a (B, 1) sequence-level loss is broadcast onto the sequence's completion tokens.
    mask : Tensor, (B, T)
        1 on completion tokens.
    accum_steps : int
        Micro-batches in the accumulation window.
    max_completion_length : int, optional
        The constant of ``dr_grpo`` (required for it).
    num_items_in_batch : optional
        Completion tokens of the whole accumulation window, the normaliser of ``dapo``; required for it when
        ``accum_steps > 1``, else defaults to ``mask.sum()``.
    """
    if name not in AGGREGATIONS:
        raise ValueError(f"loss_type={name!r} is not supported; allowed values: {', '.join(AGGREGATIONS)}.")
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"accum_steps must be a positive integer, got {accum_steps!r}.")
    if name == "dr_grpo" and (max_completion_length is None or max_completion_length < 1):
        raise ValueError(f"loss_type='dr_grpo' needs a positive max_completion_length, got {max_completion_length!r}.")
    if name == "dapo" and accum_steps > 1 and num_items_in_batch is None:
        raise ValueError("loss_type='dapo' with accum_steps > 1 needs num_items_in_batch, the completion tokens of "
                         "the whole batch.")
    mask = mask.to(per_token.dtype)
    n_items = mask.sum() if num_items_in_batch is None else num_items_in_batch
    n_items = torch.as_tensor(n_items, dtype=per_token.dtype, device=per_token.device)
    reduce, whole_batch = AGGREGATIONS[name]
    share = reduce(per_token * mask, mask, n_items, max_completion_length)
    return share if whole_batch else share / accum_steps
