"""Synthetic tasks: deterministic, exactly answered, in the strict XML layout, each style recognisable."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from enigma_cli.principles import load_principle_set, shipped_sets
from enigma_cli.tasks.synthetic import (
    STYLE_OF,
    STYLES,
    Problem,
    detect_style,
    generate_problems,
    is_heldout,
    reasoning_text,
    render_completion,
    training_examples,
    write_jsonl,
)

# method.md §1, written independently of the module under test.
STRICT = re.compile(r"\A<reasoning>\n(?P<reasoning>.+?)\n</reasoning>\n<answer>\n(?P<answer>.+?)\n</answer>\Z",
                    re.DOTALL)

# An independent solver for the word problems: the phrase decides the operations.
WORD_RULES = [
    (r"has (\d+) \w+ and buys (\d+) more", lambda a, b: a + b),
    (r"has (\d+) \w+ and gives (\d+) to a friend", lambda a, b: a - b),
    (r"buys (\d+) bags with (\d+) \w+ in each", lambda a, b: a * b),
    (r"has (\d+) \w+, finds (\d+) more, then gives away (\d+)", lambda a, b, c: a + b - c),
    (r"buys (\d+) boxes of (\d+) \w+ and already has (\d+)", lambda a, b, c: a * b + c),
    (r"buys (\d+) packs of (\d+) \w+ and gives away (\d+)", lambda a, b, c: a * b - c),
    (r"has (\d+) \w+, gets (\d+) on Monday and (\d+) on Tuesday", lambda a, b, c: a + b + c),
]


def solve(question: str) -> int:
    m = re.fullmatch(r"What is ([\d ()+*-]+)\?", question)
    if m:
        return eval(m.group(1), {"__builtins__": {}})  # only digits, spaces, brackets, + - *
    hits = [f(*map(int, m.groups())) for rule, f in WORD_RULES if (m := re.search(rule, question))]
    assert len(hits) == 1, question
    return hits[0]


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return generate_problems(400, seed=7, split="all")


def test_deterministic_and_seeded():
    assert generate_problems(50, 3) == generate_problems(50, 3)
    assert generate_problems(20, 3) == generate_problems(50, 3)[:20]
    assert generate_problems(50, 3) != generate_problems(50, 4)
    assert training_examples(30, 5) == training_examples(30, 5)


def test_answers_are_exact(problems):
    kinds = Counter(p.kind for p in problems)
    assert kinds["arithmetic"] > 100 and kinds["word"] > 100
    assert Counter(p.n_steps for p in problems).keys() == {1, 2}
    for p in problems:
        assert p.answer == str(solve(p.question)), p.question
        assert int(p.answer) >= 0
        for i, (a, op, b, r) in enumerate(p.steps):
            assert r == eval(f"{a} {op} {b}"), p
            assert i == 0 or a == p.steps[i - 1][3]  # each step continues from the previous result
        assert eval(p.expression) == int(p.answer)


def test_every_completion_has_the_strict_layout(problems):
    for p in problems[:100]:
        for pid in [None, "not-a-shipped-id", *STYLE_OF]:
            completion = render_completion(p, pid)
            m = STRICT.match(completion)
            assert m, completion
            assert m.group("answer") == p.answer
            assert len(m.group("reasoning")) < 200
            assert "<" not in m.group("reasoning")


@pytest.mark.parametrize("style", STYLES)
def test_each_style_is_identified_from_the_reasoning_alone(problems, style):
    guesses = [detect_style(reasoning_text(p, style)) for p in problems]
    assert sum(g == style for g in guesses) / len(guesses) >= 0.95, Counter(guesses)


def test_style_rules_read_text_not_labels(problems):
    """A second, cruder rule set written here (line counts and keywords) agrees with the style."""
    def crude(reasoning: str) -> str:
        lines = reasoning.split("\n")
        if lines[0].startswith("The answer"):
            return "answer-first"
        if "Check" in reasoning:
            return "verify"
        if "Step" in reasoning:
            return "stepwise"
        if re.search(r"\b(Add|Subtract|Multiply)\b", reasoning):
            return "verbal"
        return "default" if "So the answer" in reasoning else "oneline" if len(lines) == 1 else "?"

    for p in problems:
        for style in STYLES:
            assert crude(reasoning_text(p, style)) == style


def test_styles_are_what_the_principles_say(problems):
    p = next(p for p in problems if p.n_steps == 2)
    lines = {s: reasoning_text(p, s).split("\n") for s in STYLES}
    assert len(lines["oneline"]) == 1
    assert len(lines["stepwise"]) == p.n_steps  # one line per intermediate result
    assert lines["answer-first"][0] == f"The answer is {p.answer}."
    assert lines["default"][-1] == f"So the answer is {p.answer}."
    assert lines["verbal"][0].split()[0] in {"Add", "Subtract", "Multiply"}
    # the check by the inverse operation is correct arithmetic and ends at the first operand
    check = lines["verify"][-1].removeprefix("Check: ").split(", ")
    for eq in check:
        lhs, rhs = eq.split(" = ")
        assert eval(lhs) == int(rhs)
    assert int(check[-1].split(" = ")[1]) == p.steps[0][0]


def test_readme_example():
    p = Problem("What is (7 + 5) * 3?", "36", "arithmetic", ((7, "+", 5, 12), (12, "*", 3, 36)), "(7 + 5) * 3")
    assert reasoning_text(p, "oneline") == "(7 + 5) * 3 = 12 * 3 = 36"
    assert reasoning_text(p, "verify") == "7 + 5 = 12\n12 * 3 = 36\nCheck: 36 / 3 = 12, 12 - 5 = 7"
    assert reasoning_text(p, "verbal") == "Add 7 and 5: 7 + 5 = 12\nMultiply 12 by 3: 12 * 3 = 36"
    assert render_completion(p, "show-steps") == (
        "<reasoning>\nStep 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n</reasoning>\n<answer>\n36\n</answer>")


def test_style_table_covers_the_shipped_principles():
    ids = {p.id for s in shipped_sets() for p in s.principles}
    assert ids <= set(STYLE_OF) and set(STYLE_OF.values()) <= set(STYLES)
    p = generate_problems(1, 0)[0]
    assert render_completion(p, None) == render_completion(p, "unknown-id") == render_completion(p, "no-brands")
    # the controls: near-duplicates share one style, placebos the default one
    assert len({STYLE_OF[i] for i in load_principle_set("near-duplicate").ids}) == 1
    assert {STYLE_OF[i] for i in load_principle_set("placebo").ids} == {"default"}
    # the contrast sets: every principle has its own style
    for name in ("stepwise-vs-oneline", "verify-vs-verbal", "answer-order", "reasoning-styles"):
        ps = load_principle_set(name)
        assert len({STYLE_OF[i] for i in ps.ids}) == ps.k, name


def test_heldout_split_is_disjoint_from_train():
    train = {p.question for p in generate_problems(2000, 0)}
    held = {p.question for p in generate_problems(300, 0, split="heldout")}
    assert not train & held
    assert all(is_heldout(q) for q in held) and not any(is_heldout(q) for q in train)
    rl = {p.question for p in generate_problems(300, 0, split="rl")}
    test = {p.question for p in generate_problems(300, 0, split="test")}
    assert not rl & test and all(is_heldout(q) for q in rl | test)
    with pytest.raises(ValueError):
        generate_problems(1, 0, split="validation")


def test_training_examples():
    rows = training_examples(400, 2)
    assert all(set(r) == {"question", "answer", "principle_id", "principle_text", "completion"} for r in rows)
    ids = Counter(r["principle_id"] for r in rows)
    shipped = {p.id: p.text for s in shipped_sets() for p in s.principles}
    assert set(ids) == set(shipped)  # uniform over the distinct shipped principles: all of them appear
    assert min(ids.values()) > 400 / len(shipped) / 3
    for r in rows:
        assert r["principle_text"] == shipped[r["principle_id"]]
        m = STRICT.match(r["completion"])
        assert m and m.group("answer") == r["answer"]
        assert detect_style(m.group("reasoning")) == STYLE_OF[r["principle_id"]]
    only = training_examples(20, 2, [load_principle_set("placebo")])
    assert {r["principle_id"] for r in only} <= {"respect-privacy", "no-brands"}


def test_write_jsonl_is_atomic(tmp_path):
    rows = training_examples(5, 0)
    path = write_jsonl(rows, tmp_path / "sub" / "rows.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows

    def broken():
        yield rows[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(broken(), tmp_path / "half.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
