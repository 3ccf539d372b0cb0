"""Rewards for `enigma train`: a weighted sum of named terms, e.g. `--reward format=1,coherence=0.5`.

`format` is ENIGMA's format-only reward (method.md §1); `graded` adds partial credit for answer parseability and
reasoning length to it (method.md §8, `core.graded_format`); `correctness` compares the parsed answer with the label
(evaluation and explicit opt-in ablations only); the answer-level terms are the Policy step of a Distributional
Alignment Game (method.md §7), each computed from the group's answers by `enigma_cli.core.answer_rewards`.

A term ``FILE.py:FUNCTION`` (or ``module:FUNCTION``) is a reward function of your own with TRL's signature
(`train.custom_rewards`), logged under the function's name.

`saturated` names a label-free answer reward added to the groups whose reward has no spread at all (method.md
§8, `core.saturated`), logged as the term `saturated`; the TRL backend scores it with this same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import answer_rewards as ar
from ..core import format_reward, normalize_answer, parse_completion
from ..core.graded_format import graded_format_reward
from ..core.saturated import fill_saturated_groups, saturated_groups
from ..errors import InputError
from .custom_rewards import CustomReward
from .custom_rewards import parse as parse_custom

REWARDS = ("format", "graded", "correctness", "coherence", "pairwise-coherence", "diversity", "gibbs")
NEEDS_LABELS = ("correctness", "gibbs")
#: The term under which the saturated-group fallback is logged and handed to TRL.
SATURATED_TERM = "saturated"


def parse_terms(spec: str) -> dict[str, tuple[float, CustomReward | None]]:
    """`"format=1,coherence=0.5,my_rewards.py:brevity=0.2"` → {name: (weight, None or the function of your own)};
    one sentence on a bad spec (a function of your own is imported now, `custom_rewards.parse`)."""
    terms: dict[str, tuple[float, CustomReward | None]] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name, custom = name.strip(), None
        if ":" in name:
            custom = parse_custom(name)
            name = custom.name
            if name in REWARDS or name == SATURATED_TERM:
                raise InputError(f"--reward: {custom.where} has the name of a built-in reward; rename the function.")
        elif name not in REWARDS:
            raise InputError(f"--reward names unknown reward {name!r}; choose from {', '.join(REWARDS)}, or give "
                             "one of your own as FILE.py:FUNCTION.")
        if name in terms:
            raise InputError(f"--reward names {name!r} twice.")
        try:
            terms[name] = (float(weight) if weight else 1.0, custom)
        except ValueError:
            raise InputError(f"--reward weight for {name!r} must be a number, not {weight!r}.") from None
    if not terms:
        raise InputError("--reward is empty; give at least one of " + ", ".join(REWARDS) + ".")
    return terms


def parse_reward_spec(spec: str) -> dict[str, float]:
    """`"format"` or `"format=1,coherence=0.5"` → {name: weight}; one sentence on a bad spec."""
    return {name: weight for name, (weight, _) in parse_terms(spec).items()}


def term_spec(spec: str, name: str) -> str:
    """The spec of one term of `spec` alone, at weight 1 (e.g. ``my_rewards.py:brevity=1``)."""
    custom = parse_terms(spec)[name][1]
    return f"{custom.source}:{custom.name}=1" if custom is not None else f"{name}=1"


def custom_rewards(spec: str) -> list[CustomReward]:
    """The reward functions of your own that `spec` names."""
    return [custom for _, custom in parse_terms(spec).values() if custom is not None]


@dataclass
class RewardResult:
    total: torch.Tensor            # [N]
    terms: dict[str, torch.Tensor]  # name -> [N], unweighted
    answers: list[str | None]       # normalised parsed answers
    strict: torch.Tensor            # [N] 1 when the completion has the strict layout
    correct: torch.Tensor | None    # [N] 1 when the answer equals the label (None without labels)
    saturated: torch.Tensor | None = None  # [groups] True where the reward terms (fallback aside) had no spread


def compute_rewards(texts: list[str], labels: list[str | None], group_size: int, spec: str, *,
                    format_weights=(1.0, 0.5, 0.5), gamma: float = 2.0, gibbs_beta: float = 1.0,
                    numeric: bool = True, saturated: str = "none", prompts: list[str] | None = None,
                    columns: dict | None = None) -> RewardResult:
    """All reward terms for N = groups × G completions; `labels` has one entry per completion (or None).

    `saturated` ("none" or "coherence"): the reward added to the groups whose weighted terms have no spread.
    `prompts` and `columns` (one value per completion; ``answer`` defaults to `labels`) reach the reward functions
    of your own; their None values (NaN in `terms`) add nothing to the total."""
    parsed_spec = parse_terms(spec)
    weights = {name: weight for name, (weight, _) in parsed_spec.items()}
    parsed = [parse_completion(t) for t in texts]
    answers = [normalize_answer(p.answer, numeric=numeric) if p.answer is not None else None for p in parsed]
    has_labels = any(lab is not None for lab in labels)
    norm_labels = [normalize_answer(lab, numeric=numeric) if lab is not None else None for lab in labels]
    correct = (torch.tensor([float(a is not None and a == lab) for a, lab in zip(answers, norm_labels)])
               if has_labels else None)
    missing = [name for name in weights if name in NEEDS_LABELS and not has_labels]
    if missing:
        raise InputError(f"--reward {missing[0]} needs answers in the dataset, and this one has none.")
    terms: dict[str, torch.Tensor] = {}
    for name in weights:
        if name == "format":
            w_strict, w_soft, w_tags = format_weights
            terms[name] = format_reward(texts, w_strict=w_strict, w_soft=w_soft, w_tags=w_tags)[0].float()
        elif name == "graded":
            w_strict, w_soft, w_tags = format_weights
            terms[name] = graded_format_reward(texts, w_strict=w_strict, w_soft=w_soft, w_tags=w_tags,
                                               numeric=numeric)[0]
        elif name == "correctness":
            terms[name] = correct
        elif name == "coherence":
            terms[name] = ar.coherence_rewards(answers, group_size, gamma=gamma)
        elif name == "pairwise-coherence":
            terms[name] = ar.pairwise_coherence_rewards(answers, group_size)
        elif name == "diversity":
            terms[name] = ar.diversity_rewards(answers, group_size)
        elif name == "gibbs":
            group_labels = norm_labels[::group_size]
            terms[name] = ar.gibbs_rewards(answers, group_size, group_labels, beta=gibbs_beta)
        else:  # a function of your own
            terms[name] = parsed_spec[name][1](prompts if prompts is not None else [""] * len(texts), texts,
                                               **{"answer": list(labels), **(columns or {})})
    total = sum(weights[name] * torch.nan_to_num(terms[name].float(), nan=0.0) for name in weights)
    if saturated == "coherence":
        fallback = ar.coherence_rewards(answers, group_size, gamma=gamma)
        terms[SATURATED_TERM], flat = fill_saturated_groups(total, fallback, group_size)
        total = total + terms[SATURATED_TERM]
    elif saturated == "none":
        flat = saturated_groups(total, group_size)
    else:
        raise InputError(f"--saturated-reward must be none or coherence, not {saturated!r}.")
    strict = torch.tensor([float(p.strict) for p in parsed])
    return RewardResult(total=total, terms=terms, answers=answers, strict=strict, correct=correct, saturated=flat)
