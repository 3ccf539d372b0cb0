"""Principle pools: score N candidate principles once, then every K-subset without another model call (issue 24).

For one prompt x and sample index m the model writes one completion under each of the N principles, and every
completion is read under every principle: the N×N mean-token critic S[i, j] = (1/|y_j|) log π(y_j | c_i, x), with
each completion's principle-free marginal and length (`scoring.critic_matrices` on the whole pool as one set).
A K-subset's critic is the sub-matrix of its rows and columns,

    S_A = S[A, A],   marginal_A = marginal[A],   lengths_A = lengths[A]

and every critic variant follows from it as for a set (`scoring.CriticScores.matrix`); the sum critic's
centring on the mixture, log (1/K) Σ_{k∈A} π(y_j | c_k, x), is recomputed over the subset's K rows. Since each
completion's sampling depends only on its prompt text (principle and question) and sample index
(`rollout.prompt_seeds`), a subset's scores are exactly those of `score-principles` on the subset as a set, and
`scoring.set_score` turns them into the same report row. Cost: N·M completions and N² reads per prompt and sample,
against C(N, K)·K·M completions and C(N, K)·K² reads for scoring every subset separately.

The bootstrap over prompts draws its resamples from (prompts, resamples, seed) alone (`core.bootstrap_si`), so
every subset is resampled with the same prompt indices and the difference of two subsets' per-prompt SI gives a
paired interval (`lead`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core import bootstrap_si, sufficiency_index
from ..datasets import Example
from ..errors import InputError
from ..principle_pool import as_set
from ..principles import Principle
from .choose import Search, search
from .config import ScoreConfig
from .report import rank
from .scoring import CriticScores, SetScore, critic_matrices, set_score
from .trust import PrincipleCheck, check_principles

#: subsets whose SI is computed at once when many are ranked (bounds the stacked tensors)
CHUNK = 2048


@dataclass
class PoolScores:
    """The N×N scores of a pool (`scoring.CriticScores` of the pool as one set) and its principles, in pool order."""

    principles: tuple[Principle, ...]
    scores: CriticScores
    samples: int

    @property
    def size(self) -> int:
        return len(self.principles)

    @property
    def prompts(self) -> int:
        return self.scores.mean.shape[0] // self.samples

    def subset(self, ids: Sequence[int]) -> CriticScores:
        """The scores of the principles `ids` (pool indices, in that order) as a set: rows and columns of S."""
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        n, m, size = self.prompts, self.samples, self.size
        texts = [self.scores.texts[(q * size + j) * m + s] for q in range(n) for j in ids for s in range(m)]
        return CriticScores(self.scores.mean[:, idx][:, :, idx], self.scores.marginal[:, idx],
                            self.scores.lengths[:, idx], texts)

    def stacked(self, combos: Sequence[Sequence[int]]) -> CriticScores:
        """The scores of several K-subsets stacked along the matrix axis ([S·N·M, K, K], subset-major; no texts)."""
        idx = torch.as_tensor([list(c) for c in combos], dtype=torch.long)  # [S, K]
        b = self.scores.mean.shape[0]
        k = idx.shape[1]
        mean = self.scores.mean[:, idx[:, :, None], idx[:, None, :]].transpose(0, 1).reshape(-1, k, k)
        marginal = self.scores.marginal[:, idx].transpose(0, 1).reshape(len(idx) * b, k)
        lengths = self.scores.lengths[:, idx].transpose(0, 1).reshape(len(idx) * b, k)
        return CriticScores(mean, marginal, lengths, [])

    def per_prompt_si(self, combos: Sequence[Sequence[int]], critic: str) -> torch.Tensor:
        """Per-prompt SI ([S, prompts], float64) of each subset under `critic`: each prompt's mean over its M
        matrices, as `scoring.set_score` bootstraps it; the mean over prompts is the subset's SI."""
        out = []
        for start in range(0, len(combos), CHUNK):
            part = combos[start : start + CHUNK]
            si = sufficiency_index(self.stacked(part).matrix(critic))["per_prompt"]
            out.append(torch.as_tensor(si, dtype=torch.float64).view(len(part), self.prompts, self.samples).mean(-1))
        return torch.cat(out) if out else torch.zeros(0, self.prompts, dtype=torch.float64)

    def set_score(self, ids: Sequence[int], cfg: ScoreConfig, checks: list[PrincipleCheck] | None = None) -> SetScore:
        """The report row of the subset `ids`, named by its principle ids joined with '+' (`principle_pool.as_set`)."""
        pset = as_set(tuple(self.principles[i] for i in ids))
        return set_score(pset, self.subset(ids), cfg, [checks[i] for i in ids] if checks else None)


