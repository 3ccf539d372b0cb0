"""The terms of the ENIGMA objective, each a function of tensors that one micro-batch's forward produced.

L = L_GRPO + λ_SAMI·L_SAMI + λ_OT·S_ε (method.md §2-5). `objective.enigma_objective` adds the terms (for both
backends); here each term (and each metric that only logs) is computed on its own, so it can be tested alone on a
hand-built batch. Every loss returned here is the micro-batch's **share** of the batch loss under gradient
accumulation (`core.aggregation`): the trainer adds the shares of the ``accum_steps`` micro-batches and never
rescales them. SAMI and OT are means over the micro-batch's matrices and points, so their share is ``1/accum``.

Choices (ours): OT points are the L2-normalised mean completion-token hidden state per completion, one cloud per
layer, averaged over layers; S_ε is computed per micro-batch (it is not additive over micro-batches, so gradient
accumulation approximates the full-batch divergence by the mean of micro-batch divergences).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..core import SinkhornConvergenceWarning, grpo_loss, infonce_bounds, sami_loss, sinkhorn_divergence
from ..core.infonce import posterior_critic, sufficiency_index, sum_critic
from ..core.kl import k3_kl, masked_token_mean
from .params import GrpoParams

#: Sinkhorn tolerance in training (L1 error of the plan's marginal): 1e-4 gives the regulariser's gradient to
#: ~1e-4 relative, plenty for SGD, and stops policy-vs-reference clouds (nearly a permutation plan, Sinkhorn's
#: slow case) in tens of iterations. Solves that reach max_iter anyway are counted in `ot_unconverged`
#: instead of warning at every step.
OT_TOL = 1e-4


def grpo_term(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, p: GrpoParams, *,
              old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None, accum_steps: int = 1,
              num_items: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy term: `core.grpo_loss` with the run's surrogate, aggregation and clip range (`GrpoParams`).

    ``ref_logp`` enters the loss only when ``p.beta > 0``. Logged: ``loss_grpo`` (the batch loss, i.e. the share
    times ``accum_steps``, so that the mean over micro-batches is the batch loss for every aggregation) and
    ``grpo_<stat>`` for each statistic of `grpo_loss`.
    """
    loss, stats = grpo_loss(logp, old_logp, advantages, mask, surrogate=p.surrogate, loss_type=p.loss_type,
                            importance_level=p.importance_level, eps_low=p.epsilon, eps_high=p.epsilon_high,
                            ref_logp=ref_logp if p.beta > 0 else None, beta=p.beta,
                            max_completion_length=p.max_completion_length, num_items_in_batch=num_items,
                            accum_steps=accum_steps, sapo_temperature_pos=p.sapo_temperature_pos,
                            sapo_temperature_neg=p.sapo_temperature_neg)
    metrics = {"loss_grpo": float(loss.detach()) * accum_steps}
    metrics.update({f"grpo_{key}": float(v) for key, v in stats.items()})
    return loss, metrics


def sami_term(S: torch.Tensor, accum_steps: int = 1, share: float | None = None) -> tuple[torch.Tensor,
                                                                                          dict[str, float]]:
    """SAMI's symmetric InfoNCE of the critic matrices ``S`` [B, K, K] (`core.sami_loss`), as a share.

    The batch's SAMI loss is the mean over all of its matrices; this micro-batch's mean counts with ``share`` =
    its matrices / the batch's (``1 / accum_steps`` when every micro-batch has as many, the default).
    """
    loss, _ = sami_loss(S)
    weight = share if share is not None else 1.0 / accum_steps
    return loss * weight, {"loss_sami": float(loss.detach())}


