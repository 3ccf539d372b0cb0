"""The context-length check: windows read from disk without weights, prompts counted exactly as the commands
build them, and every prompt-rendering command refusing (or skipping) what cannot fit, before weights load."""

from __future__ import annotations

import copy
import json
import shutil

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enigma_cli import context, modelfiles
from enigma_cli.cli import main
from enigma_cli.context import ContextCheck, Principle, Window
from enigma_cli.errors import InputError
from enigma_cli.models.rollout import encode_prompts
from enigma_cli.prompts import render_prompt

PRINCIPLES = [Principle("principle 'a' of set s", "Show every step."), Principle("principle 'b' of set s", None)]


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def tok(tiny_lm):
    return tiny_lm[1]


@pytest.fixture(scope="module")
def bos_tok(tok):
    """The same tokenizer, but one that adds a BOS when encoding (as Llama's do)."""
    from tokenizers.processors import TemplateProcessing

    t = copy.deepcopy(tok)
    t._tokenizer.post_processor = TemplateProcessing(single=f"{t.bos_token} $A",
                                                     special_tokens=[(t.bos_token, t.bos_token_id)])
    assert t("", add_special_tokens=True)["input_ids"] == [t.bos_token_id]
    return t


# -- counting ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["plain", "adds BOS"])
def test_prompt_lengths_are_exactly_those_the_commands_feed_the_model(which, tok, bos_tok):
    t = tok if which == "plain" else bos_tok
    principles = ["Show every step.", None, "x" * 300]
    questions = ["What is 2 + 2?", "", "é" * 50 + " 17 × 3?"]
    texts = [render_prompt(t, p, q) for p, q in zip(principles, questions)]
    assert context._lengths(t, principles, questions) == [len(ids) for ids in encode_prompts(t, texts)]


@settings(max_examples=60, deadline=None)
@given(question=st.text(min_size=0, max_size=300))
def test_the_byte_bound_never_underestimates_a_prompt(tiny_lm, question):
    """Questions within the bound are not tokenized at all, so the bound must hold for any text."""
    t = tiny_lm[1]
    for p in ("Show every step.", None):
        base = context._lengths(t, [p], [""])[0]
        assert context._lengths(t, [p], [question])[0] <= base + len(question.encode("utf-8")) + context.SLACK


# -- the check ------------------------------------------------------------------------------------------------------
def window(tok, n=128):
    return Window("tiny", n, tok)


def test_max_new_tokens_as_long_as_the_window_is_refused_naming_the_flag(tok):
    with pytest.raises(InputError, match=r"--max-new-tokens 128 leaves no room for a prompt in the 128 positions"):
        ContextCheck(PRINCIPLES, 128)._fit(window(tok), ["hi"], [0])


def test_a_principle_too_long_for_any_question_is_refused_naming_it(tok):
    long = [Principle("principle 'wordy' of set s", "word " * 200)]
    with pytest.raises(InputError, match=r"principle 'wordy' of set s makes a prompt of \d+ tokens"):
        ContextCheck(long, 16)._fit(window(tok), ["hi"], [0])


def test_a_typed_question_too_long_is_refused_naming_it(tok):
    questions = ["short", "7 " * 200]
    with pytest.raises(InputError, match=r"QUESTION 2 \('7 7 7.*400 characters\) makes a prompt of"):
        ContextCheck(PRINCIPLES, 16)._fit(window(tok), questions, [0, 1])


def test_dataset_rows_too_long_are_skipped_with_a_count_and_refused_when_none_is_left(tok, capsys):
    check = ContextCheck(PRINCIPLES, 16, rows="dataset d.jsonl")
    questions = ["short", "7 " * 200, "also short", "8 " * 300]
    assert check._fit(window(tok), questions, [0, 1, 2, 3]) == [0, 2]
    assert "skipped 2 of 4 rows of dataset d.jsonl" in capsys.readouterr().err
    with pytest.raises(InputError, match="no row of dataset d.jsonl fits"):
        check._fit(window(tok), questions, [1, 3])


def test_a_prompt_that_fits_exactly_is_kept_and_one_token_more_is_not(tok):
    check = ContextCheck(PRINCIPLES, 16, rows="dataset d")
    question = "What is 2 + 2?"
    need = max(context._lengths(tok, [p.text for p in PRINCIPLES], [question] * 2)) + 16
    assert check._fit(window(tok, need), [question], [0]) == [0]
    with pytest.raises(InputError):
        check._fit(window(tok, need - 1), [question], [0])


