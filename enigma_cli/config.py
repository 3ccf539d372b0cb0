"""Run configuration: one frozen dataclass per command, filled from defaults, then `--config FILE`, then flags.

Flags the user actually typed win over the file; flags left at their defaults do not override it (we ask click
where each value came from). The resolved config is written beside a command's outputs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import click
import tomllib
import yaml

from .errors import InputError

T = TypeVar("T")


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML mapping; one sentence naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist.")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"config file {path} could not be parsed: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of option names to values.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[T], *, file_values: dict[str, Any], flag_values: dict[str, Any],
                 typed: set[str], source: str = "config") -> T:
    """Defaults < file values < flags the user typed. Unknown keys in the file are an InputError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise InputError(f"{source} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(names))}.")
    values = {k: v for k, v in flag_values.items() if k in names}
    for key, value in file_values.items():
        if key not in typed:
            values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise InputError(f"{source}: {err}") from None


def typed_flags(ctx: click.Context) -> set[str]:
    """Names of the parameters the user gave on the command line (not defaults)."""
    typed = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            typed.add(name)
    return typed


def resolve(cls: type[T], ctx: click.Context, config_path: Path | None, **flag_values: Any) -> T:
    """The command's config: dataclass built from flags, overridden by the file where the user typed nothing."""
    file_values = read_config_file(config_path) if config_path else {}
    return build_config(cls, file_values=file_values, flag_values=flag_values, typed=typed_flags(ctx),
                        source=str(config_path) if config_path else "flags")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (paths and tuples become strings and lists)."""
    def clean(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        return v
    return {k: clean(v) for k, v in dataclasses.asdict(cfg).items()}


def write_resolved(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .report import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
