"""enigma_cli.score.trust: each finding on its own, and the readability check calibrated on the real tokenizer.

The calibration tests load only enigma-tiny's tokenizer (no weights): the shipped principles must pass, a user's
organisational set and a 5,000-character principle must not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from enigma_cli.principles import load_principle_set, shipped_sets
from enigma_cli.score import trust

FIXTURES = Path(__file__).parent / "fixtures"
ORGANISATIONAL = FIXTURES / "organisational.yaml"
LONG = FIXTURES / "long-principle.yaml"


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from enigma_cli.models.loading import enigma_tiny_dir

    return AutoTokenizer.from_pretrained(enigma_tiny_dir())


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer):
    """enigma-tiny as `check_principles` sees it: its folder and its tokenizer (no weights needed)."""
    from enigma_cli.models.loading import enigma_tiny_dir

    return SimpleNamespace(model=None, tokenizer=tiny_tokenizer, source=str(enigma_tiny_dir()))


QUESTIONS = ["What is 7 + 5?", "Ana has 7 apples and buys 5 more. How many apples does Ana have now?"]


# ---------------------------------------------------------------------------------------------- scores


def test_format_finding_threshold_and_sentence():
    f = trust.format_finding(0.0, 0.5)
    assert f.blocks
    assert "format rate 0.00" in f.text and "<reasoning>/<answer>" in f.text and "enigma sft" in f.text
    assert trust.format_finding(0.49, 0.5) is not None
    assert trust.format_finding(0.5, 0.5) is None and trust.format_finding(1.0, 0.5) is None
    assert trust.format_finding(0.0, 0.0) is None  # threshold 0 switches the check off
    named = trust.format_finding(0.1, 0.5, "one-line")
    assert named.text.startswith("principle one-line:") and "0.10" in named.text


def test_interval_finding_when_the_ci_reaches_zero():
    assert trust.interval_finding(0.001, 0.02) is None
    for low, high in ((0.0, 0.02), (-0.01, 0.02), (-0.002, -0.0004)):
        f = trust.interval_finding(low, high)
        assert f.blocks and "reaches 0" in f.text and f"{low:.3f}" in f.text


def test_saturation_is_a_caveat_not_a_block():
    log_k = math.log(4)
    assert trust.saturation_finding(0.94 * log_k, log_k, 0.95) is None
    f = trust.saturation_finding(0.95 * log_k, log_k, 0.95)
    assert f is not None and not f.blocks and "saturated" in f.text


def test_join_trusts_only_rows_without_blocking_findings():
    note = trust.Finding("a note", blocks=False)
    bad = trust.Finding("a problem")
    assert trust.join([]) == (True, "")
    assert trust.join([note]) == (True, "a note")
    assert trust.join([note, bad]) == (False, "a note; a problem")


# ------------------------------------------------------------------------------------------ readability


class VocabTokenizer:
    """One token per known word, one per character otherwise: a tokenizer that never saw the unknown words."""

    def __init__(self, known):
        self.known = {w.lower() for w in known}

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for word in text.split():
            core = word.strip(".,'").lower()
            ids += [0] if core in self.known else [0] * len(word)
        return {"input_ids": ids}


def test_segmentation_is_relative_to_the_shipped_principles():
    shipped = trust.shipped_principle_texts()
    tok = VocabTokenizer({w for t in shipped for w in t.split()} | {w.strip(".,'") for t in shipped for w in t.split()})
    ref = trust.chars_per_token(tok, shipped)
    for text in shipped:
        r = trust.readability(tok, text, ref)
        assert r.segmentation <= trust.SEGMENTATION_LIMIT and trust.readability_finding("x", r, tiny=False) is None
    r = trust.readability(tok, "Be impartial and present several viewpoints.", ref)
    assert r.segmentation > trust.SEGMENTATION_LIMIT and r.unseen == ()  # no vocabulary: no unseen words
    f = trust.readability_finding("impartial", r, tiny=False)
    assert f.blocks and "may not be able to read it" in f.text and "enigma-tiny" not in f.text
    # A character-level tokenizer splits everything alike: relative to its own rate nothing is flagged.
    def chars(text, add_special_tokens=False):
        return {"input_ids": list(text.replace(" ", ""))}

    ref = trust.chars_per_token(chars, shipped)
    assert trust.readability(chars, "Be impartial and present several viewpoints.", ref).segmentation == (
        pytest.approx(1.0))


@pytest.mark.slow
def test_tiny_vocabulary_is_the_whole_pretraining_corpus():
    from enigma_cli.prompts import system_message
    from enigma_cli.tasks.synthetic import training_examples

    full = set()
    for row in training_examples(64000, seed=0):  # the shipped build's corpus size
        full.update(trust.words(f"{system_message(row['principle_text'])} {row['question']} {row['completion']}"))
    assert trust.tiny_vocabulary() == full
    for text in trust.shipped_principle_texts():
        assert set(trust.words(text)) <= full


def test_is_enigma_tiny(tmp_path):
    from enigma_cli.models.loading import enigma_tiny_dir

    assert trust.is_enigma_tiny(enigma_tiny_dir())
    assert not trust.is_enigma_tiny(tmp_path) and not trust.is_enigma_tiny(None)
    (tmp_path / "build_info.json").write_text("{not json")
    assert not trust.is_enigma_tiny(tmp_path)
    (tmp_path / "build_info.json").write_text(json.dumps({"name": "other"}))
    assert not trust.is_enigma_tiny(tmp_path)
    (tmp_path / "build_info.json").write_text(json.dumps(["enigma-tiny"]))
    assert not trust.is_enigma_tiny(tmp_path)


def test_calibration_shipped_sets_pass_on_enigma_tiny(tiny_lm):
    for pset in shipped_sets():
        for check in trust.check_principles(tiny_lm, pset, QUESTIONS):
            assert check.findings == (), (pset.name, check.id, check.findings)
            assert check.readability.unseen == ()
            assert check.readability.segmentation < 1.5  # well inside the limit of 2


def test_calibration_organisational_set_fails_on_enigma_tiny(tiny_lm):
    checks = trust.check_principles(tiny_lm, load_principle_set(ORGANISATIONAL), QUESTIONS)
    assert [c.id for c in checks] == ["impartial", "take-side"]
    for check in checks:
        assert len(check.findings) == 1
        text = check.findings[0].text
        assert check.findings[0].blocks
        assert text.startswith(f"principle {check.id}: enigma-tiny cannot read it")
        assert "enigma-tiny only knows the shipped principle styles" in text and "real model" in text
        assert check.readability.segmentation > 3  # spelled out letter by letter
    assert {"impartial", "viewpoints"} <= set(checks[0].readability.unseen)
    assert "impartial" in checks[0].findings[0].text


def test_calibration_long_principle_is_unreadable_for_enigma_tiny(tiny_lm):
    pset = load_principle_set(LONG)
    assert len(pset.principles[0].text) >= 4900
    checks = trust.check_principles(tiny_lm, pset, QUESTIONS)
    long, short = checks
    assert long.prompt_tokens > 2000
    texts = [f.text for f in long.findings]
    assert any("cannot read it" in t for t in texts)  # that it cannot fit is ContextCheck's refusal, before loading
    assert short.findings == () and short.prompt_tokens < 100


def test_unseen_words_alone_flag_enigma_tiny_but_not_other_models(tiny_lm):
    """'Show your work.' is barely over-segmented; only enigma-tiny's corpus knows it never saw 'your'."""
    ref = trust.chars_per_token(tiny_lm.tokenizer, trust.shipped_principle_texts())
    r = trust.readability(tiny_lm.tokenizer, "Show your work.", ref, trust.tiny_vocabulary())
    assert r.unseen == ("your",) and r.segmentation < trust.SEGMENTATION_LIMIT
    assert "never saw in training: your" in trust.readability_finding("w", r, tiny=True).text
    r = trust.readability(tiny_lm.tokenizer, "Show your work.", ref)
    assert trust.readability_finding("w", r, tiny=False) is None
