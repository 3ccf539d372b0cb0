"""Synthetic reasoning tasks with exact answers, and completions whose chain of thought obeys a principle.

The generator makes short integer problems (one or two steps of +, -, *) and templated word problems
("Ana has 7 apples and buys 5 more. ..."). Every problem carries its steps, so the working can be written in
several *styles*; each shipped principle id maps to one style (:data:`STYLE_OF`) and
:func:`render_completion` writes the completion in the strict XML layout of method.md §1:

    <reasoning>
    Step 1: 7 + 5 = 12
    Step 2: 12 * 3 = 36
    </reasoning>
    <answer>
    36
    </answer>

Styles (each identifiable from the reasoning text alone, see :func:`detect_style`):

============  ==============================================================  ============================
style         reasoning                                                       principle (shipped id)
============  ==============================================================  ============================
default       one line per step, then "So the answer is N."                   answer-last, placebos, none
stepwise      "Step 1: 7 + 5 = 12" / "Step 2: 12 * 3 = 36"                    show-steps, near-duplicates
verbal        "Add 7 and 5: 7 + 5 = 12" / "Multiply 12 by 3: 12 * 3 = 36"     say-operation
verify        the steps, then "Check: 36 / 3 = 12, 12 - 5 = 7"                check-inverse
oneline       "(7 + 5) * 3 = 12 * 3 = 36" (a single line)                     one-line
answer-first  "The answer is 36." then the steps                              answer-first
============  ==============================================================  ============================

Choices (ours, not the papers'): ASCII operators (``*``, ``/`` only in checks) so any tokenizer copes;
subtraction never goes below 0 and multiplication never uses 0 or 1, so every check by the inverse operation
is exact; completions stay short (reasoning < ~120 characters) because the built-in model has a small context.

Splits: a problem belongs to the held-out split when a BLAKE2 hash of its question falls in 1/8 of the range
(:func:`is_heldout`). ``generate_problems(..., split="train")`` (the default, used by :func:`training_examples`,
i.e. enigma-tiny's pre-training) never yields a held-out question and ``split="heldout"`` yields only those. The
held-out questions are cut in two by another bit of the same hash (:func:`heldout_pool`): ``"rl"`` for the
questions `enigma train` learns from, ``"test"`` for evaluation (`enigma sft`'s synthetic rows come from
``"train"``, its held-out prompts from ``"test"``). So evaluation questions are never seen in pre-training, in
the format warm-up or in GRPO, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..principles import shipped_sets
from ..report import atomic_path

# (left, op, right, result)
Step = tuple[int, str, int, int]

STYLES = ("default", "stepwise", "verbal", "verify", "oneline", "answer-first")

#: Every shipped principle id -> the style its completions are written in. Ids missing here (a user's own
#: principles) get the default style, as placebos do.
STYLE_OF: dict[str, str] = {
    # style contrasts
    "show-steps": "stepwise",
    "one-line": "oneline",
    "check-inverse": "verify",
    "say-operation": "verbal",
    "answer-first": "answer-first",
    "answer-last": "default",
    # near-duplicates of show-steps: the same style, so they cannot be told apart
    "steps-own-line": "stepwise",
    "steps-separate-line": "stepwise",
    # placebos: no bearing on the reasoning
    "respect-privacy": "default",
    "no-brands": "default",
}

SPLITS = ("train", "heldout", "rl", "test", "all")
HELDOUT_BUCKETS = 8  # 1 in 8 questions is held out

_SYMBOL = {"+": "+", "-": "-", "*": "*"}
_INVERSE = {"+": "-", "-": "+", "*": "/"}
_VERB = {
    "+": "Add {a} and {b}",
    "-": "Subtract {b} from {a}",
    "*": "Multiply {a} by {b}",
}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}

NAMES = ("Ana", "Ben", "Carla", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Maya",
         "Noor", "Omar", "Priya", "Rosa", "Sam", "Tom", "Yuki")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cards", "coins", "shells", "stamps", "eggs")


@dataclass(frozen=True)
class Problem:
    """A question with an exact answer (canonical decimal string) and the steps that reach it."""

    question: str
    answer: str
    kind: str  # "arithmetic" or "word"
    steps: tuple[Step, ...] = ()
    expression: str = ""  # the whole computation as one expression, e.g. "(7 + 5) * 3"

    @property
    def n_steps(self) -> int:
        return len(self.steps)


# ------------------------------------------------------------------------------------------ the generator


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _operand(rng: random.Random, op: str, left: int, first: bool) -> int:
    """A right operand for `op` that keeps numbers small, results >= 0 and checks exact (never * 0 or * 1)."""
    if op == "*":
        return rng.randint(2, 9) if first else rng.randint(2, 5)
    if op == "-":
        return rng.randint(1, max(1, min(left - 1, 20)))
    return rng.randint(1, 20)


def _chain(rng: random.Random, ops: list[str]) -> tuple[Step, ...]:
    """Steps applying `ops` left to right, each to the previous result."""
    left = {"*": rng.randint(2, 12), "-": rng.randint(5, 40)}.get(ops[0]) or rng.randint(2, 30)
    steps: list[Step] = []
    for i, op in enumerate(ops):
        b = _operand(rng, op, left, first=i == 0)
        result = _apply(left, op, b)
        steps.append((left, op, b, result))
        left = result
    return tuple(steps)


def expression_of(steps: Iterable[Step]) -> str:
    """The steps as one left-to-right expression, with brackets only where precedence needs them."""
    expr, prev_op = "", None
    for a, op, b, _ in steps:
        if prev_op is None:
            expr = f"{a} {op} {b}"
        else:
            if _PRECEDENCE[op] > _PRECEDENCE[prev_op]:
                expr = f"({expr})"
            expr = f"{expr} {op} {b}"
        prev_op = op
    return expr


def _arithmetic(rng: random.Random) -> Problem:
    n_ops = rng.choice((1, 2))
    steps = _chain(rng, [rng.choice("+-*") for _ in range(n_ops)])
    expr = expression_of(steps)
    return Problem(f"What is {expr}?", str(steps[-1][3]), "arithmetic", steps, expr)


# Word-problem templates: (operations, question). {a} {b} {c} are the operands in step order.
_WORD_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("+", "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"),
    ("-", "{name} has {a} {item} and gives {b} to a friend. How many {item} does {name} have left?"),
    ("*", "{name} buys {a} bags with {b} {item} in each. How many {item} is that in total?"),
    ("+-", "{name} has {a} {item}, finds {b} more, then gives away {c}. How many {item} are left?"),
    ("*+", "{name} buys {a} boxes of {b} {item} and already has {c}. How many {item} does {name} have?"),
    ("*-", "{name} buys {a} packs of {b} {item} and gives away {c}. How many {item} are left?"),
    ("++", "{name} has {a} {item}, gets {b} on Monday and {c} on Tuesday. How many {item} now?"),
)


def _word(rng: random.Random) -> Problem:
    ops, template = rng.choice(_WORD_TEMPLATES)
    steps = _chain(rng, list(ops))
    operands = [steps[0][0]] + [s[2] for s in steps]
    fields = dict(zip("abc", operands))
    question = template.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), **fields)
    return Problem(question, str(steps[-1][3]), "word", steps, expression_of(steps))


def _hash(question: str) -> int:
    return int.from_bytes(hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest(), "big")


def is_heldout(question: str) -> bool:
    """Whether a question belongs to the held-out split (a fixed 1/8 of all questions, by hash)."""
    return _hash(question) % HELDOUT_BUCKETS == 0


def heldout_pool(question: str) -> str | None:
    """``"rl"`` or ``"test"`` for a held-out question (half each, by another bit of the hash); None otherwise."""
    if not is_heldout(question):
        return None
    return "rl" if (_hash(question) // HELDOUT_BUCKETS) % 2 == 0 else "test"


def _in_split(question: str, split: str) -> bool:
    if split == "all":
        return True
    if split in ("rl", "test"):
        return heldout_pool(question) == split
    return is_heldout(question) == (split == "heldout")


def generate_problems(n: int, seed: int, *, split: str = "train", word_fraction: float = 0.4) -> list[Problem]:
    """`n` problems, a deterministic function of (`n`, `seed`, `split`); a prefix of a longer list.

    `split`: "train" (never a held-out question), "heldout" (only held-out questions), its halves "rl" (to learn
    from with GRPO or SFT) and "test" (to evaluate on), or "all".
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    rng = random.Random(seed)
    out: list[Problem] = []
    while len(out) < n:
        problem = _word(rng) if rng.random() < word_fraction else _arithmetic(rng)
        if _in_split(problem.question, split):
            out.append(problem)
    return out


