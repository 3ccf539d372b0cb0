"""`enigma evaluate`: what a reward did to a model's answers (method.md §7).

For N held-out prompts, sample k completions each and report: strict format rate, accuracy@1 (the mean over
samples of single-sample accuracy, an unbiased estimate of pass@1), majority-vote accuracy (the most frequent
parsed answer of the k; ties go to the first seen), the answer entropy of each prompt's k answers (nats, over
parsable answers), and the mean number of distinct answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import normalize_answer, parse_completion
from .core.answer_stats import group_answer_stats, majority_vote
from .datasets import Example
from .models.rollout import generate
from .prompts import render_prompt


@dataclass(frozen=True)
class EvalSettings:
    samples: int = 8
    max_new_tokens: int = 96
    temperature: float = 1.0
    batch_size: int = 64
    seed: int = 0
    numeric: bool = True


def evaluate(lm, examples: list[Example], principle: str | None, cfg: EvalSettings) -> dict:
    """One row of metrics for `lm` on `examples` under `principle` (None: no principle)."""
    prompts = [render_prompt(lm.tokenizer, principle, ex.question) for ex in examples]
    with torch.no_grad():
        gen = generate(lm.model, lm.tokenizer, prompts, num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)
    parsed = [parse_completion(t) for t in gen.texts]
    answers = [normalize_answer(p.answer, numeric=cfg.numeric) for p in parsed]
    labels = [normalize_answer(ex.answer, numeric=cfg.numeric) if ex.answer is not None else None
              for ex in examples]
    k = cfg.samples
    row = {"prompts": len(examples), "samples": k,
           "format_rate": sum(p.strict for p in parsed) / len(parsed),
           "answer_rate": sum(a is not None for a in answers) / len(answers)}
    if any(lab is not None for lab in labels):
        hits = [answers[i] is not None and answers[i] == labels[i // k] for i in range(len(answers))]
        votes = majority_vote(answers, k)
        row["accuracy_at_1"] = sum(hits) / len(hits)
        row["majority_accuracy"] = sum(v is not None and v == lab for v, lab in zip(votes, labels)) / len(labels)
    else:
        row["accuracy_at_1"] = row["majority_accuracy"] = float("nan")
    stats = group_answer_stats(answers, k)
    row["answer_entropy"] = stats["answer_entropy"]
    row["distinct_answers"] = stats["distinct_answers"]
    row["majority_share"] = stats["majority_share"]
    row["completion_len_mean"] = sum(len(c) for c in gen.completion_ids) / len(gen.completion_ids)
    return row
