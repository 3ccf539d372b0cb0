"""`enigma evaluate` and `enigma_cli.evaluate`: report schema, hand-computed metrics, several models, bad input."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from enigma_cli.cli import main
from enigma_cli.evaluate import evaluation
from enigma_cli.models.rollout import Generation

FAST = ["--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--batch-size", "8", "--device", "cpu"]
COLUMNS = {"model", "prompts", "samples", "format_rate", "answer_rate", "accuracy_at_1", "majority_accuracy",
           "answer_entropy", "distinct_answers", "majority_share", "completion_len_mean", "temperature", "seed",
           "answer_rate_flexible", "accuracy_at_1_flexible", "majority_accuracy_flexible", "vs_first_accuracy_flexible",
           "vs_first_se"}
QUESTIONS = {"How many apples are 2 and 3?": "5", "What is 4 plus 6?": "10"}


def done(answer: str) -> str:
    return f"<reasoning>\nwork\n</reasoning>\n<answer>\n{answer}\n</answer>"


# Hand-made completions, 3 per question. Question 1: answers 5, 5, 7; question 2: 3, (none), 10.
COMPLETIONS = {
    "How many apples are 2 and 3?": [done("5"), done(" 5.0 "), "<answer>7</answer> trailing words"],
    "What is 4 plus 6?": [done("3"), "I do not know", done("10")],
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two random tiny Llamas (seeds 0 and 1) as save_pretrained folders."""
    from enigma_cli.models.tiny import init_tiny_lm, make_tiny_lm

    root = tmp_path_factory.mktemp("evaluate")
    paths = []
    _, tok = make_tiny_lm(seed=0)
    for seed in (0, 1):
        model = init_tiny_lm(tok, seed=seed)
        path = root / f"tiny{seed}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS.items()))
    return path


