"""From the command line and config files to a command's config dataclass (see `enigma_cli.options`).

- `command` builds the typer command from a config dataclass: one `--flag` per field (or a positional argument),
  the defaults and help shown by ``--help``, plus ``--config FILE`` and ``--dry-run`` on every command;
- `build` fills the dataclass from defaults < the config file < the flags the user typed; every value then passes
  `enigma_cli.options.check_values`.

A config file (YAML or TOML) is either flat (this command's keys) or holds one section per command, so that one
file can drive a pipeline::

    model: smollm2            # shared: every command that has a `model` option takes it
    seed: 1
    train:
      steps: 20
    score-principles:
      prompts: 16

Keys of the file's own section must be options of the command; shared keys must be an option of some command.
A shared key means the same thing to every command that has it, so keep a key whose meaning differs between
commands in each command's own section: ``output_dir`` (sft's adapter folder, train's run folder, study's study
folder), ``merge`` (sft folds the adapter in; study merges shards) and ``layers`` (the layers analyze-manifold reads;
the depth build-default-model builds).
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
import yaml

from .errors import InputError
from .options import Spec, construct, flag_name, option_fields, spec_of, type_hints, unwrap_optional

T = TypeVar("T")


# -- config files ------------------------------------------------------------------------------------------------
def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML mapping; one sentence naming the file on any problem."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"config file {path} is a folder, not a YAML or TOML file.")
    if not path.is_file():
        raise InputError(f"config file {path} does not exist.")
    try:
        if path.stat().st_size > 1 << 20:
            raise InputError(f"config file {path} is larger than 1 MiB; is it really a config file?")
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"config file {path} could not be parsed: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of option names to values.")
    return data


#: command name -> its config class, filled by `command`; a sectioned file is checked against all of them.
REGISTRY: dict[str, type] = {}


def _key(name: Any) -> str:
    return str(name).replace("-", "_")


def file_values(data: dict[str, Any], command_name: str, cls, source: str) -> dict[str, Any]:
    """The values that a (flat or sectioned) config file gives to `command_name`'s options."""
    names = {f.name for f in option_fields(cls)}
    sections = {k for k in data if str(k) in REGISTRY or _key(k) in {_key(n) for n in REGISTRY}}
    if not sections:
        unknown = sorted(_key(k) for k in data if _key(k) not in names)
        if unknown:
            raise InputError(f"{source} has unknown key(s) {', '.join(unknown)} for {command_name}; known keys: "
                             f"{', '.join(sorted(names))}.")
        return {_key(k): v for k, v in data.items()}
    known_anywhere = {f.name for c in REGISTRY.values() for f in option_fields(c)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            continue
        if _key(key) not in known_anywhere:
            raise InputError(f"{source} has unknown shared key {_key(key)!r}: no command has such an option.")
        if _key(key) in names:
            values[_key(key)] = value
    own = [k for k in sections if _key(k) == _key(command_name)]
    for key in own:
        section = data[key]
        if section is None:
            continue
        if not isinstance(section, dict):
            raise InputError(f"{source}: section {key!r} must be a mapping of option names to values.")
        unknown = sorted(_key(k) for k in section if _key(k) not in names)
        if unknown:
            raise InputError(f"{source}: section {key!r} has unknown key(s) {', '.join(unknown)}; known keys: "
                             f"{', '.join(sorted(names))}.")
        values.update({_key(k): v for k, v in section.items()})
    return values


def build(cls: type[T], *, flags: dict[str, Any], typed: set[str], config_path: Path | None = None,
          command_name: str = "") -> T:
    """Defaults < config file < flags the user typed; every value validated, errors naming flag or file key."""
    from_file = {}
    source = str(config_path) if config_path else ""
    if config_path is not None:
        from_file = file_values(read_config_file(config_path), command_name or cls.__name__, cls, source)
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for field in option_fields(cls):
        name = field.name
        if name in typed and name in flags:
            values[name] = flags[name]
        elif name in from_file:
            values[name] = from_file[name]
            labels[name] = f"{source}: {name}"
        elif name in flags and flags[name] is not None and spec_of(field).argument:
            values[name] = flags[name]
    return construct(cls, values, labels)


def typed_flags(ctx: click.Context) -> set[str]:
    """Names of the parameters the user gave on the command line (not defaults)."""
    typed = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            typed.add(name)
    return typed


# -- the typer command -------------------------------------------------------------------------------------------
def _cli_type(tp, spec: Spec):
    tp, optional = unwrap_optional(tp)
    if typing.get_origin(tp) is tuple:  # repeatable, and "2,4" also works: `coerce` splits the strings
        return list[str] | None
    if spec.parse is not None:
        return str | None
    if tp in (int, float, str, bool):
        return (tp | None) if optional or spec.argument else tp
    raise TypeError(f"no command-line form for {tp}")


def _param(field: dataclasses.Field, tp) -> inspect.Parameter:
    spec = spec_of(field)
    cli_tp = _cli_type(tp, spec)
    default = field.default
    base, _ = unwrap_optional(tp)
    if spec.argument:
        info = typer.Argument(help=spec.help, show_default=False, metavar=spec.metavar)
        default = None
    else:
        names = [flag_name(field.name)]
        if base is bool and spec.negative:
            names = [f"{names[0]}/{spec.negative}"]
        if spec.short:
            names.append(spec.short)
        metavar = spec.metavar
        if metavar is None and spec.choices:
            metavar = "|".join(spec.choices)
        if base is bool:
            metavar = ""
        show = default not in (None, (), "") and not isinstance(default, tuple)
        info = typer.Option(*names, help=spec.help, metavar=metavar, show_default=show)
        if isinstance(default, tuple) or spec.parse is not None and default is not None:
            default = None if isinstance(default, tuple) else str(default)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[cli_tp, info])


CONFIG_HELP = "YAML/TOML file of options (flat, or one section per command); flags you type win over it."
DRY_RUN_HELP = "Validate everything and print the planned work; load no weights, write nothing."


def command(cls: type, name: str, run: Callable[[Any, bool], None], help: str,
            dry_run_help: str = DRY_RUN_HELP) -> Callable:
    """A typer command whose options are `cls`'s fields plus --config and --dry-run; it calls run(cfg, dry_run)."""
    REGISTRY[name] = cls
    hints = type_hints(cls)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    fields = [f for f in option_fields(cls) if spec_of(f).cli]
    for field in sorted(fields, key=lambda f: not spec_of(f).argument):
        params.append(_param(field, hints[field.name]))
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Path | None, typer.Option(help=CONFIG_HELP,
                                                                                   show_default=False)]))
    params.append(inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, default=False,
                                    annotation=Annotated[bool, typer.Option("--dry-run", help=dry_run_help,
                                                                            metavar="")]))

    def callback(ctx: typer.Context, **kwargs: Any) -> None:
        config_path = kwargs.pop("config", None)
        dry_run = bool(kwargs.pop("dry_run", False))
        flags = {}
        for field in fields:
            value = kwargs.get(field.name)
            if isinstance(value, list):
                value = tuple(value)
            flags[field.name] = value
        cfg = build(cls, flags=flags, typed=typed_flags(ctx), config_path=config_path, command_name=name)
        run(cfg, dry_run)

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__doc__ = help
    callback.__name__ = name.replace("-", "_")
    return callback
