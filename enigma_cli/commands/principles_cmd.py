"""`enigma principles list|validate`: show the candidate principle sets and check YAML files against the schema."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import typer

from .. import constitution as ct
from ..cli_options import command
from ..console import console
from ..context import ContextCheck, peek, principles_of
from ..errors import InputError
from ..models.loading import model_path_for
from ..options import Options, opt
from ..principle_pool import set_yaml, write_set
from ..principles import NAME_PATTERN, YAML_SUFFIXES, read_principle_file, resolve_sets
from ..report import FORMATS, check_format, check_output_dir, check_output_file, write_table
from ..score.trust import (
    chars_per_token,
    is_enigma_tiny,
    readability,
    readability_finding,
    shipped_principle_texts,
    tiny_vocabulary,
)

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


@dataclass(frozen=True)
class FromTextConfig(Options):
    file: str = opt("", "A constitution in Markdown or plain text: numbered or bulleted rules, headings as groups.",
                    argument=True, metavar="FILE")
    out: str | None = opt(None, "Write the set's YAML here instead of stdout (with --sets-by-heading: a folder, one "
                                "file per set).", metavar="PATH")
    sets_by_heading: bool = opt(False, "One set per heading instead of one set of every rule (needs --out DIR); the "
                                       "folder is also a pool for `score-principles --pool`.")
    name: str | None = opt(None, "The set's name (default: the file's name); with --sets-by-heading, the prefix of "
                                 "each set's name.")
    model: str = opt("enigma-tiny", "The model the set is checked for: can it read each rule, and does each prompt "
                                    "fit its context (nothing is loaded but its tokenizer).")
    max_new_tokens: int = opt(96, "The completion length the context check leaves room for.", ge=1)

    def check(self) -> None:
        if not self.file:
            raise InputError("give the constitution FILE to read.")
        if self.sets_by_heading and self.out is None:
            raise InputError("--sets-by-heading writes one file per set; give --out DIR.")
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise InputError(f"--name {self.name!r} may use only letters, digits, '-', '_', '.' and '+'.")
        (check_output_dir if self.sets_by_heading else check_output_file)(self.out, "--out")


def from_text(cfg: FromTextConfig, dry_run: bool) -> None:
    """Rules → principle-set YAML (stdout, a file, or a folder of sets), validated for the chosen model."""
    source = Path(cfg.file)
    rules = ct.parse_rules(ct.read_text_file(source))
    sets = ct.build_sets(rules, source, cfg.name or ct.set_name(source.stem), cfg.sets_by_heading)
    ContextCheck(principles_of(*sets), cfg.max_new_tokens).before_load(cfg.model, [])
    _readability_notes(sets, cfg.model)
    for pset in sets:
        for a, b, ratio in ct.near_duplicates(pset.principles):
            console.print(f"[yellow]warning:[/] in set {pset.name}, {a} and {b} are nearly the same text (similarity "
                          f"{ratio:.2f}); a model may not tell them apart: keep one, or score both and read the "
                          "near-duplicate pairs.", highlight=False, soft_wrap=True)
    where = cfg.out or "stdout"
    console.print(f"{len(rules)} rules from {source} → {len(sets)} set(s) "
                  f"({', '.join(f'{s.name}: K={s.k}' for s in sets)}) → {where}"
                  f"{' (--dry-run: nothing written)' if dry_run else ''}.", highlight=False, soft_wrap=True)
    if dry_run:
        return
    if cfg.sets_by_heading:
        for pset in sets:
            write_set(pset, Path(cfg.out) / f"{pset.name}.yaml")
    elif cfg.out is not None:
        write_set(sets[0], Path(cfg.out))
    else:
        sys.stdout.write(set_yaml(sets[0]))
        sys.stdout.flush()


def _readability_notes(sets, model: str) -> None:
    """What the model cannot read, on stderr (a warning: the set is valid, and another model may read it)."""
    tokenizer = peek(model).tokenizer
    if tokenizer is None:
        console.print(f"note: the tokenizer of {model} cannot be read without loading it; readability not "
                      "checked.", highlight=False)
        return
    tiny = is_enigma_tiny(model_path_for(model)[0])
    reference = chars_per_token(tokenizer, shipped_principle_texts())
    vocabulary = tiny_vocabulary() if tiny else None
    found = [f for s in sets for p in s.principles
             if (f := readability_finding(p.id, readability(tokenizer, p.text, reference, vocabulary), tiny))]
    total = sum(s.k for s in sets)
    if found:
        console.print(f"[yellow]warning:[/] {model} cannot read {len(found)} of {total} rules; the first: "
                      f"{found[0].text}.", highlight=False, soft_wrap=True)


app.command("from-text")(command(
    FromTextConfig, "principles-from-text", from_text,
    help="Turn a constitution (Markdown or plain text: numbered or bulleted rules, headings as groups) into "
         "principle-set YAML with stable ids and the original wording, checked for the model (readability, "
         "context fit, near-duplicate texts)."))
app.command("list")(command(ListConfig, "principles-list", list_sets,
                            help="One row per principle: set, k, id, text, antithesis, file."))
app.command("validate")(command(ValidateConfig, "principles-validate", validate,
                                help="Check each file against the schema: 'ok' per valid file, one sentence per "
                                     "bad one (exit code 3)."))
