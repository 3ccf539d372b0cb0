"""The one stderr console: stdout is reserved for data (reports, CSV)."""

import sys

from rich.console import Console

console = Console(stderr=True)


def show_progress() -> bool:
    """Progress bars only when a person is watching stderr."""
    return sys.stderr.isatty()
