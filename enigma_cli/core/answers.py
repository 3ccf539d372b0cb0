r"""Reading a final answer out of a completion, and deciding whether two answers are the same.

Two extractions, as in lm-evaluation-harness's GSM8K task, which reports a *strict* and a *flexible* score:

- **strict**: the body of the first ``<answer>…</answer>`` block (:func:`enigma_cli.core.parse_completion`), so a
  model that ignores the layout of method.md §1 scores nothing;
- **flexible**: the answer anywhere in the completion, whatever its layout. For numeric data it is the content of
  the last ``\boxed{…}`` when there is one, else the *last number* in the text (``"17 + 25 = 32."`` → ``32``);
  for multiple-choice data the last choice letter (:func:`last_choice_letter`); for free-text data, where there is
  no number to look for, it falls back to the strict answer. Flexible never reads less than strict: when the
  tags hold a readable answer, flexible reads it there (lm-evaluation-harness searches the whole text either way).

Multiple choice: the gold answer is a letter ``A``, ``B``, …; :func:`choice_letter` reads a letter from an answer
body (``"B"``, ``"(B)"``, ``"B) Paris"``, ``"Answer: B"``, or the exact text of a choice), and
:func:`last_choice_letter` finds one anywhere in a completion.

Equivalence (:func:`answers_match`): our exact normalisation (:func:`enigma_cli.core.normalize_answer`: exact
rationals, so ``12.0``/``12``, ``0.5``/``1/2``, ``$1,200``/``1200``) decides first; when the two spellings still
differ, Hugging Face's ``math-verify`` parses both (numbers, fractions, LaTeX such as ``$\frac{1}{2}$``, simple
expressions and equations, units) and compares them symbolically. When it cannot parse one side (free text),
or is not installed, our normalisation's answer stands.

Choices (ours, not lm-evaluation-harness's code):

- The flexible number pattern accepts a sign only where it cannot be a binary minus (``5-3`` gives ``3``),
  thousands separators (``1,200``), decimals, a leading ``$`` and a simple fraction ``3/4``; a full stop after the
  number ends it.
- A bare capital letter counts as a choice only when it stands alone and is followed by the end, a newline or
  punctuation (``"…so B."``), not by a word (``"A farmer …"`` is an article). ``answer is (C)``-style phrases and
  bracketed letters are preferred over bare letters.
- Equivalence is symmetric in our fast path; math-verify's ``verify(gold, pred)`` is called with the gold first,
  as its documentation asks. It rounds floats to 6 decimals, so ``0.3333333`` and ``1/3`` match there.
- Majority vote over free-form answers needs classes, not pairs: :func:`answer_classes` gives each answer the
  first earlier answer it matches (greedy, in order), so ``0.5``, ``1/2`` and ``\frac{1}{2}`` vote together.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache

from .format_rewards import normalize_answer, parse_completion

__all__ = [
    "LETTERS",
    "answer_classes",
    "answers_match",
    "choice_letter",
    "extract_answer",
    "is_numeric_answer",
    "last_choice_letter",
    "last_number",
    "math_verify_available",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
EXTRACTIONS = ("strict", "flexible")

# A number as people write it: optional sign (not a binary minus: no digit, letter or ')' just before), optional
# "$", digits with optional thousands commas, optional decimals, optional "/denominator".
_NUMBER = re.compile(
    r"(?:(?<![\w)\]])[-+])?\$?\s?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?"
)
_BOXED = re.compile(r"\\boxed\s*\{")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{…}``, braces balanced."""
    out = []
    for m in _BOXED.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                out.append(text[start:i].strip())
                break
    return [b for b in out if b]


def last_number(text: str | None) -> str | None:
    """The flexible numeric answer: the last ``\\boxed{…}``'s content, else the last number in ``text``.

    Examples
    --------
    >>> last_number("17 + 25 = 32."), last_number("It costs $1,200 in total"), last_number("none")
    ('32', '$1,200', None)
    """
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1]
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def _letters(n_choices: int) -> str:
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must lie in [1, {len(LETTERS)}], not {n_choices}")
    return LETTERS[:n_choices]


