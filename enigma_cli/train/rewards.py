"""Rewards for `enigma train`: a weighted sum of named terms, e.g. `--reward format=1,coherence=0.5`.

`format` is ENIGMA's format-only reward (method.md §1); `graded` adds partial credit for answer parseability and
reasoning length to it (method.md §8, `core.graded_format`); `correctness` compares the parsed answer with the label
(evaluation and explicit opt-in ablations only); the answer-level terms are the Policy step of a Distributional
Alignment Game (method.md §7), each computed from the group's answers by `enigma_cli.core.answer_rewards`.

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

REWARDS = ("format", "graded", "correctness", "coherence", "pairwise-coherence", "diversity", "gibbs")
NEEDS_LABELS = ("correctness", "gibbs")
#: The term under which the saturated-group fallback is logged and handed to TRL.
SATURATED_TERM = "saturated"


def parse_reward_spec(spec: str) -> dict[str, float]:
    """`"format"` or `"format=1,coherence=0.5"` → {name: weight}; one sentence on a bad spec."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in REWARDS:
            raise InputError(f"--reward names unknown reward {name!r}; choose from {', '.join(REWARDS)}.")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise InputError(f"--reward weight for {name!r} must be a number, not {weight!r}.") from None
    if not weights:
        raise InputError("--reward is empty; give at least one of " + ", ".join(REWARDS) + ".")
    return weights


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
                    numeric: bool = True, saturated: str = "none") -> RewardResult:
    """All reward terms for N = groups × G completions; `labels` has one entry per completion (or None).

    `saturated` ("none" or "coherence"): the reward added to the groups whose weighted terms have no spread."""
    weights = parse_reward_spec(spec)
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
    total = sum(weights[name] * terms[name].float() for name in weights)
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
