r"""Answer-level rewards from Distributional Alignment Games (method.md §7).

Mohri, Schneider and Wu [2]_ cast answer-level fine-tuning as a game between a Policy :math:`\pi_\theta` and a
Target distribution :math:`q` over final answers :math:`z`. With :math:`\hat p` the empirical answer distribution
of the :math:`G` completions of one prompt, the Target's step is a closed-form projection :math:`q = T(\hat p)`,
and the Policy's step is an ordinary GRPO step (method.md §2) with the per-completion reward

.. math:: r_i = \log q(z_i) - \log \hat p(z_i).

Targets implemented by :func:`target_distribution` (all supported on the observed answers :math:`S`):

- ``"coherence"`` (Coherence-GRPO): :math:`q \propto \hat p^{\gamma}`, :math:`\gamma > 1`, so
  :math:`r_i = (\gamma - 1)\log\hat p(z_i) - \log\sum_{z\in S}\hat p(z)^{\gamma}`: a soft majority vote that needs
  no labels. Within a group this is affine in :math:`\log\hat p(z_i)` with slope :math:`\gamma - 1`, so when it
  is the only reward term, GRPO's per-group standardisation cancels :math:`\gamma` (measured: the same run at
  :math:`\gamma` = 2 and 4 gave identical metrics); :math:`\gamma` weighs it against other terms.
- ``"diversity"``: :math:`q` uniform on :math:`S`, so :math:`r_i = -\log\hat p(z_i) - \log|S|`. Method.md states
  the reward :math:`-\log\hat p(z_i)`; the uniform target is the :math:`q` that yields it through
  :math:`r = \log q - \log\hat p` up to a per-group constant (our derivation). :func:`diversity_rewards` returns
  :math:`-\log\hat p(z_i)` exactly as the method states; GRPO's group centring removes the constant.
- ``"gibbs"`` (labelled reward :math:`R`): :math:`q \propto \hat p\,e^{R/\beta}`, so
  :math:`r_i = R(z_i)/\beta - \log\sum_{z\in S}\hat p(z)\,e^{R(z)/\beta}`.

:func:`pairwise_coherence_rewards` is not of this form: :math:`r_i = \frac{1}{G-1}\sum_{j\ne i}\mathbf
1[z_j = z_i]` is the unbiased leave-one-out estimate of :math:`p(z_i)`, whereas :math:`\log\hat p(z_i)` is a biased
estimate of :math:`\log p(z_i)` (self-inclusion, and Jensen: :math:`\mathbb E\log\hat p \le \log\mathbb E\hat p`).

Conventions (``answers`` is a flat list of length :math:`N = n_{\text{groups}} G`, consecutive groups of
``group_size``; each entry is a normalised answer string, see
:func:`enigma_cli.core.format_rewards.normalize_answer`, or ``None`` when unparsable). Choices that are ours:

- :math:`\hat p(z) = \#\{i : z_i = z\} / G` counts **all** :math:`G` completions, unparsable ones included, so
  :math:`\sum_z \hat p(z)` is the parsable fraction and the unparsable mass is excluded from :math:`q` (every
  target is normalised over the observed answers only). Counting among parsable completions instead would shift
  every reward of a group by the same constant, which GRPO's group centring removes.
- An unparsable completion gets the **lowest** reward among its group's parsable completions (method.md §7);
  when a whole group is unparsable every reward of the group is 0 (its GRPO advantages are then 0).
- Logs are floored, :math:`\log\max(x, \varepsilon)` with :math:`\varepsilon` = ``LOG_FLOOR`` = 1e-8
  (argument ``eps``). :math:`\hat p \ge 1/G` on observed answers, so the floor only binds when a target
  probability falls below :math:`\varepsilon` (e.g. a large :math:`\gamma`, or :math:`R = -\infty`); the
  identities above hold whenever it does not.
- Ties in :func:`majority_vote` go to the answer seen first in the group.

References
----------
.. [1] Seneque et al., "ENIGMA: The Geometry of Reasoning and Alignment in Large-Language Models",
   arXiv:2510.11278 (2025).
.. [2] Mohri, Schneider, Wu, "Distributional Alignment Games for Answer-Level Fine-Tuning", arXiv:2604.27166
   (2026).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = [
    "LOG_FLOOR",
    "TARGET_KINDS",
    "answer_frequencies",
    "coherence_rewards",
    "diversity_rewards",
    "gibbs_rewards",
    "pairwise_coherence_rewards",
    "target_distribution",
]

#: Floor :math:`\varepsilon` applied inside every log: :math:`\log\max(x, \varepsilon)`.
LOG_FLOOR = 1e-8
#: Target kinds understood by :func:`target_distribution`.
TARGET_KINDS = ("coherence", "diversity", "gibbs")

Answers = Sequence[str | None]


def _groups(answers: Answers, group_size: int) -> list[list[str | None]]:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if len(answers) % group_size:
        raise ValueError(f"len(answers)={len(answers)} is not a multiple of group_size={group_size}")
    answers = list(answers)
    return [answers[i : i + group_size] for i in range(0, len(answers), group_size)]


def _log(x: float, eps: float) -> float:
    return math.log(max(x, eps))


def _fill_unparsable(group: list[str | None], values: list[float | None]) -> list[float]:
    """Give unparsable entries (value None) the group's lowest parsable value; all-unparsable → zeros."""
    parsable = [v for v in values if v is not None]
    low = min(parsable) if parsable else 0.0
    return [low if v is None else v for v in values]


