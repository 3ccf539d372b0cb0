"""Scoring principle sets before training: InfoNCE bounds and the Sufficiency Index (method.md §3-4).

For one prompt x and a set of K principles, the model writes M completions under each principle (principle in the
system prompt). Sample m of every principle forms one within-prompt K×K critic matrix

    S[i, j] = mean-token log π(y_{j,m} | c_i, x)         rows: principles, columns: completions

so the negatives of each row share the prompt (matched negatives). All K² (principle, completion) pairs of all
matrices are re-scored in batched forwards. The matrices of a set go to `enigma_cli.core.infonce_bounds` and
`sufficiency_index`; the pointwise-MI variant subtracts each completion's mean-token log-prob without a principle.
The SI interval is a percentile bootstrap over prompts (each prompt's SI is the mean over its M matrices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core import bootstrap_si, infonce_bounds, parse_completion, pointwise_critic, sufficiency_index
from ..datasets import Example
from ..models.rollout import generate, score_pairs
from ..principles import PrincipleSet
from ..prompts import render_prompt
from .config import ScoreConfig

SATURATION = 0.95  # warn when mi_sym reaches this fraction of log K: the bound cannot rank sets any more


@dataclass
class SetScore:
    """Everything measured for one principle set."""

    name: str
    k: int
    row: dict
    per_principle: list[dict] = field(default_factory=list)
    saturated: bool = False


def critic_matrices(lm, pset: PrincipleSet, examples: list[Example], cfg: ScoreConfig, progress=None):
    """Generate, then fill the critic tensors.

    Returns (S [N·M, K, K], marginal [N·M, K], texts (N·K·M) in (prompt, principle, sample) order).
    """
    tok, model = lm.tokenizer, lm.model
    n, k, m = len(examples), pset.k, cfg.samples
    prompts = [render_prompt(tok, p.text, ex.question) for ex in examples for p in pset.principles]
    gen = generate(model, tok, prompts, num_samples=m, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)
    if progress:
        progress()
    # completion (prompt q, principle j, sample s) sits at index (q*k + j)*m + s
    pair_prompts, pair_completions = [], []
    for q in range(n):
        for s in range(m):
            for i in range(k):
                for j in range(k):
                    pair_prompts.append(prompts[q * k + i])
                    pair_completions.append(gen.completion_ids[(q * k + j) * m + s])
    scores = score_pairs(model, tok, pair_prompts, pair_completions, batch_size=cfg.batch_size)
    S = scores.view(n * m, k, k).float()
    bare = [render_prompt(tok, None, ex.question) for ex in examples]
    marg_prompts = [bare[q] for q in range(n) for s in range(m) for j in range(k)]
    marg_completions = [gen.completion_ids[(q * k + j) * m + s] for q in range(n) for s in range(m) for j in range(k)]
    marginal = score_pairs(model, tok, marg_prompts, marg_completions, batch_size=cfg.batch_size).view(n * m, k)
    if progress:
        progress()
    return S, marginal.float(), gen.texts


def score_set(lm, pset: PrincipleSet, examples: list[Example], cfg: ScoreConfig, progress=None) -> SetScore:
    """One row of the report for `pset` (and one per principle)."""
    n, k, m = len(examples), pset.k, cfg.samples
    with torch.no_grad():
        S, marginal, texts = critic_matrices(lm, pset, examples, cfg, progress)
    bounds = infonce_bounds(S)
    si = sufficiency_index(S)
    pmi_bounds = infonce_bounds(pointwise_critic(S, marginal))
    per_prompt = torch.as_tensor(si["per_prompt"], dtype=torch.float64).view(n, m).mean(dim=1)
    low, high = bootstrap_si(per_prompt, n_boot=cfg.bootstrap, seed=cfg.seed)
    format_rate = sum(parse_completion(t).strict for t in texts) / max(len(texts), 1)
    log_k = math.log(k)
    row = {
        "set": pset.name,
        "k": k,
        "log_k": log_k,
        "mi_row": bounds["mi_row"],
        "mi_col": bounds["mi_col"],
        "mi_sym": bounds["mi_sym"],
        "si": float(si["si"]),
        "si_low": float(low),
        "si_high": float(high),
        "acc_row": bounds["acc_row"],
        "acc_col": bounds["acc_col"],
        "pmi_mi_row": pmi_bounds["mi_row"],
        "pmi_mi_sym": pmi_bounds["mi_sym"],
        "pmi_si": pmi_bounds["mi_sym"] / log_k,
        "format_rate": format_rate,
        "prompts": n,
        "samples": m,
    }
    per_principle = [
        {"set": pset.name, "principle": p.id, "k": k, "log_k": log_k, "si": float(v), "prompts": n, "samples": m}
        for p, v in zip(pset.principles, si["per_principle"])
    ]
    return SetScore(pset.name, k, row, per_principle, saturated=bounds["mi_sym"] >= SATURATION * log_k)
