"""`enigma sft`: a supervised format warm-up (TRL SFTTrainer) before GRPO, with the format rate before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import config as cfgmod
from ..console import console
from ..sft.config import SftConfig

_D = SftConfig()


def sft(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="enigma-tiny, smollm2, a local model folder or a hub id.")] = _D.model,
    dataset: Annotated[str | None, typer.Option(help="'synthetic' (built-in worked problems), a JSONL/CSV/parquet "
                                                     "file or a hub id with question, rationale and answer.")] = None,
    question_column: Annotated[str | None, typer.Option(help="Column holding the question.")] = None,
    answer_column: Annotated[str | None, typer.Option(help="Column holding the answer (GSM8K: the part after "
                                                           "####).")] = None,
    rationale_column: Annotated[str | None, typer.Option(help="Column holding the reasoning (default: rationale; "
                                                              "GSM8K: the answer before ####).")] = None,
    choices_column: Annotated[str | None, typer.Option(help="Column holding multiple-choice options.")] = None,
    principle: Annotated[str | None, typer.Option(help="Principle text for the system prompt (default: none, a "
                                                       "principle-neutral warm-up).")] = None,
    rows: Annotated[int | None, typer.Option(help="Training rows (default: all; synthetic: 512).")] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps (0: --epochs over the rows).")] = _D.steps,
    epochs: Annotated[float, typer.Option(help="Passes over the rows when --steps is 0.")] = _D.epochs,
    batch_size: Annotated[int, typer.Option(help="Rows per micro-batch.")] = _D.batch_size,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimiser step.")] = _D.grad_accum,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default by model size: 2e-5 full / 2e-4 LoRA "
                                                  "above 50M parameters, 1e-3 / 3e-3 below).")] = None,
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of the steps spent warming up.")] = _D.warmup_ratio,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0 = full fine-tuning).")] = _D.lora_r,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha (default: 2 × rank).")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="LoRA: write the merged model, not the adapter.")] = False,
    max_length: Annotated[int, typer.Option(help="Longest row in tokens (prompt + completion); longer rows are "
                                                 "cut with a warning.")] = _D.max_length,
    output_dir: Annotated[Path, typer.Option(help="New folder for the checkpoint (refuses a finished run).")] = Path(
        _D.output_dir),
    eval_prompts: Annotated[int, typer.Option(help="Held-out prompts for the format rate before/after (0: skip).")]
    = _D.eval_prompts,
    eval_samples: Annotated[int, typer.Option(help="Completions per held-out prompt.")] = _D.eval_samples,
    eval_max_new_tokens: Annotated[int, typer.Option(help="Longest held-out completion, in tokens.")]
    = _D.eval_max_new_tokens,
    seed: Annotated[int, typer.Option(help="Seed for rows, held-out prompts, order and sampling.")] = _D.seed,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = _D.device,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = _D.dtype,
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options; typed flags win.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; load no weights.")] = False,
) -> None:
    """Teach a model the <reasoning>/<answer> layout with a short supervised warm-up before GRPO.

    Built on TRL's SFTTrainer, loss on the completion only. Prints one CSV row: model, steps, loss first/last, format
    rate before/after on held-out prompts, output folder, seconds.
    """
    cfg = cfgmod.resolve(
        SftConfig, ctx, config, model=model, dataset=dataset, question_column=question_column,
        answer_column=answer_column, rationale_column=rationale_column, choices_column=choices_column,
        principle=principle, rows=rows, steps=steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
        lr=lr, warmup_ratio=warmup_ratio, lora_r=lora_r, lora_alpha=lora_alpha, merge=merge, max_length=max_length,
        output_dir=str(output_dir), eval_prompts=eval_prompts, eval_samples=eval_samples,
        eval_max_new_tokens=eval_max_new_tokens, seed=seed, device=device, dtype=dtype,
    )
    import pandas as pd

    from ..models.loading import resolve_device, resolve_dtype
    from ..report import write_table
    from ..sft import plan, run

    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # an unavailable device or bad dtype: exit 3 now
    p = plan(cfg)
    if dry_run:
        console.print(f"{p.describe()}. Nothing loaded (--dry-run).", highlight=False)
        return
    write_table(pd.DataFrame([run(p)]), None, "csv")
