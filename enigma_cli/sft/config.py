"""`SftConfig`: every option of `enigma sft`, validated before anything is loaded, and the default learning rate."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import require
from ..models.size import is_small
from ..options import Options, device_opt, dtype_opt, opt

# Learning rates by model size (method.md §8): a rate that suits a ~1M-parameter toy destroys a 0.1-1B model.
DEFAULT_LR = {  # (small model?, LoRA?) -> rate
    (True, False): 1e-3, (True, True): 3e-3,
    (False, False): 2e-5, (False, True): 2e-4,
}
DEFAULT_SYNTHETIC_ROWS = 512


def default_lr(num_params: int, lora: bool) -> float:
    """The learning rate used when --lr is not given: by model size (`models.size.is_small`) and LoRA."""
    return DEFAULT_LR[(is_small(num_params), lora)]


@dataclass(frozen=True)
class SftConfig(Options):
    model: str = opt("enigma-tiny", "enigma-tiny, smollm2, a local model folder or a hub id.")
    dataset: str = opt("synthetic", "'synthetic' (built-in worked problems), a JSONL/CSV/parquet file or a hub id "
                                    "with question, rationale and answer.")
    question_column: str | None = opt(None, "Column holding the question.")
    answer_column: str | None = opt(None, "Column holding the answer (GSM8K: the part after ####).")
    rationale_column: str | None = opt(None, "Column holding the reasoning (default: rationale; GSM8K: the answer "
                                             "before ####).")
    choices_column: str | None = opt(None, "Column holding multiple-choice options.")
    principle: str | None = opt(None, "Principle text for the system prompt (default: none, a principle-neutral "
                                      "warm-up).")
    rows: int | None = opt(None, f"Training rows (default: all; synthetic: {DEFAULT_SYNTHETIC_ROWS}).", ge=1)
    steps: int = opt(0, "Optimiser steps (0: --epochs over the rows).", ge=0)
    epochs: float = opt(1.0, "Passes over the rows when --steps is 0.", gt=0)
    batch_size: int = opt(8, "Rows per micro-batch.", ge=1)
    grad_accum: int = opt(1, "Micro-batches per optimiser step.", ge=1)
    lr: float | None = opt(None, "Peak learning rate (default by model size: 2e-5 full / 2e-4 LoRA above 20M "
                                 "parameters, 1e-3 / 3e-3 below).", gt=0, lt=1)
    warmup_ratio: float = opt(0.1, "Fraction of the steps spent warming up.", ge=0, lt=1)
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning).", ge=0)
    lora_alpha: int | None = opt(None, "LoRA alpha (default: 2 × rank).", ge=1)
    merge: bool = opt(False, "LoRA: write the merged model, not the adapter.")
    max_length: int = opt(512, "Longest row in tokens (prompt + completion); longer rows are cut with a warning.",
                          ge=1)
    output_dir: str = opt("runs/sft", "New folder for the checkpoint (refuses a finished run).", metavar="DIR")
    eval_prompts: int = opt(16, "Held-out prompts for the format rate before/after (0: skip).", ge=0)
    eval_samples: int = opt(2, "Completions per held-out prompt.", ge=1)
    eval_max_new_tokens: int = opt(128, "Longest held-out completion, in tokens.", ge=1)
    seed: int = opt(0, "Seed for rows, held-out prompts, order and sampling.")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def check(self) -> None:
        require(self.lora_alpha is None or self.lora_r > 0, "--lora-alpha needs --lora-r > 0.")
        require(not self.merge or self.lora_r > 0, "--merge needs --lora-r > 0 (full fine-tuning has nothing to merge).")
        require(bool(str(self.output_dir).strip()), "--output-dir must not be empty.")
        require(self.principle is None or bool(self.principle.strip()), "--principle must not be blank.")

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r



