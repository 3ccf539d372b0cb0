"""Format-only rewards (method.md §1) and answer normalisation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from enigma_cli.core import (
    ParsedCompletion,
    format_reward,
    normalize_answer,
    parse_completion,
    soft_format_reward,
    strict_format_reward,
    tag_count_reward,
)

GOOD = "<reasoning>\n2 + 2 is 4.\n</reasoning>\n<answer>\n4\n</answer>"

# name: (text, strict, soft, tags, answer)
CASES = {
    "good": (GOOD, 1, 1, 0.5, "4"),
    "good_trailing_newline": (GOOD + "\n", 1, 1, 0.5, "4"),
    "good_eos_whitespace": (GOOD + "\n  \n", 1, 1, 0.5, "4"),
    "multiline_reasoning": (
        "<reasoning>\nstep 1\n\nstep 2\n</reasoning>\n<answer>\nforty two\n</answer>\n",
        1,
        1,
        0.5,
        "forty two",
    ),
    # "<reasoning>2" has no "<reasoning>\n": one tag line lost.
    "missing_newline_after_open": (
        "<reasoning>2 + 2 is 4.\n</reasoning>\n<answer>\n4\n</answer>",
        0,
        1,
        0.375,
        "4",
    ),
    # "</reasoning><answer>" loses both "\n</reasoning>\n" and "\n<answer>\n".
    "one_line": ("<reasoning>2 + 2 is 4.</reasoning><answer>4</answer>", 0, 1, 0.0, "4"),
    "text_after_answer": (GOOD + "\nHope this helps!", 0, 1, 0.5 - 0.001 * len("\nHope this helps!"), "4"),
    "text_before_reasoning": ("Sure.\n" + GOOD, 0, 1, 0.5, "4"),
    "duplicated_answer_block": (
        GOOD + "\n<answer>\n5\n</answer>",
        0,
        1,
        # "\n<answer>\n" and "\n</answer>" occur twice; tail "\n<answer>\n5\n</answer>" is penalised.
        0.25 - 0.001 * len("\n<answer>\n5\n</answer>"),
        "4",
    ),
    "duplicated_reasoning_open": (
        "<reasoning>\n<reasoning>\nhm\n</reasoning>\n<answer>\n4\n</answer>",
        0,
        1,
        0.375,
        "4",
    ),
    "empty_answer": ("<reasoning>\nthinking\n</reasoning>\n<answer>\n\n</answer>", 0, 1, 0.5, None),
    "blank_reasoning": ("<reasoning>\n \n</reasoning>\n<answer>\n4\n</answer>", 0, 1, 0.5, "4"),
    "no_tags": ("The answer is 4.", 0, 0, 0.0, None),
    "truncated": ("<reasoning>\nlong thought that never ends", 0, 0, 0.125, None),
    "answer_without_reasoning": ("<answer>\n4\n</answer>", 0, 0, 0.125, "4"),
    "reversed_blocks": (
        "<answer>\n4\n</answer>\n<reasoning>\nx\n</reasoning>",
        0,
        0,
        0.25 - 0.001 * len("\n<reasoning>\nx\n</reasoning>"),
        "4",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layout_cases(name):
    text, strict, soft, tags, answer = CASES[name]
    parsed = parse_completion(text)
    assert isinstance(parsed, ParsedCompletion)
    assert parsed.strict is bool(strict)
    assert parsed.soft is bool(soft)
    assert parsed.answer == answer
    assert strict_format_reward([text]) == [float(strict)]
    assert soft_format_reward([text]) == [float(soft)]
    assert tag_count_reward([text])[0] == pytest.approx(tags, abs=1e-12)


def test_parse_reasoning_and_frozen():
    parsed = parse_completion(GOOD)
    assert parsed.reasoning == "2 + 2 is 4."
    assert parse_completion("no tags").reasoning is None
    with pytest.raises(AttributeError):
        parsed.answer = "5"  # type: ignore[misc]


def test_answer_taken_from_first_block_when_not_strict():
    text = "Let me think. <reasoning>x</reasoning> <answer> 42 </answer> and <answer>43</answer>"
    parsed = parse_completion(text)
    assert (parsed.answer, parsed.strict, parsed.soft) == ("42", False, True)


def test_tag_penalty_clipping_and_options():
    text = "<reasoning>\nx\n</reasoning>\n<answer>\n4\n</answer>" + "z" * 1000
    assert tag_count_reward([text]) == [0.0]
    assert tag_count_reward([text], clip_at_zero=False)[0] == pytest.approx(0.5 - 1.0)
    assert tag_count_reward([text], penalty_per_char=0.0) == [0.5]
    # Trailing whitespace is free, consistent with the strict gate.
    assert tag_count_reward([GOOD + "\n\n"]) == [0.5]


def test_format_reward_weights_and_terms():
    texts = [CASES[n][0] for n in ("good", "missing_newline_after_open", "no_tags")]
    reward, terms = format_reward(texts)
    assert reward.dtype == torch.float32 and reward.shape == (3,)
    assert set(terms) == {"strict", "soft", "tags"}
    expected = [1.0 + 0.5 + 0.5 * 0.5, 0.0 + 0.5 + 0.5 * 0.375, 0.0]
    torch.testing.assert_close(reward, torch.tensor(expected))
    torch.testing.assert_close(terms["strict"], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(terms["tags"], torch.tensor([0.5, 0.375, 0.0]))
    r2, _ = format_reward(texts, w_strict=2.0, w_soft=0.0, w_tags=0.0)
    torch.testing.assert_close(r2, torch.tensor([2.0, 0.0, 0.0]))
    empty, empty_terms = format_reward([])
    assert empty.shape == (0,) and empty_terms["strict"].shape == (0,)


def test_strict_implies_soft_and_full_tags():
    for text, strict, soft, tags, _ in CASES.values():
        if strict:
            assert soft and tags == 0.5


# ----------------------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
    "variants, canonical",
    [
        (["12", "12.0", " 12 ", "12.00", "+12", "12.", "$12", "**12**", "1.2e1", "`12`"], "12"),
        (["1,200", "1200", "1 200", "$1,200.00", "1200.0"], "1200"),
        (["1,234,567.50", "1234567.5"], "1234567.5"),
        (["-0", "0", "0.0", "+0.000", "-0.0"], "0"),
        (["3/4", "0.75", "6 / 8", ".75", "75e-2"], "0.75"),
        (["-5", "- 5", "-$5", "$-5", "-5.0"], "-5"),
        (["1/3", "2/6"], "1/3"),
        (["-1/3", "-2/6", "(-1/3)"], "-1/3"),
    ],
)
def test_numeric_equivalences(variants, canonical):
    assert {normalize_answer(v) for v in variants} == {canonical}


def test_text_mode_and_fallback():
    assert normalize_answer("  The   Answer. ") == "the answer"
    assert normalize_answer('"Paris"') == "paris"
    assert normalize_answer("“Paris!”") == "paris"
    assert normalize_answer("(B)") == "b"
    # Not thousands separators / not a number: text mode.
    assert normalize_answer("1,2") == "1,2"
    assert normalize_answer("3 5") == "3 5"
    assert normalize_answer("2/0") == "2/0"
    assert normalize_answer("--5") == "--5"
    assert normalize_answer("12 cm") == "12 cm"
    # numeric=False keeps the spelling (and the sign).
    assert normalize_answer("12.0", numeric=False) == "12.0"
    assert normalize_answer("-5", numeric=False) == "-5"


@pytest.mark.parametrize("empty", [None, "", "   ", "...", '""', "**"])
def test_empty_is_none(empty):
    assert normalize_answer(empty) is None
    assert normalize_answer(empty, numeric=False) is None


def test_huge_exponent_stays_text_and_is_fast():
    # Exact arithmetic on 10**1e9 would never finish; such strings are left as text.
    assert normalize_answer("1e999999999") == "1e999999999"
    assert normalize_answer("1e300") == "1" + "0" * 300


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=-(10**12), max_value=10**12), pad=st.text(alphabet=" \t", max_size=3))
def test_integer_spellings_agree(n, pad):
    spellings = [f"{n}", f"{n}.0", f"{n}.00", f"{pad}{n}{pad}", f"{n:,}", f"{n:,}.0", f"{n}."]
    if n >= 0:
        spellings.append(f"${n:,}")
    assert {normalize_answer(s) for s in spellings} == {str(n)}


@settings(max_examples=200, deadline=None)
@given(num=st.integers(-1000, 1000), den=st.integers(1, 1000))
def test_fraction_equals_its_decimal_when_terminating(num, den):
    from fractions import Fraction

    value = Fraction(num, den)
    canonical = normalize_answer(f"{num}/{den}")
    assert canonical == normalize_answer(f"{value.numerator}/{value.denominator}")
    # The canonical spelling reads back to the same rational number.
    assert Fraction(canonical) == value
    assert normalize_answer(canonical) == canonical


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_normalize_is_idempotent_and_total(s):
    once = normalize_answer(s)
    assert once is None or (once == once.strip() and once != "")
    if once is not None:
        assert normalize_answer(once) == once


def test_wrapped_numbers_are_read_as_numbers_and_idempotent():
    """The docstring's case: text-mode cleaning is tried as a number too, so '(12.0)!' is 12."""
    for raw in ("(12.0)!", "[12]", "**12.**", "'12.00'"):
        assert normalize_answer(raw) == "12"
        assert normalize_answer(normalize_answer(raw)) == "12"


def test_core_docstring_examples_hold():
    """Every example written in a core docstring is run (they are documentation a user copies)."""
    import doctest
    import importlib
    import pkgutil

    from enigma_cli import core

    failed = tried = 0
    for info in pkgutil.iter_modules(core.__path__):
        module = importlib.import_module(f"enigma_cli.core.{info.name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        failed, tried = failed + result.failed, tried + result.attempted
    assert tried > 0 and failed == 0
