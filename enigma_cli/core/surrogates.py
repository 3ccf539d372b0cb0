"""Policy-gradient surrogates: the per-token loss as a function of the importance weight and the advantage.

Each surrogate is a pure function of the importance weight ``w`` (token level ``(B, T)`` or sequence level
``(B, 1)``, see :func:`importance_log_weight`), the advantages ``A`` (``(B, 1)`` or ``(B, T)``) and, for CISPO,
the policy log-probabilities. It returns the per-token loss ``ℓ`` *before* aggregation (`aggregation.py`) and
before any KL penalty (`kl.py`); `grpo.grpo_loss` composes the three. On-policy (``w = 1`` in value) every
surrogate's gradient is the plain policy gradient ``−A·∇log π_θ`` up to the constant the formula gives.

==========  ==============================================================================  =============
name        per-token loss ℓ                                                                reference
==========  ==============================================================================  =============
``clip``    ``−min(w̃·A, clip(w, 1−ε_low, 1+ε_high)·A)``, ``w̃ = min(w, δ)`` when δ is given    PPO [1], [2]
``cispo``   ``−sg(min(w, ε_max))·A·log π_θ``  (sg: stop-gradient; ε_max = ``eps_high``)          CISPO [3]
``sapo``    ``−(4/τ)·σ(τ(w − 1))·A``, ``τ = τ_pos`` if ``A > 0`` else ``τ_neg``                  SAPO [4]
==========  ==============================================================================  =============

These are TRL's definitions (``GRPOTrainer._compute_loss``, TRL 1.16), tested against it on identical inputs. TRL
names a surrogate and an aggregation together (its ``loss_type``); `grpo.TRL_LOSS_TYPES` gives the pairs.
Deviation: CISPO's cap ε_max must be given (TRL silently reuses the clip's ε_high = 0.2 as the cap).

References
----------
[1] Schulman et al., Proximal Policy Optimization Algorithms, arXiv 1707.06347 (2017).
[2] Prime Intellect, INTELLECT-2 (two-sided clipping δ), arXiv 2505.07291 (2025).
[3] MiniMax, MiniMax-M1 (CISPO), arXiv 2506.13585 (2025).
[4] Gao et al., Soft Adaptive Policy Optimization, arXiv 2511.20347 (2025).
[5] Zheng et al., Group Sequence Policy Optimization (sequence-level weights), arXiv 2507.18071 (2025).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .kl import masked_token_mean

__all__ = ["IMPORTANCE_LEVELS", "SURROGATES", "Surrogate", "SurrogateParams", "cispo_surrogate", "clip_surrogate",
           "importance_log_weight", "sapo_surrogate"]

IMPORTANCE_LEVELS = ("token", "sequence")


def importance_log_weight(log_ratio: Tensor, mask: Tensor, level: str) -> Tensor:
    """``log w``: the token log-ratios ``ρ`` (``token``), or one weight per sequence (``sequence``, GSPO [5]).

    .. math:: \\log w_i = \\sum_t m_{i,t} ρ_{i,t} / \\max(\\sum_t m_{i,t}, 1)   (shape (B, 1))

    Nothing is detached inside the mean, so ``∇w_i = w_i · mean_t ∇log π_θ(y_{i,t})`` (GSPO, not GSPO-token).
    """
    if level == "token":
        return log_ratio
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)
        return (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    raise ValueError(f"importance_level={level!r} is not supported; allowed values: {', '.join(IMPORTANCE_LEVELS)}.")


def clip_surrogate(w: Tensor, advantages: Tensor, *, eps_low: float, eps_high: float,
                   delta: float | None = None) -> Tensor:
    """PPO's clipped surrogate: ``−min(w̃·A, clip(w, 1−ε_low, 1+ε_high)·A)``, ``w̃ = min(w, δ)`` if δ is given."""
    clipped = torch.clamp(w, 1.0 - eps_low, 1.0 + eps_high)
    unclipped = w if delta is None else torch.clamp(w, max=delta)
    return -torch.min(unclipped * advantages, clipped * advantages)


def cispo_surrogate(w: Tensor, advantages: Tensor, logp: Tensor, *, cap: float) -> Tensor:
    """CISPO: REINFORCE weighted by the capped, detached ratio, ``−sg(min(w, cap))·A·log π_θ``."""
    return -torch.clamp(w, max=cap).detach() * advantages * logp


