"""The one stderr console: stdout is reserved for data (reports, CSV)."""

import sys

from rich.console import Console

# A pipe or log file gets a fixed, wide layout rather than rich's 80-column fallback, so tables stay whole.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 132)


def show_progress() -> bool:
    """Progress bars only when a person is watching stderr."""
    return sys.stderr.isatty()
