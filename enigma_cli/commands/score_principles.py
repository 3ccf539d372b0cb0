"""`enigma score-principles`: rank candidate principle sets by InfoNCE bounds and the Sufficiency Index."""

from __future__ import annotations

import math
from contextlib import nullcontext

from ..cli_options import command
from ..console import console, show_progress
from ..errors import InputError
from ..options import write_resolved
from ..score import ScoreConfig


def run(cfg: ScoreConfig, dry_run: bool) -> None:
    from ..context import ContextCheck, principles_of
    from ..datasets import load_examples
    from ..models.devices import resolve_device, resolve_dtype
    from ..principles import resolve_sets
    from ..report import check_format, check_output_file

    check_format(cfg.format, cfg.out)
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # before --dry-run says the plan is fine
    if cfg.out is not None:
        check_output_file(f"{cfg.out}.config.yaml", "--out")  # the resolved config goes beside the report
    sets = resolve_sets(list(cfg.principles) or None)
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    check = ContextCheck(principles_of(*sets), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}")
    examples = [examples[i] for i in check.before_load(cfg.model, [ex.prompt_text for ex in examples])]
    n, m = len(examples), cfg.samples
    if dry_run:
        for s in sets:
            console.print(f"{s.name}: K={s.k}, {n} prompts × {s.k} principles × {m} samples = {n * s.k * m} "
                          f"completions (≤{cfg.max_new_tokens} tokens each), {n * m * s.k * s.k} scored pairs",
                          highlight=False)
        console.print(f"model {cfg.model}; nothing loaded (--dry-run).", highlight=False)
        return

    from ..models.loading import load_model
    from ..score import score_set
    from ..score.report import rank, report_frame
    from ..score.trust import check_principles

    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    examples = [examples[i] for i in check.loaded(lm, [ex.prompt_text for ex in examples])]
    n = len(examples)
    questions = [ex.prompt_text for ex in examples]
    results = []
    with console.status("scoring", spinner="dots") if show_progress() else nullcontext() as status:
        for s in sets:
            if status is not None:
                status.update(f"scoring {s.name} (K={s.k})")
            results.append(score_set(lm, s, examples, cfg, checks=check_principles(lm, s, questions)))
    ranked = rank(results)
    _print_table(ranked)
    _warn(ranked)
    from ..report import write_table

    write_table(report_frame(results, cfg), cfg.out, cfg.format)
    if cfg.out is not None:
        write_resolved(cfg, f"{cfg.out}.config.yaml")


def _warn(ranked) -> None:
    ks = sorted({r.k for r in ranked})
    if len(ks) > 1:
        console.print(f"[yellow]note:[/] sets have different K ({', '.join(map(str, ks))}); each is scored at its "
                      "own K, so compare mi_* only between sets of equal K (SI is normalised by log K).")
    for r in ranked:
        if r.row["reason"]:
            label = "not trusted" if not r.trusted else "note"
            console.print(f"[yellow]⚠ {r.name}[/] ({label}): {r.row['reason']}.", highlight=False)


def _print_table(ranked) -> None:
    from rich.table import Table

    critic = ranked[0].row["critic"] if ranked else ""
    table = Table(title=f"principle sets by Sufficiency Index ({critic} critic; ⚠ = see below, dim = not trusted)",
                  title_justify="left")
    for col in ("", "set", "K", "SI", "95% CI", "mi_sym", "log K", "acc_col", "format"):
        table.add_column(col, justify="left" if col in ("", "set") else "right", no_wrap=True)
    def num(x, digits=3):
        return f"{x:.{digits}f}" if math.isfinite(x) else "-"  # a missing (NaN) value

    for r in ranked:
        row = r.row
        table.add_row("⚠" if row["reason"] else "", r.name, str(r.k), num(row["si"]),
                      f"{num(row['si_low'])}..{num(row['si_high'])}", num(row["mi_sym"]), num(row["log_k"]),
                      num(row["acc_col"], 2), num(row["format_rate"], 2), style=None if r.trusted else "dim")
    console.print(table)


score_principles = command(
    ScoreConfig, "score-principles", run,
    help="Rank principle sets by how well a model's chain-of-thought identifies its principle (SI), before "
         "training; each row says when its SI cannot be trusted.")
