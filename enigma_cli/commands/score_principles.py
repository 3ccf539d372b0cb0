"""`enigma score-principles`: rank candidate principle sets by InfoNCE bounds and the Sufficiency Index."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import replace

from rich.table import Table

from ..cli_options import command
from ..console import console, show_progress
from ..context import ContextCheck, principles_of
from ..datasets import load_examples
from ..errors import InputError
from ..models import loading
from ..models.devices import resolve_device, resolve_dtype
from ..options import write_resolved
from ..principle_pool import MAX_POOL, pool_members
from ..principles import PrincipleSet, resolve_sets, shipped_set_paths
from ..report import check_format, check_output_file, write_table
from ..score import ScoreConfig, score_set
from ..score.choose import EXACT_LIMIT
from ..score.confusion import confusion, heatmap
from ..score.pool import choose_subsets, readable_members, score_pool
from ..score.report import rank, report_frame
from ..score.rounds import Rounds
from ..score.sequential import Plan, run_rounds
from ..score.trust import check_principles


def run(cfg: ScoreConfig, dry_run: bool) -> None:
    check_format(cfg.format, cfg.out)
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # before --dry-run says the plan is fine
    if cfg.out is not None:
        check_output_file(f"{cfg.out}.config.yaml", "--out")  # the resolved config goes beside the report
    if cfg.pool:
        return _run_pool(cfg, dry_run)
    sets = resolve_sets(list(cfg.principles) or None)
    plan = cfg.plan() if cfg.until_decided else None
    if cfg.rank and len(sets) < 2:
        raise InputError(f"--rank needs two principle sets or more; {len(sets)} given.")
    examples = load_examples(cfg.dataset, n=plan.max_prompts if plan else cfg.prompts, seed=cfg.seed,
                             question_column=cfg.question_column, answer_column=cfg.answer_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    if plan is not None:  # rounds take prompts in this order: a seeded shuffle, not a file's (sorted) row order
        random.Random(cfg.seed).shuffle(examples)
    check = ContextCheck(principles_of(*sets), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}")
    examples = [examples[i] for i in check.before_load(cfg.model, [ex.prompt_text for ex in examples])]
    n, m = len(examples), cfg.samples
    if plan is not None and dry_run:
        samples = f"{m} sample{'s' if m != 1 else ''}"
        console.print(f"--until-decided: {plan.describe()}; {len(sets)} sets, {samples} per principle and prompt, "
                      f"{n} prompts available.", highlight=False)
        console.print(f"model {cfg.model}; nothing loaded (--dry-run).", highlight=False)
        return
    if dry_run:
        for s in sets:
            console.print(f"{s.name}: K={s.k}, {n} prompts × {s.k} principles × {m} samples = {n * s.k * m} "
                          f"completions (≤{cfg.max_new_tokens} tokens each), {n * m * s.k * s.k} scored pairs",
                          highlight=False)
        console.print(f"model {cfg.model}; nothing loaded (--dry-run).", highlight=False)
        return

    lm = loading.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    examples = [examples[i] for i in check.loaded(lm, [ex.prompt_text for ex in examples])]
    n = len(examples)
    questions = [ex.prompt_text for ex in examples]
    results = []
    with console.status("scoring", spinner="dots") if show_progress() else nullcontext() as status:
        if plan is not None:
            results = _until_decided(lm, sets, examples, cfg, plan, status)
        for s in sets if plan is None else ():
            if status is not None:
                status.update(f"scoring {s.name} (K={s.k})")
            results.append(score_set(lm, s, examples, cfg, checks=check_principles(lm, s, questions)))
    ranked = rank(results)
    _print_table(ranked)
    _warn(ranked)

    write_table(report_frame(results, cfg), cfg.out, cfg.format)
    if cfg.out is not None:
        write_resolved(cfg, f"{cfg.out}.config.yaml")


def _until_decided(lm, sets, examples, cfg: ScoreConfig, plan, status) -> list:
    """--until-decided: rounds of prompts until every interval is decided or the budget runs out
    (`score.sequential`); each row gains `confidence` (its interval's level), `looks`, `stopped` and, with --rank,
    its lead over the next row, paired over the prompts both hold."""
    if len(examples) < plan.max_prompts:  # a small file: the rounds stop where its rows do
        console.print(f"[yellow]note:[/] dataset {cfg.dataset} gives {len(examples)} prompts, fewer than "
                      f"--max-prompts {plan.max_prompts}.", highlight=False)
        plan = Plan(min(plan.round, len(examples)), len(examples), plan.max_seconds, plan.alpha, plan.boundary)
    questions = [ex.prompt_text for ex in examples]
    checks = [check_principles(lm, s, questions) for s in sets]
    rounds = Rounds(lm, sets, examples, cfg, checks, plan, rank_sets=cfg.rank, status=status)
    stopped = run_rounds(plan, rounds)
    results = rounds.results
    for r in results:
        r.row.update(confidence=plan.level, looks=stopped.looks, stopped=stopped.reason)
    if cfg.rank:
        ranked = rank(results)
        for r, after in zip(ranked, [*ranked[1:], None]):
            gap = rounds.lead(r, after) if after is not None else None
            r.row.update(lead=gap.value if gap else math.nan, lead_low=gap.low if gap else math.nan,
                         lead_high=gap.high if gap else math.nan)
    named = replace(stopped, look=rounds.named(stopped.look))
    colour = "green" if stopped.reason == "decided" else "yellow"
    console.print(f"[{colour}]--until-decided:[/] {named.sentence(plan)}", highlight=False)
    return results


def _warn(ranked) -> None:
    ks = sorted({r.k for r in ranked})
    if len(ks) > 1:
        console.print(f"[yellow]note:[/] sets have different K ({', '.join(map(str, ks))}); each is scored at its "
                      "own K, so compare mi_* only between sets of equal K (SI is normalised by log K).")
    for r in ranked:
        if r.row["reason"]:
            label = "not trusted" if not r.trusted else "note"
            console.print(f"[yellow]⚠ {r.name}[/] ({label}): {r.row['reason']}.", highlight=False)


def _print_table(ranked, what: str = "principle sets") -> None:
    critic = ranked[0].row["critic"] if ranked else ""
    table = Table(title=f"{what} by Sufficiency Index ({critic} critic; ⚠ = see below, dim = not trusted)",
                  title_justify="left")
    ci = f"{100 * ranked[0].row.get('confidence', 0.95):.4g}% CI" if ranked else "95% CI"
    for col in ("", "set", "K", "SI", ci, "mi_sym", "log K", "acc_col", "format"):
        table.add_column(col, justify="left" if col in ("", "set") else "right", no_wrap=True)
    def num(x, digits=3):
        return f"{x:.{digits}f}" if math.isfinite(x) else "-"  # a missing (NaN) value

    for r in ranked:
        row = r.row
        table.add_row("⚠" if row["reason"] else "", r.name, str(r.k), num(row["si"]),
                      f"{num(row['si_low'])}..{num(row['si_high'])}", num(row["mi_sym"]), num(row["log_k"]),
                      num(row["acc_col"], 2), num(row["format_rate"], 2), style=None if r.trusted else "dim")
    console.print(table)


def _run_pool(cfg: ScoreConfig, dry_run: bool) -> None:
    """--pool: score every principle of SETS once and rank the K-subsets (`enigma_cli.score.pool`)."""
    k = cfg.choose
    members = pool_members(list(cfg.principles) or [str(p) for p in shipped_set_paths()])
    if k >= len(members):
        raise InputError(f"--choose {k} needs a pool of more than {k} principles; the pool holds {len(members)}.")
    outputs = _pool_outputs(cfg.out)
    for path in outputs.values():
        check_output_file(path, "--out")
    pool_set = PrincipleSet("pool", "", tuple(members))
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    check = ContextCheck(principles_of(pool_set), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}")
    examples = [examples[i] for i in check.before_load(cfg.model, [ex.prompt_text for ex in examples])]
    n, m, size = len(examples), cfg.samples, len(members)
    total = math.comb(size, k)
    if dry_run:
        console.print(f"pool of {size} principles (at most {MAX_POOL}): {', '.join(p.id for p in members)}; "
                      f"{n} prompts × {size} principles × {m} samples = {n * size * m} completions (≤"
                      f"{cfg.max_new_tokens} tokens each), {n * m * size * size} scored pairs; C({size}, {k}) = "
                      f"{total:,} subsets, {'exact' if total <= EXACT_LIMIT else 'greedy'} search.", highlight=False)
        console.print(f"model {cfg.model}; nothing loaded (--dry-run).", highlight=False)
        return

    lm = loading.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    examples = [examples[i] for i in check.loaded(lm, [ex.prompt_text for ex in examples])]
    members, checks, left_out = readable_members(lm, members, [ex.prompt_text for ex in examples], k)
    for text in left_out:
        console.print(f"[yellow]⚠ left out of the pool:[/] {text}.", highlight=False)
    with console.status("scoring the pool", spinner="dots") if show_progress() else nullcontext():
        pool = score_pool(lm, members, examples, cfg)
        found, ranked = choose_subsets(pool, k, cfg, checks, cfg.top)
        conf = confusion(pool, cfg)
    _print_table(ranked[:20], f"{k}-subsets of the pool" + (f" (best 20 of {len(ranked)})" if len(ranked) > 20 else ""))
    _warn(ranked[:20])
    console.print(f"search: {found.describe(len(members), k)}.", highlight=False)
    best = ranked[0].row
    if len(ranked) > 1:
        console.print(f"best: {best['set']}, SI {best['si']:.3f} ({best['si_low']:.3f}..{best['si_high']:.3f}); "
                      f"ahead of {ranked[1].name} by {best['lead']:.3f} (paired 95% CI {best['lead_low']:.3f}.."
                      f"{best['lead_high']:.3f}, {len(examples)} prompts).", highlight=False)
    console.print("most-confused pairs (lowest pairwise SI): " + "; ".join(conf.summary()) + ".", highlight=False)
    duplicates = conf.near_duplicates()
    if duplicates:
        shown = ", ".join(f"{a} / {b}" for a, b in duplicates[:5])
        more = f" and {len(duplicates) - 5} more (the confusion CSV has every pair's SI)" if len(duplicates) > 5 else ""
        console.print(f"near-duplicates (pairwise SI interval reaches 0; keep one of each): {shown}{more}.",
                      highlight=False)
    ignored = conf.not_followed()
    if ignored:
        console.print(f"not followed (completions as likely without the principle): {', '.join(ignored)}.",
                      highlight=False)
    write_table(report_frame(ranked, cfg), cfg.out, cfg.format)
    if cfg.out is not None:
        write_table(conf.frame(), outputs["confusion"], "csv")
        heatmap(conf, outputs["heatmap"])
        write_resolved(cfg, f"{cfg.out}.config.yaml")
        console.print(f"confusion: {outputs['confusion']} and {outputs['heatmap']}.", highlight=False)
    else:
        console.print("give --out FILE to write the confusion matrix (FILE.confusion.csv) and its heatmap "
                      "(FILE.confusion.png).", highlight=False)


def _pool_outputs(out: str | None) -> dict[str, str]:
    """Where --pool writes the confusion view: beside the report, FILE.confusion.csv and FILE.confusion.png."""
    return {} if out is None else {"confusion": f"{out}.confusion.csv", "heatmap": f"{out}.confusion.png"}


score_principles = command(
    ScoreConfig, "score-principles", run,
    help="Rank principle sets by how well a model's chain-of-thought identifies its principle (SI), before "
         "training; each row says when its SI cannot be trusted.")
