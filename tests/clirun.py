"""Running `enigma` commands in-process from tests, and the shape of a refusal (exit 3, one sentence, no output)."""

from __future__ import annotations

import contextlib
import io

from enigma_cli.cli import main


def invoke(*argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr with its whitespace folded, so a wrapped sentence reads as one line)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), " ".join(err.getvalue().split())


def refused(rc: int, out: str, err: str, *needles: str) -> None:
    """Exit 3, nothing on stdout, and one `error:` line on stderr that holds every needle."""
    assert rc == 3, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
