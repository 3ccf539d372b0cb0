r"""A graded format reward: the format reward of method.md §1 plus partial credit that can still differ between
completions that all have the strict layout (method.md §8).

Once a warm-up has taught the layout, every completion passes the strict gate and the format reward of
:func:`enigma_cli.core.format_rewards.format_reward` is the same across each group, so GRPO has no signal. The
graded reward adds, for strict completions only, two more layout-level credits:

- answer parseability :math:`a(y) \in \{0, 1\}`: the ``<answer>`` body is one line that reads as a single number
  (numeric answers: :func:`~enigma_cli.core.format_rewards.normalize_answer`'s number reader accepts it, so
  ``12``, ``$1,200`` and ``3/4`` pass and ``The answer is 12.`` does not) or, for text answers, one line of at
  most ``max_answer_words`` words;
- reasoning length :math:`\ell(y) \in [0, 1]`: with :math:`n` the number of words of the reasoning, a band
  :math:`[n_{lo}, n_{hi}]` earns 1, fewer words earn :math:`n / n_{lo}`, more earn
  :math:`\max(0, 1 - (n - n_{hi}) / n_{hi})`.

.. math:: r(y) = w_s\, s(y) + w_o\, o(y) + w_t\, t(y) + s(y)\,\bigl(w_a\, a(y) + w_\ell\, \ell(y)\bigr)

Choices that are ours (the ENIGMA paper rewards "the format" and fixes none of this):

- *Gated by the strict layout.* A malformed completion earns no graded credit, so it can never outrank a
  well-formed one: the graded parts add at most :math:`w_a + w_\ell` = 0.5 by default, less than the strict
  weight.
- *Flat inside the length band.* Length earns nothing once inside :math:`[n_{lo}, n_{hi}]` = [3, 150] words, so
  GRPO cannot be paid for writing longer (the usual length hack); the band only penalises a bare answer
  restated as "reasoning" and runaway text. The lower edge is low on purpose: a principle may ask for a one-line
  derivation (``stepwise-vs-oneline``), and the reward must not side against it.
- *What it cannot do.* Among completions that all have a one-number answer and reasoning inside the band, the
  graded reward is as flat as the plain one; whether that leaves GRPO a signal after a warm-up is measured in
  BENCHMARKS.md, not assumed. Note too that with ``--scale-rewards group`` any spread, however small, becomes
  unit-size advantages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .format_rewards import _parse_number, format_reward, parse_completion

__all__ = ["GRADED_WEIGHTS", "LENGTH_BAND", "answer_parses", "graded_format_reward", "reasoning_length_credit"]

#: Default weights :math:`(w_a, w_\ell)` of answer parseability and reasoning length.
GRADED_WEIGHTS = (0.25, 0.25)
#: Default band :math:`[n_{lo}, n_{hi}]` of reasoning words that earns full length credit.
LENGTH_BAND = (3, 150)


def answer_parses(answer: str | None, *, numeric: bool = True, max_answer_words: int = 8) -> bool:
    """Whether an ``<answer>`` body is a single clean answer: one line, and a number (``numeric``) or at most
    ``max_answer_words`` words of text."""
    if answer is None or not answer.strip() or "\n" in answer.strip():
        return False
    if numeric:
        return _parse_number(answer) is not None
    return len(answer.split()) <= max_answer_words


def reasoning_length_credit(n_words: int, band: tuple[int, int] = LENGTH_BAND) -> float:
    r"""Length credit of a reasoning of ``n_words`` words: 1 inside ``band``, :math:`n/n_{lo}` below it,
    :math:`\max(0, 1 - (n - n_{hi})/n_{hi})` above it."""
    lo, hi = band
    if n_words < lo:
        return n_words / lo
    if n_words > hi:
        return max(0.0, 1.0 - (n_words - hi) / hi)
    return 1.0


def graded_format_reward(
    texts: Sequence[str],
    w_strict: float = 1.0,
    w_soft: float = 0.5,
    w_tags: float = 0.5,
    *,
    graded_weights: tuple[float, float] = GRADED_WEIGHTS,
    band: tuple[int, int] = LENGTH_BAND,
    numeric: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Graded format reward :math:`r = w_s s + w_o o + w_t t + s\,(w_a a + w_\ell \ell)` (see the module docstring).

    Parameters
    ----------
    texts : sequence of str
        Completions, N of them.
    w_strict, w_soft, w_tags : float
        Weights of the plain format reward's parts (:func:`~enigma_cli.core.format_rewards.format_reward`).
    graded_weights : (float, float)
        :math:`(w_a, w_\ell)`, the weights of answer parseability and reasoning length.
    band : (int, int)
        Reasoning words that earn full length credit.
    numeric : bool
        Answers should be numbers (else: short text).

    Returns
    -------
    reward : torch.Tensor
        Shape ``(N,)``, float32.
    terms : dict of str to torch.Tensor
        The plain parts ``"strict"``, ``"soft"``, ``"tags"`` and the graded ``"parse"`` and ``"length"``
        (ungated), each ``(N,)`` float32.
    """
    base, terms = format_reward(texts, w_strict=w_strict, w_soft=w_soft, w_tags=w_tags)
    parsed = [parse_completion(t) for t in texts]
    terms["parse"] = torch.tensor([float(answer_parses(p.answer, numeric=numeric)) for p in parsed])
    terms["length"] = torch.tensor([reasoning_length_credit(len((p.reasoning or "").split()), band) for p in parsed])
    w_parse, w_length = graded_weights
    reward = base + terms["strict"] * (w_parse * terms["parse"] + w_length * terms["length"])
    return reward.float(), terms
