"""Options: one frozen config dataclass per command is the single source of every option.

A command's dataclass declares each option once, with `opt`: its name (the field), type (the annotation), default
and help, plus the checks that apply to it (choices, bounds, finiteness). Everything else derives from that:

- `check_values` validates every value (type, finiteness, range, choice) with one sentence naming the flag or the
  config file's key: the one validation layer that command-line and config-file values both pass, before any
  model loads; the dataclass's `check` adds the rules that involve several fields;
- `enigma_cli.cli_options.command` builds the typer command from the dataclass (one `--flag` per field, plus
  ``--config`` and ``--dry-run``), and `enigma_cli.cli_options.build` fills it from defaults < the config file <
  the flags the user typed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
    split: bool = False               # a tuple of text also takes "a,b" (numbers always do)
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


def device_opt() -> Any:
    """The ``--device`` option every command that loads a model has (checked by `models.devices.resolve_device`)."""
    return opt("auto", "auto, cpu or cuda.")


def dtype_opt(note: str = "") -> Any:
    """The ``--dtype`` option every command that loads a model has; `note` adds what this command does with it."""
    return opt("auto", "auto, float32, bfloat16, float16 or bf16-mixed (float32 weights under bf16 autocast; auto "
                       f"picks it on a CPU with bf16 instructions for models of 2M parameters and more){note}.")


def option_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


# -- values ------------------------------------------------------------------------------------------------------
def type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def unwrap_optional(tp) -> tuple[Any, bool]:
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
    tp, optional = unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise InputError(f"{label} needs a value.")
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if inner is str and spec.split:
            items = [p.strip() if isinstance(p, str) else p
                     for item in items for p in (item.split(",") if isinstance(item, str) else [item])
                     if not isinstance(p, str) or p.strip()]
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
    hints = type_hints(type(cfg))
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
