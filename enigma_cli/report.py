"""Writing tidy reports: CSV/JSONL/Parquet to stdout or to a file, atomically."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Literal

import pandas as pd

from .errors import InputError

Format = Literal["csv", "jsonl", "parquet"]
FORMATS = ("csv", "jsonl", "parquet")


def check_format(fmt: str, out: str | Path | None, flag: str = "--out") -> str:
    """Validate the format before any work is done (parquet cannot go to a terminal)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    if fmt == "parquet" and out is None:
        raise InputError(f"--format parquet needs {flag} (parquet is binary and cannot go to stdout).")
    check_output_file(out, flag) if flag == "--out" else check_output_dir(out, flag)
    return fmt


def check_output_file(path: str | Path | None, flag: str = "--out") -> None:
    """Fail now, before any work, if a report could not be written to `path` (a folder, or an unwritable place)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name.")
    _check_creatable(path.parent, flag, path)


def check_output_dir(path: str | Path | None, flag: str = "--output-dir") -> None:
    """Fail now if `path` is a file, or a folder that cannot be created or written."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder.")
    _check_creatable(path, flag, path)


def _check_creatable(folder: Path, flag: str, target: Path) -> None:
    """The nearest existing ancestor of `folder` must be a writable folder (we create the rest)."""
    probe = folder if str(folder) else Path(".")
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{flag} {target}: {probe} is a file, so the folder cannot be created.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {target}: {probe} is not writable.")


def _jsonl(df: pd.DataFrame) -> str:
    """One JSON object per line; NaN becomes null and text is written as is (no escaped slashes)."""
    lines = []
    for record in df.to_dict("records"):
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        lines.append(json.dumps(clean, ensure_ascii=False, default=_json_default))
    return "".join(line + "\n" for line in lines)


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def _serialise(df: pd.DataFrame, fmt: str, handle) -> None:
    if fmt == "csv":
        df.to_csv(handle, index=False, float_format="%.6g")
    elif fmt == "jsonl":
        handle.write(_jsonl(df))
    else:
        df.to_parquet(handle, index=False)


def atomic_path(path: Path):
    """Context manager yielding a temporary path beside `path`, renamed into place only on success."""
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_table(df: pd.DataFrame, out: str | Path | None = None, fmt: str = "csv") -> None:
    """Write `df` to `out` (atomically) or to stdout; nothing half-written is left on failure."""
    check_format(fmt, out)
    if out is None:
        _serialise(df, fmt, sys.stdout)
        sys.stdout.flush()
        return
    with atomic_path(Path(out)) as tmp:
        mode = "wb" if fmt == "parquet" else "w"
        with open(tmp, mode) as handle:
            _serialise(df, fmt, handle)
