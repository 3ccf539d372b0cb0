"""SAMI-style symmetric InfoNCE, InfoNCE mutual-information bounds and the Sufficiency Index.

The maths (method.md §3-4)
--------------------------
For one prompt x, K principles c_1..c_K and completions y_1..y_K (y_j generated under c_j), the critic matrix is

    S[i, j] = (1/|y_j|) Σ_t log π(y_{j,t} | c_i, x, y_{j,<t})

rows are principles, columns completions, and the diagonal holds the positive pairs. Batched matrices have shape
[B, K, K], one matrix per prompt (matched negatives: a matrix never mixes prompts). The two cross-entropies are

    ℓrow_i = −log softmax(S[i, :])[i] = logsumexp_j S[i, j] − S[i, i]      (principle i picks its completion)
    ℓcol_j = −log softmax(S[:, j])[j] = logsumexp_i S[i, j] − S[j, j]      (completion j picks its principle)
    L_row  = mean_{b,i} ℓrow_i     L_col = mean_{b,j} ℓcol_j     L_SAMI = ½ (L_row + L_col)

and the InfoNCE estimates of I(C; Y | X), in nats, are

    Î_row = log K − L_row     Î_col = log K − L_col     Î_sym = log K − ½ (L_row + L_col).

Each Î is a lower bound on the mutual information in expectation [1, 2], and since every cross-entropy is ≥ 0 it
can never exceed log K: compare principle sets only at equal K. For the row (column) softmax the optimal critic
is log p(y|c) − log p(y) plus any function of the row (column) index [2]; the language-model score log π(y|c) is
therefore optimal for the columns only, which motivates the pointwise critic below.

References
----------
.. [1] A. van den Oord, Y. Li, O. Vinyals, "Representation Learning with Contrastive Predictive Coding",
   arXiv:1807.03748, 2018.
.. [2] B. Poole, S. Ozair, A. van den Oord, A. Alemi, G. Tucker, "On Variational Bounds of Mutual Information",
   ICML 2019.
.. [3] J.-P. Fränken, E. Zelikman, R. Rafailov, K. Gandhi, T. Gerstenberg, N. Goodman, "Self-Supervised Alignment
   with Mutual Information: Learning to Follow Principles without Preference Labels" (SAMI), arXiv:2404.14313, 2024.

Choices and deviations
----------------------
- Mean-token (length-normalised) log-probabilities as the critic, as in SAMI [3]; the functions here accept any S.
- **Matched negatives and the row bound (measured)**: each matrix holds one completion per principle, so the
  negatives of row i come from the other K − 1 principles rather than from the marginal p(y | x). The proof of
  the InfoNCE bound [1, 2] needs marginal negatives; with matched ones Î_row can exceed I(C; Y | X) (a unigram
  toy in test_infonce: +0.06 nats with the optimal critic). The column candidates are all K principles, the whole
  support of the uniform prior, so the column softmax of any critic is a variational posterior and Î_col is a
  Barber–Agakov lower bound whatever S is; Î_sym averages a sound bound with an estimate.
- The loss averages the row and column cross-entropies over rows and over prompts (each prompt weighs the same).
- Top-1 accuracy breaks ties at random in expectation: a row whose maximum is shared by m entries, one of them the
  diagonal, counts 1/m. A constant S thus scores chance (1/K) instead of 0 or 1.
- **Pointwise critic (choice)**: S'[i, j] = S[i, j] − log π(y_j | x). Subtracting a function of the column leaves
  every column softmax, hence L_col, unchanged, and removes the row bias towards completions that are likely
  whatever the principle.
- **Sufficiency Index (choice)**: SI = Î_sym / log K ∈ (−∞, 1]; 1 when each completion identifies its principle
  perfectly, 0 at chance. The per-principle SI_i uses the row-i and column-i cross-entropies, so the mean of the
  per-principle values is SI exactly. Confidence intervals come from a percentile bootstrap over prompts.
- Everything is computed in at least float32 (bf16/fp16 inputs are upcast); gradients flow through the cast.
- **Sum-token critic (choice, method.md §4)**: :func:`sum_critic` turns the mean-token matrix into the completion's
  full log-likelihood, S_sum[i, j] = |y_j| · S[i, j] = log π(y_j | c_i, x). With a uniform prior over the K
  principles, Bayes' rule gives p(c_i | y_j, x) = π(y_j | c_i, x) / Σ_k π(y_j | c_k, x) = softmax_i S_sum[i, j]
  (:func:`principle_posterior`), so ℓcol_j is the model's own cross-entropy of naming the principle from the
  completion and Î_col = log K − L_col is the Barber–Agakov bound with the model's exact posterior: when the
  completions are sampled from π itself at temperature 1 its expectation is I(C; Y | X) (a prefix's, for
  completions cut at the token limit). The row softmax has no such reading: log π(y | c) lacks the −log p(y)
  term of the optimal row critic, and its sum over tokens grows with the completion's length, so the row bound
  of S_sum rewards whichever completion is shortest (on enigma-tiny the placebo set scores SI ≈ −0.8 with it).
- **Posterior critic (choice)**: :func:`posterior_critic` centres each column on the model's own mixture over the
  K principles, S_post[i, j] = S[i, j] − log((1/K) Σ_k exp S[k, j]); for S = S_sum this is
  log π(y_j | c_i, x) − log π̄(y_j | x) with π̄ = (1/K) Σ_k π(· | c_k, x), the marginal of the completions that
  the K principles generate, i.e. the pointwise critic with the exact marginal, which [2] shows is the optimal
  critic for the row softmax too. Being a column shift it leaves every column softmax (the posterior), Î_col and
  acc_col unchanged, and it costs no forward pass. `score-principles --critic sum` uses it; the pointwise
  critic with the principle-free prompt's log π(y | x) (above) is reported beside it. Which critic fills the
  SI by default was measured (bench/critic_choice.py); SAMI's training loss keeps the mean-token form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .widen import widen

__all__ = [
    "bootstrap_si",
    "infonce_bounds",
    "pointwise_critic",
    "posterior_critic",
    "principle_posterior",
    "sami_loss",
    "sufficiency_index",
    "sum_critic",
]


def _as_batched(S: torch.Tensor) -> torch.Tensor:
    """Validate a critic matrix and return it as a float tensor of shape [B, K, K]."""
    if not isinstance(S, torch.Tensor):
        S = torch.as_tensor(S)
    if S.dim() not in (2, 3) or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"critic matrix must have shape [K, K] or [B, K, K], got {tuple(S.shape)}")
    if S.shape[-1] < 2:
        raise ValueError(f"InfoNCE needs K >= 2 principles per prompt, got K={S.shape[-1]}")
    if S.dim() == 2:
        S = S.unsqueeze(0)
    if S.shape[0] < 1:
        raise ValueError("critic matrix has an empty batch dimension")
    if not torch.is_floating_point(S) or S.dtype in (torch.float16, torch.bfloat16):
        S = S.float()
    return S


def _cross_entropies(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row and per-column cross-entropies, each of shape [B, K], for batched S of shape [B, K, K].

    ``ℓrow[b, i] = logsumexp_j S[b, i, j] − S[b, i, i]`` and ``ℓcol[b, j] = logsumexp_i S[b, i, j] − S[b, j, j]``.
    Both are ≥ 0 in floating point too, since logsumexp is computed as max + log(Σ exp(· − max)).
    """
    diag = torch.diagonal(S, dim1=-2, dim2=-1)
    ce_row = torch.logsumexp(S, dim=-1) - diag
    ce_col = torch.logsumexp(S, dim=-2) - diag
    return ce_row, ce_col


