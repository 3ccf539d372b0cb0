"""`enigma sft`: a supervised format warm-up (TRL SFTTrainer) before GRPO, with the format rate before and after."""

from __future__ import annotations

import pandas as pd

from ..cli_options import command
from ..console import console
from ..models.loading import resolve_device, resolve_dtype
from ..report import write_table
from ..sft import plan
from ..sft import run as sft_run
from ..sft.config import SftConfig


def run(cfg: SftConfig, dry_run: bool) -> None:
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # an unavailable device or bad dtype: exit 3 now
    p = plan(cfg)
    if dry_run:
        console.print(f"{p.describe()}. Nothing loaded (--dry-run).", highlight=False)
        return
    write_table(pd.DataFrame([sft_run(p)]), None, "csv")


sft = command(SftConfig, "sft", run,
              help="Teach a model the <reasoning>/<answer> layout with a short supervised warm-up before GRPO (TRL's "
                   "SFTTrainer, loss on the completion only). Prints one CSV row: model, steps, loss first/last, "
                   "format rate before/after on held-out prompts, output folder, seconds.")
