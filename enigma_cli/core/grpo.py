"""GRPO: group-relative advantages and the policy loss composed from its pieces (method.md §2).

Two pure tensor functions, with no trainer state, no I/O and no logging:

- :func:`grpo_advantages` turns the rewards of ``G`` completions per prompt into advantages,
- :func:`grpo_loss` composes an importance weight and a surrogate (`surrogates.py`), an optional k3 KL penalty
  (`kl.py`) and an aggregation (`aggregation.py`) into a scalar loss plus a dict of detached statistics for the
  one place that logs metrics.

Maths
-----
Group ``g`` holds ``G`` completions with rewards ``r_1..r_G``. With ``s`` the chosen scale,

.. math::  A_i = (r_i - \\bar r_g) / (s + 10^{-4})

where ``s`` is the unbiased (Bessel-corrected) standard deviation of the group (``"group"``), of the whole
batch (``"batch"``), or no division at all (``"none"``).

For completion ``i`` and completion token ``t`` (``m_{i,t} = 1``), ``ρ_{i,t} = log π_θ(y_{i,t}) − log π_old(y_{i,t})``
gives the importance weight ``w`` (token or sequence level), the surrogate gives ``ℓ_{i,t}(w, A_i)``, the KL
penalty adds ``β·k3_{i,t}`` (``β·w·k3`` with ``kl_bias_correction``), and the aggregation averages ``ℓ`` over the
micro-batch. TRL names a surrogate and an aggregation together (its ``loss_type``): :data:`TRL_LOSS_TYPES` maps
each of TRL's names to our pair, e.g. TRL's ``cispo`` is surrogate ``cispo`` aggregated as ``dapo``.

With ``importance_level="sequence"`` pair ``loss_type="grpo"`` (the GSPO paper's setup, and ENIGMA's);
``bnpo``/``dr_grpo``/``dapo`` then sum a per-sequence weight over tokens, which weights each sequence by its
length (TRL warns about this too).

Relation to TRL (tested against ``trl.GRPOTrainer._compute_loss``, TRL 1.16)
-------------------------------------------------------------------------------
Value and gradient are TRL's. The differences are of packaging:

- **Gradient accumulation.** The loss is the micro-batch's share of the batch loss (see `aggregation.py`): pass
  ``accum_steps`` and, for ``dapo``, ``num_items_in_batch``, and sum the shares.
- **KL bias correction.** TRL 1.16 defaults to ``use_bias_correction_kl=True`` (k3 multiplied by ``w``,
  which changes the gradient even on-policy). We default to the plain k3 of the GRPO paper
  (``kl_bias_correction=False``) as method.md §2 states; pass ``True`` to reproduce TRL's default. With
  ``beta = 0`` (our default) it is moot.
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
[1] Shao et al., DeepSeekMath (GRPO), arXiv 2402.03300 (2024).
[2] Zheng et al., Group Sequence Policy Optimization, arXiv 2507.18071 (2025).
The surrogates' and aggregations' own references are in their modules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import AGGREGATIONS, aggregate
from .kl import k3_kl, masked_token_mean
from .surrogates import IMPORTANCE_LEVELS, SURROGATES, SurrogateParams, importance_log_weight
from .widen import widen

__all__ = ["IMPORTANCE_LEVELS", "LOSS_TYPES", "REWARD_SCALES", "SURROGATE_NAMES", "TRL_LOSS_TYPES", "grpo_advantages",
           "grpo_loss"]

LOSS_TYPES = tuple(AGGREGATIONS)
SURROGATE_NAMES = tuple(SURROGATES)
#: TRL's ``loss_type`` names -> (surrogate, loss_type) here.
TRL_LOSS_TYPES = {"grpo": ("clip", "grpo"), "bnpo": ("clip", "bnpo"), "dr_grpo": ("clip", "dr_grpo"),
                  "dapo": ("clip", "dapo"), "luspo": ("clip", "luspo"), "cispo": ("cispo", "dapo"),
                  "sapo": ("sapo", "grpo")}
REWARD_SCALES = ("group", "batch", "none")
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
    rewards = widen(torch.as_tensor(rewards))
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


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    surrogate: str = "clip",
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
    accum_steps: int = 1,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO / GSPO policy loss on per-token log-probabilities: surrogate + β·k3, then aggregation.

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
    surrogate : {"clip", "cispo", "sapo"}
        The per-token surrogate (`surrogates.py`).
    loss_type : {"grpo", "bnpo", "dr_grpo", "dapo", "luspo"}
        The aggregation (`aggregation.py`); TRL's combined names are in :data:`TRL_LOSS_TYPES`.
    importance_level : {"token", "sequence"}
        ``token``: :math:`w_{i,t} = e^{ρ_{i,t}}`; ``sequence`` (GSPO):
        :math:`w_i = \\exp(\\sum_t m_{i,t} ρ_{i,t} / \\max(\\sum_t m_{i,t}, 1))`.
    eps_low, eps_high : float
        Clip range :math:`[1 - ε_{low}, 1 + ε_{high}]`; ``eps_high`` defaults to ``eps_low``. For ``cispo``
        ``eps_high`` is the absolute cap ε_max on the ratio and must be given.
    delta : float, optional
        Two-sided clipping (INTELLECT-2): the unclipped branch uses ``min(w, delta)``.
    ref_logp : Tensor, shape (B, T), optional
        ``log π_ref``; required when ``beta > 0``. When given, ``stats["kl"]`` is reported even if ``beta = 0``.
    beta : float
        Weight of the k3 estimator (`kl.k3_kl`) added to every token's loss.
    kl_bias_correction : bool
        Multiply k3 by the importance weight ``w`` (TRL's ``use_bias_correction_kl``, TRL default True).
    max_completion_length : int, optional
        The constant of ``dr_grpo`` (required for it).
    num_items_in_batch : int, float or Tensor, optional
        Completion tokens in the whole batch, the normaliser of ``dapo``; defaults to ``mask.sum()``.
    accum_steps : int
        Micro-batches in the accumulation window; the loss is this micro-batch's share (`aggregation.py`).
    sapo_temperature_pos, sapo_temperature_neg : float
        SAPO gate temperatures for A > 0 and A ≤ 0.

    Returns
    -------
    loss : Tensor, 0-d
        This micro-batch's share of the batch loss: add the shares, do not rescale them.
    stats : dict[str, Tensor]
        Detached 0-d tensors: ``ratio_mean``, ``tokens``; ``clip_ratio/{low_mean,high_mean,region_mean,low_min,
        high_max}`` for ``clip``; ``cispo_clip_ratio`` for ``cispo``; ``kl`` when ``ref_logp`` is given.

    Raises
    ------
    ValueError
        Unknown ``surrogate``/``loss_type``/``importance_level``, mismatched shapes, ``beta < 0``, ``beta > 0``
        without ``ref_logp``, ``dr_grpo`` without ``max_completion_length``, ``cispo`` without ``eps_high``.
    """
    _check_choice("surrogate", surrogate, SURROGATE_NAMES)
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
    params = SurrogateParams(eps_low=eps_low, eps_high=eps_high, delta=delta,
                             sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg)
    term = SURROGATES[surrogate]
    term.check(params)

    logp, advantages = widen(logp), widen(advantages)  # float32 at least, whatever the model's dtype
    old_logp, ref_logp = (widen(t) if t is not None else None for t in (old_logp, ref_logp))
    mask = mask.to(logp.dtype)
    advantages = advantages.to(logp.dtype)
    old_logp = logp.detach() if old_logp is None else old_logp.detach()
    w = torch.exp(importance_log_weight(logp - old_logp, mask, importance_level))  # (B, T) token, (B, 1) sequence

    per_token = term.loss(w, advantages, logp, params)
    stats = dict(term.stats(w, advantages, mask, params))
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        if kl_bias_correction:
            kl = kl * w
        stats["kl"] = masked_token_mean(kl, mask)
    if beta != 0.0:
        per_token = per_token + beta * kl
    loss = aggregate(loss_type, per_token, mask, accum_steps=accum_steps,
                     max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch)
    stats["ratio_mean"] = masked_token_mean(w, mask)
    stats["tokens"] = mask.sum()
    return loss, {k: v.detach() for k, v in stats.items()}
