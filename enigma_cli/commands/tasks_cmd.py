"""`enigma tasks generate`: write built-in synthetic problems (with principle-following completions) as JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..console import console
from ..errors import InputError

app = typer.Typer(help="Built-in synthetic reasoning tasks.", no_args_is_help=True, add_completion=False)


@app.command("generate")
def generate(
    n: Annotated[int, typer.Option("--n", help="Number of rows.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed; the rows are a deterministic function of (n, seed).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write JSONL here (atomically) instead of stdout.")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Principle sets to draw principles from (repeatable; default: every shipped set).")] = None,
    plain: Annotated[bool, typer.Option(
        "--plain", help="Only question and answer, no principle or completion.")] = False,
    split: Annotated[str, typer.Option(help="train, heldout or all (held-out questions never appear in train).")]
    = "train",
) -> None:
    """Rows with question, answer, principle_id, principle_text and a completion obeying the principle."""
    from ..principles import resolve_sets
    from ..tasks.synthetic import SPLITS, generate_problems, training_examples, write_jsonl

    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}.")
    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}.")
    if plain:
        rows = [{"question": p.question, "answer": p.answer} for p in generate_problems(n, seed, split=split)]
    else:
        rows = training_examples(n, seed, resolve_sets(sets or None), split=split)
    if out is None:
        sys.stdout.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        sys.stdout.flush()
    else:
        write_jsonl(rows, out)
        console.print(f"wrote {len(rows)} rows to {out}", highlight=False)
