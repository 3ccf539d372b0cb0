"""Rows for the format warm-up: (prompt, completion) pairs in the layout of method.md §1, tokenised for TRL.

A row is a question rendered with the system prompt that `enigma train` uses (`enigma_cli.prompts.render_prompt`:
the format instruction, and the principle only when one is given) and a completion
``<reasoning>\\n{rationale}\\n</reasoning>\\n<answer>\\n{answer}\\n</answer>`` followed by EOS.

Sources:

- no dataset (or ``synthetic``): the built-in problems of the *training* split (`enigma_cli.tasks.synthetic`),
  their working written in the ``default`` style, which no shipped principle asks for more than the others
  (one line per step, then "So the answer is N."), so the warm-up teaches the layout and not a principle;
- a file or hub dataset with a question, a rationale and an answer: CoT-Collection's ``source``/``rationale``/
  ``target``, GSM8K's ``question``/``answer`` where the rationale is the text before ``####``, or any columns
  named by the options. Multiple-choice rows put their options in the question and a letter in the answer.

Held-out prompts for the format rate before and after: the synthetic *held-out* split, or for a dataset
``eval_prompts`` rows drawn (by seed) from the file and kept out of training.

Tokenisation is ours, not TRL's: the prompt is encoded exactly as generation encodes it
(`enigma_cli.models.rollout.encode_prompts`: the chat template's own BOS, never a second one), the completion
without special tokens, then EOS. TRL receives ``input_ids`` and ``completion_mask`` and so trains on the very
token sequences the model later completes, with the loss on completion tokens only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..datasets import Example, load_examples
from ..errors import InputError
from ..models.rollout import encode_prompts
from ..prompts import render_prompt
from ..tasks.synthetic import format_completion, generate_problems, render_completion
from .config import DEFAULT_SYNTHETIC_ROWS, SftConfig


@dataclass(frozen=True)
class SftRow:
    question: str  # what the user turn says (with the options for multiple choice)
    completion: str  # the layout, without EOS


def is_synthetic(dataset: str | None) -> bool:
    return dataset is None or str(dataset).strip().lower() == "synthetic"


def load_rows(cfg: SftConfig) -> tuple[list[SftRow], list[Example]]:
    """(training rows, held-out examples for the format rate), or an InputError naming the dataset or column."""
    if is_synthetic(cfg.dataset):
        for flag, value in (("--question-column", cfg.question_column), ("--answer-column", cfg.answer_column),
                            ("--rationale-column", cfg.rationale_column), ("--choices-column", cfg.choices_column)):
            if value is not None:
                raise InputError(f"{flag} needs a --dataset; the synthetic problems have fixed fields.")
        n = cfg.rows or DEFAULT_SYNTHETIC_ROWS
        rows = [SftRow(p.question, render_completion(p, None)) for p in generate_problems(n, cfg.seed)]
        held = load_examples(None, n=cfg.eval_prompts, seed=cfg.seed) if cfg.eval_prompts else []
        return rows, held
    examples = load_examples(cfg.dataset, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column, rationale_column=cfg.rationale_column,
                             choices_column=cfg.choices_column)
    usable = [ex for ex in examples if ex.rationale and ex.answer]
    if not usable:
        raise InputError(f"dataset {cfg.dataset!r} has no row with both a rationale and an answer (CoT-Collection's "
                         "rationale/target, GSM8K's answer with '####', or name them with --rationale-column and "
                         "--answer-column).")
    order = list(range(len(usable)))
    random.Random(cfg.seed).shuffle(order)
    held_idx = order[:cfg.eval_prompts] if cfg.eval_prompts else []
    train_idx = order[len(held_idx):]
    if not train_idx:
        raise InputError(f"dataset {cfg.dataset!r} has {len(usable)} usable rows, all held out for --eval-prompts "
                         f"{cfg.eval_prompts}; lower --eval-prompts or give more rows.")
    if cfg.rows is not None:
        train_idx = train_idx[:cfg.rows]
    rows = [SftRow(usable[i].prompt_text, format_completion(usable[i].rationale.strip(), usable[i].answer.strip()))
            for i in sorted(train_idx)]
    return rows, [usable[i] for i in sorted(held_idx)]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[list[int]]
    completion_mask: list[list[int]]
    truncated: int  # rows cut at max_length
    dropped: int  # rows whose prompt alone fills max_length (no completion token left)
    longest: int  # tokens of the longest row before cutting


def encode_rows(tokenizer, rows: list[SftRow], principle: str | None, max_length: int) -> Encoded:
    """Token ids of prompt + completion + EOS and the completion mask (1 on completion tokens), cut at max_length."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the model's tokenizer has no EOS token, so a completion cannot be ended.")
    prompts = encode_prompts(tokenizer, [render_prompt(tokenizer, principle, r.question) for r in rows])
    ids_out, masks, truncated, dropped, longest = [], [], 0, 0, 0
    for prompt, row in zip(prompts, rows):
        completion = list(tokenizer(row.completion, add_special_tokens=False)["input_ids"]) + [eos]
        ids = prompt + completion
        longest = max(longest, len(ids))
        if len(prompt) >= max_length:
            dropped += 1
            continue
        if len(ids) > max_length:
            truncated += 1
        ids_out.append(ids[:max_length])
        masks.append(([0] * len(prompt) + [1] * len(completion))[:max_length])
    return Encoded(ids_out, masks, truncated, dropped, longest)
