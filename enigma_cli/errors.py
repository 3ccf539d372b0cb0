"""Errors the CLI turns into one sentence and an exit code (conventions.md: 3 bad input, 1 anything else)."""


class EnigmaError(Exception):
    """A failure we can explain in one sentence; exit code 1."""

    exit_code = 1


class InputError(EnigmaError):
    """Invalid input data, config, model or principle set; exit code 3."""

    exit_code = 3


def require(condition: bool, message: str) -> None:
    """Raise `InputError(message)` unless `condition` holds: a config's cross-option check in one line."""
    if not condition:
        raise InputError(message)


def first_line(err: BaseException, *, limit: int = 300, with_type: bool = False) -> str:
    """The first line of an exception's message, for a one-sentence error (no trailing period, at most `limit`)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0].rstrip(".") if lines else type(err).__name__
    if with_type and lines:
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
