"""One writer per output folder: an advisory `flock` on ``<folder>/.enigma.lock``.

The lock belongs to the open file description, so the kernel releases it when the process ends in any way
(exit, exception, ``kill -9``): a stale lock can never block a later run, and nothing has to be cleaned up. The
file itself stays (empty but for the holder's pid and command, for the refusal message); deleting lock files
is what makes lock files racy. A second run into a locked folder is refused at once with one sentence, before
it loads anything.

Choices (ours): advisory locking (other programs may still write there), and only `flock`, which works on local
file systems and on NFS v4 (Linux emulates it with POSIX locks there). Under DDP only the main rank takes it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

from .errors import InputError

LOCK_FILE = ".enigma.lock"


class RunLock:
    """An exclusive lock on a folder, held until `release` or the end of the process."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self._fd = folder, fd

    @classmethod
    def acquire(cls, folder: str | Path, what: str, flag: str = "--output-dir") -> RunLock:
        """Create `folder` if needed and lock it; a folder another process holds is an InputError naming it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy(folder, flag) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        return cls(folder, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(folder: str | Path) -> bool:
    """Whether another process holds `folder`'s lock right now (for --dry-run; creates nothing)."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def busy(folder: str | Path, flag: str = "--output-dir") -> InputError:
    """The refusal for a folder another run holds, naming its pid and command when the lock file tells them."""
    try:
        pid, _, what = (Path(folder) / LOCK_FILE).read_text("utf-8", "replace").strip().partition(" ")
    except OSError:
        pid = what = ""
    holder = f" (pid {pid}, {what})" if pid.isdigit() else ""
    return InputError(f"{flag} {folder} is in use by another run{holder}; wait for it to end or choose another "
                      f"{flag}.")