def _to_tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _frequencies(group: list[str | None]) -> dict[str, float]:
    g = len(group)
    return {z: c / g for z, c in Counter(z for z in group if z is not None).items()}


def answer_frequencies(answers: Answers, group_size: int) -> list[dict[str, float]]:
    r"""Empirical answer distribution :math:`\hat p` of each group.

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G, completions per prompt.

    Returns
    -------
    list of dict of str to float
        One dict per group, :math:`\hat p(z) = \#\{i : z_i = z\}/G` over the parsable answers, insertion-ordered
        by first occurrence. The denominator is all G completions, so the values sum to the parsable fraction.

    Raises
    ------
    ValueError
        If ``group_size`` < 1 or does not divide ``len(answers)``.
    """
    return [_frequencies(g) for g in _groups(answers, group_size)]


def _log_target(
    p_hat: Mapping[str, float],
    kind: str,
    gamma: float,
    beta: float,
    reward: Mapping[str, float] | None,
) -> dict[str, float]:
    """Log-probabilities of the target, computed in log space so that large γ or R/β do not overflow."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target kind {kind!r}; expected one of {', '.join(TARGET_KINDS)}")
    if kind == "coherence" and not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma!r}")
    if kind == "gibbs" and not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be positive and finite, got {beta!r}")
    support = [z for z, p in p_hat.items() if p > 0]
    if not support:
        return {}
    if kind == "coherence":
        logits = {z: gamma * math.log(p_hat[z]) for z in support}
    elif kind == "diversity":
        logits = {z: 0.0 for z in support}
    else:
        if reward is None:
            raise ValueError("the gibbs target needs reward, a mapping answer → R(answer)")
        r = {z: float(reward.get(z, 0.0)) for z in support}
        if any(math.isnan(v) or v == math.inf for v in r.values()):
            raise ValueError("the gibbs reward R must be finite or -inf")
        logits = {z: math.log(p_hat[z]) + r[z] / beta for z in support}
    top = max(logits.values())
    if top == -math.inf:  # every R is -inf: no information, fall back to p̂ itself
        logits = {z: math.log(p_hat[z]) for z in support}
        top = max(logits.values())
    log_z = top + math.log(sum(math.exp(v - top) for v in logits.values()))
    return {z: v - log_z for z, v in logits.items()}


def target_distribution(
    p_hat: Mapping[str, float],
    kind: str,
    *,
    gamma: float = 2.0,
    beta: float = 1.0,
    reward: Mapping[str, float] | None = None,
) -> dict[str, float]:
    r"""The Target player's step: the closed-form projection :math:`q = T(\hat p)` for one group.

    Parameters
    ----------
    p_hat : mapping of str to float
        Empirical answer distribution of one group (from :func:`answer_frequencies`); it need not sum to 1.
    kind : {"coherence", "diversity", "gibbs"}
        ``"coherence"``: :math:`q \propto \hat p^{\gamma}`; ``"diversity"``: :math:`q` uniform on the observed
        answers (the target whose reward :math:`\log q - \log\hat p` is :math:`-\log\hat p` + const);
        ``"gibbs"``: :math:`q \propto \hat p\, e^{R/\beta}`.
    gamma : float, default 2.0
        Sharpening exponent of the coherence target (:math:`\gamma > 1` sharpens, :math:`\gamma = 1` gives
        :math:`q = \hat p / \sum\hat p`, :math:`\gamma < 1` flattens).
    beta : float, default 1.0
        Temperature of the Gibbs target, > 0.
    reward : mapping of str to float, optional
        :math:`R(z)` for the Gibbs target; answers absent from it get :math:`R = 0`. Required for ``"gibbs"``.

    Returns
    -------
    dict of str to float
        :math:`q(z)` on the answers with :math:`\hat p(z) > 0`, summing to 1; empty when there are none.

    Raises
    ------
    ValueError
        For an unknown ``kind``, a non-finite ``gamma``, a non-positive ``beta`` or a missing ``reward``.
    """
    return {z: math.exp(v) for z, v in _log_target(p_hat, kind, gamma, beta, reward).items()}


def _target_rewards(
    answers: Answers,
    group_size: int,
    kind: str,
    *,
    gamma: float = 2.0,
    beta: float = 1.0,
    rewards: Sequence[Mapping[str, float]] | None = None,
    eps: float = LOG_FLOOR,
) -> torch.Tensor:
    out: list[float] = []
    for k, group in enumerate(_groups(answers, group_size)):
        p_hat = _frequencies(group)
        q = target_distribution(
            p_hat, kind, gamma=gamma, beta=beta, reward=None if rewards is None else rewards[k]
        )
        values = [None if z is None else _log(q[z], eps) - _log(p_hat[z], eps) for z in group]
        out.extend(_fill_unparsable(group, values))
    return _to_tensor(out)


def coherence_rewards(
    answers: Answers, group_size: int, gamma: float = 2.0, *, eps: float = LOG_FLOOR
) -> torch.Tensor:
    r"""Coherence-GRPO reward :math:`r_i = \log q(z_i) - \log\hat p(z_i)` with :math:`q \propto \hat p^{\gamma}`.

    Equals :math:`(\gamma - 1)\log\hat p(z_i) - \log\sum_{z}\hat p(z)^{\gamma}` (while :math:`q(z_i) \ge
    \varepsilon`): a soft majority vote.

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G, completions per prompt.
    gamma : float, default 2.0
        Sharpening exponent; :math:`\gamma > 1` rewards agreeing with the group.
    eps : float, default ``LOG_FLOOR``
        Floor inside the logs.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)`` float32. Unparsable completions get their group's lowest parsable reward; an
        all-unparsable group gets zeros.
    """
    return _target_rewards(answers, group_size, "coherence", gamma=gamma, eps=eps)


def pairwise_coherence_rewards(answers: Answers, group_size: int) -> torch.Tensor:
    r"""Leave-one-out agreement :math:`r_i = \frac{1}{G-1}\sum_{j \ne i}\mathbf 1[z_j = z_i]`.

    Given :math:`z_i`, the other :math:`G-1` answers are i.i.d. draws from the policy, so
    :math:`\mathbb E[r_i \mid z_i] = p(z_i)` exactly: unlike :math:`\log\hat p(z_i)`, this estimate is unbiased.
    ``None`` never matches anything, itself included.

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G ≥ 2.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)`` float32 in [0, 1]. Unparsable completions get their group's lowest parsable reward; an
        all-unparsable group gets zeros.
    """
    if isinstance(group_size, int) and not isinstance(group_size, bool) and group_size < 2:
        raise ValueError(f"pairwise coherence needs group_size >= 2, got {group_size}")
    out: list[float] = []
    for group in _groups(answers, group_size):
        counts = Counter(z for z in group if z is not None)
        values = [None if z is None else (counts[z] - 1) / (group_size - 1) for z in group]
        out.extend(_fill_unparsable(group, values))
    return _to_tensor(out)


def diversity_rewards(answers: Answers, group_size: int, *, eps: float = LOG_FLOOR) -> torch.Tensor:
    r"""Diversity reward :math:`r_i = -\log\hat p(z_i)`: rare answers score high.

    This is :math:`\log q - \log\hat p` for the uniform target on the observed answers, up to the per-group
    constant :math:`\log|S|`, which is dropped.

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G, completions per prompt.
    eps : float, default ``LOG_FLOOR``
        Floor inside the log.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)`` float32, in :math:`[0, \log G]`. Unparsable completions get their group's lowest
        parsable reward (that of its most common answer); an all-unparsable group gets zeros.
    """
    out: list[float] = []
    for group in _groups(answers, group_size):
        p_hat = _frequencies(group)
        out.extend(_fill_unparsable(group, [None if z is None else -_log(p_hat[z], eps) for z in group]))
    return _to_tensor(out)


def gibbs_rewards(
    answers: Answers,
    group_size: int,
    labels: Sequence[str | None] | None = None,
    *,
    reward_fn: Callable[[str, int], float] | None = None,
    beta: float = 1.0,
    eps: float = LOG_FLOOR,
) -> torch.Tensor:
    r"""Gibbs-target reward :math:`r_i = \log q(z_i) - \log\hat p(z_i)` with :math:`q \propto \hat p\,e^{R/\beta}`.

    Equals :math:`R(z_i)/\beta - \log\sum_z \hat p(z)\, e^{R(z)/\beta}` (while :math:`q(z_i) \ge \varepsilon`).

    Parameters
    ----------
    answers : sequence of str or None
        Normalised answers, N = n_groups · group_size, consecutive groups; ``None`` = unparsable.
    group_size : int
        G, completions per prompt.
    labels : sequence of str or None, optional
        One reference answer per group, normalised like ``answers``; then :math:`R(z) = \mathbf 1[z = \text{label}]`
        (a ``None`` label gives :math:`R \equiv 0`, hence zero rewards for that group's parsable answers).
    reward_fn : callable, optional
        ``reward_fn(answer, group_index) -> float``, :math:`R` for arbitrary labelled rewards. Give exactly one of
        ``labels`` and ``reward_fn``.
    beta : float, default 1.0
        Temperature, > 0.
    eps : float, default ``LOG_FLOOR``
        Floor inside the logs.

    Returns
    -------
    torch.Tensor
        Shape ``(N,)`` float32. Unparsable completions get their group's lowest parsable reward; an
        all-unparsable group gets zeros.
    """
    groups = _groups(answers, group_size)
    if (labels is None) == (reward_fn is None):
        raise ValueError("give exactly one of labels and reward_fn")
    if labels is not None:
        if len(labels) != len(groups):
            raise ValueError(f"got {len(labels)} labels for {len(groups)} groups")

        def reward_fn(z: str, k: int) -> float:
            return 1.0 if labels[k] is not None and z == labels[k] else 0.0

    rewards = [{z: float(reward_fn(z, k)) for z in set(g) if z is not None} for k, g in enumerate(groups)]
    return _target_rewards(answers, group_size, "gibbs", beta=beta, rewards=rewards, eps=eps)
