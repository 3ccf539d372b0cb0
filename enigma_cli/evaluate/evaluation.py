"""`enigma evaluate`: what a reward did to a model's answers (method.md §7).

For N held-out prompts, sample k completions each and report: strict format rate, accuracy@1 (the mean over
samples of single-sample accuracy, an unbiased estimate of pass@1), majority-vote accuracy (the most frequent
answer of the k; ties go to the first seen), the answer entropy of each prompt's k answers (nats, over parsable
answers), and the mean number of distinct answers.

Accuracy is reported twice, as lm-evaluation-harness does for GSM8K (see `enigma_cli.core.answers`):

- ``accuracy_at_1`` / ``majority_accuracy`` / ``answer_rate``: **strict**, the answer inside ``<answer>`` tags;
- ``…_flexible``: the last number (or choice letter) anywhere, so a model that answers "17 + 25 = 42." without
  the layout still gets credit. The gap between the two is what the format costs.

Two answers are the same when `enigma_cli.core.answers.answers_match` says so (our exact normalisation, then
math-verify for LaTeX, expressions and units); multiple-choice answers are letters compared as such. Majority
votes and entropies count equivalent spellings (``0.5``, ``1/2``) as one answer. The entropy, distinct answers and
majority share describe the strict answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from ..core import parse_completion
from ..core.answer_stats import group_answer_stats, majority_vote
from ..core.answers import answer_classes, answers_match, extract_answer, is_numeric_answer
from ..datasets import Example
from ..models.rollout import generate
from ..prompts import render_prompt


@dataclass(frozen=True)
class EvalSettings:
    samples: int = 8
    max_new_tokens: int = 96
    temperature: float = 1.0
    batch_size: int = 64
    seed: int = 0
    numeric: bool = True
    math_verify: bool = True


def _letters_equal(a: str, b: str) -> bool:
    return a == b


def _matcher(ex: Example, cfg: EvalSettings):
    """How two answers to `ex` are compared: letters for multiple choice, else answers_match."""
    if ex.choices:
        return _letters_equal
    return partial(answers_match, numeric=cfg.numeric, math_verify=cfg.math_verify)


def _extract(texts: list[str], examples: list[Example], k: int, mode: str, cfg: EvalSettings) -> list[str | None]:
    out = []
    for i, text in enumerate(texts):
        ex = examples[i // k]
        numeric = cfg.numeric and (ex.answer is None or is_numeric_answer(ex.answer))
        out.append(extract_answer(text, mode, n_choices=len(ex.choices or ()), choices=ex.choices,
                                  numeric=numeric))
    return out


def _accuracies(answers: list[str | None], examples: list[Example], k: int, cfg: EvalSettings
                ) -> tuple[float, float, list[str | None], list[float | None]]:
    """(accuracy@1, majority accuracy, answers replaced by their equivalence class, each prompt's accuracy@1 —
    None where it has no label) over the labelled prompts."""
    keys: list[str | None] = []
    per_prompt: list[float | None] = []
    hits, votes_right, labelled = 0, 0, 0
    for p, ex in enumerate(examples):
        match = _matcher(ex, cfg)
        group = answer_classes(answers[p * k:(p + 1) * k], match)
        keys += group
        if ex.answer is None:
            per_prompt.append(None)
            continue
        labelled += 1
        right = sum(a is not None and match(a, ex.answer) for a in group)
        hits += right
        per_prompt.append(right / k)
        (vote,) = majority_vote(group, k)
        votes_right += vote is not None and match(vote, ex.answer)
    if not labelled:
        return float("nan"), float("nan"), keys, per_prompt
    return hits / (labelled * k), votes_right / labelled, keys, per_prompt


def evaluate(lm, examples: list[Example], principle: str | None, cfg: EvalSettings) -> dict:
    """One row of metrics for `lm` on `examples` under `principle` (None: no principle)."""
    prompts = [render_prompt(lm.tokenizer, principle, ex.prompt_text) for ex in examples]
    with torch.no_grad():
        gen = generate(lm.model, lm.tokenizer, prompts, num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)
    k = cfg.samples
    strict = _extract(gen.texts, examples, k, "strict", cfg)
    flexible = _extract(gen.texts, examples, k, "flexible", cfg)
    acc, maj, keys, _ = _accuracies(strict, examples, k, cfg)
    acc_flex, maj_flex, _, per_prompt = _accuracies(flexible, examples, k, cfg)
    row = {"prompts": len(examples), "samples": k,
           "format_rate": sum(parse_completion(t).strict for t in gen.texts) / len(gen.texts),
           "answer_rate": sum(a is not None for a in strict) / len(strict),
           "answer_rate_flexible": sum(a is not None for a in flexible) / len(flexible),
           "accuracy_at_1": acc, "majority_accuracy": maj,
           "accuracy_at_1_flexible": acc_flex, "majority_accuracy_flexible": maj_flex}
    stats = group_answer_stats(keys, k)
    row["answer_entropy"] = stats["answer_entropy"]
    row["distinct_answers"] = stats["distinct_answers"]
    row["majority_share"] = stats["majority_share"]
    row["completion_len_mean"] = sum(len(c) for c in gen.completion_ids) / len(gen.completion_ids)
    row[PER_PROMPT] = per_prompt
    return row


#: the row key of each prompt's flexible accuracy@1 (a list in the order of the examples, None where unlabelled),
#: for paired comparisons; not a report column
PER_PROMPT = "per_prompt_accuracy_flexible"


def paired_difference(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean of a[q] − b[q] over the questions q both dicts score (not None): (mean difference, its standard error —
    the SD of the per-question differences / √n, since both models answered the same questions — and n). NaN when
    fewer than 2 questions are shared."""
    diffs = [a[q] - b[q] for q in a if q in b and a[q] is not None and b[q] is not None]
    n = len(diffs)
    if n < 2:
        return float("nan"), float("nan"), n
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5
    return mean, sd / n ** 0.5, n
