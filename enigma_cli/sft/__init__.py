"""`enigma sft`: a supervised warm-up that teaches a model the `<reasoning>`/`<answer>` layout (method.md §8).

Built on TRL's ``SFTTrainer``: the rows (`enigma_cli.sft.data`) are prompt-completion pairs tokenised as generation
sees them, the loss covers completion tokens only, LoRA comes from ``peft``. `plan` validates everything without
loading weights; `run` trains, saves a folder every command accepts as ``--model``, and reports the format rate on
held-out prompts before and after.
"""

from .config import SftConfig, default_lr
from .run import Plan, plan, run

__all__ = ["Plan", "SftConfig", "default_lr", "plan", "run"]
