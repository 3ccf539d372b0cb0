"""Errors the CLI turns into one sentence and an exit code (conventions.md: 3 bad input, 1 anything else)."""


class EnigmaError(Exception):
    """A failure we can explain in one sentence; exit code 1."""

    exit_code = 1


class InputError(EnigmaError):
    """Invalid input data, config, model or principle set; exit code 3."""

    exit_code = 3
