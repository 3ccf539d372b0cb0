"""Writing outputs: reports (CSV/JSONL/Parquet) to stdout or a file, and the checks that run before any work.

Every file `enigma` writes goes through `atomic_path`: the content is written to a hidden temporary file beside
the target and renamed into place only when complete, so an interrupted or failed write never leaves a
half-written file (a killed process can leave a hidden ``.<name>.*.tmp``; a run folder's are removed at its next
start). `writing` turns an operating-system failure (disk full, read-only file system, permission) into one
sentence naming the path. `check_output_file` / `check_output_dir` say before any work whether a path can be
written; the option system calls them for every option declared with ``output="file"`` or ``output="dir"``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from .errors import EnigmaError, InputError

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
    if not str(path).strip() or path.name in ("", ".", ".."):
        raise InputError(f"{flag} {str(path)!r} is not a file name.")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name.")
    _check_creatable(path.parent, flag, path)


def check_output_dir(path: str | Path | None, flag: str = "--output-dir", files: tuple[str, ...] = ()) -> None:
    """Fail now if `path` is a file, or a folder that cannot be created or written, or if one of the `files`
    that will be written inside it is a folder."""
    if path is None:
        return
    path = Path(path)
    if not str(path).strip():
        raise InputError(f"{flag} is empty; give a folder.")
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder.")
    _check_creatable(path, flag, path)
    for name in files:
        if (path / name).is_dir():
            raise InputError(f"{flag} {path}: {path / name} is a folder, so {name} cannot be written there.")


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


def check_output_option(value: str | None, kind: str, label: str) -> None:
    """The option system's hook: `kind` is "file" or "dir" (see `options.Spec.output`)."""
    if value is None:
        return
    (check_output_file if kind == "file" else check_output_dir)(value, label)


# -- writing -----------------------------------------------------------------------------------------------------
class WriteError(EnigmaError):
    """The operating system refused a write (disk full, read-only, permission); exit code 1."""


@contextmanager
def writing(path: str | Path):
    """Turn an OSError raised while writing `path` into one sentence naming it (disk full, read-only, ...)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise WriteError(f"could not write {path}: {reason}.") from err


def atomic_path(path: Path):
    """Context manager yielding a temporary path beside `path`, renamed into place only on success.

    The file gets the permissions a plain ``open(path, "w")`` would give (mkstemp's are private), and an
    OSError while writing becomes a `WriteError` naming `path`.
    """
    return _AtomicPath(Path(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: Path, *, folder: bool = False) -> None:
    """Give a mkstemp/mkdtemp result the mode open()/mkdir() would have given it (0666/0777 less the umask)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


class _AtomicPath:
    def __init__(self, path: Path):
        self.path = path
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            os.close(fd)
            self.tmp = Path(tmp)
            public_mode(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                with writing(self.path):
                    os.replace(self.tmp, self.path)
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
            return False
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise WriteError(f"could not write {self.path}: {reason}.") from exc
        return False


def _jsonl(df) -> str:
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


def _serialise(df, fmt: str, handle) -> None:
    if fmt == "csv":
        df.to_csv(handle, index=False, float_format="%.6g")
    elif fmt == "jsonl":
        handle.write(_jsonl(df))
    else:
        df.to_parquet(handle, index=False)


def write_table(df, out: str | Path | None = None, fmt: str = "csv") -> None:
    """Write `df` (a pandas DataFrame) to `out` (atomically) or to stdout; nothing half-written on failure."""
    check_format(fmt, out)
    if out is None:
        with writing("stdout"):
            _serialise(df, fmt, sys.stdout)
            sys.stdout.flush()
        return
    with atomic_path(Path(out)) as tmp:
        mode = "wb" if fmt == "parquet" else "w"
        with open(tmp, mode) as handle:
            _serialise(df, fmt, handle)
