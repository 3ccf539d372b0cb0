"""`EvaluateConfig`: every option of `enigma evaluate` (the single source of its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..options import Options, device_opt, dtype_opt, opt
from ..report import FORMATS


@dataclass(frozen=True)
class EvaluateConfig(Options):
    model: tuple[str, ...] = opt(("enigma-tiny",), "Model(s) to evaluate (repeatable): enigma-tiny, smollm2, a "
                                                   "folder, a run folder or a hub id.")
    dataset: str = opt("synthetic", "'synthetic' (held-out problems), a file or a hub id.")
    question_column: str | None = opt(None, "Column holding the question.")
    answer_column: str | None = opt(None, "Column holding the answer.")
    choices_column: str | None = opt(None, "Column holding multiple-choice options (a list or 'A) … B) …' text; "
                                           "default: choices or options when present); answers are then letters.")
    math_verify: bool = opt(True, "Decide answer equivalence with math-verify (LaTeX, fractions, units) after our "
                                  "normalisation.", negative="--no-math-verify")
    prompts: int = opt(64, "Prompts to evaluate on.", ge=1)
    samples: int = opt(8, "Completions per prompt.", short="-k", ge=1)
    principle: str | None = opt(None, "Principle text for the system prompt (default: none).")
    max_new_tokens: int = opt(96, "Longest completion, in tokens.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature (0 = greedy).", ge=0)
    batch_size: int = opt(64, "Sequences per generation batch.", ge=1)
    seed: int = opt(0, "Seed for prompts and sampling.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    out: str | None = opt(None, "Write the report here instead of stdout.", metavar="FILE", output="file")
    format: str = opt("csv", "Report format.", choices=FORMATS)

    def check(self) -> None:
        if not self.model:
            raise InputError("give at least one --model to evaluate.")
