"""The model side of `score-principles --until-decided`: each set's scores grow round by round, never recomputed.

A round asks for n prompts per set (`sequential.run_rounds`); every open set (`sequential.active`) generates and
reads only the prompts it has not scored yet, and its scores are appended to what it had. Sampling is seeded per
prompt (`rollout.prompt_seeds`), so a set's first n prompts are scored exactly as one run of n prompts would score
them, and earlier draws never change. Every row is then recomputed from all its scores (cheap: no model call) with
the plan's t interval at the adjusted level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..datasets import Example
from ..principles import PrincipleSet
from .config import ScoreConfig
from .report import rank
from .scoring import CriticScores, SetScore, critic_matrices, set_score
from .sequential import Interval, Look, Plan, active, paired
from .trust import PrincipleCheck


def append(a: CriticScores | None, b: CriticScores) -> CriticScores:
    """The scores of a's prompts followed by b's (every tensor is prompt-major along its first axis)."""
    if a is None:
        return b
    return CriticScores(torch.cat([a.mean, b.mean]), torch.cat([a.marginal, b.marginal]),
                        torch.cat([a.lengths, b.lengths]), [*a.texts, *b.texts])


class Rounds:
    """`__call__(n)`: score the open sets up to n prompts and return the look (`sequential.Look`).

    `results` holds each set's latest row (`SetScore`), in the order of `sets`."""

    def __init__(self, lm, sets: Sequence[PrincipleSet], examples: Sequence[Example], cfg: ScoreConfig,
                 checks: Sequence[list[PrincipleCheck]], plan: Plan, *, rank_sets: bool = False, status=None):
        self.lm, self.sets, self.examples, self.cfg = lm, list(sets), list(examples), cfg
        self.checks, self.plan, self.rank_sets, self.status = list(checks), plan, rank_sets, status
        self.scores: list[CriticScores | None] = [None] * len(self.sets)
        self.results: list[SetScore | None] = [None] * len(self.sets)
        self.look: Look | None = None

    def prompts(self, i: int) -> int:
        scores = self.scores[i]
        return 0 if scores is None else scores.mean.shape[0] // self.cfg.samples

    def __call__(self, n: int) -> Look:
        names = [str(i) for i in range(len(self.sets))]
        where = {id(r): str(i) for i, r in enumerate(self.results) if r is not None}
        order = [where[id(r)] for r in rank([r for r in self.results if r is not None])]
        for i in map(int, active(self.look, names, order)):
            have = self.prompts(i)
            if have < n:
                if self.status is not None:
                    self.status.update(f"scoring {self.sets[i].name}: prompts {have + 1}..{n}")
                with torch.no_grad():
                    new = critic_matrices(self.lm, self.sets[i], self.examples[have:n], self.cfg)
                self.scores[i] = append(self.scores[i], new)
            self.results[i] = set_score(self.sets[i], self.scores[i], self.cfg, self.checks[i],
                                        interval=self.plan.interval, level=self.plan.level)
        self.look = Look(tuple(self._interval(i) for i in range(len(self.sets))), self._lead(), self.rank_sets)
        return self.look

    def _interval(self, i: int) -> Interval:
        row = self.results[i].row
        return Interval(str(i), row["si"], row["si_low"], row["si_high"], self.prompts(i))

    def _lead(self) -> Interval | None:
        if not self.rank_sets:
            return None
        first, second = rank(self.results)[:2]
        return self.lead(first, second)

    def lead(self, better: SetScore, other: SetScore) -> Interval:
        """`better`'s SI lead over `other`, paired over the prompts both hold, at the plan's level."""
        critic = self.cfg.critic
        return paired(f"{better.name} over {other.name}", better.variants[critic]["per_prompt"],
                      other.variants[critic]["per_prompt"], self.plan.level)

    def named(self, look: Look) -> Look:
        """`look` with the sets' names instead of their indices (for sentences)."""
        sets = tuple(Interval(self.sets[int(s.name)].name, s.value, s.low, s.high, s.prompts) for s in look.sets)
        return Look(sets, look.lead, look.rank)