def test_a_window_known_only_after_loading_is_checked_then(tok):
    class LM:
        name = "some/hub-model"
        tokenizer = tok

        class model:
            class config:
                @staticmethod
                def to_dict():
                    return {"max_position_embeddings": 128}

    check = ContextCheck(PRINCIPLES, 16, rows="dataset d", deferred={"some/hub-model"})
    questions = ["hi", "9 " * 100]
    assert check.loaded(LM, questions) == [0]
    assert check.loaded(LM, questions) == [0, 1]  # once only: it ran


# -- windows read from disk -----------------------------------------------------------------------------------------
def test_enigma_tiny_window_is_read_without_weights(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_loading)
    w = context.peek("enigma-tiny")
    assert w.positions == 512 and w.tokenizer is not None


def test_an_adapter_folder_takes_its_bases_window(model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model_dir)}))
    files = modelfiles.inspect(str(adapter))
    assert files.positions == json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    assert files.tokenizer_dir == model_dir


def test_a_gguf_file_is_read_through_its_converted_copy(model_dir, tmp_path, monkeypatch):
    from enigma_cli.models.gguf import _CACHE_DONE, _gguf_cache_dir

    monkeypatch.setenv("ENIGMA_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    monkeypatch.setattr(modelfiles, "_gguf_positions", lambda file: None)
    assert modelfiles.inspect(str(gguf)).positions is None  # not converted yet: only loading can tell
    cache = _gguf_cache_dir(gguf)
    shutil.copytree(model_dir, cache)
    (cache / _CACHE_DONE).write_text("")
    files = modelfiles.inspect(str(gguf))
    assert files.positions is not None and files.tokenizer_dir == cache


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_a_damaged_model_is_found_before_loading(damage, model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    if damage == "config":
        (bad / "config.json").write_text("{not json")
    else:
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="config.json cannot be read" if damage == "config" else "truncated"):
        modelfiles.inspect(str(bad))


# -- every prompt-rendering command, before any weights load ---------------------------------------------------------
COMMANDS = {
    "train": ["train", "--output-dir", "{tmp}/run"],
    "score-principles": ["score-principles", "--prompts", "2"],
    "generate": ["generate", "What is 2 + 2?"],
    "evaluate": ["evaluate", "--prompts", "2"],
    "analyze-manifold": ["analyze-manifold", "--trained", "enigma-tiny", "--prompts", "2"],
}


@pytest.fixture
def no_weights(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("enigma_cli.models.loading.load_model", no_loading)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_refuses_max_new_tokens_beyond_the_window(name, tmp_path, capsys, no_weights):
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[name]]
    rc, out, err = run([*argv, "--max-new-tokens", "512"], capsys)  # no --dry-run: it must stop before loading
    assert rc == 3 and out == "" and len(err.strip().splitlines()) == 1
    assert "--max-new-tokens 512 leaves no room for a prompt in the 512 positions of enigma-tiny" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "generate"])
def test_every_command_skips_dataset_rows_that_cannot_fit(name, tmp_path, capsys, no_weights):
    data = tmp_path / "d.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "1 + " * 3000 + "1?", "answer": "1"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [a.format(tmp=tmp_path) for a in COMMANDS[name]]
    rc, out, err = run([*argv, "--dataset", data, "--dry-run"], capsys)
    assert rc == 0, err
    assert f"skipped 1 of 2 rows of dataset {data}" in err
    data.write_text(json.dumps(rows[1]) + "\n")
    rc, out, err = run([*argv, "--dataset", data, "--dry-run"], capsys)
    assert rc == 3 and out == "" and f"no row of dataset {data} fits" in err


def test_generate_refuses_a_question_too_long_before_loading(capsys, no_weights):
    rc, out, err = run(["generate", "x" * 100_000], capsys)
    assert rc == 3 and out == "" and len(err.strip().splitlines()) == 1
    assert "QUESTION 1" in err and "100,000 characters" in err and "512 positions of enigma-tiny" in err


# -- large files, lazily (train) -------------------------------------------------------------------------------------
LONG = "7 " * 200  # far beyond the 128 positions of `window`


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(context, "SAMPLE", 5)


def counting(monkeypatch):
    """Count the questions `_lengths` tokenizes (every call renders one question per principle)."""
    seen = []
    real = context._lengths

    def spy(tokenizer, principles, questions):
        seen.extend(q for q in questions if q)
        return real(tokenizer, principles, questions)

    monkeypatch.setattr(context, "_lengths", spy)
    return seen