# -------------------------------------------------------------------------------------------- the styles


def _line(step: Step) -> str:
    a, op, b, r = step
    return f"{a} {_SYMBOL[op]} {b} = {r}"


def _check(steps: tuple[Step, ...]) -> str:
    """Undo the steps from the last to the first with the inverse operations."""
    parts = [f"{r} {_INVERSE[op]} {b} = {a}" for a, op, b, r in reversed(steps)]
    return "Check: " + ", ".join(parts)


def reasoning_text(problem: Problem, style: str) -> str:
    """The reasoning (between the tags) for `problem` written in `style`."""
    steps, answer = problem.steps, problem.answer
    if style == "default":
        return "\n".join([*map(_line, steps), f"So the answer is {answer}."])
    if style == "stepwise":
        return "\n".join(f"Step {i}: {_line(s)}" for i, s in enumerate(steps, 1))
    if style == "verbal":
        return "\n".join(f"{_VERB[s[1]].format(a=s[0], b=s[2])}: {_line(s)}" for s in steps)
    if style == "verify":
        return "\n".join([*map(_line, steps), _check(steps)])
    if style == "oneline":
        chain = [expression_of(steps)]
        for i in range(1, len(steps)):  # substitute each intermediate result in turn
            chain.append(expression_of(((steps[i - 1][3], steps[i][1], steps[i][2], steps[i][3]),
                                        *steps[i + 1:])))
        return " = ".join([*chain, answer])
    if style == "answer-first":
        return "\n".join([f"The answer is {answer}.", *map(_line, steps)])
    raise ValueError(f"unknown style {style!r} (known: {', '.join(STYLES)})")


