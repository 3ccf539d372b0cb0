"""GRPO: group-relative advantages and the clipped policy-gradient loss (method.md §2).

Two pure tensor functions, with no trainer state, no I/O and no logging:

- :func:`grpo_advantages` turns the rewards of ``G`` completions per prompt into advantages,
- :func:`grpo_loss` turns per-token log-probabilities and those advantages into a scalar loss plus a dict
  of detached statistics for the one place that logs metrics.

Maths
-----
Group ``g`` holds ``G`` completions with rewards ``r_1..r_G``. With ``s`` the chosen scale,

.. math::  A_i = (r_i - \\bar r_g) / (s + 10^{-4})

where ``s`` is the unbiased (Bessel-corrected) standard deviation of the group (``"group"``), of the whole
batch (``"batch"``), or no division at all (``"none"``).

For completion ``i`` and completion token ``t`` (``m_{i,t} = 1``), the log-ratio is
``ρ_{i,t} = log π_θ(y_{i,t}) − log π_old(y_{i,t})`` and the importance weight is

- ``token``:    ``w_{i,t} = exp(ρ_{i,t})``,
- ``sequence`` (GSPO [3]): ``w_i = exp(Σ_t m_{i,t} ρ_{i,t} / max(Σ_t m_{i,t}, 1))``, shared by every token of
  completion ``i``. Nothing is detached inside the mean: the gradient of ``w_i`` is
  ``w_i · mean_t ∇ log π_θ(y_{i,t})``, the GSPO-sequence gradient (not the GSPO-token variant).

The per-token loss of the clipped objective (PPO [1], GRPO [2]) is

.. math::  ℓ_{i,t} = -\\min(w A_i,\\ \\mathrm{clip}(w, 1-ε_{low}, 1+ε_{high}) A_i) + β k3_{i,t},
           \\qquad k3 = e^{q-p} - (q - p) - 1

with ``p`` the policy and ``q`` the reference log-probability. ``loss_type`` picks how ``ℓ`` is averaged:

==========  =====================================================================
``grpo``    mean over each sequence's tokens, then mean over the B sequences
``bnpo``    Σ ℓ·m / max(Σ m, 1) over the micro-batch
``dr_grpo`` Σ ℓ·m / (B · max_completion_length)          (Dr. GRPO [4])
``dapo``    Σ ℓ·m / max(num_items_in_batch, 1)           (DAPO [5])
``cispo``   ``-sg(min(w, ε_high)) · A · log π_θ``, aggregated as ``dapo``   (MiniMax-M1 [6])
``sapo``    ``-σ(τ(w − 1)) · 4/τ · A``, τ = τ_pos if A > 0 else τ_neg, aggregated as ``grpo`` (SAPO [7])
``luspo``   clipped objective, Σ_t ℓ·m per sequence, then mean over sequences
==========  =====================================================================

With ``importance_level="sequence"`` pair ``loss_type="grpo"`` (the GSPO paper's setup, and ENIGMA's);
``bnpo``/``dr_grpo``/``dapo``/``cispo`` then sum a per-sequence weight over tokens, which weights each
sequence by its length (TRL warns about this too).

Relation to TRL (tested against ``trl.GRPOTrainer._compute_loss``, TRL 1.16)
-------------------------------------------------------------------------------
Everything above is TRL's definition, value and gradient. The differences are of packaging:

- **Gradient accumulation.** TRL divides ``grpo``/``bnpo``/``dr_grpo``/``sapo``/``luspo`` by the number
  of accumulation steps inside the loss; we do not: the caller scales. ``dapo``/``cispo`` are already
  normalised by the token count of the *whole generation batch* (``num_items_in_batch``), so their
  micro-batch losses *sum* to the batch loss and must **not** be divided again. TRL's extra factor
  ``current_gradient_accumulation_steps / steps_per_generation`` is 1 in the usual setup where one
  generation batch is one accumulation window; under DDP pass the token count of the local share (TRL
  divides the global count by the number of processes).
- **KL bias correction.** TRL 1.16 defaults to ``use_bias_correction_kl=True`` (k3 multiplied by ``w``,
  which changes the gradient even on-policy). We default to the plain k3 of the GRPO paper
  (``kl_bias_correction=False``) as method.md §2 states; pass ``True`` to reproduce TRL's default. With
  ``beta = 0`` (our default) it is moot.
- **cispo** needs an explicit ``eps_high`` (ε_max, e.g. 5.0): TRL silently reuses ε = 0.2 as the cap.
- ``old_logp`` is always detached (π_old is a constant by definition); ``None`` means on-policy,
  ``old = logp.detach()``, so the ratio is 1 in value but carries the gradient.
- Not implemented (they need trainer/vLLM state): the ``vespo`` loss, the off-policy sequence mask, the
  high-entropy token mask, the vLLM importance-sampling correction and the entropy bonus.
- The default ``loss_type`` is ``"grpo"`` (TRL's is ``"dapo"``) because ENIGMA follows the GRPO/GSPO
  papers.

Statistics use TRL's metric names: ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
``clip_ratio/region_mean`` (fraction of tokens, or of sequences at ``sequence`` level, whose ratio left
the trust region on the side that matters for the sign of A), ``clip_ratio/low_min``,
``clip_ratio/high_max`` (extremes of the per-sequence fractions), ``cispo_clip_ratio``, ``kl`` (token
mean of k3), plus ``ratio_mean`` and ``tokens``.

References
----------
[1] Schulman et al., Proximal Policy Optimization Algorithms, arXiv 1707.06347 (2017).
[2] Shao et al., DeepSeekMath (GRPO), arXiv 2402.03300 (2024).
[3] Zheng et al., Group Sequence Policy Optimization, arXiv 2507.18071 (2025).
[4] Liu et al., Understanding R1-Zero-Like Training (Dr. GRPO), arXiv 2503.20783 (2025).
[5] Yu et al., DAPO, arXiv 2503.14476 (2025).
[6] MiniMax, MiniMax-M1, arXiv 2506.13585 (2025).
[7] Gao et al., Soft Adaptive Policy Optimization, arXiv 2511.20347 (2025).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IMPORTANCE_LEVELS", "LOSS_TYPES", "REWARD_SCALES", "grpo_advantages", "grpo_loss"]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
IMPORTANCE_LEVELS = ("token", "sequence")
REWARD_SCALES = ("group", "batch", "none")
_CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_STD_EPS = 1e-4


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(allowed)}.")


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std ignoring NaNs; NaN where fewer than two values remain (as TRL's ``nanstd``)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim)
    sq = torch.nansum((x - mean) ** 2, dim=dim)
    var = sq / (count - 1).clamp(min=1)
    return torch.where(count > 1, var, torch.full_like(var, float("nan"))).sqrt()


def grpo_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """Group-relative advantages.

    Parameters
    ----------
    rewards : Tensor, shape (N,)
        Rewards laid out as ``N / group_size`` consecutive groups (all completions of one prompt together).
        NaN marks an unscorable completion: it is left out of its group's mean and standard deviation and gets
        advantage 0 (TRL's convention).
    group_size : int
        Completions per prompt, ``G``.
    scale : {"group", "batch", "none"}
        Divisor of the centred rewards.

    Returns
    -------
    Tensor, shape (N,)
        .. math:: A_i = \\frac{r_i - \\operatorname{mean}_{g(i)} r}{s + 10^{-4}}

        with ``s`` the unbiased standard deviation of group ``g(i)`` (``"group"``), of all ``N`` rewards
        (``"batch"``), or no division (``"none"``). A group (batch) of one reward has ``s = 0``; a group whose
        standard deviation is undefined (fewer than two scorable rewards) gets advantage 0.

    Raises
    ------
    ValueError
        If ``rewards`` is not 1-D, ``group_size`` < 1, ``N`` is not a multiple of ``group_size``, or ``scale``
        is unknown.
    """
    _check_choice("scale", scale, REWARD_SCALES)
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D with shape (N,), got shape {tuple(rewards.shape)}.")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}.")
    n = rewards.numel()
    if n % group_size != 0:
        raise ValueError(
            f"{n} rewards cannot be split into groups of group_size={group_size} ({n} % {group_size} = "
            f"{n % group_size}); rewards must hold whole groups."
        )

    grouped = rewards.view(-1, group_size)
    centred = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).view(-1)
    if scale == "none":
        advantages = centred
    else:
        if scale == "group":
            std = _nanstd(grouped, dim=1) if group_size > 1 else rewards.new_zeros(n // group_size)
            std = std.repeat_interleave(group_size)
        else:  # "batch"
            std = _nanstd(rewards) if n > 1 else rewards.new_zeros(())
        advantages = centred / (std + _STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0)


def _masked_global_mean(x: Tensor, mask: Tensor) -> Tensor:
    """TRL's metric mean: over sequences for a (B, 1) tensor, over completion tokens for a (B, T) one."""
    if x.shape[1] == 1:
        return x.sum() / max(x.shape[0], 1)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


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


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str = "grpo",
    importance_level: str = "token",
    eps_low: float = 0.2,
    eps_high: float | None = None,
    delta: float | None = None,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    kl_bias_correction: bool = False,
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped GRPO / GSPO policy loss on per-token log-probabilities.

    Parameters
    ----------
    logp : Tensor, shape (B, T)
        ``log π_θ`` of each completion token, with gradient.
    old_logp : Tensor, shape (B, T), or None
        ``log π_old`` of the same tokens (detached here). ``None`` means on-policy: ``old = logp.detach()``.
    advantages : Tensor, shape (B,) or (B, T)
        ``A_i`` per completion (or per token).
    mask : Tensor, shape (B, T)
        1 for completion tokens, 0 for padding.
    loss_type : {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo"}
        Aggregation (and, for cispo/sapo, the surrogate); see the module docstring.
    importance_level : {"token", "sequence"}
        ``token``: :math:`w_{i,t} = e^{ρ_{i,t}}`; ``sequence`` (GSPO):
        :math:`w_i = \\exp(\\sum_t m_{i,t} ρ_{i,t} / \\max(\\sum_t m_{i,t}, 1))`.
    eps_low, eps_high : float
        Clip range :math:`[1 - ε_{low}, 1 + ε_{high}]`; ``eps_high`` defaults to ``eps_low``. For ``cispo``
        ``eps_high`` is the absolute cap ε_max on the ratio and must be given.
    delta : float, optional
        Two-sided clipping (INTELLECT-2): the unclipped branch uses ``min(w, delta)``.
    ref_logp : Tensor, shape (B, T), optional
        ``log π_ref``; required when ``beta > 0``. When given, ``stats["kl"]`` is reported even if
        ``beta = 0``.
    beta : float
        Weight of the k3 estimator :math:`e^{q-p} - (q-p) - 1` added to every token's loss.
    kl_bias_correction : bool
        Multiply k3 by the importance weight ``w`` (TRL's ``use_bias_correction_kl``, TRL default True).
    max_completion_length : int, optional
        The constant of ``dr_grpo`` (required for it).
    num_items_in_batch : int, float or Tensor, optional
        Completion tokens in the whole generation batch, the normaliser of ``dapo``/``cispo``; defaults to
        ``mask.sum()`` (this micro-batch is the whole batch).
    sapo_temperature_pos, sapo_temperature_neg : float
        SAPO gate temperatures for A > 0 and A ≤ 0.

    Returns
    -------
    loss : Tensor, 0-d
        Not divided by gradient-accumulation steps (see the module docstring).
    stats : dict[str, Tensor]
        Detached 0-d tensors: ``ratio_mean``, ``tokens``;
        ``clip_ratio/{low_mean,high_mean,region_mean,low_min,high_max}`` for the clipped losses;
        ``cispo_clip_ratio`` for cispo; ``kl`` when ``ref_logp`` is given.

    Raises
    ------
    ValueError
        Unknown ``loss_type``/``importance_level``, mismatched shapes, ``beta < 0``, ``beta > 0`` without
        ``ref_logp``, ``dr_grpo`` without ``max_completion_length``, ``cispo`` without ``eps_high``.
    """
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    _check_choice("importance_level", importance_level, IMPORTANCE_LEVELS)
    if logp.dim() != 2:
        raise ValueError(f"logp must have shape (B, T), got {tuple(logp.shape)}.")
    bsz = logp.shape[0]
    for name, t in (("mask", mask), ("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(t.shape)}.")
    if advantages.dim() == 1 and advantages.shape[0] == bsz:
        advantages = advantages.unsqueeze(1)
    elif not (
        advantages.dim() == 2 and advantages.shape[0] == bsz and advantages.shape[1] in (1, logp.shape[1])
    ):
        raise ValueError(
            f"advantages must have shape ({bsz},) or {tuple(logp.shape)}, got {tuple(advantages.shape)}."
        )
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}.")
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp (reference-model log-probabilities).")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length < 1):
        raise ValueError(
            f"loss_type='dr_grpo' needs a positive max_completion_length, got {max_completion_length!r}."
        )
    if loss_type == "cispo" and eps_high is None:
        raise ValueError(
            "loss_type='cispo' needs eps_high, the ratio cap ε_max (the CISPO papers use e.g. 5.0)."
        )
    if eps_high is None:
        eps_high = eps_low

    mask = mask.to(logp.dtype)
    advantages = advantages.to(logp.dtype)
    old_logp = logp.detach() if old_logp is None else old_logp.detach()

    log_ratio = logp - old_logp
    if importance_level == "token":
        log_w = log_ratio
    else:  # GSPO: one weight per sequence, from the mean log-ratio over its completion tokens
        log_w = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    w = torch.exp(log_w)  # (B, T) at token level, (B, 1) at sequence level

    kl = None
    if ref_logp is not None:
        diff = ref_logp.detach() - logp
        kl = torch.exp(diff) - diff - 1.0
        if kl_bias_correction:
            kl = kl * w

    stats: dict[str, Tensor] = {}
    if loss_type == "cispo":
        capped = torch.clamp(w, max=eps_high).detach()
        per_token = -capped * advantages * logp
        stats["cispo_clip_ratio"] = _masked_global_mean(
            ((w > eps_high) & (advantages > 0)).to(logp.dtype), mask
        )
    elif loss_type == "sapo":
        tau = torch.where(
            advantages > 0,
            torch.as_tensor(sapo_temperature_pos, dtype=logp.dtype, device=logp.device),
            torch.as_tensor(sapo_temperature_neg, dtype=logp.dtype, device=logp.device),
        )
        per_token = -torch.sigmoid(tau * (w - 1.0)) * 4.0 / tau * advantages
    else:
        w_clipped = torch.clamp(w, 1.0 - eps_low, 1.0 + eps_high)
        w_unclipped = w if delta is None else torch.clamp(w, max=delta)
        per_token = -torch.min(w_unclipped * advantages, w_clipped * advantages)
        # TRL measures clipping on the (delta-capped) ratio and only where the clip changes the objective.
        low = ((w_unclipped < 1.0 - eps_low) & (advantages < 0)).to(logp.dtype)
        high = ((w_unclipped > 1.0 + eps_high) & (advantages > 0)).to(logp.dtype)
        region = torch.maximum(low, high)
        stats["clip_ratio/low_mean"] = _masked_global_mean(low, mask)
        stats["clip_ratio/high_mean"] = _masked_global_mean(high, mask)
        stats["clip_ratio/region_mean"] = _masked_global_mean(region, mask)
        stats["clip_ratio/low_min"] = _nan_extreme(_per_sequence_mean(low, mask), largest=False)
        stats["clip_ratio/high_max"] = _nan_extreme(_per_sequence_mean(high, mask), largest=True)

    if beta != 0.0:
        per_token = per_token + beta * kl

    masked = per_token * mask  # broadcasts a (B, 1) sequence-level loss onto the completion tokens
    if loss_type in ("grpo", "sapo"):
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = masked.sum() / (bsz * max_completion_length)
    elif loss_type in ("dapo", "cispo"):
        n_items = mask.sum() if num_items_in_batch is None else num_items_in_batch
        n_items = torch.as_tensor(n_items, dtype=logp.dtype, device=logp.device)
        loss = masked.sum() / n_items.clamp(min=1.0)
    else:  # luspo: length-weighted sequence loss
        loss = masked.sum(-1).mean()

    stats["ratio_mean"] = _masked_global_mean(w, mask)
    stats["tokens"] = mask.sum()
    if kl is not None:
        stats["kl"] = _masked_global_mean(kl, mask)
    return loss, {k: v.detach() for k, v in stats.items()}