def test_a_large_file_of_rows_that_cannot_fit_is_refused_from_a_sample(tok, small_sample, monkeypatch):
    seen = counting(monkeypatch)
    check = ContextCheck(PRINCIPLES, 16, rows="dataset big.jsonl", lazy=True)
    with pytest.raises(InputError, match=r"no row of dataset big.jsonl fits: none of 5 rows sampled from its 40"):
        check._fit(window(tok), [LONG + str(i) for i in range(40)], list(range(40)))
    assert len(set(seen)) == 5  # not 40


def test_a_large_file_starts_and_its_rows_are_checked_as_drawn(tok, small_sample, monkeypatch, capsys):
    from enigma_cli.context import Rows

    questions = [LONG + str(i) if i % 4 else f"What is {i} + 1?" for i in range(40)]  # 30 long, 10 short
    check = ContextCheck(PRINCIPLES, 16, rows="dataset big.jsonl", lazy=True)
    seen = counting(monkeypatch)
    keep = check._fit(window(tok), questions, list(range(40)))
    assert len(set(seen)) == 5 and len(keep) == 35  # the 5 sampled long rows are dropped, the rest wait
    assert "5 of 5 rows sampled from the 30 longest of dataset big.jsonl do not fit" in capsys.readouterr().err
    rows = Rows(range(40)).also(check, keep)
    assert [rows.fits(questions[i]) for i in keep] == [i % 4 == 0 for i in keep]
    assert rows.skipped == 25 and len(rows.known) == 35
    seen.clear()
    rows.fits(questions[keep[1]])
    assert seen == []  # remembered, not tokenized again


def test_a_small_file_is_still_checked_whole_when_lazy(tok, capsys):
    check = ContextCheck(PRINCIPLES, 16, rows="dataset d.jsonl", lazy=True)
    assert check._fit(window(tok), ["short", LONG, "also short"], [0, 1, 2]) == [0, 2]
    assert "skipped 1 of 3 rows" in capsys.readouterr().err and check.pending == []


def test_training_draws_only_rows_that_fit_and_counts_the_others(tok, small_sample):
    from enigma_cli.context import Rows
    from enigma_cli.datasets import Example
    from enigma_cli.principles import load_principle_set
    from enigma_cli.train.episodes import draw

    examples = [Example(LONG + str(i) if i % 4 else f"What is {i} + 1?", "1") for i in range(40)]
    check = ContextCheck(PRINCIPLES, 16, rows="dataset big.jsonl", lazy=True)
    rows = Rows(examples).also(check, check._fit(window(tok), [e.question for e in examples], list(range(40))))
    pset = load_principle_set("stepwise-vs-oneline")
    picks, _, redrawn = draw(rows, pset, 8, 2, seed=0, step=1)
    assert all(not ex.question.startswith("7 ") for ex in picks) and redrawn > 0
    again = draw(rows, pset, 8, 2, seed=0, step=1)  # a resumed run draws the same step alike
    assert again[0] == picks and again[2] == redrawn


@pytest.mark.parametrize("short_rows", [0, 2])
def test_train_on_a_large_file_refuses_or_starts_before_any_weights_load(short_rows, small_sample, tmp_path, capsys,
                                                                        no_weights):
    data = tmp_path / "big.jsonl"
    rows = [{"question": "1 + " * 3000 + str(i), "answer": "1"} for i in range(30)]
    rows += [{"question": f"What is {i} + 2?", "answer": str(i + 2)} for i in range(short_rows)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, err = run(["train", "--dataset", data, "--output-dir", tmp_path / "run", "--dry-run"], capsys)
    if short_rows:
        assert rc == 0, err
        assert f"5 of 5 rows sampled from the 30 longest of dataset {data} do not fit" in " ".join(err.split())
    else:
        assert rc == 3 and f"no row of dataset {data} fits: none of 5 rows sampled" in " ".join(err.split())


def test_a_training_run_reports_the_rows_it_skipped(small_sample, tmp_path, capsys):
    data = tmp_path / "big.jsonl"
    rows = [{"question": "1 + " * 3000 + str(i) if i % 3 else f"What is {i} + 2?", "answer": "1"} for i in range(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, err = run(["train", "--dataset", data, "--output-dir", tmp_path / "run", "--steps", "2",
                        "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8", "--device", "cpu"],
                       capsys)
    assert rc == 0, err
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["rows_too_long"].sum() > 0
    assert "could not fit the context and were skipped" in " ".join(err.split())
    assert err.count("rows sampled from") == 1  # checked before loading, not again on the loaded model
