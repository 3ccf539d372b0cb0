"""`enigma evaluate --lm-eval TASKS`: lm-evaluation-harness on the models enigma loads.

Every ``--model`` spec is loaded by `models.loading.load_model` (aliases, GGUF files, run folders, checkpoints, LoRA
adapters applied through peft over their recorded base, hub ids) and the loaded model is handed to lm-evaluation-
harness's ``HFLM`` as a ``PreTrainedModel`` object, so every spec kind reaches lm-eval the same way, through the
same loader as the rest of enigma. What lm-eval sees:

- the chat template, applied by enigma's own renderer (`prompts.render_messages`), with enigma's system message
  (the format instruction, after ``--principle`` when one is given) as lm-eval's ``system_instruction``: a task's
  prompt is then exactly the prompt `enigma evaluate` writes for the same question;
- ``think_end_token="</reasoning>"``: a generative task scores what follows the reasoning (loglikelihood tasks are
  unaffected);
- ``--lm-eval-limit`` as lm-eval's ``limit`` (a count, or a fraction below 1).

Tasks are lm-eval's names (``truthfulqa_mc2``, globs) or local task YAML files; they are loaded — datasets
included — before any model, so a misspelt task or an unreachable dataset stops the command with one sentence.
lm-eval's own output (results JSON and per-sample logs) is kept in a folder beside the report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import InputError
from ..prompts import render_messages

# lm_eval is imported inside the functions that run it: it is optional (the [lm-eval] extra).

THINK_END = "</reasoning>"
INSTALL_HINT = 'pip install "enigma-cli[lm-eval]"'


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def _is_file_spec(task: str) -> bool:
    return task.endswith((".yaml", ".yml"))


def task_specs(tasks: tuple[str, ...], flag: str = "--lm-eval") -> list[str]:
    """lm-eval's task specs for `tasks`: names as given, YAML files as absolute paths. Every task is loaded (its
    dataset too) so that a bad one is refused now, before any model loads; one sentence names it."""
    if not lm_eval_available():
        raise InputError(f"{flag} needs lm-evaluation-harness: {INSTALL_HINT}.")
    if not tasks:
        raise InputError(f"{flag} needs at least one task name or task YAML file.")
    specs = []
    for task in tasks:
        if _is_file_spec(task):
            path = Path(task).expanduser()
            if not path.is_file():
                raise InputError(f"{flag}: the task file {task} does not exist.")
            specs.append(str(path.resolve()))
        else:
            specs.append(task)
    manager = task_manager(specs)
    expanded = []
    for task, spec in zip(tasks, specs):
        names = manager.match_tasks([spec]) if not _is_file_spec(spec) and set("*?[") & set(spec) else [spec]
        if not names:
            raise InputError(f"{flag}: no lm-evaluation-harness task matches {task}.")
        for name in names:
            with _quiet():
                try:
                    manager.load([name])
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # lm-eval and datasets raise many types for a bad task
                    if isinstance(exc, KeyError) and not _is_file_spec(name):
                        raise InputError(f"{flag}: {task} is not an lm-evaluation-harness task, group or tag "
                                         "(`lm-eval ls tasks` lists them), nor a task .yaml file.") from None
                    raise InputError(f"{flag}: could not load the task {task}: {_first_line(exc)}") from exc
        expanded += names
    return list(dict.fromkeys(expanded))


def task_manager(specs: list[str]):
    """lm-eval's TaskManager; without its ~7 s index of built-in tasks when every spec is a local file."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=not all(_is_file_spec(s) for s in specs))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    line = (lines[0].strip() if lines else type(exc).__name__)[:300]
    return line if line.endswith((".", "?", "!")) else line + "."


@contextlib.contextmanager
def _quiet():
    """lm-eval logs at INFO and prints a few lines itself: all of it to stderr, at WARNING, so stdout stays data."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logger.setLevel(level)


def _enigma_lm(lm, batch_size: int):
    """lm-eval's HFLM over an enigma-loaded model, rendering chat histories as enigma renders its prompts."""
    from lm_eval.models.huggingface import HFLM

    class EnigmaLM(HFLM):
        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            if not add_generation_prompt:  # a task's answer prefix (gen_prefix): lm-eval's own continuation
                return super().apply_chat_template(chat_history, add_generation_prompt)
            return render_messages(self.tokenizer, chat_history)

        def chat_template(self, chat_template=False):
            return getattr(self.tokenizer, "chat_template", None) or "enigma's plain 'Role: content' prompt"

    return EnigmaLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, think_end_token=THINK_END)


def run_tasks(lm, specs: list[str], *, system: str, limit: float | None, batch_size: int, seed: int,
              output_dir: Path | None, name: str = "model") -> dict:
    """lm-eval's results for one loaded model (`models.loading.LoadedModel`); its results JSON and per-sample logs
    go to `output_dir`/`name` when a folder is given."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    with _quiet():
        tracker = EvaluationTracker(output_path=str(output_dir)) if output_dir is not None else None
        results = simple_evaluate(model=_enigma_lm(lm, batch_size), tasks=list(specs), limit=_limit(limit),
                                  task_manager=task_manager(specs), apply_chat_template=True,
                                  system_instruction=system, log_samples=output_dir is not None,
                                  evaluation_tracker=tracker, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed)
        if tracker is not None:
            # lm-eval names the folder after model_args' `pretrained`, which a loaded model does not have
            tracker.general_config_tracker.model_name = name
            tracker.general_config_tracker.model_name_sanitized = model_folder_name(name)
            samples = results.pop("samples", {})
            tracker.save_results_aggregated(results=results, samples=samples)
            for task in results.get("configs", {}):
                if task in samples:
                    tracker.save_results_samples(task_name=task, samples=samples[task])
    return results


def _limit(limit: float | None) -> int | float | None:
    """lm-eval reads a limit below 1 as a fraction of each task, else as a count of documents."""
    if limit is None or limit < 1:
        return limit
    return int(limit)


def tidy_rows(results: dict, model: str) -> list[dict]:
    """One row per task (or group) × metric × filter of lm-eval's results: value, its standard error, the
    documents scored."""
    rows = []
    n_samples = results.get("n-samples", {})
    n_shot = results.get("n-shot", {})
    for task, metrics in {**results.get("results", {}), **results.get("groups", {})}.items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):  # alias, sample_len
                continue
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"model": model, "task": task, "metric": metric, "filter": filt or "none",
                         "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan,
                         "samples": n_samples.get(task, {}).get("effective"), "num_fewshot": n_shot.get(task)})
    seen, unique = set(), []
    for row in rows:  # a task named on its own and inside a group appears in both tables
        key = (row["task"], row["metric"], row["filter"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def output_folder(out: str | None, given: str | None) -> Path:
    """Where lm-eval's own output goes: `given`, else beside the report (``REPORT.lm-eval/``), else
    ``./lm-eval-output``."""
    if given is not None:
        return Path(given)
    if out is not None:
        return Path(out).with_name(Path(out).stem + ".lm-eval")
    return Path("lm-eval-output")


def model_folder_name(spec: str) -> str:
    return re.sub(r"[^\w.-]+", "_", spec).strip("_") or "model"


class StagedFolder:
    """lm-eval's output written to a hidden folder beside `final` and moved in only when every model is done, so
    a failed run leaves no half-written output (files are lm-eval's, timestamped: earlier runs' stay)."""

    def __init__(self, final: Path):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))

    def commit(self) -> None:
        for path in sorted(self.tmp.rglob("*")):
            if path.is_file():
                target = self.final / path.relative_to(self.tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), target)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
