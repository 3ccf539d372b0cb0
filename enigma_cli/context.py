"""Do the prompts fit? One check of prompt length + ``--max-new-tokens`` against the model's context window.

Every command that renders prompts (train, score-principles, generate, evaluate, analyze-manifold) asks a
`ContextCheck` before it loads weights. The window is read from disk (`modelfiles.inspect`: the config's
``max_position_embeddings`` or its equivalent, and the tokenizer), and each prompt is rendered exactly as the
command will render it (`prompts.render_prompt`, `rollout.encode_prompts`). When the window cannot be read
without loading (a GGUF file not yet converted, a hub id), the same check runs on the loaded model, before
anything is generated (`ContextCheck.loaded`).

What does not fit:

- ``--max-new-tokens`` at least the window, or a principle whose prompt alone leaves no room for the
  completion: refused (exit code 3), naming the flag or the principle;
- a question the user typed (``generate QUESTION``): refused, naming the question;
- dataset rows: skipped with one warning that counts them, since one overlong row in a file of thousands
  should not stop a run; refused when no row is left.

Large files, lazily (``ContextCheck(lazy=True)``, for a loop that draws rows: `enigma train`): when more than
`SAMPLE` rows are too long to be sure of by the byte bound below, only a seeded sample of `SAMPLE` of them is
tokenized before anything loads. None of the sample fits (and no row is sure to): refused at once, since then at
most 3% of the rows could fit (the 95% bound of 0 in 100). Otherwise the check returns every row but the sampled
ones that do not fit, and `Rows.fits` decides each other row when the loop first draws it: a row that cannot fit is
skipped, redrawn and counted (`Rows.skipped`). Tokenizing every row first cost 3 min 27 s on a 96 MB file of
12,000 rows of 6,000 tokens (BENCHMARKS.md).

Cost: a prompt's token count is at most the count of its principle's prompt with an empty question plus the
question's UTF-8 bytes plus a small slack (a byte-level or byte-fallback tokenizer spends at most one token per
byte; template joins cost a few). Only questions that fail that bound are tokenized, so a file of short rows
costs one tokenization per principle.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import modelfiles
from .console import console
from .errors import InputError, first_line
from .modelfiles import positions_of
from .prompts import render_prompt

#: tokens a template may add when the question is joined to its prompt, beyond one per byte of the question
SLACK = 16
#: rows tokenized before a lazy start (about 2 s for rows of 6,000 tokens on enigma-tiny's tokenizer)
SAMPLE = 100


@dataclass(frozen=True)
class Window:
    """A model's context: `positions` (None: unknown) and the tokenizer that renders its prompts (None: not
    loadable without loading the model)."""

    model: str
    positions: int | None
    tokenizer: Any = None


def peek(spec: str) -> Window:
    """The window of a model spec read from disk, without weights (an unreadable model file is an InputError)."""
    files = modelfiles.inspect(spec)
    if files is None:
        return Window(spec, None)
    tokenizer = None
    if files.tokenizer_dir is not None and files.positions is not None:
        from transformers import AutoTokenizer  # lazy: its tokenizer classes add ~0.2 s to `enigma --help`

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(files.tokenizer_dir), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - a tokenizer we cannot read now, load_model cannot either
            raise InputError(f"model '{spec}': the tokenizer in {files.tokenizer_dir} cannot be read "
                             f"({first_line(err)}).") from None
    return Window(spec, files.positions, tokenizer)


def of_loaded(lm) -> Window:
    config = lm.model.config
    return Window(lm.name, positions_of(config.to_dict()) if hasattr(config, "to_dict") else None, lm.tokenizer)


@dataclass(frozen=True)
class Principle:
    """A principle as a prompt carries it: `label` names it in messages, `text` is None for no principle."""

    label: str
    text: str | None


def principles_of(*sets) -> list[Principle]:
    """The principles of principle sets, labelled 'principle ID of set NAME'."""
    return [Principle(f"principle {p.id!r} of set {s.name}", p.text) for s in sets for p in s.principles]


@dataclass
class ContextCheck:
    """The prompts a command will render (`principles` × questions) and the completion length after them.

    `rows`: where the questions come from when they are dataset rows (skipped when too long), None when the
    user typed them (refused when too long).
    """

    principles: Sequence[Principle]
    max_new_tokens: int
    rows: str | None = None
    flag: str = "--max-new-tokens"
    deferred: set[str] = field(default_factory=set)
    lazy: bool = False
    #: (window, prompt budget, longest principle prompt) of every window whose rows are checked as drawn
    pending: list[tuple[Window, int, int]] = field(default_factory=list)

    def before_load(self, specs: str | Sequence[str], questions: Sequence[str]) -> list[int]:
        """Indices of the questions to keep, checked against every model whose window can be read from disk;
        the others are remembered and checked by `loaded`."""
        keep = list(range(len(questions)))
        for spec in [specs] if isinstance(specs, str) else specs:
            window = peek(spec)
            if window.tokenizer is None:
                self.deferred.add(spec)
            keep = self._fit(window, questions, keep)
        return keep

    def loaded(self, lm, questions: Sequence[str]) -> list[int]:
        """After `lm` loaded: the check that could not run before (all indices when it already ran)."""
        keep = list(range(len(questions)))
        if lm.name not in self.deferred:
            return keep
        self.deferred.discard(lm.name)
        return self._fit(of_loaded(lm), questions, keep)

    # -- the check itself --------------------------------------------------------------------------------------
    def _fit(self, window: Window, questions: Sequence[str], keep: list[int]) -> list[int]:
        n = window.positions
        if n is None:
            return keep
        where = f"the {n} positions of {window.model}"
        if self.max_new_tokens >= n:
            raise InputError(f"{self.flag} {self.max_new_tokens} leaves no room for a prompt in {where}.")
        if window.tokenizer is None:
            return keep
        budget = n - self.max_new_tokens
        principles = list(self.principles) or [Principle("the prompt without a principle", None)]
        base = _lengths(window.tokenizer, [p.text for p in principles], [""] * len(principles))
        for p, length in zip(principles, base):
            if length > budget:
                raise InputError(f"{p.label} makes a prompt of {length} tokens before any question; with "
                                 f"{self.flag} {self.max_new_tokens} it cannot fit in {where}.")
        worst = max(base)
        unsure = [i for i in keep if worst + len(questions[i].encode("utf-8")) + SLACK > budget]
        if self.lazy and self.rows is not None and len(unsure) > SAMPLE:
            return self._sample(window, questions, keep, unsure, budget, worst)
        too_long = {i: n for i in unsure if (n := self._longest(window, questions[i])) > budget}
        if not too_long:
            return keep
        first = min(too_long)
        if self.rows is None:
            q = questions[first]
            shown = q if len(q) <= 40 else q[:37] + "..."
            raise InputError(f"QUESTION {first + 1} ({shown!r}, {len(q):,} characters) makes a prompt of "
                             f"{too_long[first]:,} tokens; with {self.flag} {self.max_new_tokens} it cannot fit "
                             f"in {where}.")
        kept = [i for i in keep if i not in too_long]
        if not kept:
            raise InputError(f"no row of {self.rows} fits: every prompt (the first one {too_long[first]:,} tokens) "
                             f"plus {self.flag} {self.max_new_tokens} exceeds {where}.")
        console.print(f"[yellow]warning:[/] skipped {len(too_long)} of {len(keep)} rows of {self.rows}: their "
                      f"prompts plus {self.flag} {self.max_new_tokens} exceed {where}.", highlight=False)
        return kept

    def _longest(self, window: Window, question: str) -> int:
        """Tokens of the longest prompt `question` makes with any of the principles."""
        texts = [p.text for p in self.principles] or [None]
        return max(_lengths(window.tokenizer, texts, [question] * len(texts)))

    def _sample(self, window: Window, questions: Sequence[str], keep: list[int], unsure: list[int], budget: int,
                worst: int) -> list[int]:
        """The lazy check of many rows (module docstring): refuse when no sampled row fits and none is sure to;
        else keep all rows but the sampled misfits, and check the others as they are drawn (`fits`)."""
        where = f"the {window.positions} positions of {window.model}"
        sample = sorted(random.Random(0).sample(unsure, SAMPLE))
        too_long = {i: n for i in sample if (n := self._longest(window, questions[i])) > budget}
        if len(too_long) == SAMPLE and len(unsure) == len(keep):
            raise InputError(f"no row of {self.rows} fits: none of {SAMPLE} rows sampled from its {len(keep):,} "
                             f"(the first one {too_long[sample[0]]:,} tokens) leaves room for {self.flag} "
                             f"{self.max_new_tokens} in {where}, so at most 3% of its rows could.")
        self.pending.append((window, budget, worst))
        if too_long:
            console.print(f"[yellow]warning:[/] {len(too_long)} of {SAMPLE} rows sampled from the {len(unsure):,} "
                          f"longest of {self.rows} do not fit: their prompts plus {self.flag} {self.max_new_tokens} "
                          f"exceed {where}; such rows are skipped as they are drawn, and counted.", highlight=False)
        return [i for i in keep if i not in too_long]

    def fits(self, question: str) -> bool:
        """Whether a row left to be checked as drawn fits every window of `pending` (the byte bound first)."""
        size = len(question.encode("utf-8")) + SLACK
        return all(worst + size <= budget or self._longest(window, question) <= budget
                   for window, budget, worst in self.pending)


class Rows(list):
    """The rows a training loop draws from, with the lazy checks still owed on them (`ContextCheck.fits`).

    `fits(row)` answers once per distinct question (remembered); `skipped` counts the distinct rows found too
    long, `known` holds every distinct row decided so far."""

    def __init__(self, items=(), checks: Sequence[ContextCheck] = ()):
        super().__init__(items)
        self.checks = list(checks)
        self.known: dict[str, bool] = {}

    @property
    def deferred(self) -> set[str]:
        """Models whose window could not be read before loading: their check is still owed (`ContextCheck.loaded`)."""
        return set().union(*(c.deferred for c in self.checks))

    @property
    def lazy(self) -> bool:
        """Whether some rows are still to be checked as drawn."""
        return any(c.pending for c in self.checks)

    def fits(self, question: str) -> bool:
        if not self.lazy:
            return True
        if question not in self.known:
            self.known[question] = all(c.fits(question) for c in self.checks)
        return self.known[question]

    @property
    def skipped(self) -> int:
        return sum(not ok for ok in self.known.values())

    def also(self, check: ContextCheck, keep: Sequence[int]) -> Rows:
        """These rows cut to `keep` (indices into them), owing `check`'s lazy checks too."""
        return Rows([self[i] for i in keep], [*self.checks, check])


def _lengths(tokenizer, principles: list[str | None], questions: list[str]) -> list[int]:
    """Token counts of the prompts exactly as the commands build them: the chat template, then the tokens of
    `rollout.encode_prompts` (a BOS only when the tokenizer adds one and the text lacks it). verbose=False: that
    a prompt is longer than the tokenizer's own limit is what we are finding out, not a warning."""
    texts = [render_prompt(tokenizer, p, q) for p, q in zip(principles, questions)]
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]
    out = []
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        out.append(len(ids) + (1 if adds_bos and (not ids or ids[0] != bos) else 0))
    return out