def sapo_surrogate(w: Tensor, advantages: Tensor, *, tau_pos: float, tau_neg: float) -> Tensor:
    """SAPO's soft gate: ``−(4/τ)·σ(τ(w − 1))·A``, ``τ = τ_pos`` where ``A > 0`` else ``τ_neg``.

    At ``w = 1`` the gate's slope is 1, so on-policy the gradient is the plain policy gradient.
    """
    tau = torch.where(advantages > 0, torch.as_tensor(tau_pos, dtype=w.dtype, device=w.device),
                      torch.as_tensor(tau_neg, dtype=w.dtype, device=w.device))
    return -torch.sigmoid(tau * (w - 1.0)) * 4.0 / tau * advantages


@dataclass(frozen=True)
class SurrogateParams:
    """Hyper-parameters of the surrogates; each surrogate reads only its own."""

    eps_low: float = 0.2
    eps_high: float | None = None  # clip: defaults to eps_low; cispo: the cap ε_max, required
    delta: float | None = None     # clip: two-sided clipping
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05

    @property
    def high(self) -> float:
        return self.eps_low if self.eps_high is None else self.eps_high


def _per_sequence_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence mean; NaN for a sequence without completion tokens at token level (as TRL)."""
    if x.shape[1] == 1:
        return x.squeeze(1)
    return (x * mask).sum(-1) / mask.sum(-1)


def _nan_extreme(x: Tensor, largest: bool) -> Tensor:
    """Min or max ignoring NaNs without a host sync; NaN if every value is NaN."""
    fill = float("-inf") if largest else float("inf")
    filled = torch.where(torch.isnan(x), torch.full_like(x, fill), x)
    out = filled.max() if largest else filled.min()
    return torch.where(torch.isinf(out), torch.full_like(out, float("nan")), out)


def _clip_stats(w: Tensor, adv: Tensor, mask: Tensor, p: SurrogateParams) -> dict[str, Tensor]:
    """TRL's clip metrics, on the δ-capped ratio and only where the clip changes the objective (sign of A)."""
    capped = w if p.delta is None else torch.clamp(w, max=p.delta)
    low = ((capped < 1.0 - p.eps_low) & (adv < 0)).to(w.dtype)
    high = ((capped > 1.0 + p.high) & (adv > 0)).to(w.dtype)
    return {
        "clip_ratio/low_mean": masked_token_mean(low, mask),
        "clip_ratio/high_mean": masked_token_mean(high, mask),
        "clip_ratio/region_mean": masked_token_mean(torch.maximum(low, high), mask),
        "clip_ratio/low_min": _nan_extreme(_per_sequence_mean(low, mask), largest=False),
        "clip_ratio/high_max": _nan_extreme(_per_sequence_mean(high, mask), largest=True),
    }


def _cispo_stats(w: Tensor, adv: Tensor, mask: Tensor, p: SurrogateParams) -> dict[str, Tensor]:
    return {"cispo_clip_ratio": masked_token_mean(((w > p.high) & (adv > 0)).to(w.dtype), mask)}


def _no_stats(w: Tensor, adv: Tensor, mask: Tensor, p: SurrogateParams) -> dict[str, Tensor]:
    return {}


def _check_cispo(p: SurrogateParams) -> None:
    if p.eps_high is None:
        raise ValueError("surrogate 'cispo' needs eps_high, the ratio cap ε_max (the CISPO papers use e.g. 5.0).")


@dataclass(frozen=True)
class Surrogate:
    """A registered surrogate: its loss ``(w, A, logp, params) → ℓ``, its metrics, and its parameter check."""

    loss: Callable[[Tensor, Tensor, Tensor, SurrogateParams], Tensor]
    stats: Callable[[Tensor, Tensor, Tensor, SurrogateParams], dict[str, Tensor]] = _no_stats
    check: Callable[[SurrogateParams], None] = lambda p: None


SURROGATES: dict[str, Surrogate] = {
    "clip": Surrogate(lambda w, a, lp, p: clip_surrogate(w, a, eps_low=p.eps_low, eps_high=p.high, delta=p.delta),
                      _clip_stats),
    "cispo": Surrogate(lambda w, a, lp, p: cispo_surrogate(w, a, lp, cap=p.high), _cispo_stats, _check_cispo),
    "sapo": Surrogate(lambda w, a, lp, p: sapo_surrogate(w, a, tau_pos=p.sapo_temperature_pos,
                                                         tau_neg=p.sapo_temperature_neg)),
}
