"""SIGINT and SIGTERM: end with one line and the conventional exit code, never with a traceback or a torn file.

- Every command: SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption, `kill`) raise `Interrupted`, a
  `KeyboardInterrupt`, so the stack unwinds through every ``finally`` (temporary files are removed, locks
  dropped) and library code that catches ``Exception`` does not swallow it. The CLI prints
  ``interrupted (SIGTERM)`` and exits 128 + the signal number (130, 143).
- A training loop wraps its steps in `SafeStop`: the first signal only asks it to stop at the next safe point
  (after the current step, with a checkpoint); a second one stops at once (`Interrupted`), and the newest
  checkpoint is still whole, since checkpoints are written to a temporary folder and renamed into place.
- `early_exit` is the handler of the executable while it is still importing (nothing has been done yet).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Stopped by a signal; `message` is the one line to print, `exit_code` 128 + the signal number.

    The newest one is also kept (`take_last`): typer turns any KeyboardInterrupt into a bare exit code 130, and
    the CLI still has to print the line and use the right code.
    """

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        self.message = message or f"interrupted ({signal_name(signum)})"
        self.exit_code = 128 + signum
        super().__init__(self.message)
        _LAST[:] = [self]


_LAST: list[Interrupted] = []


def take_last() -> Interrupted | None:
    """The newest `Interrupted` raised since the last call (None if none)."""
    return _LAST.pop() if _LAST else None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signum_of(err: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (a plain one is Ctrl-C, SIGINT)."""
    return getattr(err, "signum", signal.SIGINT)


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def early_exit(signum: int, frame) -> None:
    """While the program is still importing: one line and out (nothing was written yet)."""
    os.write(2, f"interrupted ({signal_name(signum)}) while starting; nothing was done\n".encode())
    os._exit(128 + signum)


class handlers:
    """Install `handler` for SIGINT and SIGTERM for the duration of a ``with`` block (main thread only)."""

    def __init__(self, handler):
        self.handler, self.saved = handler, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.saved[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        self.saved = {}


def cli_handler(signum: int, frame) -> None:
    """SIGINT and SIGTERM raise `Interrupted`, a `KeyboardInterrupt`: the stack unwinds cleanly."""
    raise Interrupted(signum)


class SafeStop(handlers):
    """The first SIGINT/SIGTERM sets `signum` (stop after the current step); a second raises `Interrupted`."""

    def __init__(self, what: str = "the current step"):
        super().__init__(self._handle)
        self.signum: int | None = None
        self.what = what

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        if sys.stderr.isatty():  # a person waits for the step to end: tell them it is coming (raw write: no locks)
            os.write(2, f"\n{signal_name(signum)}: stopping after {self.what} with a checkpoint; send it again "
                        "to stop now\n".encode())

    @property
    def requested(self) -> bool:
        return self.signum is not None