def format_completion(reasoning: str, answer: str) -> str:
    """The strict XML layout of method.md §1."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


def style_of(principle_id: str | None) -> str:
    return STYLE_OF.get(principle_id, "default") if principle_id else "default"


def render_completion(problem: Problem, principle_id: str | None) -> str:
    """The full completion for `problem` whose reasoning obeys the principle `principle_id`."""
    return format_completion(reasoning_text(problem, style_of(principle_id)), problem.answer)


_EQ = r"\d+ [-+*/] \d+ = \d+"
_STYLE_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("answer-first", re.compile(rf"^The answer is \d+\.(\n{_EQ})+$")),
    ("verify", re.compile(rf"^({_EQ}\n)+Check: {_EQ}(, {_EQ})*$")),
    ("stepwise", re.compile(rf"^Step 1: {_EQ}(\nStep \d+: {_EQ})*$")),
    ("verbal", re.compile(rf"^(?:(?:Add|Subtract|Multiply) \d+ (?:and|from|by) \d+: {_EQ}\n?)+$")),
    ("default", re.compile(rf"^({_EQ}\n)+So the answer is \d+\.$")),
    ("oneline", re.compile(r"^[^\n]*\d[^\n]* = \d+$")),
)


def detect_style(reasoning: str) -> str:
    """The style a reasoning text is written in, from the text alone ("unknown" if none fits).

    A simple rule per style; used to test that the styles are distinguishable and to measure whether a
    trained model obeys its principle.
    """
    text = reasoning.strip()
    for style, rule in _STYLE_RULES:
        if rule.match(text):
            return style
    return "unknown"


# ------------------------------------------------------------------------------------ training examples


def training_examples(n: int, seed: int, sets=None, *, split: str = "train") -> list[dict]:
    """`n` (question, principle, completion) rows for supervised training of a principle-following model.

    Each row takes a training-split problem and a principle drawn uniformly from the distinct principle ids
    of `sets` (default: every shipped set); the completion obeys that principle's style.
    Keys: question, answer, principle_id, principle_text, completion.
    """
    if sets is None:
        sets = shipped_sets()
    pool: dict[str, str] = {}
    for ps in sets:
        for p in ps.principles:
            pool.setdefault(p.id, p.text)
    if not pool:
        raise ValueError("training_examples needs at least one principle")
    ids = sorted(pool)
    rng = random.Random(f"enigma-principles-{seed}")
    rows = []
    for problem in generate_problems(n, seed, split=split):
        pid = rng.choice(ids)
        rows.append({
            "question": problem.question,
            "answer": problem.answer,
            "principle_id": pid,
            "principle_text": pool[pid],
            "completion": render_completion(problem, pid),
        })
    return rows


def write_jsonl(rows: Iterable[dict], path: Path | str) -> Path:
    """Write rows as JSON lines, atomically (renamed into place only when complete)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
