"""The ENIGMA objective on one micro-batch of prompts: L = L_GRPO + λ_SAMI·L_SAMI + λ_OT·S_ε (method.md §2-5).

One batched forward of the policy serves all three terms: the G "diagonal" sequences (each completion after its
own principle's prompt) give the GRPO token log-probs and the hidden states for the OT term; the m'·K·(K−1)
"off-diagonal" sequences (m' = ``--sami-matrices`` of the G/K matrices, all by default: G·(K−1) sequences; the
same completions after the other principles' prompts) complete the SAMI critic matrices. Without SAMI the critic
is only logged, and its off-diagonal runs in a separate forward without a graph. Reference log-probs and hidden
states come from `reference_pass`, computed once per generation.

Our choices: OT points are the L2-normalised mean completion-token hidden state per completion, one cloud per
layer, averaged over layers; S_ε is computed per micro-batch (it is not additive over micro-batches, so gradient
accumulation approximates the full-batch divergence by the mean of micro-batch divergences).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import SinkhornConvergenceWarning, grpo_loss, infonce_bounds, sami_loss, sinkhorn_divergence
from ..models import decode
from ..models.logprobs import (
    Batch,
    chunk_tokens,
    completion_positions,
    length_chunks,
    mean_pool,
    pack,
    sequence_mean_logprob,
    token_logprobs,
)
from .episodes import Episodes

#: Sinkhorn tolerance in training (L1 error of the plan's marginal): 1e-4 gives the regulariser's gradient to
#: ~1e-4 relative, plenty for SGD, and stops policy-vs-reference clouds (nearly a permutation plan, Sinkhorn's
#: slow case) in tens of iterations. Solves that reach max_iter anyway are counted in `ot_unconverged`
#: instead of warning at every step.
OT_TOL = 1e-4


def compact(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's masked entries to the front, keeping order: [B, T] → ([B, L], mask [B, L]), L = max count.

    Differentiable (a gather), so per-token log-probs from sequences padded differently line up by completion token.
    """
    mask = mask.bool()
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    length = int(mask.sum(dim=1).max().item()) if mask.numel() else 0
    order = order[:, :length]
    return values.gather(1, order), mask.gather(1, order)


@dataclass
class Forward:
    logp: torch.Tensor              # [n, L] completion-token log-probs (compacted)
    mask: torch.Tensor              # [n, L]
    seq_logp: torch.Tensor          # [n] mean token log-prob
    pooled: dict[int, torch.Tensor]  # layer -> [n, H]