def _top1(S: torch.Tensor, dim: int) -> torch.Tensor:
    """Expected top-1 accuracy of the diagonal along ``dim`` with random tie-breaking, shape [B, K]."""
    diag = torch.diagonal(S, dim1=-2, dim2=-1)
    best = S.amax(dim=dim)
    n_best = (S == best.unsqueeze(dim)).sum(dim=dim).clamp_min(1)
    return (diag == best).to(S.dtype) / n_best.to(S.dtype)


def _summary(S: torch.Tensor) -> dict[str, float]:
    """All InfoNCE statistics of batched S as Python floats (no gradient)."""
    with torch.no_grad():
        S = S.detach()
        k = S.shape[-1]
        log_k = math.log(k)
        ce_row, ce_col = _cross_entropies(S)
        loss_row = ce_row.mean().item()
        loss_col = ce_col.mean().item()
        return {
            "loss_row": loss_row,
            "loss_col": loss_col,
            "mi_row": log_k - loss_row,
            "mi_col": log_k - loss_col,
            "mi_sym": log_k - 0.5 * (loss_row + loss_col),
            "log_k": log_k,
            "k": float(k),
            "acc_row": _top1(S, dim=-1).mean().item(),
            "acc_col": _top1(S, dim=-2).mean().item(),
        }


