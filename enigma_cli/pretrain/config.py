"""`BuildConfig`: every option of `enigma build-default-model` (the single source of its flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..options import Options, opt


def default_out() -> Path:
    """The shipped model's folder inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "enigma-tiny"


@dataclass(frozen=True)
class BuildConfig(Options):
    out: str | None = opt(None, "Folder to write (replaced atomically). Default: the package's "
                                "enigma_cli/data/enigma-tiny.", metavar="DIR", output="dir")
    steps: int = opt(2000, "Optimizer steps.", ge=1)
    examples: int = opt(64000, "Synthetic training examples.", ge=1)
    batch_size: int = opt(32, "Examples per step.", ge=1)
    lr: float = opt(6e-3, "Peak AdamW learning rate (warm-up, then cosine decay).", gt=0)
    seed: int = opt(0, "Seed for data, tokenizer, initialisation, order and evaluation.")
    vocab_size: int = opt(512, "Largest BPE vocabulary, special tokens included (at least 256 bytes + 6).",
                          ge=262)
    hidden_size: int = opt(128, "Model width.", ge=1)
    layers: int = opt(4, "Transformer layers.", ge=1)
    heads: int = opt(4, "Attention heads.", ge=1)
    intermediate_size: int = opt(256, "MLP width.", ge=1)
    format_noise: float = opt(0.2, "Fraction of training completions with a format defect.", ge=0, le=1)
    style_noise: float = opt(0.3, "Fraction of training completions written in another style than their "
                                  "principle asks for.", ge=0, le=1)
    eval_prompts: int = opt(500, "Held-out prompts to measure the model on (0: skip).", ge=0)
    threads: int = opt(1, "CPU threads (1 is reproducible bit for bit).", ge=1)
    format: str = opt("csv", "Metrics on stdout.", choices=("csv", "jsonl"))

    def check(self) -> None:
        if self.hidden_size % self.heads:
            raise InputError(f"--hidden-size {self.hidden_size} must be a multiple of --heads {self.heads}.")
