"""`SftConfig`: every option of `enigma sft`, validated before anything is loaded, and the default learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from ..models.loading import DEVICE_NAMES, DTYPE_NAMES

# Learning rates by model size (method.md §8): a rate that suits a ~1M-parameter toy destroys a 0.1-1B model.
SMALL_MODEL_PARAMS = 50_000_000
DEFAULT_LR = {  # (small model?, LoRA?) -> rate
    (True, False): 1e-3, (True, True): 3e-3,
    (False, False): 2e-5, (False, True): 2e-4,
}
DEFAULT_SYNTHETIC_ROWS = 512


def default_lr(num_params: int, lora: bool) -> float:
    """The learning rate used when --lr is not given: by model size (under 50M parameters: a toy) and LoRA."""
    return DEFAULT_LR[(num_params < SMALL_MODEL_PARAMS, lora)]


@dataclass(frozen=True)
class SftConfig:
    model: str = "enigma-tiny"
    dataset: str | None = None  # None or "synthetic": built-in problems with worked completions
    question_column: str | None = None
    answer_column: str | None = None
    rationale_column: str | None = None
    choices_column: str | None = None
    principle: str | None = None  # system-prompt principle; none by default (a principle-neutral warm-up)
    rows: int | None = None  # training rows (None: all of the file; synthetic: DEFAULT_SYNTHETIC_ROWS)
    steps: int = 0  # optimiser steps; 0: run --epochs over the rows
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None  # None: default_lr(model size, LoRA)
    warmup_ratio: float = 0.1
    lora_r: int = 0  # 0: full fine-tuning
    lora_alpha: int | None = None  # None: 2 * lora_r
    merge: bool = False  # LoRA: write the merged model instead of the adapter
    max_length: int = 512  # tokens of prompt + completion; longer rows are cut (with a warning)
    output_dir: str = "runs/sft"
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    eval_prompts: int = 16  # held-out prompts for the format rate before and after (0: skip)
    eval_samples: int = 2
    eval_max_new_tokens: int = 128

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise InputError(msg)

        for name in ("batch_size", "grad_accum", "max_length", "eval_samples", "eval_max_new_tokens"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')} must be at least 1, not {value}.")
        for name in ("steps", "lora_r", "eval_prompts"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"--{name.replace('_', '-')} must be 0 or more, not {value}.")
        need(self.rows is None or (isinstance(self.rows, int) and self.rows >= 1),
             f"--rows must be at least 1, not {self.rows}.")
        need(_finite(self.epochs) and self.epochs > 0, f"--epochs must be a positive number, not {self.epochs}.")
        need(self.lr is None or (_finite(self.lr) and 0 < self.lr < 1),
             f"--lr must be a number in (0, 1), not {self.lr}.")
        need(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
             f"--warmup-ratio must lie in [0, 1), not {self.warmup_ratio}.")
        need(self.lora_alpha is None or (isinstance(self.lora_alpha, int) and self.lora_alpha >= 1),
             f"--lora-alpha must be at least 1, not {self.lora_alpha}.")
        need(self.lora_alpha is None or self.lora_r > 0, "--lora-alpha needs --lora-r > 0.")
        need(not self.merge or self.lora_r > 0, "--merge needs --lora-r > 0 (full fine-tuning has nothing to merge).")
        need(self.device.strip().lower() in DEVICE_NAMES or self.device.strip().lower().startswith("cuda:"),
             f"--device must be one of {', '.join(DEVICE_NAMES)}, not {self.device!r}.")
        need(self.dtype.strip().lower() in (*DTYPE_NAMES, "fp32", "bf16", "fp16"),
             f"--dtype must be one of {', '.join(DTYPE_NAMES)}, not {self.dtype!r}.")
        need(bool(str(self.output_dir).strip()), "--output-dir must not be empty.")
        need(self.principle is None or bool(self.principle.strip()), "--principle must not be blank.")

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
