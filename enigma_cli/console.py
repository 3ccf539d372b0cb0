"""The one stderr console: stdout is reserved for data (reports, CSV)."""

import sys

from rich.console import Console

# A pipe or log file gets a fixed, wide layout rather than rich's 80-column fallback, so tables stay whole; and
# no line of ours is ever wrapped (soft_wrap), so an error or status line stays one line a script can grep.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 132, soft_wrap=True)


def show_progress() -> bool:
    """Progress bars only when a person is watching stderr."""
    return sys.stderr.isatty()


def counted(n: int, noun: str) -> str:
    """'1 seed', '2 seeds': a count with its noun in the right number (regular plurals only)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
