"""`enigma evaluate`: format rate, strict and flexible accuracy@1 and majority-vote accuracy, and answer entropy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ..console import console
from ..errors import InputError
from ..report import check_format, write_table


def evaluate(
    models: Annotated[list[str] | None, typer.Option("--model", help="Model(s) to evaluate (repeatable): "
                                                        "enigma-tiny, smollm2, a folder or a hub id.")] = None,
    dataset: Annotated[str | None, typer.Option(help="'synthetic' (held-out problems), a file or a hub id.")] = None,
    question_column: Annotated[str | None, typer.Option(help="Column holding the question.")] = None,
    answer_column: Annotated[str | None, typer.Option(help="Column holding the answer.")] = None,
    choices_column: Annotated[str | None, typer.Option(
        help="Column holding multiple-choice options (a list or 'A) … B) …' text; default: choices or options "
             "when present); answers are then letters.")] = None,
    math_verify: Annotated[bool, typer.Option("--math-verify/--no-math-verify",
                                              help="Decide answer equivalence with math-verify (LaTeX, fractions, "
                                                   "units) after our normalisation.")] = True,
    prompts: Annotated[int, typer.Option(help="Prompts to evaluate on.")] = 64,
    samples: Annotated[int, typer.Option("--samples", "-k", help="Completions per prompt.")] = 8,
    principle: Annotated[str | None, typer.Option(help="Principle text for the system prompt (default: none).")]
    = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion, in tokens.")] = 96,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Sequences per generation batch.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for prompts and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write the report here instead of stdout.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or parquet.")] = "csv",
) -> None:
    """Report format rate, strict and flexible accuracy@1 and majority vote, and answer entropy, one row per model.

    Strict reads the answer inside <answer> tags; flexible the last number (or choice letter) anywhere.
    """
    check_format(fmt, out)
    for name, value in (("--prompts", prompts), ("--samples", samples), ("--max-new-tokens", max_new_tokens),
                        ("--batch-size", batch_size)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, not {value}.")
    if temperature < 0:
        raise InputError(f"--temperature must be >= 0, not {temperature}.")
    if math_verify:
        from ..core.answers import math_verify_available

        if not math_verify_available():
            raise InputError("--math-verify needs the math-verify package (pip install math-verify); "
                             "pass --no-math-verify to compare answers with our normalisation only.")
    from ..datasets import load_examples
    from ..evaluation import EvalSettings
    from ..evaluation import evaluate as run_eval
    from ..models.loading import load_model

    examples = load_examples(dataset, n=prompts, seed=seed, question_column=question_column,
                             answer_column=answer_column, choices_column=choices_column)
    if not examples:
        raise InputError(f"dataset {dataset or 'synthetic'} has no prompts.")
    settings = EvalSettings(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                            batch_size=batch_size, seed=seed, math_verify=math_verify)
    rows = []
    for spec in models or ["enigma-tiny"]:
        lm = load_model(spec, device=device, dtype=dtype)
        row = {"model": spec, **run_eval(lm, examples, principle, settings), "temperature": temperature,
               "seed": seed}
        console.print(f"{spec}: format {row['format_rate']:.3f}  acc@1 strict {row['accuracy_at_1']:.3f} "
                      f"flexible {row['accuracy_at_1_flexible']:.3f}  majority strict "
                      f"{row['majority_accuracy']:.3f} flexible {row['majority_accuracy_flexible']:.3f}  "
                      f"entropy {row['answer_entropy']:.3f}", highlight=False)
        rows.append(row)
    write_table(pd.DataFrame(rows), out, fmt)
