"""An lm-evaluation-harness task over a JSONL file of questions and answers (`enigma tasks generate --lm-eval-task`).

The task is what `enigma evaluate` measures, written in lm-evaluation-harness's own terms, so that a user can check
one against the other (and `tests/test_lm_eval.py` does): greedy generation of up to `max_new_tokens` tokens, the
question as the user turn (`enigma evaluate --lm-eval` adds the system message and the chat template, as enigma
renders them), and two scores, as in lm-evaluation-harness's GSM8K task:

- ``strict-match``: the body of the ``<answer>`` block;
- ``flexible-extract``: the last number anywhere (GSM8K's own pattern).

Both are compared with ``exact_match`` after dropping thousands commas, ``$`` and a final full stop (GSM8K's
settings). That is our normalisation for the integer answers of the synthetic problems; for other answers
(fractions, LaTeX) `enigma evaluate` is the more lenient judge (math-verify), and the two need not agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..report import atomic_path

STRICT = r"<answer>\s*(.*?)\s*</answer>"
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"


def task_name(yaml_path: Path) -> str:
    """The task's name: the YAML file's stem, in the characters lm-evaluation-harness's names use."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", Path(yaml_path).stem).strip("_") or "enigma_task"


def lm_eval_task(name: str, data_file: Path, max_new_tokens: int = 96) -> dict:
    """The task config (a dict ready for YAML) over `data_file` (JSONL with ``question`` and ``answer``)."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "num_fewshot": 0,
        # no stop strings but the model's end of turn, which lm-evaluation-harness adds itself
        "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": max_new_tokens},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "\\.$"]}],
        "filter_list": [
            {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": STRICT},
                                                 {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [{"function": "regex", "regex_pattern": FLEXIBLE,
                                                     "group_select": -1},
                                                    {"function": "take_first"}]},
        ],
        "metadata": {"version": 1.0, "written_by": "enigma tasks generate --lm-eval-task"},
    }


def write_lm_eval_task(yaml_path: Path, data_file: Path, max_new_tokens: int = 96) -> None:
    config = lm_eval_task(task_name(yaml_path), data_file, max_new_tokens)
    with atomic_path(Path(yaml_path)) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
