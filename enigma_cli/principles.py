"""Principle sets: the YAML schema, its validating loader, and the sets shipped with `enigma`.

A principle set is one YAML file (the schema is documented in ``principles/README.md``)::

    name: stepwise-vs-oneline
    description: Two opposite ways of laying out the working.
    principles:
      - id: show-steps
        text: Show every intermediate result on its own line.
        antithesis: Hide the intermediate results.      # optional (SAMI-style contrast)
      - id: one-line
        text: Keep all of the reasoning on one line.

The loader is strict, because a silently wrong set would poison every InfoNCE estimate built on it
(method.md §3-4): unknown keys, missing or empty fields, duplicate ids, duplicate texts and K < 2 are each
an :class:`~enigma_cli.errors.InputError` (exit code 3) naming the file and the field.

The shipped sets live in the top-level ``principles/`` folder of the repository. The installed package
carries the same files as package data (``enigma_cli/data/principles``, a link to that folder in a checkout),
so an editable install and a wheel find them the same way; a checkout without the link falls back to
``principles/`` beside the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import InputError

SET_KEYS = ("name", "description", "principles")
PRINCIPLE_KEYS = ("id", "text", "antithesis")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # '+' joins the ids of a set drawn from a pool
YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1 << 20  # a set is a handful of sentences; the largest shipped one is under 2 KiB


@dataclass(frozen=True)
class Principle:
    """One principle: a stable id, the text a model is conditioned on, and an optional contrast text."""

    id: str
    text: str
    antithesis: str | None = None


@dataclass(frozen=True)
class PrincipleSet:
    """K >= 2 principles compared against each other (InfoNCE needs K candidates per prompt)."""

    name: str
    description: str
    principles: tuple[Principle, ...]
    path: Path | None = None

    @property
    def k(self) -> int:
        return len(self.principles)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.principles)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.principles)

    def by_id(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)


# --------------------------------------------------------------------------------------------- validation


def _where(path: Path | str | None) -> str:
    return f"principle set {str(path)!r}" if path is not None else "principle set"


def _fail(path: Path | str | None, field: str | None, problem: str) -> InputError:
    if field is None:
        return InputError(f"{_where(path)}: {problem}.")
    return InputError(f"{_where(path)}: field '{field}' {problem}.")


def _text_field(data: dict, key: str, field: str, path, *, required: bool) -> str | None:
    if key not in data or data[key] is None:
        if required:
            raise _fail(path, field, "is missing" if key not in data else "is empty")
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(path, field, f"must be a string, not {type(value).__name__}")
    value = str(value).strip()
    if not value:
        raise _fail(path, field, "is empty")
    return value


def _unknown(keys, allowed: tuple[str, ...]) -> list[str]:
    return [str(k) for k in keys if k not in allowed]


def parse_principle_set(data: object, path: Path | str | None = None) -> PrincipleSet:
    """Validate parsed YAML (a dict) into a :class:`PrincipleSet`; every problem names the field."""
    if data is None:
        raise _fail(path, None, "the file is empty")
    if not isinstance(data, dict):
        raise _fail(path, None, f"the top level must be a mapping with keys {', '.join(SET_KEYS)}, "
                                f"not a {type(data).__name__}")
    unknown = _unknown(data.keys(), SET_KEYS)
    if unknown:
        raise _fail(path, unknown[0], f"is not a known key (allowed: {', '.join(SET_KEYS)})")
    name = _text_field(data, "name", "name", path, required=True)
    if not NAME_PATTERN.match(name):
        raise _fail(path, "name", f"({name!r}) may use only letters, digits, '-', '_', '.' and '+'")
    description = _text_field(data, "description", "description", path, required=True)

    items = data.get("principles")
    if items is None:
        raise _fail(path, "principles", "is missing" if "principles" not in data else "is empty")
    if not isinstance(items, list):
        raise _fail(path, "principles", f"must be a list of principles, not a {type(items).__name__}")
    if len(items) < 2:
        raise _fail(path, "principles", f"has {len(items)} principle(s); a set needs at least 2 (K >= 2)")

    principles: list[Principle] = []
    seen_ids: dict[str, int] = {}
    seen_texts: dict[str, str] = {}
    for i, item in enumerate(items):
        field = f"principles[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, field, f"must be a mapping with keys {', '.join(PRINCIPLE_KEYS)}, "
                                     f"not a {type(item).__name__}")
        unknown = _unknown(item.keys(), PRINCIPLE_KEYS)
        if unknown:
            raise _fail(path, f"{field}.{unknown[0]}",
                        f"is not a known key (allowed: {', '.join(PRINCIPLE_KEYS)})")
        pid = _text_field(item, "id", f"{field}.id", path, required=True)
        if not ID_PATTERN.match(pid):
            raise _fail(path, f"{field}.id", f"({pid!r}) may use only letters, digits, '-', '_' and '.'")
        if pid in seen_ids:
            raise _fail(path, f"{field}.id", f"repeats the id {pid!r} of principles[{seen_ids[pid]}] "
                                             "(ids must be unique within a set)")
        seen_ids[pid] = i
        text = _text_field(item, "text", f"{field}.text", path, required=True)
        norm = " ".join(text.split()).casefold()
        if norm in seen_texts:
            raise _fail(path, f"{field}.text", f"repeats the text of principle {seen_texts[norm]!r} "
                                               "(identical principles cannot be told apart)")
        seen_texts[norm] = pid
        antithesis = _text_field(item, "antithesis", f"{field}.antithesis", path, required=False)
        principles.append(Principle(id=pid, text=text, antithesis=antithesis))

    return PrincipleSet(name=name, description=description, principles=tuple(principles),
                        path=Path(path) if path is not None else None)


def read_principle_file(path: Path | str) -> PrincipleSet:
    """Read and validate one YAML file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{_where(path)}: the file does not exist.")
    if path.is_dir():
        raise InputError(f"{_where(path)}: is a folder, not a YAML file.")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:  # PyYAML parses ~0.5 MB/s: a wrong 60 MB file would hang us for minutes
            raise InputError(f"{_where(path)}: the file is {size / 2**20:.1f} MiB, but a principle set is a few "
                             f"sentences and at most {MAX_FILE_BYTES >> 20} MiB.")
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{_where(path)}: the file cannot be read ({type(err).__name__}: {err}).") from err
    if not raw.strip():
        raise _fail(path, None, "the file is empty")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{_where(path)}: the file is not valid YAML{where} ({problem}).") from err
    return parse_principle_set(data, path)


