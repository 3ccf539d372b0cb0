"""The `enigma` executable. Ctrl-C or SIGTERM while it is still importing (a second or two) ends it with one
line instead of a traceback; `cli.main` then installs the handlers for the rest of the run."""

import signal
import sys

from .interrupt import SIGNALS, early_exit


def main() -> None:
    for sig in SIGNALS:
        signal.signal(sig, early_exit)
    from .cli import main as run  # lazy: after the handlers above, so an early Ctrl-C is one line

    sys.exit(run())
