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
    lm_eval: tuple[str, ...] = opt((), "Run lm-evaluation-harness instead: its task names or task .yaml files "
                                       "(repeatable or comma-separated; pip install 'enigma-cli[lm-eval]'). One row "
                                       "per model, task and metric; --dataset, --samples and --temperature do not "
                                       "apply.", metavar="TASKS", split=True)
    lm_eval_limit: float | None = opt(None, "With --lm-eval: documents per task (a count, or a fraction below 1), "
                                            "passed to lm-eval's limit.", gt=0)
    lm_eval_output: str | None = opt(None, "With --lm-eval: lm-eval's own results and per-sample logs (default: "
                                           "beside --out as FILE.lm-eval/, else ./lm-eval-output).", metavar="DIR",
                                     output="dir")

    def check(self) -> None:
        if not self.model:
            raise InputError("give at least one --model to evaluate.")
        if not self.lm_eval:
            for name, value in (("--lm-eval-limit", self.lm_eval_limit), ("--lm-eval-output", self.lm_eval_output)):
                if value is not None:
                    raise InputError(f"{name} applies to --lm-eval runs; give --lm-eval TASKS too.")
        elif self.lm_eval_limit is not None and self.lm_eval_limit >= 1 and not self.lm_eval_limit.is_integer():
            raise InputError(f"--lm-eval-limit must be a whole number of documents or a fraction below 1, not "
                             f"{self.lm_eval_limit}.")