# ------------------------------------------------------------------------------------------- shipped sets


def _shipped_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / "principles", here.parent / "principles"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise InputError("the shipped principle sets are missing from this installation "
                     f"(looked in {here / 'data' / 'principles'} and {here.parent / 'principles'}).")


def shipped_set_paths() -> list[Path]:
    """The YAML files of the built-in sets, sorted by file name."""
    # resolve(): in a checkout the package folder links to the top-level principles/, the path people edit.
    return sorted((p.resolve() for p in _shipped_dir().glob("*.yaml")), key=lambda p: p.name)


def shipped_sets() -> list[PrincipleSet]:
    """Every built-in set, validated."""
    return [read_principle_file(p) for p in shipped_set_paths()]


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(YAML_SUFFIXES) or "/" in spec or "\\" in spec or Path(spec).is_file()


def load_principle_set(path_or_name: str | Path) -> PrincipleSet:
    """Load a set by shipped name (e.g. ``"stepwise-vs-oneline"``) or by YAML file path."""
    if isinstance(path_or_name, Path) or _looks_like_path(str(path_or_name)):
        return read_principle_file(Path(path_or_name))
    name = str(path_or_name).strip()
    paths = shipped_set_paths()
    for p in paths:
        if p.stem == name:
            return read_principle_file(p)
    for ps in (read_principle_file(p) for p in paths):
        if ps.name == name:
            return ps
    names = ", ".join(p.stem for p in paths)
    raise InputError(f"no principle set named {name!r} (shipped sets: {names}; or give a YAML file path).")


def resolve_sets(specs: list[str] | None) -> list[PrincipleSet]:
    """Sets from names, YAML files or folders of YAML files; None or [] means every shipped set.

    Two sets with the same ``name`` are an error, since reports identify sets by name.
    """
    if not specs:
        sets = shipped_sets()
    else:
        sets = []
        for spec in specs:
            p = Path(spec)
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.suffix in YAML_SUFFIXES)
                if not files:
                    raise InputError(f"principle set folder {spec!r} holds no .yaml files.")
                sets.extend(read_principle_file(f) for f in files)
            else:
                sets.append(load_principle_set(spec))
    seen: dict[str, PrincipleSet] = {}
    for ps in sets:
        if ps.name in seen:
            raise InputError(f"two principle sets are named {ps.name!r} ({seen[ps.name].path} and {ps.path}); "
                             "set names must be unique.")
        seen[ps.name] = ps
    return sets
