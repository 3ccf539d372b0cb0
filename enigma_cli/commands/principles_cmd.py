"""`enigma principles list|validate`: show the candidate principle sets and check YAML files against the schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import typer

from ..cli_options import command
from ..console import console
from ..errors import InputError
from ..options import Options, opt
from ..report import FORMATS, check_format, write_table

app = typer.Typer(help="List the shipped principle sets or validate principle-set YAML files.",
                  no_args_is_help=True, add_completion=False)

COLUMNS = ["set", "k", "id", "text", "antithesis", "file"]


@dataclass(frozen=True)
class ListConfig(Options):
    principles: tuple[str, ...] = opt((), "Set names, YAML files or folders (default: every shipped set).",
                                      argument=True, metavar="SETS")
    out: str | None = opt(None, "Write the table here instead of stdout.", metavar="FILE", output="file")
    format: str = opt("csv", "Report format.", choices=FORMATS)


def list_sets(cfg: ListConfig, dry_run: bool) -> None:
    """One row per principle: set, k, id, text, antithesis, file."""
    check_format(cfg.format, cfg.out)
    from ..principles import resolve_sets

    sets = resolve_sets(list(cfg.principles) or None)
    if dry_run:
        console.print(f"would list {len(sets)} set(s) (--dry-run).", highlight=False)
        return
    rows = [
        {"set": ps.name, "k": ps.k, "id": p.id, "text": p.text, "antithesis": p.antithesis,
         "file": str(ps.path) if ps.path else ""}
        for ps in sets
        for p in ps.principles
    ]
    write_table(pd.DataFrame(rows, columns=COLUMNS), cfg.out, cfg.format)


@dataclass(frozen=True)
class ValidateConfig(Options):
    files: tuple[str, ...] = opt((), "Principle-set YAML files (or folders of them).", argument=True,
                                 metavar="FILES")

    def check(self) -> None:
        if not self.files:
            raise InputError("give at least one principle-set FILE to validate.")


def validate(cfg: ValidateConfig, dry_run: bool) -> None:
    """Check each file against the schema: 'ok' per valid file, one sentence per bad one (exit code 3)."""
    from ..principles import YAML_SUFFIXES, read_principle_file

    targets: list[Path] = []
    for f in map(Path, cfg.files):
        if f.is_dir():
            found = sorted(x for x in f.iterdir() if x.suffix in YAML_SUFFIXES)
            targets.extend(found or [f])  # an empty folder is reported as not a YAML file
        else:
            targets.append(f)
    if dry_run:
        console.print(f"would validate {len(targets)} file(s) (--dry-run).", highlight=False)
        return
    bad = 0
    for path in targets:
        try:
            ps = read_principle_file(path)
        except InputError as err:
            bad += 1
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        else:
            console.print(f"ok: {path} ({ps.name}, K={ps.k})", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(code=InputError.exit_code)


app.command("list")(command(ListConfig, "principles-list", list_sets,
                            help="One row per principle: set, k, id, text, antithesis, file."))
app.command("validate")(command(ValidateConfig, "principles-validate", validate,
                                help="Check each file against the schema: 'ok' per valid file, one sentence per "
                                     "bad one (exit code 3)."))
