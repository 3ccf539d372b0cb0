"""`load_examples`: the built-in synthetic set, local JSONL/CSV/parquet files, columns and input errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from enigma_cli.datasets import DEFAULT_SYNTHETIC_N, Example, _column, load_examples
from enigma_cli.errors import InputError
from enigma_cli.tasks.synthetic import generate_problems, is_heldout

ROWS = [{"question": f"What is {i} + 1?", "answer": i + 1, "other": "x"} for i in range(12)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """No network, and the datasets cache inside the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_synthetic_default_is_heldout_and_seeded():
    default = load_examples()
    assert len(default) == DEFAULT_SYNTHETIC_N and default == load_examples("synthetic")
    few = load_examples("synthetic", n=10, seed=3)
    assert few == load_examples(None, n=10, seed=3) != load_examples(None, n=10, seed=4)
    assert all(isinstance(e, Example) and e.answer is not None and is_heldout(e.question) for e in few)
    train = {p.question for p in generate_problems(1000, 3)}
    assert not train & {e.question for e in load_examples(n=100, seed=3)}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    got = load_examples(str(path))
    assert got == [Example(r["question"], str(r["answer"])) for r in ROWS]
    sample = load_examples(str(path), n=5, seed=1)
    assert len(sample) == 5 and set(sample) <= set(got)
    assert sample == load_examples(str(path), n=5, seed=1) != load_examples(str(path), n=5, seed=2)
    assert load_examples(str(path), n=100) == got


def test_cot_collection_columns(tmp_path):
    rows = [{"source": "Is 2 even?", "target": "yes", "rationale": "2 = 2 * 1.", "task": "t"}]
    got = load_examples(str(write_jsonl(tmp_path / "cot.jsonl", rows * 2)))
    assert got == [Example("Is 2 even?", "yes", "2 = 2 * 1.")] * 2


def test_explicit_columns_unlabelled_data_and_gsm8k_answers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q1", "label": "A1"}, {"prompt": "Q2", "label": None}])
    assert load_examples(str(path), question_column="prompt", answer_column="label") == [
        Example("Q1", "A1"), Example("Q2", None)]
    assert load_examples(str(path), question_column="prompt") == [Example("Q1", None), Example("Q2", None)]
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "Q", "answer": "3 + 4 = <<3+4=7>>7 apples\n#### 7"}])
    assert load_examples(str(gsm)) == [Example("Q", "7", "3 + 4 = 7 apples")]
    # An explicit rationale column wins over the part before ####.
    both = write_jsonl(tmp_path / "both.jsonl", [{"question": "Q", "answer": "x\n#### 7", "rationale": "R"}])
    assert load_examples(str(both)) == [Example("Q", "7", "R")]


MC_ROWS = [
    # a list of texts and a letter
    {"question": "Capital of France?", "choices": ["London", "Paris", "Rome"], "answer": "B"},
    # labelled texts and an option's text
    {"question": "2 + 2?", "choices": ["A) 3", "B) 4", "C) 5"], "answer": "4"},
    # one inline string and a 0-based index (MMLU)
    {"question": "Largest?", "choices": "A) 1 B) 10 C) 100", "answer": 2},
    # a {label, text} mapping (ARC) and "(A)"
    {"question": "Colour of sky?", "choices": {"label": ["A", "B"], "text": ["blue", "green"]}, "answer": "(A)"},
]


def test_multiple_choice_columns(tmp_path):
    got = load_examples(str(write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)))
    assert [(e.choices, e.answer) for e in got] == [
        (("London", "Paris", "Rome"), "B"), (("3", "4", "5"), "B"), (("1", "10", "100"), "C"),
        (("blue", "green"), "A")]
    assert got[0].prompt_text == "Capital of France?\nA) London\nB) Paris\nC) Rome"
    plain = Example("Q", "1")
    assert plain.prompt_text == "Q"
    # A JSON list in a CSV cell, under a column named by the flag.
    csv = tmp_path / "mc.csv"
    pd.DataFrame({"question": ["Q?"], "opts": [json.dumps(["x", "y"])], "answer": ["y"]}).to_csv(csv, index=False)
    assert load_examples(str(csv), choices_column="opts") == [Example("Q?", "B", None, ("x", "y"))]


