"""`enigma score-principles`: rank candidate principle sets by InfoNCE bounds and the Sufficiency Index."""

from __future__ import annotations

from contextlib import nullcontext

from ..console import console, show_progress
from ..errors import InputError
from ..options import command, write_resolved
from ..score import ScoreConfig


def run(cfg: ScoreConfig, dry_run: bool) -> None:
    from ..context import ContextCheck, principles_of
    from ..datasets import load_examples
    from ..principles import resolve_sets
    from ..report import check_format, check_output_file

    check_format(cfg.format, cfg.out)
    if cfg.out is not None:
        check_output_file(f"{cfg.out}.config.yaml", "--out")  # the resolved config goes beside the report
    sets = resolve_sets(list(cfg.principles) or None)
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    check = ContextCheck(principles_of(*sets), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}")
    examples = [examples[i] for i in check.before_load(cfg.model, [ex.question for ex in examples])]
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
    from ..score.report import report_frame

    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    examples = [examples[i] for i in check.loaded(lm, [ex.question for ex in examples])]
    results = []
    with console.status("scoring", spinner="dots") if show_progress() else nullcontext() as status:
        for s in sets:
            if status is not None:
                status.update(f"scoring {s.name} (K={s.k})")
            results.append(score_set(lm, s, examples, cfg))
    _warn(results)
    _print_table(results)
    from ..report import write_table

    write_table(report_frame(results, cfg), cfg.out, cfg.format)
    if cfg.out is not None:
        write_resolved(cfg, f"{cfg.out}.config.yaml")


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


score_principles = command(
    ScoreConfig, "score-principles", run,
    help="Rank principle sets by how well a model's chain-of-thought identifies its principle (SI), before "
         "training.")