def score_pool(lm, principles: Sequence[Principle], examples: list[Example], cfg: ScoreConfig,
               progress=None) -> PoolScores:
    """Generate under every principle of the pool and read every completion under every principle (one pass)."""
    with torch.no_grad():
        scores = critic_matrices(lm, as_set(tuple(principles)), examples, cfg, progress)
    return PoolScores(tuple(principles), scores, cfg.samples)


def readable_members(lm, members: Sequence[Principle], questions: list[str], k: int
                     ) -> tuple[list[Principle], list[PrincipleCheck], list[str]]:
    """The pool's members the model can read, their checks (`trust.check_principles`), and one sentence per member
    left out; refuses when K or fewer remain, since no K-subset could be formed."""
    checks = check_principles(lm, as_set(tuple(members)), questions)
    keep = [i for i, c in enumerate(checks) if not any(f.blocks for f in c.findings)]
    left_out = [f.text for i, c in enumerate(checks) if i not in keep for f in c.findings if f.blocks]
    if len(keep) <= k:
        raise InputError(f"--choose {k} needs more than {k} principles the model can read; the pool holds "
                         f"{len(keep)} of {len(members)}.")
    return [members[i] for i in keep], [checks[i] for i in keep], left_out


def lead(better: SetScore, other: SetScore, cfg: ScoreConfig) -> tuple[float, float, float]:
    """SI of `better` minus SI of `other` (the `cfg.critic` variant) and its paired 95% bootstrap interval.

    Both sets were scored on the same prompts and resampled with the same indices, so the interval of the
    difference is the bootstrap of the per-prompt differences: mean(a − b) over each resample is that resample's
    mean(a) − mean(b).
    """
    a = better.variants[cfg.critic]["per_prompt"]
    b = other.variants[cfg.critic]["per_prompt"]
    low, high = bootstrap_si(a - b, n_boot=cfg.bootstrap, seed=cfg.seed)
    return better.row["si"] - other.row["si"], low, high


def choose_subsets(pool: PoolScores, k: int, cfg: ScoreConfig, checks: list[PrincipleCheck] | None = None,
                   top: int | None = None) -> tuple[Search, list[SetScore]]:
    """The K-subsets of `pool` as report rows, ranked as `score-principles` ranks sets (trusted first, by SI).

    Candidates come from `choose.search` (exact up to `choose.EXACT_LIMIT` subsets, else greedy) and get their
    rows in SI order until `top` trusted rows exist (all of them without `top`): no subset left unscored could
    rank above those. Each row gains ``search`` and its paired ``lead``, ``lead_low``, ``lead_high`` over the
    next row of the ranking (NaN for the last). This is the call for every K-subset's row from one pool pass.
    """
    found = search(lambda combos: pool.per_prompt_si(combos, cfg.critic).mean(dim=1), pool.size, k, seed=cfg.seed)
    results, trusted = [], 0
    for ids in found.subsets:
        results.append(pool.set_score(ids, cfg, checks))
        trusted += results[-1].trusted
        if top is not None and trusted >= top:
            break
    ranked = rank(results)
    for r, after in zip(ranked, [*ranked[1:], None]):
        gap = lead(r, after, cfg) if after is not None else (math.nan,) * 3
        r.row.update(search=found.method, lead=gap[0], lead_low=gap[1], lead_high=gap[2])
    return found, ranked[:top]