def sami_loss(S: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    r"""Symmetric InfoNCE loss of SAMI [3] with its statistics.

    .. math::

        L = \tfrac12\Big[\operatorname{mean}_{b,i}\big(\log\textstyle\sum_j e^{S_{bij}} - S_{bii}\big)
          + \operatorname{mean}_{b,j}\big(\log\textstyle\sum_i e^{S_{bij}} - S_{bjj}\big)\Big]

    Parameters
    ----------
    S : torch.Tensor
        Critic matrix of shape [K, K] or [B, K, K]; ``S[..., i, j]`` is the mean token log-prob of completion j
        under principle i. K ≥ 2.

    Returns
    -------
    loss : torch.Tensor
        Scalar, differentiable with respect to S.
    stats : dict of str to float
        Detached ``loss_row, loss_col, mi_row, mi_col, mi_sym, log_k, k, acc_row, acc_col`` (see
        :func:`infonce_bounds`).

    Raises
    ------
    ValueError
        If S is not square in its last two dimensions or K < 2.
    """
    Sb = _as_batched(S)
    ce_row, ce_col = _cross_entropies(Sb)
    loss = 0.5 * (ce_row.mean() + ce_col.mean())
    return loss, _summary(Sb)


def infonce_bounds(S: torch.Tensor) -> dict[str, float]:
    r"""InfoNCE lower bounds on I(C; Y | X) in nats, with K, log K and top-1 accuracies.

    .. math::

        \hat I_{row} = \log K - L_{row}, \quad \hat I_{col} = \log K - L_{col}, \quad
        \hat I_{sym} = \log K - \tfrac12 (L_{row} + L_{col})

    Every value is ≤ log K.

    Parameters
    ----------
    S : torch.Tensor
        Critic matrix [K, K] or [B, K, K], K ≥ 2.

    Returns
    -------
    dict of str to float
        ``mi_row, mi_col, mi_sym, log_k, k, acc_row, acc_col, loss_row, loss_col``. ``acc_row`` is the fraction of
        rows whose maximum is the diagonal (principle → completion), ``acc_col`` the same for columns; ties count
        1/m for an m-way tie.

    Raises
    ------
    ValueError
        If S is not square in its last two dimensions or K < 2.
    """
    return _summary(_as_batched(S))


def pointwise_critic(S: torch.Tensor, marginal_logp: torch.Tensor) -> torch.Tensor:
    r"""Pointwise-MI critic: subtract each completion's principle-free log-probability.

    .. math::

        S'_{\dots ij} = S_{\dots ij} - \log \pi(y_j \mid x)

    where ``marginal_logp[..., j]`` is the mean token log-prob of completion j with no principle in the prompt.
    Because the subtracted term depends on the column only, each column softmax — and so ``L_col``, ``Î_col``
    and ``acc_col`` — is unchanged; ``L_row`` changes, losing the bias towards completions that are likely
    whatever the principle. S' estimates log p(y|c) − log p(y), the critic that is optimal for both directions.

    Parameters
    ----------
    S : torch.Tensor
        Critic matrix [K, K] or [B, K, K].
    marginal_logp : torch.Tensor
        Shape [K] (with S [K, K]) or [B, K] (with S [B, K, K]).

    Returns
    -------
    torch.Tensor
        S' with the shape of S (differentiable in both inputs).
    """
    S, marginal_logp = widen(S), widen(torch.as_tensor(marginal_logp, device=S.device))
    if marginal_logp.shape != S.shape[:-2] + S.shape[-1:]:
        raise ValueError(
            f"marginal_logp must have shape {tuple(S.shape[:-2] + S.shape[-1:])} to match S of shape "
            f"{tuple(S.shape)}, got {tuple(marginal_logp.shape)}"
        )
    return S - marginal_logp.unsqueeze(-2)


def sum_critic(S: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    r"""Sum-token critic from the mean-token one: each column scaled by its completion's length.

    .. math::

        S^{sum}_{\dots ij} = |y_j| \, S_{\dots ij} = \sum_t \log \pi(y_{j,t} \mid c_i, x, y_{j,<t})

    The same scaling turns a mean-token marginal ``[..., K]`` into the summed one: ``marginal * lengths``.

    Parameters
    ----------
    S : torch.Tensor
        Mean-token critic matrix [K, K] or [B, K, K].
    lengths : torch.Tensor
        Completion lengths in tokens, shape [K] (with S [K, K]) or [B, K]; ``lengths[..., j]`` is |y_j|. An empty
        completion (length 0) gets a zero column, which every principle explains equally well.

    Returns
    -------
    torch.Tensor
        S_sum with the shape and floating dtype of S (differentiable in S).
    """
    S, lengths = widen(S), torch.as_tensor(lengths, device=S.device)
    if lengths.shape != S.shape[:-2] + S.shape[-1:]:
        raise ValueError(
            f"lengths must have shape {tuple(S.shape[:-2] + S.shape[-1:])} to match S of shape "
            f"{tuple(S.shape)}, got {tuple(lengths.shape)}"
        )
    if (lengths < 0).any():
        raise ValueError("completion lengths must be >= 0")
    return S * lengths.to(S.dtype).unsqueeze(-2)


def posterior_critic(S: torch.Tensor) -> torch.Tensor:
    r"""Centre each column on the log-mean-exp of its K entries: log K + the log of the column softmax.

    .. math::

        S^{post}_{\dots ij} = S_{\dots ij} - \log \tfrac1K \textstyle\sum_k e^{S_{\dots kj}}
        = \log K + \log p(c_i \mid y_j, x) \quad (S = S^{sum})

    For the sum-token critic this is log π(y_j | c_i, x) − log π̄(y_j | x), the pointwise MI against the mixture
    π̄ of the K principles. The subtracted term depends on the column only: column softmaxes, L_col, Î_col and
    acc_col are those of S; the row bound loses the bias towards completions that are likely under every
    principle (for S_sum: the shortest ones). A column whose entries are all equal becomes all zeros.

    Parameters
    ----------
    S : torch.Tensor
        Critic matrix [K, K] or [B, K, K], K ≥ 2.

    Returns
    -------
    torch.Tensor
        S_post with the shape of S (float32 or wider; differentiable in S).
    """
    Sb = _as_batched(S)
    centred = Sb - torch.logsumexp(Sb, dim=-2, keepdim=True) + math.log(Sb.shape[-1])
    return centred.reshape(S.shape)


def principle_posterior(S: torch.Tensor) -> torch.Tensor:
    r"""Column softmax: with the sum-token critic, the posterior over principles of each completion.

    .. math::

        P_{\dots ij} = \frac{e^{S_{\dots ij}}}{\sum_k e^{S_{\dots kj}}}
        = p(c_i \mid y_j, x) \quad \text{for } S = S^{sum} \text{ and a uniform prior over the K principles.}

    Each column sums to 1; ``−log P[..., j, j]`` is ℓcol_j of :func:`infonce_bounds`.
    """
    return torch.softmax(_as_batched(S), dim=-2).reshape(S.shape)


def sufficiency_index(S: torch.Tensor) -> dict[str, object]:
    r"""Sufficiency Index (choice, method.md §4): the symmetric InfoNCE bound as a fraction of log K.

    .. math::

        SI = \frac{\hat I_{sym}}{\log K}, \qquad
        SI_i = \frac{\log K - \tfrac12 (\bar\ell^{row}_i + \bar\ell^{col}_i)}{\log K}, \qquad
        SI_b = \frac{\log K - \tfrac12 \operatorname{mean}_i(\ell^{row}_{bi} + \ell^{col}_{bi})}{\log K}

    with ℓrow_{bi}, ℓcol_{bi} the row-i and column-i cross-entropies of prompt b and the bar the mean over prompts,
    so that ``mean_i SI_i = mean_b SI_b = SI`` exactly. SI ≤ 1, with 1 for perfect identification and 0 at chance.

    Parameters
    ----------
    S : torch.Tensor
        Critic matrix [K, K] or [B, K, K], K ≥ 2.

    Returns
    -------
    dict
        ``si`` (float), ``per_principle`` (float64 tensor [K]), ``per_prompt`` (float64 tensor [B], the input for
        :func:`bootstrap_si`), plus ``mi_sym``, ``log_k`` and ``k`` (floats).
    """
    Sb = _as_batched(S)
    with torch.no_grad():
        ce_row, ce_col = _cross_entropies(Sb.detach().double())
        k = Sb.shape[-1]
        log_k = math.log(k)
        pair = 0.5 * (ce_row + ce_col)  # [B, K]
        per_principle = ((log_k - pair.mean(dim=0)) / log_k).cpu()
        per_prompt = ((log_k - pair.mean(dim=1)) / log_k).cpu()
        mi_sym = log_k - pair.mean().item()
    return {
        "si": mi_sym / log_k,
        "per_principle": per_principle,
        "per_prompt": per_prompt,
        "mi_sym": mi_sym,
        "log_k": log_k,
        "k": float(k),
    }


def bootstrap_si(
    per_prompt_si: torch.Tensor | Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    r"""Percentile-bootstrap confidence interval for the mean SI over prompts.

    Draws ``n_boot`` resamples of the B prompts with replacement (a seeded ``torch.Generator``, so the result is
    deterministic), takes each resample's mean, and returns its ``(1 − level)/2`` and ``(1 + level)/2`` quantiles.

    Parameters
    ----------
    per_prompt_si : torch.Tensor or sequence of float
        Per-prompt SI values, shape [B] (``sufficiency_index(S)["per_prompt"]``).
    n_boot : int
        Number of bootstrap resamples (≥ 1).
    seed : int
        Seed of the resampling generator.
    level : float
        Confidence level in (0, 1).

    Returns
    -------
    (low, high) : tuple of float
        With a single prompt the interval collapses to its value.
    """
    x = torch.as_tensor(per_prompt_si, dtype=torch.float64).detach().cpu().reshape(-1)
    if x.numel() == 0:
        raise ValueError("bootstrap_si needs at least one per-prompt value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    gen = torch.Generator().manual_seed(int(seed))
    n = x.numel()
    means = torch.empty(n_boot, dtype=torch.float64)
    chunk = max(1, (1 << 22) // n)  # bound the index matrix to ~4M entries
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = torch.randint(0, n, (m, n), generator=gen)
        means[start : start + m] = x[idx].mean(dim=1)
    alpha = (1.0 - level) / 2.0
    q = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])
