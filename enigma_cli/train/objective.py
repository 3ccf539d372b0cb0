"""The ENIGMA objective on one micro-batch of prompts: L = L_GRPO + λ_SAMI·L_SAMI + λ_OT·S_ε (method.md §2-5).

One batched forward of the policy serves all three terms: the G "diagonal" sequences (each completion after its
own principle's prompt) give the GRPO token log-probs and the hidden states for the OT term; the m'·K·(K−1)
"off-diagonal" sequences (m' = ``--sami-matrices`` of the G/K matrices; the same completions after the other
principles' prompts) complete the SAMI critic matrices. Without SAMI the critic is only logged (unless
``--no-critic-metrics``), and its off-diagonal runs in a separate forward without a graph. Reference log-probs and
hidden states come from `reference_pass`, computed once per generation and only when `needs_reference`.

`micro_loss` only composes: each term and each logged metric is a function of its own in `terms.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.reader import read
from . import terms
from .episodes import Episodes


@dataclass
class Forward:
    logp: torch.Tensor              # [n, L] completion-token log-probs (token j of each completion at column j)
    mask: torch.Tensor              # [n, L]
    seq_logp: torch.Tensor          # [n] mean token log-prob
    pooled: dict[int, torch.Tensor]  # layer -> [n, H]


def forward(model, ep: Episodes, idx: list[int], prompt_rows: list[int], layers: list[int] | None,
            temperature: float = 1.0) -> Forward:
    """Log-probs (and pooled hidden states) of completions `idx`, each after prompt `prompt_rows[i]`.

    Through `models.reader.read`, with a graph when grad is enabled: each distinct prompt runs once and its cache
    serves every completion after it (the K rows of a SAMI critic row share their principle's prompt), and the
    gradient flows back into that one pass. Log-probs are of the sampling distribution, logits / temperature, as
    in TRL, so that on-policy ratios are 1. The result is in the order of `idx`.
    """
    r = read(model, [ep.prompt_ids[p] for p in prompt_rows], [ep.completion_ids[i] for i in idx],
             layers=layers or (), grad=torch.is_grad_enabled(), temperature=temperature)
    return Forward(r.logp, r.mask, r.seq_logp, r.pooled)


@torch.no_grad()
def reference_pass(model, ep: Episodes, layers: list[int] | None, temperature: float = 1.0) -> Forward:
    """Log-probs and pooled hidden states of every completion under `model` (reference or old policy), no graph.

    The same reader as the policy's forward, so at step 1 (policy = reference, dropout off) the two agree exactly.
    """
    idx = list(range(len(ep.completion_ids)))
    return forward(model, ep, idx, [ep.prompt_of(i) for i in idx], layers, temperature)


def micro_loss(model, ep: Episodes, prompts: range, cfg, *, layers: list[int], ref: Forward | None,
               old: Forward | None, num_items: int, accum_steps: int = 1) -> tuple[torch.Tensor, dict]:
    """This micro-batch's share of the batch loss (`terms`: shares add up over micro-batches) and its metrics.

    The sum of the terms: GRPO always; SAMI when ``cfg.use_sami``; OT when ``cfg.use_ot``. What is only logged is
    computed only when asked for: the critic's MI bound (``critic_metrics``, off-diagonal scored without a graph),
    and, when a reference pass ran (``ref``), the KL and the hidden-state drift to the reference.
    """
    diag = ep.group_rows(prompts)
    m_sami = sami_matrices(cfg, ep.m)
    n_sami = sami_prompts(cfg, ep.n_prompts)
    critic = range(prompts.start, max(prompts.start, min(prompts.stop, n_sami)))  # this micro-batch's share
    off = ep.off_diagonal(critic, m_sami) if (cfg.use_sami or cfg.critic_metrics) else []
    hidden = layers if (cfg.use_ot or ref is not None) else None
    out, off_logp = _policy_forward(model, ep, diag, off, cfg, hidden)
    nd = len(diag)
    logp, mask = out.logp[:nd], out.mask[:nd]
    old_logp = _fit(old.logp[diag].to(logp.device), logp) if old is not None else None
    ref_logp = _fit(ref.logp[diag].to(logp.device), logp) if ref is not None else None

    total, metrics = terms.grpo_term(logp, mask, ep.advantages[diag].to(logp.device), cfg, old_logp=old_logp,
                                     ref_logp=ref_logp, accum_steps=accum_steps, num_items=num_items)
    if ref_logp is not None:
        metrics.update(terms.kl_metric(logp, ref_logp, mask))
    if off:
        S = terms.critic_matrix(ep, critic, m_sami, out.seq_logp[:len(critic) * ep.group_size], off, off_logp)
        if cfg.use_sami:
            l_sami, m_sami_metrics = terms.sami_term(S, share=len(critic) / n_sami)
            total = total + cfg.lambda_sami * l_sami
            metrics.update(m_sami_metrics)
        metrics.update(terms.critic_metrics(S))
    if ref is not None:
        policy = {layer: (x[:nd] if cfg.use_ot else x[:nd].detach()) for layer, x in out.pooled.items()}
        l_ot, ot_metrics = terms.ot_term(policy, {layer: y[diag] for layer, y in ref.pooled.items()}, cfg.ot_eps,
                                         accum_steps)
        if cfg.use_ot and l_ot is not None:
            total = total + cfg.lambda_ot * l_ot
        metrics.update(ot_metrics)
    metrics["loss"] = float(total.detach()) * accum_steps
    return total, metrics


def _policy_forward(model, ep: Episodes, diag: list[int], off: list, cfg,
                    hidden: list[int] | None) -> tuple[Forward, torch.Tensor]:
    """The policy's forward of the diagonal (with graph) and the critic's off-diagonal scores.

    SAMI trains through the off-diagonal, which then joins the diagonal's forward; a critic that is only logged
    scores its off-diagonal in a separate forward without a graph (no activations kept for the backward).
    """
    rows, cols = list(diag), [ep.prompt_of(i) for i in diag]
    rows += [ep.completion_index(p, j, s) for p, s, i, j in off]
    cols += [p * ep.k + i for p, s, i, j in off]
    nd = len(diag)
    if cfg.use_sami or not off:
        out = forward(model, ep, rows, cols, hidden, cfg.temperature)
        return out, out.seq_logp[nd:]
    out = forward(model, ep, rows[:nd], cols[:nd], hidden, cfg.temperature)
    with torch.no_grad():  # the bare module: a DDP wrapper would sync buffers between forward and backward
        off_logp = forward(getattr(model, "module", model), ep, rows[nd:], cols[nd:], None,
                           cfg.temperature).seq_logp
    return out, off_logp


def needs_reference(cfg) -> bool:
    """Whether a run needs π_ref at all: the KL penalty (β > 0), the OT term, or the reference metrics."""
    return cfg.beta > 0 or cfg.use_ot or cfg.ref_metrics


def sami_matrices(cfg, m: int) -> int:
    """How many of a prompt's m = G/K critic matrices get their off-diagonal entries (``--sami-matrices``; 0: all).

    Matrix s takes sample s of every principle's sub-group. Samples within a sub-group are i.i.d., so the first
    m' matrices are an unbiased subsample: the SAMI loss and the MI bound keep their expectation (their variance
    grows) while the extra forward/backward shrinks from G·(K−1) to m'·K·(K−1) sequences per prompt.
    """
    return min(cfg.sami_matrices or m, m)


def sami_prompts(cfg, n_prompts: int) -> int:
    """How many of the step's prompts (the first ones) get SAMI's critic matrices (``--sami-prompts``; 0: all).

    The step's prompts are drawn independently at random (`episodes.draw`), so the first n are a uniform random
    subset: the SAMI loss (the mean over matrices) keeps its expectation and gains variance, while the update's
    extra rows fall from P·m'·K(K−1) to n·m'·K(K−1). An approximation, off by default; its effect is measured in
    BENCHMARKS.md.
    """
    return min(cfg.sami_prompts or n_prompts, n_prompts)


def _fit(other: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`other` [n, L'] cut or zero-padded to `like`'s width (log-probs of the same completions, read separately)."""
    if other is None:
        return None
    width = like.shape[1]
    if other.shape[1] >= width:
        return other[:, :width]
    return F.pad(other, (0, width - other.shape[1]))