def critic_metrics(S: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    """The critic's InfoNCE bounds (no gradient), on the scale `enigma score-principles` reports them.

    ``mi_sym``, ``mi_row`` (nats) and ``si`` = Î_sym / log K come from the sum-token critic centred on the K
    principles' mixture (method.md §4, score-principles' default ``--critic sum``), built from the mean-token
    scores ``S`` [B, K, K] and the completions' ``lengths`` [B, K] (`critic_lengths`): the same SI as
    score-principles, measured on the step's completions. SAMI's own mean-token bound, the one its loss
    tightens (``loss_sami`` = log K − ``sami_mi_sym``), is logged as ``sami_mi_sym``, ``sami_mi_row`` and
    ``sami_acc_row``.
    """
    S = S.detach()
    own = infonce_bounds(S)
    centred = posterior_critic(sum_critic(S.float(), lengths))
    bounds = infonce_bounds(centred)
    return {"mi_sym": bounds["mi_sym"], "mi_row": bounds["mi_row"], "si": float(sufficiency_index(centred)["si"]),
            "sami_mi_sym": own["mi_sym"], "sami_mi_row": own["mi_row"], "sami_acc_row": own["acc_row"]}


def critic_lengths(ep, prompts: range, matrices: int) -> torch.Tensor:
    """[B, K] completion lengths in tokens of the critic matrices of `critic_matrix`: entry [(p, s), j] is
    |y_(p,j,s)|, the column j of matrix (p, s)."""
    return torch.tensor([[len(ep.completion_ids[ep.completion_index(p, j, s)]) for j in range(ep.k)]
                         for p in prompts for s in range(matrices)], dtype=torch.float32).reshape(-1, ep.k)


def ot_term(policy: dict[int, torch.Tensor], reference: dict[int, torch.Tensor], eps: float,
            accum_steps: int = 1) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Debiased Sinkhorn divergence between the policy's and the reference's pooled states, mean over layers.

    ``policy[layer]`` [n, H] (detach it to only log the drift) and ``reference[layer]`` [n, H] are L2-normalised
    here. Returns (share of the loss, or None when no layer is shared; ``ot_divergence`` and ``ot_unconverged``,
    the number of solves that reached max_iter, counted rather than warned).
    """
    divs, unconverged = [], 0
    for layer, x in policy.items():
        if layer not in reference:
            continue
        x = F.normalize(x, dim=-1)
        y = F.normalize(reference[layer].to(device=x.device, dtype=x.dtype), dim=-1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SinkhornConvergenceWarning)
            divs.append(sinkhorn_divergence(x, y, eps=eps, tol=OT_TOL))
        for w in caught:  # count ours, pass any other warning on
            if issubclass(w.category, SinkhornConvergenceWarning):
                unconverged += 1
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not divs:
        return None, {}
    loss = torch.stack(divs).mean()
    return loss / accum_steps, {"ot_divergence": float(loss.detach()), "ot_unconverged": unconverged}


def kl_metric(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``kl_ref``: the token mean of the same k3 estimator the loss uses (`core.kl.k3_kl`), no gradient."""
    return {"kl_ref": float(masked_token_mean(k3_kl(logp.detach(), ref_logp), mask))}


def critic_matrix(ep, prompts: range, matrices: int, diag_logp: torch.Tensor,
                  off: list[tuple[int, int, int, int]], off_logp: torch.Tensor) -> torch.Tensor:
    """S[(p, s), i, j] = mean log π(y_(p,j,s) | c_i, x_p) for matrices s < ``matrices`` of the prompts.

    ``diag_logp`` holds the prompts' G completions after their own principle, in `Episodes` order; ``off`` and
    ``off_logp`` the off-diagonal pairs (`Episodes.off_diagonal`) and their scores. Differentiable in both.
    """
    k, m, g = ep.k, ep.m, ep.group_size
    rows = torch.tensor([(p - prompts.start) * matrices + s for p, s, _, _ in off], dtype=torch.long)
    diag_rows = [(n, divmod(n % g, m)) for n in range(len(prompts) * g)]
    keep = [(n, j, s) for n, (j, s) in diag_rows if s < matrices]
    S = diag_logp.new_zeros(len(prompts) * matrices, k, k)
    if keep:
        n_idx = torch.tensor([n for n, _, _ in keep], dtype=torch.long, device=S.device)
        mat = torch.tensor([(n // g) * matrices + s for n, _, s in keep], dtype=torch.long, device=S.device)
        j_idx = torch.tensor([j for _, j, _ in keep], dtype=torch.long, device=S.device)
        S = S.index_put((mat, j_idx, j_idx), diag_logp[n_idx])
    if off:
        i_idx = torch.tensor([i for _, _, i, _ in off], dtype=torch.long, device=S.device)
        j_idx = torch.tensor([j for _, _, _, j in off], dtype=torch.long, device=S.device)
        S = S.index_put((rows.to(S.device), i_idx, j_idx), off_logp.to(S.dtype))
    return S
