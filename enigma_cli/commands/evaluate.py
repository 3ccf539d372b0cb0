"""`enigma evaluate`: format rate, strict and flexible accuracy@1 and majority-vote accuracy, and answer entropy."""

from __future__ import annotations

import pandas as pd

from ..cli_options import command
from ..console import console
from ..context import ContextCheck, Principle
from ..core.answers import math_verify_available
from ..datasets import load_examples
from ..errors import InputError
from ..evaluate import EvalSettings, harness
from ..evaluate import evaluate as run_eval
from ..evaluate.config import EvaluateConfig
from ..evaluate.evaluation import PER_PROMPT, paired_difference
from ..models import loading
from ..models.devices import resolve_device, resolve_dtype
from ..models.loading import model_path_for
from ..prompts import system_message
from ..report import check_format, check_output_dir, write_table


def run(cfg: EvaluateConfig, dry_run: bool) -> None:
    check_format(cfg.format, cfg.out)
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # before --dry-run says the plan is fine
    if cfg.lm_eval:
        run_lm_eval(cfg, dry_run)
        return
    if cfg.math_verify and not math_verify_available():
        raise InputError("--math-verify needs the math-verify package (pip install math-verify); "
                         "pass --no-math-verify to compare answers with our normalisation only.")
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column, choices_column=cfg.choices_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    check = ContextCheck([Principle("--principle", cfg.principle)] if cfg.principle else [], cfg.max_new_tokens,
                         rows=f"dataset {cfg.dataset}")
    examples = [examples[i] for i in check.before_load(cfg.model, [ex.prompt_text for ex in examples])]
    if dry_run:
        console.print(f"{len(cfg.model)} model(s) × {len(examples)} prompts × {cfg.samples} samples of "
                      f"≤{cfg.max_new_tokens} tokens; nothing loaded (--dry-run).", highlight=False)
        return

    settings = EvalSettings(samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            batch_size=cfg.batch_size, seed=cfg.seed, math_verify=cfg.math_verify)
    rows = []
    for spec in cfg.model:
        lm = loading.load_model(spec, device=cfg.device, dtype=cfg.dtype)
        kept = check.loaded(lm, [ex.prompt_text for ex in examples])
        row = {"model": spec, **run_eval(lm, [examples[i] for i in kept], cfg.principle, settings),
               "temperature": cfg.temperature, "seed": cfg.seed}
        row[PER_PROMPT] = dict(zip(kept, row[PER_PROMPT]))  # by question index, so models pair up by question
        console.print(f"{spec}: format {row['format_rate']:.3f}  acc@1 strict {row['accuracy_at_1']:.3f} "
                      f"flexible {row['accuracy_at_1_flexible']:.3f}  majority strict "
                      f"{row['majority_accuracy']:.3f} flexible {row['majority_accuracy_flexible']:.3f}  "
                      f"entropy {row['answer_entropy']:.3f}", highlight=False)
        rows.append(row)
    _compare_with_first(rows)
    write_table(pd.DataFrame([{k: v for k, v in r.items() if k != PER_PROMPT} for r in rows]), cfg.out, cfg.format)


def run_lm_eval(cfg: EvaluateConfig, dry_run: bool) -> None:
    """`--lm-eval TASKS`: lm-evaluation-harness on every --model (see `evaluate.harness`), one row per model, task
    and metric; every task (and its data) and every model spec is checked before the first model loads."""
    specs = harness.task_specs(cfg.lm_eval)
    for spec in cfg.model:
        model_path_for(spec)
    folder = harness.output_folder(cfg.out, cfg.lm_eval_output)
    check_output_dir(folder, "--lm-eval-output")
    limit = f", at most {cfg.lm_eval_limit:g} documents each" if cfg.lm_eval_limit is not None else ""
    console.print(f"lm-evaluation-harness: {len(cfg.model)} model(s) × {len(specs)} task(s) ({', '.join(specs)})"
                  f"{limit}; its own output goes to {folder}.", highlight=False)
    if dry_run:
        console.print("nothing loaded (--dry-run).")
        return

    staged = harness.StagedFolder(folder)
    rows = []
    try:
        for spec in cfg.model:
            lm = loading.load_model(spec, device=cfg.device, dtype=cfg.dtype)
            results = harness.run_tasks(lm, specs, system=system_message(cfg.principle), limit=cfg.lm_eval_limit,
                                        batch_size=cfg.batch_size, seed=cfg.seed,
                                        output_dir=staged.tmp, name=spec)
            for row in harness.tidy_rows(results, spec):
                console.print(f"{spec} {row['task']} {row['metric']} ({row['filter']}): {row['value']:.4f} ± "
                              f"{row['stderr']:.4f}", highlight=False)
                rows.append(row)
            del lm
        write_table(pd.DataFrame(rows), cfg.out, cfg.format)
    except BaseException:
        staged.discard()
        raise
    staged.commit()


def _compare_with_first(rows: list[dict]) -> None:
    """Each later model against the first (e.g. a trained model against its base) on the questions both answered:
    the paired difference in flexible accuracy@1 with its standard error, as columns and in one line each. A drop
    is called a cost only beyond twice its standard error."""
    rows[0].update({"vs_first_accuracy_flexible": float("nan"), "vs_first_se": float("nan")})
    for row in rows[1:]:
        diff, se, n = paired_difference(row[PER_PROMPT], rows[0][PER_PROMPT])
        row.update({"vs_first_accuracy_flexible": diff, "vs_first_se": se})
        if n < 2:
            continue
        verdict = ("a drop beyond twice its standard error" if diff < -2 * se else
                   "a gain beyond twice its standard error" if diff > 2 * se else "within twice its standard error")
        console.print(f"{row['model']} against {rows[0]['model']}: accuracy@1 (flexible) {diff:+.3f} ± {se:.3f} "
                      f"(paired over {n} questions): {verdict}.", highlight=False)


evaluate = command(EvaluateConfig, "evaluate", run,
                   help="Report format rate, strict and flexible accuracy@1 and majority vote, and answer entropy, one "
                        "row per model. Strict reads the answer inside <answer> tags; flexible the last number (or "
                        "choice letter) anywhere.")