def run(argv, capsys):
    rc = main(["evaluate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


# Strict and flexible disagree: question 1 (gold 5) has no tags, a LaTeX answer in tags, and a wrong number;
# question 2 (gold 10) has two untagged right answers (one as 10.0) and a tagged wrong one.
FLEXIBLE = {
    "How many apples are 2 and 3?": ["2 + 3 = 5.", done("$\\frac{10}{2}$"), "I think 7"],
    "What is 4 plus 6?": ["4 + 6 = 10", "So 4 + 6 = 10.0", done("3")],
}

MC_QUESTIONS = [{"question": "Capital of France?", "choices": ["London", "Paris", "Rome"], "answer": "B"},
                {"question": "Largest number?", "choices": "A) 1 B) 10 C) 100", "answer": 2}]
MC = {"Capital of France?": [done("A) London"), "It is Paris, so (B).", done("B")],
      "Largest number?": [done("C"), "Hmm. A farmer would say C.", "no idea"]}


def fake_generate(calls, table=None):
    table = table or COMPLETIONS

    def generate(model, tok, prompts, *, num_samples, **kwargs):
        calls.append({"prompts": list(prompts), "num_samples": num_samples, **kwargs})
        texts, ids = [], []
        for prompt in prompts:
            (question,) = [q for q in table if q in prompt]
            assert num_samples == len(table[question])
            texts += table[question]
            ids += [[7] * (len(t) % 5 + 1) for t in table[question]]
        return Generation(prompt_ids=[[0]] * len(ids), completion_ids=ids, texts=texts,
                          prompt_index=[i // num_samples for i in range(len(ids))], finished=[True] * len(ids),
                          num_samples=num_samples)
    return generate


def test_real_model_schema_and_stdout_holds_only_data(ckpts, capsys):
    rc, out, err = run(["--model", ckpts[0], *FAST], capsys)
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(out))
    assert len(out.strip().splitlines()) == 2 and len(df) == 1
    assert set(df.columns) == COLUMNS and df.columns[0] == "model"
    row = df.iloc[0]
    assert row["model"] == str(ckpts[0]) and row["prompts"] == 2 and row["samples"] == 2 and row["seed"] == 0
    for col in ("format_rate", "answer_rate", "accuracy_at_1", "majority_accuracy", "majority_share"):
        assert 0 <= row[col] <= 1, col
    assert 0 <= row["answer_entropy"] <= math.log(2) + 1e-9
    assert 1 <= row["completion_len_mean"] <= 8
    assert "acc@1" in err  # the summary line goes to stderr
    rc, again, _ = run(["--model", ckpts[0], *FAST], capsys)
    assert again == out  # deterministic for a seed


def test_metrics_match_hand_computed_values(monkeypatch, ckpts, labelled, capsys):
    calls = []
    monkeypatch.setattr(evaluation, "generate", fake_generate(calls))
    rc, out, err = run(["--model", ckpts[0], "--dataset", labelled, "--prompts", "2", "--samples", "3",
                        "--device", "cpu", "--principle", "Check the result.", "--temperature", "0.5",
                        "--seed", "4"], capsys)
    assert rc == 0, err
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert len(calls) == 1 and calls[0]["num_samples"] == 3 and calls[0]["temperature"] == 0.5
    assert calls[0]["seed"] == 4 and all("Check the result." in p for p in calls[0]["prompts"])
    assert row["prompts"] == 2 and row["samples"] == 3
    assert row["format_rate"] == pytest.approx(4 / 6, abs=1e-6)  # four strict completions
    assert row["answer_rate"] == pytest.approx(5 / 6, abs=1e-6)  # "I do not know" has no answer
    assert row["accuracy_at_1"] == pytest.approx(3 / 6, abs=1e-6)  # 5, 5.0 and 10 are right
    # Majority: 5 (right) for question 1; 3 vs 10 tie for question 2 → first seen, 3 (wrong).
    assert row["majority_accuracy"] == pytest.approx(1 / 2, abs=1e-6)
    h1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # {5: 2, 7: 1}
    h2 = math.log(2)  # {3: 1, 10: 1} over the parsable answers
    assert row["answer_entropy"] == pytest.approx((h1 + h2) / 2, abs=1e-5)
    assert row["distinct_answers"] == pytest.approx(2.0)
    assert row["majority_share"] == pytest.approx((2 / 3 + 1 / 3) / 2, abs=1e-6)
    assert row["temperature"] == 0.5 and row["seed"] == 4


def test_strict_and_flexible_accuracy_with_math_verify(monkeypatch, ckpts, labelled, capsys):
    monkeypatch.setattr(evaluation, "generate", fake_generate([], FLEXIBLE))
    argv = ["--model", ckpts[0], "--dataset", labelled, "--samples", "3", "--device", "cpu"]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert row["format_rate"] == pytest.approx(2 / 6, abs=1e-6)
    assert row["answer_rate"] == pytest.approx(2 / 6, abs=1e-6)
    assert row["answer_rate_flexible"] == pytest.approx(1.0)
    assert row["accuracy_at_1"] == pytest.approx(1 / 6, abs=1e-6)  # only \frac{10}{2} = 5, through math-verify
    assert row["majority_accuracy"] == pytest.approx(1 / 2, abs=1e-6)
    assert row["accuracy_at_1_flexible"] == pytest.approx(4 / 6, abs=1e-6)  # 5, 10/2, 10, 10.0
    assert row["majority_accuracy_flexible"] == pytest.approx(1.0)  # 10/2 votes with 5, 10.0 with 10
    assert row["answer_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert "flexible" in err
    rc, out, err = run([*argv, "--no-math-verify"], capsys)
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert rc == 0 and row["accuracy_at_1"] == 0 and row["accuracy_at_1_flexible"] == pytest.approx(3 / 6)


def test_multiple_choice(monkeypatch, ckpts, tmp_path, capsys):
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MC_QUESTIONS))
    calls = []
    monkeypatch.setattr(evaluation, "generate", fake_generate(calls, MC))
    rc, out, err = run(["--model", ckpts[0], "--dataset", path, "--samples", "3", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "A) London\nB) Paris\nC) Rome" in calls[0]["prompts"][0]  # the options are in the prompt
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    # strict: A (wrong), -, B (right) | C (right), -, -;  flexible adds (B) and the bare "C."
    assert row["accuracy_at_1"] == pytest.approx(2 / 6, abs=1e-6)
    assert row["accuracy_at_1_flexible"] == pytest.approx(4 / 6, abs=1e-6)
    assert row["majority_accuracy"] == pytest.approx(1 / 2, abs=1e-6)  # A vs B tie → first seen, A (wrong); C
    assert row["majority_accuracy_flexible"] == pytest.approx(1.0)


def test_unlabelled_dataset_gives_nan_accuracy(monkeypatch, ckpts, tmp_path, capsys):
    path = tmp_path / "questions.csv"
    pd.DataFrame({"question": list(QUESTIONS)}).to_csv(path, index=False)
    monkeypatch.setattr(evaluation, "generate", fake_generate([]))
    rc, out, err = run(["--model", ckpts[0], "--dataset", path, "--samples", "3", "--device", "cpu"], capsys)
    assert rc == 0, err
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert math.isnan(row["accuracy_at_1"]) and math.isnan(row["majority_accuracy"])
    assert math.isnan(row["accuracy_at_1_flexible"]) and math.isnan(row["majority_accuracy_flexible"])
    assert row["format_rate"] == pytest.approx(4 / 6, abs=1e-6)


def test_several_models_one_row_each(monkeypatch, ckpts, labelled, tmp_path, capsys):
    monkeypatch.setattr(evaluation, "generate", fake_generate([]))
    out_file = tmp_path / "eval.jsonl"
    rc, out, err = run(["--model", ckpts[0], "--model", ckpts[1], "--dataset", labelled, "--samples", "3",
                        "--device", "cpu", "--format", "jsonl", "--out", out_file], capsys)
    assert rc == 0, err
    assert out == ""
    df = pd.read_json(out_file, lines=True)
    assert list(df["model"]) == [str(p) for p in ckpts]
    assert set(df.columns) == COLUMNS
    assert (df["accuracy_at_1"] == 0.5).all()


def test_later_models_are_compared_with_the_first_on_the_same_questions(monkeypatch, ckpts, labelled, capsys):
    """Model 2 answers both questions right; model 1 (COMPLETIONS) gets 2/3 and 1/3 by the flexible reading: the
    per-question differences are 1/3 and 2/3, so +0.5 with a paired standard error of SD/√2 = 0.1667."""
    tables = iter([COMPLETIONS, {"How many apples are 2 and 3?": [done("5")] * 3, "What is 4 plus 6?": [done("10")] * 3}])

    def generate(*args, **kwargs):
        return fake_generate([], next(tables))(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", generate)
    rc, out, err = run(["--model", ckpts[0], "--model", ckpts[1], "--dataset", labelled, "--samples", "3",
                        "--device", "cpu"], capsys)
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(out))
    assert math.isnan(df["vs_first_accuracy_flexible"][0])
    assert df["vs_first_accuracy_flexible"][1] == pytest.approx(0.5)
    assert df["vs_first_se"][1] == pytest.approx(math.sqrt(2 / 36) / math.sqrt(2), abs=1e-5)
    assert (f"{ckpts[1]} against {ckpts[0]}: accuracy@1 (flexible) +0.500 ± 0.167 (paired over 2 questions): "
            "a gain beyond twice its standard error.") in " ".join(err.split())


@pytest.mark.parametrize("kind", ["unknown-model", "empty-dataset", "missing-dataset", "samples-0", "prompts-0",
                                  "bad-format", "no-question-column", "negative-temperature", "no-choices-column",
                                  "bad-choice-answer", "no-math-verify"])
@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_exits_3_and_leaves_out_alone(kind, existing, ckpts, tmp_path, capsys):
    out_file = tmp_path / "eval.csv"
    if existing:
        out_file.write_text("old\n")
    argv = ["--model", ckpts[0], "--prompts", "2", "--samples", "1", "--max-new-tokens", "4", "--device", "cpu"]
    if kind == "unknown-model":
        argv, culprit = ["--model", tmp_path / "no-such-model", *argv[2:]], "no-such-model"
    elif kind == "empty-dataset":
        (tmp_path / "empty.jsonl").write_text("")
        argv, culprit = [*argv, "--dataset", tmp_path / "empty.jsonl"], "empty.jsonl"
    elif kind == "missing-dataset":
        argv, culprit = [*argv, "--dataset", tmp_path / "absent.csv"], "absent.csv"
    elif kind == "samples-0":
        argv, culprit = [*argv, "--samples", "0"], "--samples"
    elif kind == "prompts-0":
        argv, culprit = [*argv, "--prompts", "0"], "--prompts"
    elif kind == "bad-format":
        argv, culprit = [*argv, "--format", "xml"], "--format"
    elif kind == "negative-temperature":
        argv, culprit = [*argv, "--temperature", "-1"], "--temperature"
    elif kind == "no-choices-column":
        argv, culprit = [*argv, "--choices-column", "opts"], "--choices-column"
    elif kind == "bad-choice-answer":
        path = tmp_path / "mc.jsonl"
        path.write_text(json.dumps({"question": "Q?", "choices": ["x", "y"], "answer": "Z"}) + "\n")
        argv, culprit = [*argv, "--dataset", path], "'Z'"
    elif kind == "no-math-verify":
        from enigma_cli.core import answers
        answers._math_verify.cache_clear()
        import sys
        sys.modules["math_verify"] = None  # import fails as if it were not installed
        culprit = "--no-math-verify"
    else:
        path = tmp_path / "rows.jsonl"
        path.write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
        argv, culprit = [*argv, "--dataset", path], "question"
    try:
        rc, out, err = run([*argv, "--out", out_file], capsys)
    finally:
        if kind == "no-math-verify":
            import sys
            del sys.modules["math_verify"]
            answers._math_verify.cache_clear()
    assert rc == 3, err
    assert out == ""
    assert culprit in "".join(err.split())
    assert err.count("error:") == 1 and "Traceback" not in err
    if existing:
        assert out_file.read_text() == "old\n"
    else:
        assert not out_file.exists()


def test_parquet_needs_out(capsys):
    rc, out, err = run(["--format", "parquet"], capsys)
    assert rc == 3 and out == "" and "--out" in err


def test_enigma_tiny_end_to_end_flexible_reads_at_least_strict(enigma_tiny, capsys):
    rc, out, err = run(["--model", "enigma-tiny", "--prompts", "8", "--samples", "2", "--max-new-tokens", "64",
                        "--device", "cpu"], capsys)
    assert rc == 0, err
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert row["format_rate"] > 0.3  # the built-in model writes the layout
    assert row["answer_rate_flexible"] >= row["answer_rate"] > 0
    assert row["accuracy_at_1_flexible"] >= row["accuracy_at_1"] > 0
    assert row["majority_accuracy_flexible"] >= row["majority_accuracy"]
