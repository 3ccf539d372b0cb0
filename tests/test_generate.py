"""`enigma generate`: one JSON row per completion, principles by text or SET:ID, bad input exits 3."""

import json

import pytest

from enigma_cli.cli import main


def test_rows_per_question_and_sample(model_dir, capsys):
    rc = main(["generate", "What is 2 + 3?", "What is 4 * 5?", "--model", str(model_dir), "-n", "2",
               "--max-new-tokens", "8", "--temperature", "1", "--principle", "stepwise-vs-oneline:one-line"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in rows] == ["What is 2 + 3?"] * 2 + ["What is 4 * 5?"] * 2
    assert {r["principle"] for r in rows} == {"Keep all of the reasoning on a single line."}
    assert all(isinstance(r["strict_format"], bool) for r in rows)


def test_shipped_model_writes_the_format_under_a_principle(capsys):
    """The shipped default follows the layout greedily (its build measured 99.6% strict format greedy)."""
    rc = main(["generate", "What is 12 + 7?", "What is 9 * 3?", "--principle", "stepwise-vs-oneline:show-steps"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0 and all(r["strict_format"] for r in rows)


@pytest.mark.parametrize("args, culprit", [
    (["--principle", "stepwise-vs-oneline:nope"], "nope"),
    (["--principle", "no-such-set:x"], "no-such-set"),
    (["--samples", "0"], "--samples"),
    (["--model", "/no/such/model"], "/no/such/model"),
])
def test_bad_input_exits_3(model_dir, capsys, args, culprit):
    rc = main(["generate", "What is 1 + 1?", "--model", str(model_dir), *args])
    captured = capsys.readouterr()
    assert rc == 3 and captured.out == "" and culprit in captured.err
