"""One generation batch of `enigma train`: prompts × K principle sub-groups × G/K completions, with rewards.

Layout (method.md §3, our rollout choice): for prompt p, principle slot j (one of K principles drawn for that
prompt) and sample s, the completion sits at index (p·K + j)·M + s with M = G/K, so each prompt's G completions
are one contiguous GRPO group. SAMI matrix (p, s) takes completion (p, j, s) for every j.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..context import Rows
from ..core import grpo_advantages
from ..datasets import Example
from ..models.rollout import encode_prompts, generate
from ..principles import PrincipleSet
from ..prompts import render_prompt
from .params import RolloutParams
from .rewards import RewardResult, compute_rewards


@dataclass
class Episodes:
    """Everything the update needs from one generation, on CPU; per-completion lists have length N = P·G."""

    n_prompts: int
    k: int
    m: int
    prompt_ids: list[list[int]]          # [P·K] the principle-conditioned prompts, (p, j) at p·K + j
    completion_ids: list[list[int]]      # [N]
    texts: list[str]                     # [N]
    principle_ids: list[str]             # [N]
    questions: list[str]                 # [P]
    labels: list[str | None]             # [N]
    rewards: RewardResult
    advantages: torch.Tensor             # [N]
    redrawn: int = 0                     # rows drawn that could not fit the context (`draw`)

    @property
    def group_size(self) -> int:
        return self.k * self.m

    def prompt_of(self, idx: int) -> int:
        """Index into prompt_ids of completion idx's own (principle-conditioned) prompt."""
        return idx // self.m

    def group_rows(self, prompts: range) -> list[int]:
        """Indices of the G completions of each prompt in `prompts` (their GRPO groups), in order."""
        g = self.group_size
        return [i for p in prompts for i in range(p * g, (p + 1) * g)]

    def completion_index(self, p: int, j: int, s: int) -> int:
        return (p * self.k + j) * self.m + s

    def off_diagonal(self, prompts: range, matrices: int) -> list[tuple[int, int, int, int]]:
        """(p, s, i, j) for i != j of critic matrices s < `matrices` of each prompt p: completion (p, j, s) scored
        after principle i's prompt, i.e. completion row `completion_index(p, j, s)` and prompt row `p·K + i`."""
        return [(p, s, i, j) for p in prompts for s in range(matrices) for i in range(self.k) for j in range(self.k)
                if i != j]


def draw(examples: list[Example], pset: PrincipleSet, n_prompts: int, k: int, seed: int, step: int, rank: int = 0):
    """The step's prompts and principles and the rows redrawn: a function of (seed, step, rank) alone, so a resumed
    run redraws them. A row that cannot fit the context (`context.Rows.fits`, checked as drawn on large files) is
    redrawn from the same stream; the lazy check found at least one row that fits, so this ends."""
    rng = random.Random(f"{seed}:{step}:{rank}")
    fits = examples.fits if isinstance(examples, Rows) else None
    picks, redrawn = [], 0
    while len(picks) < n_prompts:
        ex = examples[rng.randrange(len(examples))]
        if fits is None or fits(ex.prompt_text):
            picks.append(ex)
        else:
            redrawn += 1
    principles = [rng.sample(list(pset.principles), k) for _ in range(n_prompts)]
    return picks, principles, redrawn


def collect(model, tokenizer, examples: list[Example], pset: PrincipleSet, rollout: RolloutParams, step: int,
            rank: int = 0) -> Episodes:
    """Generate the step's completions and score them (no gradient); ``rollout`` says how many and how
    (`params.rollout_from_train_config`)."""
    k, m, r = rollout.k, rollout.m, rollout.reward
    picks, principles, redrawn = draw(examples, pset, rollout.prompts, k, rollout.seed, step, rank)
    # prompt_text: the question with its options (multiple-choice rows), as every other command renders it
    prompt_texts = [render_prompt(tokenizer, c.text, ex.prompt_text) for ex, cs in zip(picks, principles) for c in cs]
    gen = generate(model, tokenizer, prompt_texts, num_samples=m, max_new_tokens=rollout.max_new_tokens,
                   temperature=rollout.temperature, engine=rollout.sampler,
                   seed=(rollout.seed * 1_000_003 + step * 7_919 + rank) % 2**31)
    labels = [ex.answer for ex in picks for _ in range(k * m)]
    rewards = compute_rewards(gen.texts, labels, k * m, r.spec, format_weights=r.format_weights, gamma=r.gamma,
                              gibbs_beta=r.gibbs_beta, numeric=r.numeric, saturated=r.saturated,
                              prompts=[p for p in prompt_texts for _ in range(m)],
                              columns={"question": [ex.question for ex in picks for _ in range(k * m)]})
    advantages = grpo_advantages(rewards.total, k * m, scale=rollout.scale_rewards)
    return Episodes(
        n_prompts=len(picks), k=k, m=m,
        prompt_ids=encode_prompts(tokenizer, prompt_texts),
        completion_ids=[list(c) for c in gen.completion_ids], texts=list(gen.texts),
        principle_ids=[c.id for cs in principles for c in cs for _ in range(m)],
        questions=[ex.question for ex in picks], labels=labels, rewards=rewards, advantages=advantages,
        redrawn=redrawn,
    )
