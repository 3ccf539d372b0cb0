"""The ENIGMA objective on one micro-batch of prompts: L = L_GRPO + λ_SAMI·L_SAMI + λ_OT·S_ε (method.md §2-5).

One batched forward of the policy serves all three terms: the G "diagonal" sequences (each completion after its
own principle's prompt) give the GRPO token log-probs and the hidden states for the OT term; the m'·K·(K−1)
"off-diagonal" sequences (m' = ``--sami-matrices`` of the G/K matrices; the same completions after the other
principles' prompts) complete the SAMI critic matrices. Without SAMI the critic is only logged (unless
``--no-critic-metrics``), and its off-diagonal runs in a separate forward without a graph. Reference log-probs and
hidden states come from `reference_pass`, computed once per generation and only when `needs_reference`.

`enigma_objective` composes the terms for both backends: `micro_loss` (here) and `trl.trainer.EnigmaGRPOTrainer`
only fill its inputs from their own batch layout. Each term and each logged metric is a function of its own in
`terms.py`, and each term reads its own parameters (`params.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.tiled import read
from . import terms
from .episodes import Episodes
from .params import ObjectiveParams, SamiParams


@dataclass
class Forward:
    logp: torch.Tensor              # [n, L] completion-token log-probs (token j of each completion at column j)
    mask: torch.Tensor              # [n, L]
    seq_logp: torch.Tensor          # [n] mean token log-prob
    pooled: dict[int, torch.Tensor]  # layer -> [n, H]


def forward(model, ep: Episodes, idx: list[int], prompt_rows: list[int], layers: list[int] | None,
            temperature: float = 1.0) -> Forward:
    """Log-probs (and pooled hidden states) of completions `idx`, each after prompt `prompt_rows[i]`.

    Through `models.tiled.read` (the reader with the LM head in tiles: no ``[B, T, V]`` logits), with a graph when
    grad is enabled: each distinct prompt runs once and its cache serves every completion after it (the K rows of a
    SAMI critic row share their principle's prompt), and the gradient flows back into that one pass. Log-probs are
    of the sampling distribution, logits / temperature, as in TRL, so that on-policy ratios are 1; the log-softmax
    is in float32. The result is in the order of `idx`.
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


def micro_loss(model, ep: Episodes, prompts: range, params: ObjectiveParams, *, layers: list[int],
               ref: Forward | None, old: Forward | None, num_items: int,
               accum_steps: int = 1) -> tuple[torch.Tensor, dict]:
    """This micro-batch's share of the batch loss (`terms`: shares add up over micro-batches) and its metrics.

    `enigma train`'s adapter to `enigma_objective`: one forward of the policy (`_policy_forward`), the GRPO term
    on its diagonal rows, then the composition. What is only logged is computed only when asked for: the critic's
    MI bound (``params.sami.log_critic``, off-diagonal scored without a graph), and, when a reference pass ran
    (``ref``), the KL and the hidden-state drift to the reference.
    """
    diag = ep.group_rows(prompts)
    critic = plan_critic(ep, prompts, params.sami, ep.n_prompts)
    hidden = layers if (params.ot.on or ref is not None) else None
    out, off_logp = _policy_forward(model, ep, diag, critic, params, hidden)
    nd = len(diag)
    logp, mask = out.logp[:nd], out.mask[:nd]
    old_logp = _fit(old.logp[diag].to(logp.device), logp) if old is not None else None
    ref_logp = _fit(ref.logp[diag].to(logp.device), logp) if ref is not None else None
    policy_term = terms.grpo_term(logp, mask, ep.advantages[diag].to(logp.device), params.grpo,
                                  old_logp=old_logp, ref_logp=ref_logp, accum_steps=accum_steps, num_items=num_items)
    policy = PolicyOutputs(logp, mask, out.seq_logp[:nd], {layer: x[:nd] for layer, x in out.pooled.items()},
                           off_logp)
    reference = None if ref is None else ReferenceOutputs(ref_logp, {layer: y[diag] for layer, y in ref.pooled.items()})
    total, metrics = enigma_objective(ep, critic, policy, reference, policy_term, params, accum_steps)
    metrics["loss"] = float(total.detach()) * accum_steps
    return total, metrics


@dataclass
class Critic:
    """The critic matrices one micro-batch scores: those of its first prompts (`plan_critic`)."""

    prompts: range    # prompt indices into the micro-batch's `Episodes`
    matrices: int     # critic matrices per prompt (m' of G/K)
    share: float      # this micro-batch's matrices / the step's: its share of the step's SAMI loss
    pairs: list[tuple[int, int, int, int]]  # (p, s, i, j), `Episodes.off_diagonal`


@dataclass
class PolicyOutputs:
    """What the policy's forward gave for a micro-batch's G·P' rows (each completion after its own prompt)."""

    logp: torch.Tensor                # [n, L] completion-token log-probs, with graph
    mask: torch.Tensor                # [n, L]
    seq_logp: torch.Tensor            # [n] mean token log-prob: the critic's diagonal entries
    pooled: dict[int, torch.Tensor]   # layer -> [n, H] mean completion-token hidden state (the OT points)
    off_logp: torch.Tensor | None     # the critic's off-diagonal scores, in `Critic.pairs` order


@dataclass
class ReferenceOutputs:
    """π_ref's log-probs [n, L] (aligned with the policy's) and pooled states per layer [n, H]; None: not read."""

    logp: torch.Tensor | None
    pooled: dict[int, torch.Tensor] | None


def enigma_objective(ep: Episodes, critic: Critic | None, policy: PolicyOutputs,
                     reference: ReferenceOutputs | None, policy_term: tuple[torch.Tensor, dict],
                     params: ObjectiveParams, accum_steps: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_GRPO + λ_SAMI·L_SAMI + λ_OT·S_ε on one micro-batch (its share) and every logged metric: the one place
    the terms are composed, for both backends.

    ``policy_term`` is the GRPO term as the backend computes it, (share of the loss, metrics): `terms.grpo_term`
    in `enigma train`, TRL's own loss in `trl.trainer`. The backends differ only in how they fill the inputs:
    ``ep`` holds the micro-batch's rows, ``critic`` which critic matrices it scores (None: none), ``policy`` and
    ``reference`` the two models' outputs on the diagonal rows. Logged beside the terms: ``kl_ref`` when the
    reference's log-probs are given, the critic's bounds (`terms.critic_metrics`) when a critic is scored, the OT
    drift when the reference's pooled states are given.
    """
    total, metrics = policy_term[0], dict(policy_term[1])
    sami, ot = params.sami, params.ot
    if reference is not None and reference.logp is not None:
        metrics.update(terms.kl_metric(policy.logp, reference.logp, policy.mask))
    if critic is not None and critic.pairs:
        diag_logp = policy.seq_logp[:len(critic.prompts) * ep.group_size]
        S = terms.critic_matrix(ep, critic.prompts, critic.matrices, diag_logp if sami.on else diag_logp.detach(),
                                critic.pairs, policy.off_logp)
        if sami.on:
            l_sami, sami_metrics = terms.sami_term(S, share=critic.share)
            total = total + sami.weight * l_sami
            metrics.update(sami_metrics)
        metrics.update(terms.critic_metrics(S, terms.critic_lengths(ep, critic.prompts, critic.matrices)))
    if reference is not None and reference.pooled is not None:
        points = {layer: (x if ot.on else x.detach()) for layer, x in policy.pooled.items()}
        l_ot, ot_metrics = terms.ot_term(points, reference.pooled, ot.eps, accum_steps)
        if ot.on and l_ot is not None:
            total = total + ot.weight * l_ot
        metrics.update(ot_metrics)
    return total, metrics


def plan_critic(ep: Episodes, prompts: range, sami: SamiParams, step_prompts: int, offset: int = 0) -> Critic | None:
    """Which critic matrices the micro-batch of ``prompts`` scores (None: no critic is scored at all).

    ``step_prompts`` is the number of prompts in the whole step and ``offset`` the step index of ``ep``'s prompt 0
    (0 when ``ep`` holds the whole step, as in `enigma train`; the micro-batch's start when ``ep`` holds only the
    micro-batch, as under TRL). ``--sami-prompts n`` keeps the critic of the step's first n prompts.
    """
    if not sami.scores_critic:
        return None
    matrices = sami_matrices(sami.matrices, ep.m)
    n = sami_prompts(sami.prompts, step_prompts)
    lo = prompts.start + offset
    hi = max(lo, min(prompts.stop + offset, n))
    scored = range(lo - offset, hi - offset)
    return Critic(scored, matrices, (hi - lo) / n, ep.off_diagonal(scored, matrices))


def off_diagonal_rows(ep: Episodes, pairs: list[tuple[int, int, int, int]]) -> tuple[list[int], list[int]]:
    """The completion rows and prompt rows of the critic's off-diagonal pairs: completion (p, j, s) after the
    prompt of principle i."""
    return [ep.completion_index(p, j, s) for p, s, i, j in pairs], [p * ep.k + i for p, s, i, j in pairs]


def score_off_diagonal(model, ep: Episodes, pairs: list[tuple[int, int, int, int]], temperature: float, *,
                       graph: bool, bare=None) -> torch.Tensor:
    """The critic's off-diagonal scores (mean token log-probs), with a graph (SAMI trains) or without one.

    Without a graph the forward runs on ``bare``, the module without its DDP wrapper (default: ``model.module``
    where there is one): a wrapper would sync buffers between the step's forward and its backward.
    """
    rows, cols = off_diagonal_rows(ep, pairs)
    if graph:
        return forward(model, ep, rows, cols, None, temperature).seq_logp
    with torch.no_grad():
        return forward(bare if bare is not None else getattr(model, "module", model), ep, rows, cols, None,
                       temperature).seq_logp


def _policy_forward(model, ep: Episodes, diag: list[int], critic: Critic | None, params: ObjectiveParams,
                    hidden: list[int] | None) -> tuple[Forward, torch.Tensor]:
    """The policy's forward of the diagonal (with graph) and the critic's off-diagonal scores.

    SAMI trains through the off-diagonal, which then joins the diagonal's forward; a critic that is only logged
    scores its off-diagonal in a separate forward without a graph (no activations kept for the backward).
    """
    pairs = critic.pairs if critic is not None else []
    off_rows, off_cols = off_diagonal_rows(ep, pairs)
    rows, cols = list(diag) + off_rows, [ep.prompt_of(i) for i in diag] + off_cols
    nd = len(diag)
    if params.sami.on or not pairs:
        out = forward(model, ep, rows, cols, hidden, params.temperature)
        return out, out.seq_logp[nd:]
    out = forward(model, ep, rows[:nd], cols[:nd], hidden, params.temperature)
    return out, score_off_diagonal(model, ep, pairs, params.temperature, graph=False)


def needs_reference(cfg) -> bool:
    """Whether a run needs π_ref at all: the KL penalty (β > 0), the OT term, or the reference metrics."""
    return cfg.beta > 0 or cfg.use_ot or cfg.ref_metrics


def sami_matrices(asked: int, m: int) -> int:
    """How many of a prompt's m = G/K critic matrices get their off-diagonal entries (``--sami-matrices``; 0: all).

    Matrix s takes sample s of every principle's sub-group. Samples within a sub-group are i.i.d., so the first
    m' matrices are an unbiased subsample: the SAMI loss and the MI bound keep their expectation (their variance
    grows) while the extra forward/backward shrinks from G·(K−1) to m'·K·(K−1) sequences per prompt.
    """
    return min(asked or m, m)


def sami_prompts(asked: int, n_prompts: int) -> int:
    """How many of the step's prompts (the first ones) get SAMI's critic matrices (``--sami-prompts``; 0: all).

    The step's prompts are drawn independently at random (`episodes.draw`; TRL's sampler shuffles whole
    questions), so the first n are a uniform random subset: the SAMI loss (the mean over matrices) keeps its
    expectation and gains variance, while the update's extra rows fall from P·m'·K(K−1) to n·m'·K(K−1). An
    approximation, off by default; its effect is measured in BENCHMARKS.md.
    """
    return min(asked or n_prompts, n_prompts)


def _fit(other: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`other` [n, L'] cut or zero-padded to `like`'s width (log-probs of the same completions, read separately)."""
    if other is None:
        return None
    width = like.shape[1]
    if other.shape[1] >= width:
        return other[:, :width]
    return F.pad(other, (0, width - other.shape[1]))
