"""Options: one frozen config dataclass per command is the single source of every option.

A command's dataclass declares each option once, with `opt`: its name (the field), type (the annotation), default
and help, plus the checks that apply to it (choices, bounds, finiteness). Everything else derives from that:

- `command` builds the typer command from the dataclass: one `--flag` per field (or a positional argument), the
  defaults and help shown by ``--help``, plus ``--config FILE`` and ``--dry-run`` on every command;
- `build` fills the dataclass from defaults < the config file < the flags the user typed, and `check_values`
  validates every value (type, finiteness, range, choice) with one sentence naming the flag or the file's key —
  the one validation layer that command-line and config-file values both pass, before any model loads.

A config file (YAML or TOML) is either flat (this command's keys) or holds one section per command, so that one
file can drive a pipeline::

    model: smollm2            # shared: every command that has a `model` option takes it
    seed: 1
    train:
      steps: 20
    score-principles:
      prompts: 16

Keys of the file's own section must be options of the command; shared keys must be an option of some command.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
import yaml

from .errors import InputError

T = TypeVar("T")
_META = "enigma"
INT_LIMIT = 2**63  # torch and numpy seeds, step counts: anything larger is a typo


@dataclass(frozen=True)
class Spec:
    """How one option is shown and checked (held in the dataclass field's metadata)."""

    help: str
    short: str | None = None          # e.g. "-G"
    negative: str | None = None       # for bools: the off switch, e.g. "--no-sami" (default: a plain flag)
    argument: bool = False            # a positional argument instead of a --flag
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True               # floats must be finite
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # turns one command-line string into the value (e.g. "2,4")
    cli: bool = True                  # False: config file and library only (kept rare)
    output: str | None = None         # "file" or "dir": a path the command writes, checked before any work


def opt(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field that is also a command-line option (see `Spec` for the keywords)."""
    meta = {_META: Spec(help=help, **spec)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("opt(): use a tuple, not a mutable default")
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def spec_of(field: dataclasses.Field) -> Spec:
    return field.metadata.get(_META) or Spec(help="", cli=False)


def option_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


# -- values ------------------------------------------------------------------------------------------------------
def _unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _scalar(value: Any, tp, label: str, spec: Spec) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{label} must be true or false, not {_describe(value)}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{label} must be a whole number, not {_describe(value)}.")
        if abs(value) >= INT_LIMIT:
            raise InputError(f"{label} is out of range ({value}).")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{label} must be a number, not {_describe(value)}.")
        value = float(value)
        if spec.finite and not math.isfinite(value):
            raise InputError(f"{label} must be a finite number, not {value}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{label} must be text, not {_describe(value)}.")
        return value
    return value  # dict and other library-only types are checked by the dataclass itself


def _bounds(value: Any, label: str, spec: Spec) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if spec.ge is not None and not value >= spec.ge:
        raise InputError(f"{label} must be at least {_num(spec.ge)}, not {_num(value)}.")
    if spec.gt is not None and not value > spec.gt:
        raise InputError(f"{label} must be greater than {_num(spec.gt)}, not {_num(value)}.")
    if spec.le is not None and not value <= spec.le:
        raise InputError(f"{label} must be at most {_num(spec.le)}, not {_num(value)}.")
    if spec.lt is not None and not value < spec.lt:
        raise InputError(f"{label} must be less than {_num(spec.lt)}, not {_num(value)}.")


def _num(x) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


def coerce(value: Any, tp, label: str, spec: Spec) -> Any:
    """`value` checked against type `tp` and `spec`; one-sentence InputError naming `label` otherwise."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise InputError(f"{label} needs a value.")
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if inner is not str:  # "2,4" from a flag or a file; "auto" (or nothing) means the default, empty
            expanded = []
            for item in items:
                if isinstance(item, str):
                    parts = [p.strip() for p in item.split(",") if p.strip() and p.strip().lower() != "auto"]
                    expanded += [spec.parse(p) if spec.parse else _parse_text(p, inner, label) for p in parts]
                else:
                    expanded.append(item)
            items = expanded
        return tuple(coerce(v, inner, label, spec) for v in items)
    if isinstance(value, str) and tp is not str and spec.parse is not None:
        value = spec.parse(value)
    value = _scalar(value, tp, label, spec)
    if spec.choices is not None and value not in spec.choices:
        raise InputError(f"{label} must be one of {', '.join(spec.choices)}, not {_describe(value)}.")
    _bounds(value, label, spec)
    return value


def _parse_text(text: str, tp, label: str) -> Any:
    try:
        return tp(text)
    except (TypeError, ValueError):
        kind = "whole numbers" if tp is int else "numbers"
        raise InputError(f"{label} must be a comma-separated list of {kind}, not {text!r}.") from None


def check_values(cfg: Any, labels: dict[str, str] | None = None) -> None:
    """Validate and normalise every field of a config dataclass in place (frozen: through object.__setattr__).

    `labels` names where a value came from (a flag, or a key in a file); the default is the field's flag.
    """
    hints = typing.get_type_hints(type(cfg))
    for field in option_fields(type(cfg)):
        spec = spec_of(field)
        label = (labels or {}).get(field.name) or flag_name(field.name)
        value = coerce(getattr(cfg, field.name), hints[field.name], label, spec)
        if spec.output:  # a folder where a file is due, or an unwritable place: now, not after the work
            from .report import check_output_option

            check_output_option(value, spec.output, label)
        object.__setattr__(cfg, field.name, value)


class Options:
    """Base of every command's config dataclass: fields are validated on construction, then `check` runs the
    rules that involve several fields (override it)."""

    def __post_init__(self) -> None:
        check_values(self, getattr(self, "_labels", None))
        self.check()

    def check(self) -> None:  # cross-field rules of a command
        pass


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


def construct(cls: type[T], values: dict[str, Any], labels: dict[str, str] | None = None) -> T:
    """`cls(**values)` with errors as one sentence; labels say where each value came from."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_labels", labels or {})
    try:
        cls.__init__(obj, **values)
    except TypeError as err:
        raise InputError(f"{cls.__name__}: {err}") from None
    finally:
        try:
            object.__delattr__(obj, "_labels")
        except AttributeError:
            pass
    return obj


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
    tp, optional = _unwrap_optional(tp)
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
    base, _ = _unwrap_optional(tp)
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


def command(cls: type, name: str, run: Callable[[Any, bool], None], help: str) -> Callable:
    """A typer command whose options are `cls`'s fields plus --config and --dry-run; it calls run(cfg, dry_run)."""
    REGISTRY[name] = cls
    hints = typing.get_type_hints(cls)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    fields = [f for f in option_fields(cls) if spec_of(f).cli]
    for field in sorted(fields, key=lambda f: not spec_of(f).argument):
        params.append(_param(field, hints[field.name]))
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=Annotated[Path | None, typer.Option(help=CONFIG_HELP,
                                                                                   show_default=False)]))
    params.append(inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, default=False,
                                    annotation=Annotated[bool, typer.Option("--dry-run", help=DRY_RUN_HELP,
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


# -- writing the resolved config --------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML/JSON-safe dict of a config dataclass (paths and tuples become strings and lists)."""
    def clean(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        return v
    return {f.name: clean(getattr(cfg, f.name)) for f in option_fields(type(cfg))}


def write_resolved(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML, atomically; it can be passed back with --config."""
    from .report import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
