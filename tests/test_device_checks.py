"""A misspelt --device or --dtype is refused by --dry-run (and so before any work) on every command that loads
a model, as `train` and `analyze-manifold` already did; before, score-principles, evaluate, generate and study
accepted it and a study wrote its study.yaml before failing at its first model load."""

from __future__ import annotations

import pytest

from enigma_cli.cli import main

COMMANDS = {
    "score-principles": ["score-principles", "--prompts", "2"],
    "evaluate": ["evaluate", "--prompts", "2"],
    "generate": ["generate", "What is 2 + 2?"],
    "study": ["study", "--no-probe", "--output-dir", "{tmp}/study"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("flag, value", [("--device", "gpu0"), ("--dtype", "float8")])
def test_a_bad_device_or_dtype_fails_the_dry_run(command, flag, value, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    rc = main([*argv, flag, value, "--dry-run"])
    cap = capsys.readouterr()
    assert rc == 3 and cap.out == ""
    assert cap.err.startswith("error: ") and flag in cap.err and value in cap.err
    assert list(tmp_path.iterdir()) == []