def forward(model, ep: Episodes, idx: list[int], prompt_rows: list[int], pad_id: int,
            layers: list[int] | None, temperature: float = 1.0) -> Forward:
    """Log-probs (and pooled hidden states) of completions `idx`, each after prompt `prompt_rows[i]`.

    Log-probs are of the sampling distribution, logits / temperature, as in TRL, so that on-policy ratios are 1.
    The rows run in length-sorted chunks (`logprobs.length_chunks`, `logprobs.chunk_tokens`); the result is in the order of `idx`, and the graphs of
    all chunks stay alive for one backward, so the loss and its gradient do not depend on the chunking.
    """
    device = _device(model)
    prompts = [ep.prompt_ids[r] for r in prompt_rows]
    completions = [ep.completion_ids[i] for i in idx]
    budget = chunk_tokens(device)
    parts, order = [], []
    for rows in length_chunks([len(p) + len(c) for p, c in zip(prompts, completions)], budget):
        batch: Batch = pack([prompts[i] for i in rows], [completions[i] for i in rows], pad_id)
        batch = Batch(*(t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.completion_mask)))
        logp, hidden = token_logprobs(model, batch, hidden_layers=layers or None, temperature=temperature)
        mask = batch.completion_mask
        seq = (logp * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = {layer: mean_pool(h.float(), mask) for layer, h in (hidden or {}).items()}
        logp_c, mask_c = compact(logp.float(), mask)
        parts.append((logp_c, mask_c, seq, pooled))
        order.extend(rows)
    width = max(part[0].shape[1] for part in parts)
    back = torch.argsort(torch.tensor(order, device=device))  # chunk order -> the order of idx
    logp = torch.cat([F.pad(part[0], (0, width - part[0].shape[1])) for part in parts])[back]
    mask = torch.cat([F.pad(part[1], (0, width - part[1].shape[1])) for part in parts])[back]
    seq = torch.cat([part[2] for part in parts])[back]
    pooled = {layer: torch.cat([part[3][layer] for part in parts])[back] for layer in parts[0][3]}
    return Forward(logp, mask, seq, pooled)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def reference_pass(model, ep: Episodes, pad_id: int, layers: list[int] | None, temperature: float = 1.0) -> Forward:
    """Log-probs and pooled hidden states of every completion under `model` (reference or old policy).

    No gradient is needed, so Llama-architecture models take `decode.score`, which runs each of the step's
    prompts once for its G/K completions instead of once per completion (the prompts are most of the tokens);
    other models take `forward`. Both give the same numbers (tests/test_train.py).
    """
    n = len(ep.completion_ids)
    idx = list(range(n))
    if not decode.supports(model):
        return forward(model, ep, idx, [ep.prompt_of(i) for i in idx], pad_id, layers, temperature)
    prompts = [ep.prompt_ids[ep.prompt_of(i)] for i in idx]
    logp, pooled = decode.score(model, prompts, [list(c) for c in ep.completion_ids],
                                hidden_layers=layers or (), temperature=temperature)
    mask = completion_positions(ep.completion_ids, logp)
    return Forward(logp, mask, sequence_mean_logprob(logp, mask), pooled)


def micro_loss(model, ep: Episodes, prompts: range, cfg, *, pad_id: int, layers: list[int], ref: Forward | None,
               old: Forward | None, num_items: int, scale: float) -> tuple[torch.Tensor, dict]:
    """Loss of the prompts in `prompts` (already scaled for accumulation) and its detached metrics."""
    k, m, g = ep.k, ep.m, ep.group_size
    diag = [i for p in prompts for i in range(p * g, (p + 1) * g)]
    rows, cols = list(diag), [ep.prompt_of(i) for i in diag]
    critic = cfg.use_sami or cfg.ref_metrics  # the MI bound is logged in every ablation, trained only with SAMI
    m_sami = sami_matrices(cfg, m)
    off = ep.off_diagonal(prompts, m_sami) if critic else []
    rows += [ep.completion_index(p, j, s) for p, s, i, j in off]
    cols += [p * k + i for p, s, i, j in off]
    nd = len(diag)
    hidden = layers if (cfg.use_ot or ref is not None) else None
    if cfg.use_sami or not off:  # SAMI trains through the off-diagonal: one forward with the diagonal
        out = forward(model, ep, rows, cols, pad_id, hidden, cfg.temperature)
        off_logp = out.seq_logp[nd:]
    else:  # the critic is only logged: its off-diagonal needs no graph (a forward, no backward)
        out = forward(model, ep, rows[:nd], cols[:nd], pad_id, hidden, cfg.temperature)
        with torch.no_grad():  # the bare module: a DDP wrapper would sync buffers between forward and backward
            off_logp = forward(getattr(model, "module", model), ep, rows[nd:], cols[nd:], pad_id, None,
                               cfg.temperature).seq_logp
    logp, mask = out.logp[:nd], out.mask[:nd]
    adv = ep.advantages[diag].to(logp.device)
    old_logp = old.logp[diag].to(logp.device) if old is not None else None
    ref_logp = ref.logp[diag].to(logp.device) if (ref is not None and cfg.beta > 0) else None
    # compaction may give the reference rows a different width: line them up with ours
    old_logp = _fit(old_logp, logp)
    ref_logp = _fit(ref_logp, logp)
    l_grpo, stats = grpo_loss(logp, old_logp, adv, mask, loss_type=cfg.loss_type,
                              importance_level=cfg.importance_level, eps_low=cfg.epsilon, eps_high=cfg.epsilon_high,
                              ref_logp=ref_logp, beta=cfg.beta, max_completion_length=cfg.max_new_tokens,
                              num_items_in_batch=num_items)
    grpo_scale = 1.0 if cfg.loss_type == "dapo" else scale  # dapo already divides by the whole batch's tokens
    total = l_grpo * grpo_scale
    metrics = {"loss_grpo": float(l_grpo.detach())}
    metrics.update({f"grpo_{key}": float(v) for key, v in stats.items()})
    if ref is not None:
        metrics["kl_ref"] = _k3(logp.detach(), _fit(ref.logp[diag].to(logp.device), logp), mask)

    if critic:
        S = torch.empty(len(prompts) * m_sami, k, k, device=logp.device, dtype=out.seq_logp.dtype)
        base = prompts.start
        for n_i, idx in enumerate(diag):
            p, rem = divmod(idx, g)
            j, s = divmod(rem, m)
            if s < m_sami:
                S[(p - base) * m_sami + s, j, j] = out.seq_logp[n_i]
        for n_i, (p, s, i, j) in enumerate(off):
            S[(p - base) * m_sami + s, i, j] = off_logp[n_i]
        if cfg.use_sami:
            l_sami, _ = sami_loss(S)
            total = total + cfg.lambda_sami * l_sami * scale
            metrics["loss_sami"] = float(l_sami.detach())
        bounds = infonce_bounds(S.detach())
        metrics.update({"mi_sym": bounds["mi_sym"], "mi_row": bounds["mi_row"],
                        "si": bounds["mi_sym"] / bounds["log_k"], "sami_acc_row": bounds["acc_row"]})

    if cfg.use_ot or ref is not None:
        divs, unconverged = [], 0
        for layer in layers:
            if layer not in out.pooled or ref is None or layer not in ref.pooled:
                continue
            x = out.pooled[layer][:nd]
            x = F.normalize(x if cfg.use_ot else x.detach(), dim=-1)
            y = F.normalize(ref.pooled[layer][diag].to(x.device), dim=-1)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SinkhornConvergenceWarning)
                divs.append(sinkhorn_divergence(x, y, eps=cfg.ot_eps, tol=OT_TOL))
            for w in caught:  # count ours, pass any other warning on
                if issubclass(w.category, SinkhornConvergenceWarning):
                    unconverged += 1
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if divs:
            l_ot = torch.stack(divs).mean()
            if cfg.use_ot:
                total = total + cfg.lambda_ot * l_ot * scale
            metrics["ot_divergence"] = float(l_ot.detach())
            metrics["ot_unconverged"] = unconverged
    metrics["loss"] = float(total.detach() / scale)
    return total, metrics


def sami_matrices(cfg, m: int) -> int:
    """How many of a prompt's m = G/K critic matrices get their off-diagonal entries (``--sami-matrices``; 0: all).

    Matrix s takes sample s of every principle's sub-group. Samples within a sub-group are i.i.d., so the first
    m' matrices are an unbiased subsample: the SAMI loss and the MI bound keep their expectation (their variance
    grows) while the extra forward/backward shrinks from G·(K−1) to m'·K·(K−1) sequences per prompt.
    """
    return min(cfg.sami_matrices or m, m)


def _fit(other: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if other is None:
        return None
    width = like.shape[1]
    if other.shape[1] >= width:
        return other[:, :width]
    return F.pad(other, (0, width - other.shape[1]))


def _k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean per-token k3 estimate of KL(π_θ ‖ π_ref): exp(r − p) − (r − p) − 1."""
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    return float((kl * mask).sum() / mask.sum().clamp(min=1))