@pytest.mark.parametrize("row, words", [
    ({"question": "Q", "choices": ["a", "b"], "answer": "C"}, ["'C'", "answer", "A-B"]),
    ({"question": "Q", "choices": ["a", "b"], "answer": 5}, ["'5'", "0-based"]),
    ({"question": "Q", "choices": "no labels here", "answer": "A"}, ["row 0", "choices"]),
])
def test_multiple_choice_bad_rows(tmp_path, row, words):
    with pytest.raises(InputError) as info:
        load_examples(str(write_jsonl(tmp_path / "mc.jsonl", [row])))
    assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(InputError, match="--choices-column"):
        load_examples(str(write_jsonl(tmp_path / "ok.jsonl", [{"question": "Q", "answer": "A"}])),
                      choices_column="nope")


def test_missing_columns_name_the_column_and_the_available_ones(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "label": "A"}])
    with pytest.raises(InputError) as info:
        load_examples(str(path))
    msg = str(info.value)
    assert "d.jsonl" in msg and "'question'" in msg and "prompt, label" in msg and info.value.exit_code == 3
    with pytest.raises(InputError, match=r"no answer column 'solution' \(--answer-column\).*prompt, label"):
        load_examples(str(path), question_column="prompt", answer_column="solution")
    with pytest.raises(InputError, match=r"no question column 'q' \(--question-column\)"):
        load_examples(str(path), question_column="q")


@pytest.mark.parametrize("name, content, words", [
    ("empty.jsonl", "", "is empty"),
    ("blank.jsonl", "\n \n", "is empty"),
    ("empty.csv", "", "is empty"),
    ("header.csv", "question,answer\n", "no rows"),
    ("broken.jsonl", '{"question": "Q", \n', "cannot be read as jsonl"),
    ("data.txt", "question\n", "unknown extension"),
    ("blankq.jsonl", '{"question": "", "answer": "1"}\n', "no non-empty values"),
])
def test_bad_files(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=words) as info:
        load_examples(str(tmp_path / name))
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_path_folder_offline_hub_and_bad_n(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="does not exist"):
        load_examples("./nope/data")
    with pytest.raises(InputError, match="is a folder"):
        load_examples(str(tmp_path))
    with pytest.raises(InputError, match="offline"):
        load_examples("someone/some-dataset")
    with pytest.raises(InputError, match="--n"):
        load_examples(n=0)


def test_unreachable_hub_is_one_sentence_without_retries(monkeypatch):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr("enigma_cli.datasets.socket.create_connection", no_network)
    with pytest.raises(InputError, match=r"hub \(huggingface.co\) cannot be reached") as info:
        load_examples("someone/some-dataset", n=3)
    assert info.value.exit_code == 3


def test_training_and_evaluation_questions_are_disjoint_whatever_the_seeds():
    """GRPO learns from the held-out pool "rl", evaluation reads the pool "test": never the same question, even
    with the same seed (they were the same 256 questions before)."""
    from enigma_cli.tasks.synthetic import heldout_pool

    train = {e.question for e in load_examples("synthetic", seed=0, split="train", purpose="train")}
    for seed in (0, 1, 2):
        evaluation = {e.question for e in load_examples("synthetic", n=256, seed=seed)}
        assert not train & evaluation
    assert {heldout_pool(q) for q in train} == {"rl"} and {heldout_pool(q) for q in evaluation} == {"test"}


def test_hub_specs_name_a_subset_and_a_split():
    from enigma_cli.datasets import parse_hub_spec

    assert parse_hub_spec("openai/gsm8k", "train") == ("openai/gsm8k", None, "train")
    assert parse_hub_spec("openai/gsm8k:main", "train") == ("openai/gsm8k", "main", "train")
    assert parse_hub_spec("openai/gsm8k:main@test", "train") == ("openai/gsm8k", "main", "test")
    assert parse_hub_spec("cais/mmlu@validation", "train") == ("cais/mmlu", None, "validation")
    for bad in ("gsm8k:", "gsm8k@", ":main"):
        with pytest.raises(InputError, match="NAME:SUBSET@SPLIT"):
            parse_hub_spec(bad, "train")


def test_plain_columns_read_through_arrow_equal_datasets_own_reading(tmp_path):
    """`_column` skips `datasets`' row-by-row formatter for plain columns (2M rows: 65 s -> 0.2 s); same values,
    missing cells and row order (an index mapping from `select` included)."""
    import datasets

    rows = [{"question": "Q1", "answer": 3, "score": 1.5}, {"question": "Q2", "answer": None, "score": None},
            {"question": "Q3", "answer": 10, "score": 2.0}]
    ds = datasets.load_dataset("json", data_files=str(write_jsonl(tmp_path / "d.jsonl", rows)), split="train")
    for view in (ds, ds.select([2, 0])):
        for name in view.column_names:
            assert _column(view, name) == list(view[name])
