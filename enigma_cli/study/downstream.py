"""`enigma study --outcome-tasks TASKS`: lm-evaluation-harness scores of each trained run as downstream outcomes.

Each run's final checkpoint is scored on the tasks by `evaluate.harness` (the same path as `enigma evaluate
--lm-eval`: enigma's prompt, no principle, ``think_end_token`` ``</reasoning>``). The runs table gets one column per
task, ``downstream_<task>`` (its first metric as lm-eval lists it, e.g. ``acc`` or ``exact_match`` under the first
filter), and ``downstream``, their mean: the outcome the sets table averages over seeds and, with the GRPO-only
ablation, turns into ``downstream_gain``, as it does for held-out accuracy.
"""

from __future__ import annotations

from ..evaluate.harness import run_tasks, task_specs, tidy_rows
from ..prompts import system_message
from .config import StudyConfig

FLAG = "--outcome-tasks"


def outcome_specs(cfg: StudyConfig) -> list[str]:
    """The tasks' specs, every task (and its data) loaded once: a bad task stops the study before any model loads."""
    if not cfg.outcome_tasks:
        return []

    return task_specs(cfg.outcome_tasks, FLAG)


def downstream_outcomes(lm, cfg: StudyConfig) -> dict[str, float]:
    """``downstream_<task>`` per task and their mean ``downstream`` for one loaded run; {} without --outcome-tasks."""
    specs = outcome_specs(cfg)
    if not specs:
        return {}

    results = run_tasks(lm, specs, system=system_message(None), limit=None, batch_size=64, seed=cfg.seed,
                        output_dir=None)
    primary: dict[str, float] = {}
    for row in tidy_rows(results, lm.name):
        primary.setdefault(f"downstream_{row['task']}", row["value"])
    out = dict(primary)
    out["downstream"] = sum(primary.values()) / len(primary) if primary else float("nan")
    return out
