"""`enigma principles list|validate`: show the candidate principle sets and check YAML files against the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ..console import console
from ..errors import InputError
from ..report import check_format, write_table

app = typer.Typer(help="List the shipped principle sets or validate principle-set YAML files.",
                  no_args_is_help=True, add_completion=False)

COLUMNS = ["set", "k", "id", "text", "antithesis", "file"]


@app.command("list")
def list_sets(
    sets: Annotated[list[str] | None, typer.Argument(
        help="Set names, YAML files or folders (default: every shipped set).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Write the table here instead of stdout.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or parquet.")] = "csv",
) -> None:
    """One row per principle: set, k, id, text, antithesis, file."""
    check_format(fmt, out)
    from ..principles import resolve_sets

    rows = [
        {"set": ps.name, "k": ps.k, "id": p.id, "text": p.text, "antithesis": p.antithesis,
         "file": str(ps.path) if ps.path else ""}
        for ps in resolve_sets(sets or None)
        for p in ps.principles
    ]
    write_table(pd.DataFrame(rows, columns=COLUMNS), out, fmt)


@app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="Principle-set YAML files (or folders of them).",
                                                 show_default=False)],
) -> None:
    """Check each file against the schema: 'ok' per valid file, one sentence per bad one (exit code 3)."""
    from ..principles import YAML_SUFFIXES, read_principle_file

    targets: list[Path] = []
    for f in files:
        if f.is_dir():
            found = sorted(x for x in f.iterdir() if x.suffix in YAML_SUFFIXES)
            targets.extend(found or [f])  # an empty folder is reported as not a YAML file
        else:
            targets.append(f)
    bad = 0
    for path in targets:
        try:
            ps = read_principle_file(path)
        except InputError as err:
            bad += 1
            console.print(f"[bold red]error:[/] {err}", highlight=False)
        else:
            console.print(f"ok: {path} ({ps.name}, K={ps.k})", highlight=False)
    if bad:
        raise typer.Exit(code=InputError.exit_code)
