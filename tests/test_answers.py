"""Answer extraction (strict, flexible, multiple choice) and equivalence (math-verify, our normalisation)."""

from __future__ import annotations

import pytest

from enigma_cli.core import answers
from enigma_cli.core.answers import (
    answer_classes,
    answers_match,
    choice_letter,
    extract_answer,
    is_numeric_answer,
    last_choice_letter,
    last_number,
)


def layout(reasoning: str, answer: str) -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


@pytest.mark.parametrize("text, expected", [
    ("17 + 25 = 32.", "32"),                      # SmolLM2's way: the last number, full stop dropped
    ("5-3=2", "2"),                               # a binary minus is no sign
    ("It is -4 degrees today", "-4"),
    ("That costs $1,200.50 in total.", "$1,200.50"),
    ("3/4 of the cake", "3/4"),
    ("first 3 then \\boxed{\\frac{1}{2}} and 7", "\\frac{1}{2}"),  # a boxed answer wins over later numbers
    ("\\boxed{x^{2}}", "x^{2}"),                  # nested braces
    ("no digits here", None),
    ("", None),
    (None, None),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


CHOICES = ["London", "Paris", "Rome", "Oslo"]


@pytest.mark.parametrize("body, expected", [
    ("B", "B"), ("(B)", "B"), ("B)", "B"), ("B.", "B"), ("B) Paris", "B"), ("Answer: C", "C"),
    ("The answer is (D)", "D"), ("b", "B"), ("paris", "B"), (" Rome ", "C"),
    ("A farmer", None),         # an article, not a choice
    ("a farmer", None),
    ("E", None),                # outside A-D
    ("Berlin", None), (None, None), ("Bx", None),
])
def test_choice_letter_strict(body, expected):
    assert choice_letter(body, 4, CHOICES) == expected


@pytest.mark.parametrize("text, expected", [
    ("I think the answer is (B). Then A farmer came.", "B"),
    ("A farmer has apples... so C.", "C"),
    ("The answer is B because A is wrong", "B"),  # the phrase wins over a later bare letter
    ("(A) looks wrong, (C) looks right", "C"),
    ("Between A and D I pick D", "D"),
    ("A farmer has three apples", None),
    ("The answer is E.", None),
    ("", None),
])
def test_last_choice_letter_flexible(text, expected):
    assert last_choice_letter(text, 4) == expected


@pytest.mark.parametrize("pred, gold, same", [
    ("0.5", "1/2", True),
    ("$\\frac{1}{2}$", "0.5", True),     # LaTeX needs math-verify
    ("\\frac{1}{2}", "1/2", True),
    ("12.0", "12", True),
    ("1,200", "1200", True),
    ("$5", "5", True),
    ("12 cm", "12", True),               # math-verify reads past the unit
    ("x = 7", "7", True),
    ("$\\sqrt{4}$", "2", True),
    ("13", "12", False),
    ("0.49", "1/2", False),
    ("Paris", "paris.", True),           # text: our normalisation
    ("Rome", "Paris", False),
    ("", "5", False),
    (None, "5", False),
    ("5", None, False),
])
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_without_math_verify_our_normalisation_decides(monkeypatch):
    monkeypatch.setattr(answers, "_mv_equal", lambda pred, gold: None)
    assert answers_match("0.5", "1/2") and answers_match("12.0", "12")
    assert not answers_match("$\\frac{1}{2}$", "0.5")
    assert answers_match("$\\frac{1}{2}$", "0.5", math_verify=True) is False
    monkeypatch.undo()
    assert answers_match("$\\frac{1}{2}$", "0.5") and not answers_match("$\\frac{1}{2}$", "0.5", math_verify=False)


def test_text_mode_never_calls_math_verify(monkeypatch):
    def boom(pred, gold):
        raise AssertionError("math-verify called in text mode")
    monkeypatch.setattr(answers, "_mv_equal", boom)
    assert answers_match("Paris", "paris", numeric=False)
    assert not answers_match("0.5", "1/2", numeric=False)


def test_math_verify_is_importable_offline():
    assert answers.math_verify_available()


@pytest.mark.parametrize("gold, numeric", [("42", True), ("-3.5", True), ("3/4", True), ("$1,200", True),
                                           ("\\frac{1}{2}", True), ("Paris", False), ("yes", False),
                                           (None, False)])
def test_is_numeric_answer(gold, numeric):
    assert is_numeric_answer(gold) is numeric


def test_extract_answer_strict_and_flexible():
    smol = "17 + 25 = 32."  # no tags at all
    assert extract_answer(smol, "strict") is None
    assert extract_answer(smol, "flexible") == "32"
    tagged = layout("7 + 5 = 12\nSo the answer is 12.", "12")
    assert extract_answer(tagged, "strict") == extract_answer(tagged, "flexible") == "12"
    # Free-text gold: flexible falls back to the tags rather than a stray number.
    text = layout("There are 3 cities.", "Paris")
    assert extract_answer(text, "flexible", numeric=False) == "Paris"
    assert extract_answer(text, "flexible") == "3"
    # Numbers in the tags win over later ones; a wordy answer body gives its last number.
    assert extract_answer(layout("x", "12") + "\nor 5", "flexible") == "12"
    assert extract_answer(layout("x", "17 + 25 = 42"), "flexible") == "42"
    assert extract_answer(layout("x", "$\\frac{10}{2}$"), "flexible") == "$\\frac{10}{2}$"  # not its last digit
    mc = "I compared them: the answer is (B).\n" + "<answer>\nC\n</answer>"  # the tags win
    assert extract_answer(mc, "strict", n_choices=4) == "C"
    assert extract_answer(mc, "flexible", n_choices=4) == "C"
    assert extract_answer("the answer is (B).", "flexible", n_choices=4) == "B"
    assert extract_answer("the answer is (B).", "strict", n_choices=4) is None
    with pytest.raises(ValueError):
        extract_answer(smol, "loose")


def test_answer_classes_group_equivalent_spellings():
    got = answer_classes(["0.5", "1/2", "\\frac{1}{2}", None, "3", "3.0", "Paris", "paris"])
    assert got == ["0.5", "0.5", "0.5", None, "3", "3", "Paris", "Paris"]
    # A custom match function is honoured (exact strings only).
    assert answer_classes(["1", "1.0", "1"], lambda a, b: a == b) == ["1", "1.0", "1"]
