"""When a Sufficiency Index cannot be trusted (method.md §4), in plain sentences for the report's `reason` column.

An SI is a number whatever the model did; these checks say when the number does not measure what a user wants
it to. Each check returns a `Finding`: a sentence and whether it makes the row untrusted. A row's `reason` joins
the sentences with "; "; its `trusted` flag is False when any finding blocks, and the report ranks every trusted
row above every untrusted one.

Checks (thresholds are `ScoreConfig` options or the calibrated constants below):

- **format** (blocks): the completions rarely follow the <reasoning>/<answer> layout (`min_format_rate`). The
  critic then scores text of another kind than training will see, and a model that ignores the layout usually
  ignores the principle too (SmolLM2 before a format warm-up: format rate 0.00).
- **interval** (blocks): the bootstrap interval of SI reaches 0 (``si_low <= 0``): the set is not told apart from
  chance. The controls (placebo, near-duplicate) are meant to land here.
- **saturation** (a caveat, does not block): Î_sym is near log K. The bound cannot grow any further, so sets that
  reach it cannot be ordered among themselves; it is still a sound lower bound, so such a set keeps its rank.
- **readability** (blocks): the model cannot read the principle text, measured two ways:

  * *over-segmentation*, for any model: characters per token of the principle against the same tokenizer's rate
    on the shipped principles. A tokenizer that spells a text letter by letter has never seen its words;
    flagged when the principle needs more than `SEGMENTATION_LIMIT` times the tokens per character.
  * *unseen words*, for enigma-tiny (a folder whose ``build_info.json`` names it): words that never occur in its
    pre-training corpus (the shipped principle texts, the format instruction and the synthetic problems and
    completions of `enigma_cli.tasks.synthetic`). Any unseen word flags the principle.

Calibration (bench/readability_calibration.py prints the numbers): on the enigma-tiny tokenizer the shipped
principles pool at 4.4 characters per token and each lies within 0.79-1.25x that rate, none with an unseen word;
"Be impartial and present several viewpoints" needs 3.5x, "Take a clear side" 3.8x and a 5,000-character policy
principle 3.1x, all with unseen words. On SmolLM2's tokenizer the same three need 0.8x, 1.5x and 0.9x: SmolLM2 can
read them, and only the other scores decide there.

A prompt that cannot fit the model's context is not a trust finding: `enigma_cli.context.ContextCheck` refuses such a
principle (and skips such dataset rows) before any weights load, so every scored prompt fits.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..models.rollout import encode_prompts
from ..prompts import render_prompt, system_message

SEGMENTATION_LIMIT = 2.0  # flag a principle needing over 2x the shipped principles' tokens per character
TINY_NAME = "enigma-tiny"
_WORD = re.compile(r"[A-Za-z]+")
LAYOUT = "<reasoning>/<answer>"


@dataclass(frozen=True)
class Finding:
    """One sentence for the `reason` column; ``blocks`` makes the row untrusted (ranked after trusted rows)."""

    text: str
    blocks: bool = True


def join(findings) -> tuple[bool, str]:
    """(trusted, reason) of a row from its findings: trusted when none blocks; sentences joined by "; "."""
    findings = list(findings)
    return not any(f.blocks for f in findings), "; ".join(f.text for f in findings)


# ---------------------------------------------------------------------------------------------- the scores


def format_finding(rate: float, threshold: float, principle: str | None = None) -> Finding | None:
    """The completions rarely follow the layout (rate below `threshold`)."""
    if not rate < threshold:
        return None
    if principle is None:
        return Finding(f"the model rarely writes the {LAYOUT} layout (format rate {rate:.2f}); run `enigma sft` "
                       "first or use a model that follows it")
    return Finding(f"principle {principle}: its completions rarely follow the {LAYOUT} layout (format rate "
                   f"{rate:.2f})")


def interval_finding(low: float, high: float, level: float = 0.95) -> Finding | None:
    """The interval of SI (at `level`) touches or falls below 0: not told apart from chance."""
    if low > 0:
        return None
    return Finding(f"the {100 * level:.4g}% interval of SI ({low:.3f}..{high:.3f}) reaches 0, so the principles "
                   "are not told apart better than chance")


def saturation_finding(mi_sym: float, log_k: float, fraction: float) -> Finding | None:
    """Î_sym at or above `fraction` of log K: a caveat, the bound cannot order sets this high."""
    if not mi_sym >= fraction * log_k:
        return None
    return Finding(f"mi_sym {mi_sym:.3f} is near log K = {log_k:.3f}: the bound is saturated and cannot order "
                   "sets that score this high", blocks=False)


# -------------------------------------------------------------------------------------------- readability


def chars_per_token(tokenizer, texts) -> float:
    """Pooled characters per token of `texts` (whitespace excluded), encoded without special tokens."""
    chars = sum(len("".join(t.split())) for t in texts)
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return chars / max(tokens, 1)


def shipped_principle_texts() -> list[str]:
    """The distinct principle texts of the shipped sets: what the readability check calls readable."""
    from ..principles import shipped_sets

    return list(dict.fromkeys(p.text for s in shipped_sets() for p in s.principles))


def words(text: str) -> list[str]:
    """Lower-case letter runs of `text` (numbers and punctuation are not words here)."""
    return [w.lower() for w in _WORD.findall(text)]


@functools.lru_cache(maxsize=1)
def tiny_vocabulary() -> frozenset[str]:
    """Every word of enigma-tiny's pre-training corpus.

    The corpus is the system message (shipped principle text + format instruction), the synthetic question and
    the completion in its style (`enigma_cli.pretrain.training`). 2,000 rows of `training_examples` already hold
    every word of the 64,000 the shipped build uses (test_trust checks it); format defects add no word.
    """
    from ..tasks.synthetic import training_examples

    vocab: set[str] = set()
    for row in training_examples(2000, seed=0):
        vocab.update(words(f"{system_message(row['principle_text'])} {row['question']} {row['completion']}"))
    return frozenset(vocab)


def is_enigma_tiny(folder: str | Path | None) -> bool:
    """Whether `folder` holds an enigma-tiny build (its build_info.json names it)."""
    if folder is None:
        return False
    info = Path(folder) / "build_info.json"
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("name") == TINY_NAME
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class Readability:
    """How well a tokenizer (and, for enigma-tiny, its corpus) covers one principle text."""

    tokens: int
    chars_per_token: float
    reference: float          # the same tokenizer's characters per token on the shipped principles
    unseen: tuple[str, ...]   # words outside the model's known vocabulary (empty when unknown)

    @property
    def segmentation(self) -> float:
        """How many times more tokens per character than the shipped principles."""
        return self.reference / max(self.chars_per_token, 1e-9)


def readability(tokenizer, text: str, reference: float, vocabulary: frozenset[str] | None = None) -> Readability:
    """Measure one principle; `vocabulary` (enigma-tiny only) lists the words the model was trained on."""
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    unseen = tuple(dict.fromkeys(w for w in words(text) if w not in vocabulary)) if vocabulary else ()
    return Readability(tokens, chars_per_token(tokenizer, [text]), reference, unseen)


def readability_finding(principle: str, r: Readability, tiny: bool) -> Finding | None:
    """The model cannot read the principle: unseen words (enigma-tiny) or heavy over-segmentation."""
    split = r.segmentation > SEGMENTATION_LIMIT
    if not (split or r.unseen):
        return None
    shown = ", ".join(r.unseen[:6]) + (", ..." if len(r.unseen) > 6 else "")
    rate = (f"{r.tokens} tokens, {r.chars_per_token:.1f} characters per token against {r.reference:.1f} for the "
            "shipped principles")
    if tiny:
        what = f"words it never saw in training: {shown}; {rate}" if r.unseen else rate
        return Finding(f"principle {principle}: enigma-tiny cannot read it ({what}); enigma-tiny only knows the "
                       "shipped principle styles, so score your own principles with a real model (--model smollm2 "
                       "after `enigma sft`, or a hub id)")
    return Finding(f"principle {principle}: this model's tokenizer spells it out in small pieces ({rate}), so the "
                   "model may not be able to read it")


# -------------------------------------------------------------------------------------------- per principle


def prompt_tokens(tokenizer, principle: str, questions: list[str]) -> int:
    """Tokens of the longest prompt (principle + question, as the model sees it) over `questions`."""
    prompts = [render_prompt(tokenizer, principle, q) for q in questions]
    return max(len(ids) for ids in encode_prompts(tokenizer, prompts))


@dataclass(frozen=True)
class PrincipleCheck:
    """What is known about one principle before generation: prompt length and readability."""

    id: str
    prompt_tokens: int
    readability: Readability
    findings: tuple[Finding, ...]


def check_principles(lm, pset, questions: list[str]) -> list[PrincipleCheck]:
    """Readability findings for every principle of `pset`, before any generation.

    `lm` needs ``model``, ``tokenizer`` and ``source`` (the folder it was read from, for the enigma-tiny test).
    """
    tok = lm.tokenizer
    reference = chars_per_token(tok, shipped_principle_texts())
    tiny = is_enigma_tiny(getattr(lm, "source", None))
    vocabulary = tiny_vocabulary() if tiny else None
    out = []
    for p in pset.principles:
        n = prompt_tokens(tok, p.text, questions)
        r = readability(tok, p.text, reference, vocabulary)
        found = readability_finding(p.id, r, tiny)
        out.append(PrincipleCheck(p.id, n, r, (found,) if found is not None else ()))
    return out

