"""`enigma tasks generate`: write built-in synthetic problems (with principle-following completions) as JSONL."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from ..cli_options import command
from ..console import console
from ..errors import InputError
from ..options import Options, opt
from ..principles import resolve_sets
from ..report import check_output_file
from ..tasks.lm_eval_task import task_name, write_lm_eval_task
from ..tasks.synthetic import generate_problems, training_examples, write_jsonl

app = typer.Typer(help="Built-in synthetic reasoning tasks.", no_args_is_help=True, add_completion=False)


@dataclass(frozen=True)
class TasksConfig(Options):
    n: int = opt(1000, "Number of rows.", ge=1)
    seed: int = opt(0, "Seed; the rows are a deterministic function of (n, seed).")
    out: str | None = opt(None, "Write JSONL here (atomically) instead of stdout.", metavar="FILE",
                           output="file")
    set: tuple[str, ...] = opt((), "Principle sets to draw principles from (repeatable; default: every shipped "
                                   "set).")
    plain: bool = opt(False, "Only question and answer, no principle or completion.")
    split: str = opt("train", "train, heldout or all (held-out questions never appear in train).",
                     choices=("train", "heldout", "all"))
    lm_eval_task: str | None = opt(None, "Also write an lm-evaluation-harness task over the --out file (a .yaml, "
                                         "dataset_path: json), for `enigma evaluate --lm-eval FILE`.",
                                   metavar="FILE", output="file")
    max_new_tokens: int = opt(96, "With --lm-eval-task: the longest completion the task generates.", ge=1)

    def check(self) -> None:
        if self.lm_eval_task is not None:
            if self.out is None:
                raise InputError("--lm-eval-task needs --out: the task reads the questions from that file.")
            if not self.lm_eval_task.endswith(".yaml"):
                raise InputError(f"--lm-eval-task {self.lm_eval_task} must end in .yaml (lm-evaluation-harness "
                                 "reads a task file by that suffix).")


def run(cfg: TasksConfig, dry_run: bool) -> None:
    check_output_file(cfg.out)
    sets = None if cfg.plain else resolve_sets(list(cfg.set) or None)
    if dry_run:
        what = "question/answer rows" if cfg.plain else f"rows with principles from {len(sets)} set(s)"
        console.print(f"would write {cfg.n} {what} of the {cfg.split} split to {cfg.out or 'stdout'} (--dry-run).",
                      highlight=False)
        return
    if cfg.plain:
        rows = [{"question": p.question, "answer": p.answer} for p in generate_problems(cfg.n, cfg.seed,
                                                                                         split=cfg.split)]
    else:
        rows = training_examples(cfg.n, cfg.seed, sets, split=cfg.split)
    if cfg.out is None:
        sys.stdout.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sys.stdout.flush()
    else:
        write_jsonl(rows, Path(cfg.out))
        console.print(f"wrote {len(rows)} rows to {cfg.out}", highlight=False)
        if cfg.lm_eval_task is not None:
            write_lm_eval_task(Path(cfg.lm_eval_task), Path(cfg.out), cfg.max_new_tokens)
            console.print(f"wrote the lm-evaluation-harness task {task_name(Path(cfg.lm_eval_task))} to "
                          f"{cfg.lm_eval_task}", highlight=False)


app.command("generate")(command(
    TasksConfig, "tasks-generate", run,
    help="Rows with question, answer, principle_id, principle_text and a completion obeying the principle."))
