"""How a question dataset becomes TRL prompts: one TRL prompt per (question, principle), grouped K at a time.

`principle_rows` turns a dataset of Q questions into Q·P (question, principle) rows, row q·P + c (P: the
principles of the set). `PrincipleGroupSampler` plays TRL's `RepeatSampler` for those rows: it shuffles the
*questions*, draws K of the P principles for each question (random order), and yields each drawn row
``num_generations`` (M = G/K) times, question after question. A batch of whole questions therefore lists question
p's completions as principle slot j, sample s at (p·K + j)·M + s: `train.episodes.Episodes`' layout, which the
SAMI critic matrices and the question-level advantages read.
"""

from __future__ import annotations

import datasets
import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import Sampler

from ..datasets import _quiet_progress


def question_of(row: dict, column: str) -> str:
    """The question of a dataset row: ``row[column]``, else its ``prompt`` (text, or the last user message)."""
    if column in row and row[column] is not None:
        return str(row[column])
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise ValueError(f"EnigmaGRPOTrainer: a dataset row has no {column!r} column and no text prompt to take the "
                     "question from (a string, or chat messages ending with a user turn).")


def principle_rows(dataset, n_principles: int):
    """The question dataset with each row repeated once per principle: row q·P + c is question q under principle c.

    Two columns are added, ``enigma_question`` (q) and ``enigma_principle_index`` (c); the question and principle
    texts are filled in when the batch is generated (`EnigmaGRPOTrainer._generate_and_score_completions`). The
    other columns (e.g. ``answer``) reach the reward functions as in TRL.
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError("EnigmaGRPOTrainer needs a map-style train_dataset (with a length), not a stream.")
    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    if not isinstance(dataset, Dataset):
        raise TypeError(f"train_dataset must be a datasets.Dataset or a list of dicts, not {type(dataset).__name__}.")
    taken = [c for c in ("enigma_question", "enigma_principle_index") if c in dataset.column_names]
    if taken:
        raise ValueError(f"train_dataset already has a column {taken[0]!r}; pass the question dataset itself.")
    n = len(dataset)
    with _quiet_progress(datasets):
        rows = dataset.select([q for q in range(n) for _ in range(n_principles)])
        rows = rows.add_column("enigma_question", [q for q in range(n) for _ in range(n_principles)])
        return rows.add_column("enigma_principle_index", [c for _ in range(n) for c in range(n_principles)])


class PrincipleGroupSampler(Sampler[int]):
    """TRL's `RepeatSampler`, with (question, principle) rows grouped by question.

    Per batch of ``questions_per_batch`` questions (shuffled with ``seed`` when ``shuffle``), K principles are drawn
    for each question (a random order, without replacement); the batch is then yielded ``repeat_count`` times
    (TRL reuses a generation for ``num_iterations × steps_per_generation`` micro-steps), each row ``m`` times in a
    row. Incomplete last batches are dropped, as in TRL.
    """

    def __init__(self, n_questions: int, n_principles: int, k: int, m: int, questions_per_batch: int,
                 repeat_count: int = 1, shuffle: bool = True, seed: int | None = None):
        if k > n_principles:
            raise ValueError(f"principles_per_prompt ({k}) exceeds the {n_principles} principles of the set.")
        self.n_questions, self.n_principles, self.k, self.m = n_questions, n_principles, k, m
        self.questions_per_batch, self.repeat_count, self.shuffle = questions_per_batch, repeat_count, shuffle
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def __iter__(self):
        order = (torch.randperm(self.n_questions, generator=self.generator).tolist() if self.shuffle
                 else list(range(self.n_questions)))
        size = self.questions_per_batch
        for start in range(0, len(order) - size + 1, size):
            chunk = order[start:start + size]
            draws = [torch.randperm(self.n_principles, generator=self.generator)[:self.k].tolist() for _ in chunk]
            for _ in range(self.repeat_count):
                for q, principles in zip(chunk, draws):
                    for c in principles:
                        yield from [q * self.n_principles + c] * self.m

    def __len__(self) -> int:
        batches = self.n_questions // self.questions_per_batch
        return batches * self.questions_per_batch * self.k * self.m * self.repeat_count


def check_layout(questions: list[int], principles: list[int], k: int, m: int) -> None:
    """Raise unless the rows are whole questions laid out (p·K + j)·M + s with K distinct principles each."""
    g = k * m
    ok = len(questions) % g == 0
    for start in range(0, len(questions) if ok else 0, g):
        qs, cs = questions[start:start + g], principles[start:start + g]
        slots = [cs[j * m:(j + 1) * m] for j in range(k)]
        ok = (len(set(qs)) == 1 and all(len(set(s)) == 1 for s in slots)
              and len({s[0] for s in slots}) == k)
        if not ok:
            break
    if not ok:
        raise RuntimeError("EnigmaGRPOTrainer: a batch does not hold whole questions with their K principles in "
                           "order; the SAMI matrices and the question-level advantages cannot be built. (Was the "
                           "train sampler or _prepare_inputs replaced?)")
