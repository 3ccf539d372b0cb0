"""enigma's rewards as TRL reward functions: one per term of a reward spec, the spec's weights as TRL's
``reward_weights`` (TRL then sums them, as `train.rewards.compute_rewards` does).

Each function scores the batch it is handed with `train.rewards.compute_rewards` (the same code as `enigma train`),
so the group-level answer rewards (coherence, diversity, ...) see a question's G completions together: the
`EnigmaGRPOTrainer` hands every reward function whole questions. ``--saturated-reward`` becomes one more function,
``saturated`` (weight 1), which scores the whole spec to see which groups have no spread and returns the fallback
term there, so TRL's weighted sum equals `enigma train`'s total.
"""

from __future__ import annotations

import math

from ..train.rewards import SATURATED_TERM, compute_rewards, parse_reward_spec, term_spec


class EnigmaReward:
    """A TRL reward function for one term of enigma's reward (named after it, e.g. ``format``), scored with
    ``spec`` (default: the term alone)."""

    def __init__(self, term: str, group_size: int, *, spec: str | None = None, format_weights=(1.0, 0.5, 0.5),
                 gamma: float = 2.0, gibbs_beta: float = 1.0, numeric: bool = True, saturated: str = "none"):
        self.term, self.group_size, self.spec = term, group_size, spec or f"{term}=1"
        self.options = {"format_weights": tuple(format_weights), "gamma": gamma, "gibbs_beta": gibbs_beta,
                        "numeric": numeric, "saturated": saturated}
        self.__name__ = term  # TRL names the logged reward after it: rewards/<term>/mean

    def __call__(self, prompts, completions, answer=None, **kwargs) -> list[float | None]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        labels = list(answer) if answer is not None else [None] * len(texts)
        # TRL's own arguments reach a reward function of your own as TRL would pass them
        result = compute_rewards(texts, labels, self.group_size, self.spec, prompts=prompts, columns=kwargs,
                                 **self.options)
        return [None if math.isnan(v) else v for v in result.terms[self.term].float().tolist()]


def enigma_reward_funcs(spec: str, group_size: int, *, saturated: str = "none",
                        **options) -> tuple[list[EnigmaReward], list[float]]:
    """(reward functions, weights) for a reward spec such as ``"format"`` or ``"format=1,coherence=0.5"``, plus the
    ``saturated`` fallback term (weight 1) unless ``saturated`` is ``"none"``."""
    weights = parse_reward_spec(spec)
    funcs = [EnigmaReward(name, group_size, spec=term_spec(spec, name), **options) for name in weights]
    if saturated == "none":
        return funcs, list(weights.values())
    fallback = EnigmaReward(SATURATED_TERM, group_size, spec=spec, saturated=saturated, **options)
    return [*funcs, fallback], [*weights.values(), 1.0]
