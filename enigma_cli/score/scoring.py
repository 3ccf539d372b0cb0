"""Scoring principle sets before training: InfoNCE bounds and the Sufficiency Index (method.md §3-4).

For one prompt x and a set of K principles, the model writes M completions under each principle (principle in the
system prompt). Sample m of every principle forms one within-prompt K×K critic matrix (rows: principles, columns:
completions), so the negatives of each row share the prompt (matched negatives). All K² (principle, completion)
pairs of all matrices, and each completion without a principle, are re-scored in batched forwards. Four critics
come from those scores (`CRITIC_VARIANTS`):

    mean      S[i, j]  = (1/|y_j|) Σ_t log π(y_{j,t} | c_i, x, y_{j,<t})   SAMI's length-normalised critic
    sum       log π(y_j | c_i, x) − log (1/K) Σ_k π(y_j | c_k, x)          the completion's log-likelihood,
              = log K + log p(c_i | y_j, x)                                 centred on the K principles' mixture
    pmi_mean  S[i, j] − (1/|y_j|) log π(y_j | x)                            pointwise (no-principle prompt)
    pmi_sum   log π(y_j | c_i, x) − log π(y_j | x)

The sum critic's column softmax is the model's Bayes posterior over the K principles (uniform prior), so its
column bound is the model's own cross-entropy of naming the principle from the completion; the centring (a column
shift, `enigma_cli.core.infonce.posterior_critic`) leaves that untouched and makes the row bound sound: the raw
log-likelihood's row softmax picks the shortest completion (placebo SI ≈ −0.8 on enigma-tiny).

`--critic` picks which of mean and sum fills the main columns (mi_*, si, si_low, si_high, acc_*; pmi_* from its
pointwise variant); the SI of all four is reported as si_mean, si_sum, pmi_si_mean, pmi_si_sum. The default, sum,
was chosen by measurement (bench/critic_choice.py, whose figures go to BENCHMARKS.md): on enigma-tiny over 3 seeds
it keeps the controls at 0 (the mean critic puts them significantly below 0), orders the shipped sets as their
descriptions say in 27 of 27 comparisons (mean: 24) and puts the real sets at 0.38-0.47 (mean over seeds)
instead of 0.017-0.028.
Each variant's SI interval is a percentile bootstrap over prompts (each prompt's SI is the mean over its M
matrices). Whether a row can be trusted is `enigma_cli.score.trust`'s business.

Sampling: each (principle, question) prompt draws from its own seed, a hash of ``--seed`` and the prompt's text
(`rollout.prompt_seeds`), so a completion depends on its principle, question and sample index and not on the
other principles of the set. A set's scores are therefore exactly the rows and columns of that set cut out of a
larger pool's (`enigma_cli.score.pool`), and `set_score` turns either into the same report row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core import bootstrap_si, infonce_bounds, parse_completion, pointwise_critic, sufficiency_index
from ..core.infonce import posterior_critic, sum_critic
from ..datasets import Example
from ..models.rollout import generate, prompt_seeds, score_pairs
from ..principles import PrincipleSet
from ..prompts import render_prompt
from . import trust
from .config import CRITICS, SATURATION, ScoreConfig

CRITIC_VARIANTS = ("mean", "sum", "pmi_mean", "pmi_sum")
Interval = Callable[[torch.Tensor], tuple[float, float]]  # per-prompt values [N] → (low, high)
SI_COLUMNS = {"mean": "si_mean", "sum": "si_sum", "pmi_mean": "pmi_si_mean", "pmi_sum": "pmi_si_sum"}
__all__ = ["CRITICS", "CRITIC_VARIANTS", "SATURATION", "CriticScores", "SetScore", "critic_matrices",
           "score_set", "set_score"]


@dataclass
class CriticScores:
    """The raw scores of one set: mean-token critic, principle-free marginal, completion lengths and texts.

    ``mean`` is [N·M, K, K] (matrix b = prompt b // M, sample b % M), ``marginal`` and ``lengths`` [N·M, K];
    ``texts`` (N·K·M) are in (prompt, principle, sample) order.
    """

    mean: torch.Tensor
    marginal: torch.Tensor
    lengths: torch.Tensor
    texts: list[str]

    def matrix(self, name: str) -> torch.Tensor:
        """One critic matrix of `CRITIC_VARIANTS` (module docstring), [N·M, K, K]."""
        if name == "mean":
            return self.mean
        if name == "pmi_mean":
            return pointwise_critic(self.mean, self.marginal)
        total = sum_critic(self.mean, self.lengths)
        if name == "sum":
            return posterior_critic(total)  # centred on the mixture of these K principles, whichever they are
        return pointwise_critic(total, self.marginal * self.lengths.to(self.marginal.dtype))

    def matrices(self) -> dict[str, torch.Tensor]:
        """The four critic matrices of `CRITIC_VARIANTS`, each [N·M, K, K]."""
        return {name: self.matrix(name) for name in CRITIC_VARIANTS}


@dataclass
class SetScore:
    """Everything measured for one principle set.

    ``variants`` maps each of `CRITIC_VARIANTS` to its statistics (mi_*, acc_*, si, si_low, si_high,
    per_principle); ``trusted`` is False when a blocking finding of `trust` applies (``row["reason"]`` says why).
    """

    name: str
    k: int
    row: dict
    per_principle: list[dict] = field(default_factory=list)
    saturated: bool = False
    trusted: bool = True
    variants: dict[str, dict] = field(default_factory=dict)


def critic_matrices(lm, pset: PrincipleSet, examples: list[Example], cfg: ScoreConfig, progress=None) -> CriticScores:
    """Generate, then fill the critic tensors (see `CriticScores`)."""
    tok, model = lm.tokenizer, lm.model
    n, k, m = len(examples), pset.k, cfg.samples
    prompts = [render_prompt(tok, p.text, ex.prompt_text) for ex in examples for p in pset.principles]
    gen = generate(model, tok, prompts, num_samples=m, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, seed=prompt_seeds(cfg.seed, prompts), batch_size=cfg.batch_size)
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
    bare = [render_prompt(tok, None, ex.prompt_text) for ex in examples]
    order = [(q * k + j) * m + s for q in range(n) for s in range(m) for j in range(k)]
    marg_prompts = [bare[q] for q in range(n) for s in range(m) for j in range(k)]
    marg_completions = [gen.completion_ids[i] for i in order]
    marginal = score_pairs(model, tok, marg_prompts, marg_completions, batch_size=cfg.batch_size).view(n * m, k)
    lengths = torch.tensor([len(gen.completion_ids[i]) for i in order], dtype=torch.float32).view(n * m, k)
    if progress:
        progress()
    return CriticScores(S, marginal.float(), lengths, list(gen.texts))


def _variant(S: torch.Tensor, n: int, m: int, cfg: ScoreConfig, interval: Interval | None = None) -> dict:
    """Bounds, SI, its interval over prompts, and the per-principle and per-prompt SI of one critic matrix.

    The interval is the 95% percentile bootstrap unless `interval` (per-prompt SI → (low, high)) replaces it
    (`--until-decided`'s adjusted level, `sequential.t_interval`). The bootstrap's resamples depend only on
    (prompts, ``cfg.bootstrap``, ``cfg.seed``), so every set scored on the same prompts is resampled alike:
    ``per_prompt`` differences give paired intervals."""
    bounds = infonce_bounds(S)
    si = sufficiency_index(S)
    per_prompt = torch.as_tensor(si["per_prompt"], dtype=torch.float64).view(n, m).mean(dim=1)
    if interval is None:
        low, high = bootstrap_si(per_prompt, n_boot=cfg.bootstrap, seed=cfg.seed)
    else:
        low, high = interval(per_prompt)
    return {**{key: bounds[key] for key in ("mi_row", "mi_col", "mi_sym", "acc_row", "acc_col")},
            "si": float(si["si"]), "si_low": float(low), "si_high": float(high),
            "per_principle": [float(v) for v in si["per_principle"]], "per_prompt": per_prompt}


def _format_rates(texts: list[str], n: int, k: int, m: int) -> tuple[float, list[float]]:
    """Strict-format rate of all completions and of each principle's (texts in (prompt, principle, sample) order)."""
    strict = [parse_completion(t).strict for t in texts]
    per = [sum(strict[(q * k + j) * m + s] for q in range(n) for s in range(m)) / (n * m) for j in range(k)]
    return sum(strict) / max(len(strict), 1), per


def score_set(lm, pset: PrincipleSet, examples: list[Example], cfg: ScoreConfig, progress=None,
              checks: list[trust.PrincipleCheck] | None = None) -> SetScore:
    """One row of the report for `pset` (and one per principle), with its trust findings.

    `checks` are the pre-generation findings of `trust.check_principles` (readability), if any.
    """
    with torch.no_grad():
        scores = critic_matrices(lm, pset, examples, cfg, progress)
    return set_score(pset, scores, cfg, checks)


def set_score(pset: PrincipleSet, scores: CriticScores, cfg: ScoreConfig,
              checks: list[trust.PrincipleCheck] | None = None, interval: Interval | None = None,
              level: float = 0.95) -> SetScore:
    """The report row of `pset` (and its per-principle rows) from its scores: `critic_matrices`' for the set, or
    the set's rows and columns of a pool's (`enigma_cli.score.pool.PoolScores.subset`). `interval` and its
    `level` replace the 95% bootstrap interval (`_variant`)."""
    k, m = pset.k, cfg.samples
    n = scores.mean.shape[0] // m
    variants = {name: _variant(S, n, m, cfg, interval) for name, S in scores.matrices().items()}
    chosen, pmi = variants[cfg.critic], variants[f"pmi_{cfg.critic}"]
    format_rate, principle_format = _format_rates(scores.texts, n, k, m)
    log_k = math.log(k)
    row = {
        "set": pset.name,
        "k": k,
        "log_k": log_k,
        "critic": cfg.critic,
        **{key: chosen[key] for key in ("mi_row", "mi_col", "mi_sym", "si", "si_low", "si_high", "acc_row",
                                        "acc_col")},
        "pmi_mi_row": pmi["mi_row"],
        "pmi_mi_sym": pmi["mi_sym"],
        "pmi_si": pmi["si"],
        **{SI_COLUMNS[name]: variants[name]["si"] for name in CRITIC_VARIANTS},
        "format_rate": format_rate,
        "prompts": n,
        "samples": m,
    }
    found = [c.findings for c in checks] if checks else [()] * k
    set_format = trust.format_finding(format_rate, cfg.min_format_rate)
    per_principle, principle_findings = [], []
    for j, p in enumerate(pset.principles):
        layout = trust.format_finding(principle_format[j], cfg.min_format_rate, p.id)
        own = [f for f in (layout, *found[j]) if f is not None]
        # the set row names a principle's layout only when the set as a whole passes
        principle_findings += [f for f in own if f is not layout or set_format is None]
        trusted, reason = trust.join(own)
        per_principle.append({
            "set": pset.name, "principle": p.id, "k": k, "log_k": log_k, "critic": cfg.critic,
            "si": chosen["per_principle"][j],
            **{SI_COLUMNS[name]: variants[name]["per_principle"][j] for name in CRITIC_VARIANTS},
            "format_rate": principle_format[j], "prompts": n, "samples": m, "trusted": trusted, "reason": reason,
        })
    saturation = trust.saturation_finding(row["mi_sym"], log_k, cfg.saturation)
    findings = [f for f in (set_format, trust.interval_finding(row["si_low"], row["si_high"], level), saturation) if f]
    row["trusted"], row["reason"] = trust.join(findings + principle_findings)
    return SetScore(pset.name, k, row, per_principle, saturated=saturation is not None, trusted=row["trusted"],
                    variants=variants)
