"""A constitution (Markdown or plain text) read into principle sets: `enigma principles from-text FILE`.

What counts as a rule:

- a numbered (``1.``, ``1)``, ``(1)``) or bulleted (``-``, ``*``, ``+``, ``•``) list item, with the lines that
  continue it (wrapped lines and items nested under it are joined to it with single spaces);
- in a document with no list items at all, each paragraph.

Markdown headings (``#`` … ``######``) group the rules that follow them; text that is neither a heading nor a rule
(an introduction, a closing remark) is left out. A rule's wording is kept as written, only its line breaks become
spaces.

Ids are stable: a slug of the rule's first words (``be-honest-about-uncertainty``), so editing or moving one rule
does not rename the others; a slug that two rules share gets ``-2``, ``-3`` in document order. Ids are unique
across the whole document, so the sets of one document can also be pooled (`score-principles --pool`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .principles import MAX_FILE_BYTES, NAME_PATTERN, Principle, PrincipleSet, parse_principle_set

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^(\s*)(?:[-*+•]|\d{1,3}[.)]|\(\d{1,3}\))\s+(.*\S)\s*$")
_RULE_LINE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")  # a Markdown horizontal rule
SLUG_WORDS = 5
SLUG_CHARS = 40
#: two rules whose texts are this similar (difflib's ratio, case and spacing ignored) are reported as near-duplicates
NEAR_DUPLICATE = 0.85


@dataclass(frozen=True)
class Rule:
    text: str
    line: int           # 1-based line where the rule starts
    heading: str | None


def read_text_file(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"constitution {path}: {'is a folder' if path.is_dir() else 'the file does not exist'}.")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"constitution {path}: the file is over {MAX_FILE_BYTES >> 20} MiB; a constitution is "
                             "a list of rules.")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"constitution {path}: the file cannot be read as UTF-8 text ({type(err).__name__}).") \
            from None


def parse_rules(text: str) -> list[Rule]:
    """The rules of a document, in order, each with its line and the heading above it."""
    lines = text.splitlines()
    has_items = any(_ITEM.match(line) and not _RULE_LINE.match(line) for line in lines)
    rules: list[Rule] = []
    heading: str | None = None
    current: list[str] = []
    start, indent = 0, 0

    def close():
        nonlocal current
        if current:
            rules.append(Rule(" ".join(" ".join(current).split()), start, heading))
        current = []

    for number, line in enumerate(lines, 1):
        if (h := _HEADING.match(line)) is not None:
            close()
            heading = h.group(2).strip() or heading
            continue
        if not line.strip() or _RULE_LINE.match(line):
            if not has_items:  # paragraphs are the rules
                close()
            continue
        item = _ITEM.match(line) if has_items else None
        if item is not None and (not current or len(item.group(1)) <= indent):
            close()
            current, start, indent = [item.group(2)], number, len(item.group(1))
        elif current and (not has_items or item is not None or line[:1].isspace()):
            current.append(item.group(2) if item is not None else line.strip())  # wrapped or nested: the same rule
        elif not has_items:
            current, start = [line.strip()], number
        else:  # prose between lists (an introduction, a closing remark): not a rule
            close()
    close()
    return rules


def slug(text: str) -> str:
    """The first words of `text`, lower case, joined by '-', cut at a word boundary."""
    out = ""
    for word in re.findall(r"[a-z0-9]+", text.lower())[:SLUG_WORDS]:
        if out and len(out) + 1 + len(word) > SLUG_CHARS:
            break
        out = f"{out}-{word}" if out else word[:SLUG_CHARS]
    return out or "rule"


def stable_ids(rules: list[Rule]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for rule in rules:
        base = slug(rule.text)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def set_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip()).strip("-._").lower()
    return name if name and NAME_PATTERN.match(name) else "constitution"


def build_sets(rules: list[Rule], source: Path, name: str, by_heading: bool) -> list[PrincipleSet]:
    """One set of every rule, or (`by_heading`) one set per heading; each validated by the set schema."""
    if len(rules) < 2:
        raise InputError(f"constitution {source}: found {len(rules)} rule(s); a principle set needs at least 2 "
                         "(write the rules as a numbered or bulleted list, or one paragraph each).")
    _check_duplicates(rules, source)
    ids = stable_ids(rules)
    groups: dict[str | None, list[int]] = {}
    for i, rule in enumerate(rules):
        groups.setdefault(rule.heading if by_heading else None, []).append(i)
    sets = []
    for heading, members in groups.items():
        where = f"under the heading {heading!r}" if heading is not None else ""
        if len(members) < 2:
            raise InputError(f"constitution {source}: only {len(members)} rule {where or 'in the document'} (line "
                             f"{rules[members[0]].line}); a set needs at least 2, so merge that section or drop "
                             "--sets-by-heading.")
        title = name if heading is None else f"{name}.{set_name(heading)}"
        description = f"{len(members)} rules from {source.name}{' ' + where if where else ''}."
        data = {"name": title, "description": description,
                "principles": [{"id": ids[i], "text": rules[i].text} for i in members]}
        sets.append(parse_principle_set(data, f"{source} ({title})"))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise InputError(f"constitution {source}: two headings give the same set name; rename one of them.")
    return sets


def _check_duplicates(rules: list[Rule], source: Path) -> None:
    seen: dict[str, Rule] = {}
    for rule in rules:
        key = " ".join(rule.text.split()).casefold()
        if key in seen:
            raise InputError(f"constitution {source}: the rules on lines {seen[key].line} and {rule.line} have the "
                             "same text; a set cannot tell identical principles apart, so keep one.")
        seen[key] = rule


def near_duplicates(principles: tuple[Principle, ...]) -> list[tuple[str, str, float]]:
    """Pairs of principles whose texts are nearly the same (likely to be told apart by no model)."""
    texts = [" ".join(p.text.split()).casefold() for p in principles]
    out = []
    for i in range(len(principles)):
        for j in range(i + 1, len(principles)):
            ratio = difflib.SequenceMatcher(None, texts[i], texts[j]).ratio()
            if ratio >= NEAR_DUPLICATE:
                out.append((principles[i].id, principles[j].id, ratio))
    return out

