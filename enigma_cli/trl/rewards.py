"""enigma's rewards as TRL reward functions: one per term of a reward spec, the spec's weights as TRL's
``reward_weights`` (TRL then sums them, as `train.rewards.compute_rewards` does).

The functions of one spec share a `SpecScorer`, which scores a batch once with `train.rewards.compute_rewards`
(the same code as `enigma train`) and hands each function its term: TRL calls its reward functions one after the
other on the same batch, and a reward function of your own (an LLM judge, a test runner) then runs once per batch,
not once per term. The group-level answer rewards (coherence, diversity, ...) see a question's G completions
together, since `EnigmaGRPOTrainer` hands every reward function whole questions. ``--saturated-reward`` becomes
one more function, ``saturated`` (weight 1), the fallback term on the groups whose reward has no spread, so TRL's
weighted sum equals `enigma train`'s total.
"""

from __future__ import annotations

import math

from ..train.rewards import SATURATED_TERM, RewardResult, compute_rewards, parse_reward_spec


class SpecScorer:
    """Scores a batch with a whole reward spec (and the ``--saturated-reward`` fallback), once: the last batch's
    result is kept and reused while the same batch is asked for again."""

    def __init__(self, spec: str, group_size: int, *, format_weights=(1.0, 0.5, 0.5), gamma: float = 2.0,
                 gibbs_beta: float = 1.0, numeric: bool = True, saturated: str = "none"):
        self.spec, self.group_size = spec, group_size
        self.options = {"format_weights": tuple(format_weights), "gamma": gamma, "gibbs_beta": gibbs_beta,
                        "numeric": numeric, "saturated": saturated}
        self.last: tuple[tuple, RewardResult] | None = None

    def __call__(self, prompts, texts: list[str], labels: list, columns: dict) -> RewardResult:
        # the batch itself is the key (not the lists' ids, which a later batch may reuse once these are freed)
        key = (tuple(texts), tuple(map(repr, labels)), repr(prompts), repr(sorted(columns.items())))
        if self.last is None or self.last[0] != key:
            # TRL's own arguments reach a reward function of your own as TRL would pass them
            self.last = key, compute_rewards(texts, labels, self.group_size, self.spec, prompts=prompts,
                                             columns=columns, **self.options)
        return self.last[1]


class EnigmaReward:
    """A TRL reward function for one term of enigma's reward (named after it, e.g. ``format``), read from the
    `SpecScorer` of its spec (default: a scorer of the term alone)."""

    def __init__(self, term: str, group_size: int, *, scorer: SpecScorer | None = None, **options):
        self.term, self.scorer = term, scorer or SpecScorer(f"{term}=1", group_size, **options)
        self.__name__ = term  # TRL names the logged reward after it: rewards/<term>/mean

    def __call__(self, prompts, completions, answer=None, **kwargs) -> list[float | None]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        labels = list(answer) if answer is not None else [None] * len(texts)
        result = self.scorer(prompts, texts, labels, kwargs)
        return [None if math.isnan(v) else v for v in result.terms[self.term].float().tolist()]


def enigma_reward_funcs(spec: str, group_size: int, *, saturated: str = "none",
                        **options) -> tuple[list[EnigmaReward], list[float]]:
    """(reward functions, weights) for a reward spec such as ``"format"`` or ``"format=1,coherence=0.5"``, plus the
    ``saturated`` fallback term (weight 1) unless ``saturated`` is ``"none"``; all of them read one `SpecScorer`."""
    weights = parse_reward_spec(spec)
    scorer = SpecScorer(spec, group_size, saturated=saturated, **options)
    funcs = [EnigmaReward(name, group_size, scorer=scorer) for name in weights]
    if saturated == "none":
        return funcs, list(weights.values())
    return [*funcs, EnigmaReward(SATURATED_TERM, group_size, scorer=scorer)], [*weights.values(), 1.0]
