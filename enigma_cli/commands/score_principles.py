"""`enigma score-principles`: rank candidate principle sets by InfoNCE bounds and the Sufficiency Index."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from .. import config as cfgmod
from ..console import console, show_progress
from ..errors import InputError
from ..report import check_format, write_table


@dataclass(frozen=True)
class ScoreConfig:
    sets: tuple[str, ...] = ()
    model: str = "enigma-tiny"
    dataset: str | None = None
    question_column: str | None = None
    answer_column: str | None = None
    prompts: int = 24
    samples: int = 4
    max_new_tokens: int = 96
    temperature: float = 1.0
    batch_size: int = 64
    bootstrap: int = 1000
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self):
        for name in ("prompts", "samples", "max_new_tokens", "batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.temperature < 0:
            raise InputError(f"--temperature must be >= 0, not {self.temperature}.")
        object.__setattr__(self, "sets", tuple(self.sets or ()))


def score_principles(
    ctx: typer.Context,
    set_files: Annotated[list[str] | None, typer.Argument(
        help="Principle-set YAML files or shipped set names (default: every shipped set).", show_default=False)] = None,
    model: Annotated[str, typer.Option(help="enigma-tiny, smollm2, a local model folder or a hub id.")] = "enigma-tiny",
    dataset: Annotated[str | None, typer.Option(
        help="Prompts: 'synthetic' (built-in held-out problems), a JSONL/CSV/parquet file, or a hub id.")] = None,
    question_column: Annotated[str | None, typer.Option(help="Column holding the question.")] = None,
    answer_column: Annotated[str | None, typer.Option(help="Column holding the answer.")] = None,
    prompts: Annotated[int, typer.Option(help="Prompts per set (N).")] = 24,
    samples: Annotated[int, typer.Option(help="Completions per principle and prompt (M).")] = 4,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion, in tokens.")] = 96,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 64,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the SI interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for prompts, sampling and bootstrap.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    per_principle: Annotated[bool, typer.Option("--per-principle", help="Also one row per principle.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the report here instead of stdout.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or parquet.")] = "csv",
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options; typed flags win.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; load no weights.")] = False,
) -> None:
    """Rank principle sets by how well a model's chain-of-thought identifies its principle (SI), before training."""
    cfg = cfgmod.resolve(
        ScoreConfig, ctx, config, sets=tuple(set_files or ()), model=model, dataset=dataset,
        question_column=question_column, answer_column=answer_column, prompts=prompts, samples=samples,
        max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, bootstrap=bootstrap,
        seed=seed, device=device, dtype=dtype,
    )
    check_format(fmt, out)
    from ..datasets import load_examples
    from ..principles import resolve_sets

    sets = resolve_sets(list(cfg.sets) or None)
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset or 'synthetic'} has no prompts.")
    n, m = len(examples), cfg.samples
    if dry_run:
        for s in sets:
            console.print(f"{s.name}: K={s.k}, {n} prompts × {s.k} principles × {m} samples = {n * s.k * m} "
                          f"completions (≤{cfg.max_new_tokens} tokens each), {n * m * s.k * s.k} scored pairs")
        console.print(f"model {cfg.model}; nothing loaded (--dry-run).")
        return

    from ..models.loading import load_model
    from ..scoring import ScoreSettings, score_set

    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    settings = ScoreSettings(samples=m, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             batch_size=cfg.batch_size, seed=cfg.seed, bootstrap=cfg.bootstrap)
    results = []
    with console.status("scoring", spinner="dots") if show_progress() else nullcontext() as status:
        for s in sets:
            if status is not None:
                status.update(f"scoring {s.name} (K={s.k})")
            results.append(score_set(lm, s, examples, settings))
    rows = []
    for r in results:
        rows.append({**r.row, "model": cfg.model, "seed": cfg.seed})
        if per_principle:
            rows.extend({**p, "model": cfg.model, "seed": cfg.seed} for p in r.per_principle)
    df = pd.DataFrame(rows)
    df["level"] = df["principle"].notna().map({True: "principle", False: "set"}) if "principle" in df else "set"
    order = {r.name: rank for rank, r in enumerate(sorted(results, key=lambda r: -r.row["si"]))}
    df = (df.assign(_rank=df["set"].map(order), _lvl=(df["level"] == "principle").astype(int))
          .sort_values(["_rank", "_lvl"], kind="stable").drop(columns=["_rank", "_lvl"]))
    lead = ["set", "level"] + (["principle"] if per_principle else [])
    df = df[lead + [c for c in df.columns if c not in lead]]
    _warn(results)
    _print_table(results)
    write_table(df, out, fmt)
    if out is not None:
        cfgmod.write_resolved(cfg, out.with_name(out.name + ".config.yaml"))


def _warn(results) -> None:
    ks = sorted({r.k for r in results})
    if len(ks) > 1:
        console.print(f"[yellow]note:[/] sets have different K ({', '.join(map(str, ks))}); each is scored at its "
                      "own K, so compare mi_* only between sets of equal K (SI is normalised by log K).")
    for r in results:
        if r.saturated:
            console.print(f"[yellow]warning:[/] {r.name}: mi_sym {r.row['mi_sym']:.3f} is near log K = "
                          f"{r.row['log_k']:.3f}; the bound is saturated and cannot separate sets any better.")


def _print_table(results) -> None:
    from rich.table import Table

    table = Table(title="principle sets by Sufficiency Index", title_justify="left")
    for col in ("set", "K", "SI", "95% CI", "mi_sym", "log K", "acc_row", "format"):
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=True)
    for r in sorted(results, key=lambda r: -r.row["si"]):
        row = r.row
        table.add_row(r.name, str(r.k), f"{row['si']:.3f}", f"{row['si_low']:.3f}..{row['si_high']:.3f}",
                      f"{row['mi_sym']:.3f}", f"{row['log_k']:.3f}", f"{row['acc_row']:.2f}",
                      f"{row['format_rate']:.2f}")
    console.print(table)
