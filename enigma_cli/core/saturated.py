r"""A fallback reward for the groups whose reward has saturated (method.md §8).

GRPO's advantage of a group is :math:`(r_i - \bar r)/(\mathrm{sd}(r) + 10^{-4})`, so a group whose :math:`G`
rewards are all equal contributes nothing. After a format warm-up that happens to almost every group under the
format-only reward. For such a group :math:`g` we add a fallback reward :math:`f` (the label-free coherence
reward of method.md §7 in `enigma train`):

.. math:: r'_i = r_i + \mathbf 1[\max_{j \in g} r_j - \min_{j \in g} r_j \le \tau]\, f_i, \qquad i \in g,

with :math:`\tau` = ``SPREAD_TOL`` = 1e-6. Groups with any spread keep their rewards exactly.

Choices that are ours:

- *Per group, stateless.* The switch looks at one group's rewards only, never at earlier steps, so a resumed run
  makes the same choice as an uninterrupted one, and one prompt's saturation does not change another's reward.
- *Added, not substituted.* A saturated group's rewards are a constant plus :math:`f`; group centring removes the
  constant, so with ``--scale-rewards group`` or ``none`` the advantages are those of :math:`f` alone, and the
  logged reward keeps the format reward's scale.
- *A tolerance, not exact equality,* so that float sums of equal parts count as equal.
"""

from __future__ import annotations

import torch

__all__ = ["SPREAD_TOL", "fill_saturated_groups", "saturated_groups"]

#: Largest within-group reward range that still counts as "no spread".
SPREAD_TOL = 1e-6


def saturated_groups(rewards: torch.Tensor, group_size: int, tol: float = SPREAD_TOL) -> torch.Tensor:
    """Which groups have no reward spread: shape ``(N / group_size,)`` bool, for consecutive groups of rewards."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.detach().float().reshape(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) <= tol


def fill_saturated_groups(rewards: torch.Tensor, fallback: torch.Tensor, group_size: int,
                          tol: float = SPREAD_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback where a group has no spread: returns ``(term, saturated)``, where ``term`` (shape ``(N,)``) is
    ``fallback`` in saturated groups and 0 elsewhere (add it to ``rewards``), and ``saturated`` is
    :func:`saturated_groups`."""
    saturated = saturated_groups(rewards, group_size, tol)
    mask = saturated.repeat_interleave(group_size).to(fallback.device)
    return torch.where(mask, fallback.float(), torch.zeros_like(fallback, dtype=torch.float32)), saturated