def choice_letter(answer: str | None, n_choices: int, choices: Sequence[str] | None = None) -> str | None:
    """Read a choice letter from an answer body (the strict reading), or None.

    Accepts ``B``, ``(B)``, ``B)``, ``B.``, ``B: text``, ``B) text``, ``Answer: B``, ``The answer is (B)``, a
    lowercase letter alone, or the exact text of one of ``choices`` (case and surrounding spaces ignored).
    """
    if answer is None:
        return None
    letters = _letters(n_choices)
    text = " ".join(answer.split())
    if choices:
        wanted = text.lower().rstrip(".")
        for letter, choice in zip(letters, choices):
            if " ".join(str(choice).split()).lower().rstrip(".") == wanted:
                return letter
    text = re.sub(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*", "", text, flags=re.IGNORECASE)
    m = re.match(rf"^(?P<open>[(\[])?(?P<letter>[{letters}{letters.lower()}])(?P<close>[)\].:])?(?P<rest>.*)$", text)
    if m is None or (m.group("rest") and not m.group("rest").startswith(" ")):
        return None
    letter, rest = m.group("letter"), m.group("rest").strip()
    # With text after it, the letter must be a capital closed by ")", "]", "." or ":" ("B) Paris"), so that an
    # article ("A farmer ...") or a lowercase word is not read as a choice.
    if rest and (letter.islower() or not (m.group("close") or m.group("open"))):
        return None
    return letter.upper()


def last_choice_letter(text: str | None, n_choices: int) -> str | None:
    """The flexible multiple-choice answer: the last choice letter anywhere in ``text``, or None.

    Preference: the last ``answer is X`` / ``answer: X`` phrase; else the last bracketed ``(X)``; else the last
    capital letter standing alone before the end, a newline or punctuation.
    """
    if not text:
        return None
    letters = _letters(n_choices)
    tiers = (
        rf"(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*[(\[]?([{letters}])\b",
        rf"[(\[]([{letters}])[)\]]",
        rf"(?<![\w'])([{letters}])(?=\s*(?:$|[\n.,;:!?)\]]))",
    )
    for pattern in tiers:
        found = re.findall(pattern, text)
        if found:
            return found[-1]
    return None


def is_numeric_answer(answer: str | None) -> bool:
    """Whether a gold answer is a number (so flexible extraction looks for the last number)."""
    if answer is None:
        return False
    norm = normalize_answer(answer, numeric=True)
    if norm is not None and re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", norm):
        return True
    return "\\" in answer  # LaTeX: \frac{1}{2}, \sqrt{2}


def extract_answer(completion: str, mode: str, *, n_choices: int = 0, choices: Sequence[str] | None = None,
                   numeric: bool = True) -> str | None:
    """The answer of ``completion`` under extraction ``mode`` (``"strict"`` or ``"flexible"``).

    ``n_choices`` > 0 means multiple choice: the result is a letter. Otherwise ``numeric`` says whether the gold
    answer is a number: flexible extraction then takes the last number, else it is the strict answer.
    """
    if mode not in EXTRACTIONS:
        raise ValueError(f"mode must be one of {EXTRACTIONS}, not {mode!r}")
    strict = parse_completion(completion).answer
    if n_choices:
        letter = choice_letter(strict, n_choices, choices)
        if mode == "strict" or letter is not None:
            return letter
        return last_choice_letter(completion, n_choices)
    if mode == "strict" or not numeric:
        return strict
    if strict is not None:
        if is_numeric_answer(strict):  # "12", "$\frac{1}{2}$": the tags' answer as it stands
            return strict
        inside = last_number(strict)  # "17 + 25 = 42" → "42"
        if inside is not None:
            return inside
    return last_number(completion)


# ----------------------------------------------------------------------------------------------- equivalence


def math_verify_available() -> bool:
    """Whether the optional ``math-verify`` package can be imported."""
    return _math_verify() is not None


@lru_cache(maxsize=1)
def _math_verify():
    try:
        import math_verify  # lazy: ~0.3 s on `enigma --help`, and an ImportError here means 'not installed'
    except ImportError:
        return None
    # math-verify logs a warning for every string it cannot parse; free-text answers would flood stderr.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _mv_parse(text: str):
    mv = _math_verify()
    try:
        parsed = mv.parse(text, parsing_timeout=_timeout())
    except Exception:  # noqa: BLE001 - anything math-verify cannot read is "not parsable"
        return None
    return parsed or None


def _mv_equal(pred: str, gold: str) -> bool | None:
    """math-verify's verdict, or None when it is missing or cannot parse one side."""
    if _math_verify() is None:
        return None
    g, p = _mv_parse(gold), _mv_parse(pred)
    if g is None or p is None:
        return None
    try:
        return bool(_math_verify().verify(g, p, timeout_seconds=_timeout()))
    except Exception:  # noqa: BLE001 - a comparison it cannot finish is "not equal"
        return None


def answers_match(pred: str | None, gold: str | None, *, numeric: bool = True, math_verify: bool = True) -> bool:
    r"""Whether the answer ``pred`` means ``gold``.

    Our normalisation first (equal canonical forms match); then, when ``numeric`` and ``math_verify`` are on and
    ``math-verify`` can parse both sides, its symbolic comparison. ``None`` on either side never matches.

    Examples
    --------
    >>> answers_match("0.5", "1/2"), answers_match("$\\frac{1}{2}$", "0.5"), answers_match("12.0", "12")
    (True, True, True)
    """
    if pred is None or gold is None:
        return False
    p, g = normalize_answer(pred, numeric=numeric), normalize_answer(gold, numeric=numeric)
    if p is None or g is None:
        return False
    if p == g:
        return True
    if numeric and math_verify:
        verdict = _mv_equal(pred, gold)
        if verdict is not None:
            return verdict
    return False


def answer_classes(answers: Sequence[str | None], match: Callable[[str, str], bool] | None = None
                   ) -> list[str | None]:
    """Replace each answer by the first earlier answer it matches (its class), None stays None.

    Equal outputs mean the same class, so majority votes and answer entropies count ``0.5`` and ``1/2`` once.
    ``match(a, b)`` defaults to :func:`answers_match`. Greedy in order: an answer joins the first class whose
    representative it matches.
    """
    match = match or answers_match
    reps: list[str] = []
    out: list[str | None] = []
    for a in answers:
        if a is None:
            out.append(None)
            continue
        rep = next((r for r in reps if r == a or match(a, r)), None)
        if rep is None:
            reps.append(a)
            rep = a
        out.append(rep)
    return out
