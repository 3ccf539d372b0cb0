"""Dataset cells as the loaders read them: a cell as text, and multiple-choice options and answers in the many
shapes datasets give them (a list, a {"label", "text"} mapping, a JSON list, an "A) … B) …" string; a letter, an
option's text or an index)."""

from __future__ import annotations

import json
import math
import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # option labels, as core.answers names them


def cell_text(value) -> str | None:
    """A cell as text; None for missing values; whole floats (CSV ints with gaps) without '.0'."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


_LABEL_PREFIX = re.compile(r"^\s*\(?([A-Z])[).:]\s*")
_INLINE_CHOICES = re.compile(r"(?:^|(?<=\s))\(?([A-Z])[).:]\s+")


def parse_choices(value) -> tuple[str, ...] | None:
    """Option texts from a list, a {"label", "text"} mapping, a JSON list or an "A) … B) …" string; None if none.

    Leading labels ("A) ", "(B) ", "C. ") are dropped when the options carry them in order.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("text")
        if value is None:
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except ValueError:
                loaded = None
            if isinstance(loaded, list):
                return parse_choices(loaded)
        marks = list(_INLINE_CHOICES.finditer(text))
        letters = [m.group(1) for m in marks]
        if len(marks) < 2 or letters != list(LETTERS[:len(letters)]):
            return None
        parts = [text[m.end():(marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip()
                 for i, m in enumerate(marks)]
        return tuple(parts) if all(parts) else None
    try:
        items = [(cell_text(v) or "") for v in value]
    except TypeError:
        return None
    if not items or not all(items):
        return None
    labels = [_LABEL_PREFIX.match(x) for x in items]
    if all(labels) and [m.group(1) for m in labels] == list(LETTERS[:len(items)]):
        items = [x[m.end():].strip() or x for x, m in zip(items, labels)]
    return tuple(items)


def choice_answer(value, choices: tuple[str, ...]) -> str | None:
    """The gold letter of a multiple-choice row: a letter, an option's exact text, or a 0-based index."""
    text = cell_text(value)
    if text is None:
        return None
    letters = LETTERS[:len(choices)]
    m = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", text)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    wanted = " ".join(text.split()).lower()
    for letter, choice in zip(letters, choices):
        if " ".join(choice.split()).lower() == wanted:
            return letter
    if re.fullmatch(r"\d+", text) and int(text) < len(choices):
        return letters[int(text)]
    return None
