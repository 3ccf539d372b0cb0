"""Summaries of each group's answers: the majority vote and the statistics logged beside answer-level rewards.

Conventions as in `enigma_cli.core.answer_rewards` (flat answers, consecutive groups of ``group_size``, ``None``
for an unparsable answer; ties of the vote go to the answer seen first).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from .answer_rewards import Answers, _frequencies, _groups, target_distribution

__all__ = ["group_answer_stats", "majority_vote"]


def majority_vote(answers: Answers, group_size: int) -> list[str | None]:
    """Most frequent parsable answer of each group.

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G, completions per prompt.

    Returns
    -------
    list of str or None
        One answer per group; ties go to the answer seen first; ``None`` for an all-unparsable group.
    """
    # Counter.most_common keeps first-insertion order among equal counts.
    return [
        c.most_common(1)[0][0] if (c := Counter(z for z in g if z is not None)) else None
        for g in _groups(answers, group_size)
    ]


def group_answer_stats(
    answers: Answers,
    group_size: int,
    *,
    kind: str = "coherence",
    gamma: float = 2.0,
    beta: float = 1.0,
    rewards: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, float]:
    r"""Per-batch summaries of the answer distributions, for the metrics CSV.

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G, completions per prompt.
    kind, gamma, beta
        The target whose entropy is reported (see :func:`target_distribution`).
    rewards : sequence of mapping, optional
        One :math:`R` mapping per group, required when ``kind == "gibbs"``.

    Returns
    -------
    dict of str to float
        Means over groups of: ``distinct_answers`` (:math:`|S|`), ``majority_share`` (count of the most common
        answer / G), ``parsable_fraction``, ``answer_entropy`` (nats, of :math:`\hat p` renormalised over
        :math:`S`) and ``target_entropy`` (nats, of :math:`q`). An all-unparsable group contributes 0 to each.
        All are NaN when there are no groups.
    """
    groups = _groups(answers, group_size)
    keys = ("distinct_answers", "majority_share", "parsable_fraction", "answer_entropy", "target_entropy")
    if not groups:
        return {k: math.nan for k in keys}
    sums = dict.fromkeys(keys, 0.0)
    for k, group in enumerate(groups):
        p_hat = _frequencies(group)
        if not p_hat:
            continue
        mass = sum(p_hat.values())
        q = target_distribution(
            p_hat, kind, gamma=gamma, beta=beta, reward=None if rewards is None else rewards[k]
        )
        sums["distinct_answers"] += len(p_hat)
        sums["majority_share"] += max(p_hat.values())
        sums["parsable_fraction"] += mass
        sums["answer_entropy"] -= sum(p / mass * math.log(p / mass) for p in p_hat.values())
        sums["target_entropy"] -= sum(v * math.log(v) for v in q.values() if v > 0)
    return {k: v / len(groups) for k, v in sums.items()}
