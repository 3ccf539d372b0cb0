"""`enigma score-principles` and `enigma_cli.scoring`: critic-matrix wiring, report schema, determinism, bad input.

The wiring tests replace `generate` and `score_pairs` inside `enigma_cli.scoring` with fakes that know which
(prompt, principle, sample) produced every completion, so the K×K matrices that `critic_matrices` assembles can be
checked against hand-computed InfoNCE values: an index mix-up (rows and columns swapped, completions of another
prompt in the matrix, marginals of the wrong completion, prompts mis-grouped for the bootstrap) changes them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from enigma_cli.cli import main
from enigma_cli.datasets import Example
from enigma_cli.models.rollout import Generation
from enigma_cli.principles import load_principle_set
from enigma_cli.score import ScoreConfig, scoring

FAST = ["--prompts", "3", "--samples", "2", "--max-new-tokens", "12", "--batch-size", "16", "--bootstrap", "200",
        "--device", "cpu"]
SETS = ["stepwise-vs-oneline", "placebo"]
SET_COLUMNS = {"set", "level", "k", "log_k", "mi_row", "mi_col", "mi_sym", "si", "si_low", "si_high", "acc_row",
               "acc_col", "pmi_mi_row", "pmi_mi_sym", "pmi_si", "format_rate", "prompts", "samples", "model",
               "seed", "critic", "si_mean", "si_sum", "pmi_si_mean", "pmi_si_sum", "trusted", "reason"}
STRICT = "<reasoning>\nstep\n</reasoning>\n<answer>\n1\n</answer>"
QUESTIONS = ["What is alpha plus one?", "What is beta plus two?", "What is gamma plus three?"]


@pytest.fixture(scope="module")
def tiny():
    from enigma_cli.models.tiny import make_tiny_lm

    return make_tiny_lm(seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    """A random tiny Llama saved as a save_pretrained folder (weights + tokenizer)."""
    model, tok = tiny
    path = tmp_path_factory.mktemp("score") / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    return path


def run(argv, capsys):
    rc = main(["score-principles", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def run_quiet(argv):
    """Like `run`, for module-scoped fixtures (no capsys there)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["score-principles", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


def flat(text: str) -> str:
    """Text without whitespace: rich wraps long lines at the console width."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def report(ckpt):
    """One real run (seed 0, --per-principle) shared by the schema and determinism tests."""
    rc, out, err = run_quiet([*SETS, "--model", ckpt, *FAST, "--per-principle"])
    assert rc == 0, err
    return out, err


# ------------------------------------------------------------------------------------------ report schema


def test_csv_schema_per_principle_and_stdout_holds_only_data(report, ckpt):
    out, err = report
    df = pd.read_csv(io.StringIO(out))
    # stdout is the CSV and nothing else: every line is one record with the header's number of fields (the
    # reasons hold commas, so they are quoted).
    lines = out.strip().splitlines()
    records = list(csv.reader(lines))
    assert len(lines) == 1 + len(df) and all(len(r) == len(records[0]) for r in records)
    assert set(df.columns) == SET_COLUMNS | {"principle"}
    assert list(df.columns[:3]) == ["set", "level", "principle"]
    sets = df[df.level == "set"]
    assert sorted(sets["set"]) == sorted(SETS) and len(df) == 2 + 2 + 2
    assert list(df.columns[-2:]) == ["trusted", "reason"]
    # A random model never writes the layout: every row says so, none is trusted, and they rank by SI.
    assert not df["trusted"].any()
    assert df["reason"].str.contains("format rate 0.00", regex=False).all()
    assert sets["reason"].str.contains("rarely writes the <reasoning>/<answer> layout", regex=False).all()
    assert list(sets["si"]) == sorted(sets["si"], reverse=True)
    # Each set row comes first, then its own principles; their mean SI is the set's SI.
    for name in SETS:
        block = df.index[df["set"] == name]
        assert list(block) == list(range(block[0], block[0] + 3))
        assert df.loc[block[0], "level"] == "set"
        principles = df.loc[block[1:]]
        assert (principles["level"] == "principle").all()
        assert list(principles["principle"]) == list(load_principle_set(name).ids)
        assert principles["si"].mean() == pytest.approx(df.loc[block[0], "si"], abs=2e-6)
    row = sets.iloc[0]
    assert row["k"] == 2 and row["log_k"] == pytest.approx(math.log(2), abs=1e-6)
    assert row["prompts"] == 3 and row["samples"] == 2 and row["seed"] == 0 and row["model"] == str(ckpt)
    for r in sets.itertuples():
        assert r.si_low <= r.si <= r.si_high
        assert r.mi_sym == pytest.approx(0.5 * (r.mi_row + r.mi_col), abs=2e-6)
        assert r.si == pytest.approx(r.mi_sym / r.log_k, abs=2e-6)
        assert max(r.mi_row, r.mi_col, r.mi_sym) <= r.log_k + 1e-9
        assert 0 <= r.acc_row <= 1 and 0 <= r.acc_col <= 1 and 0 <= r.format_rate <= 1
    # The table goes to stderr.
    assert "Sufficiency Index" in err and "stepwise" in err


def test_jsonl_and_parquet_round_trip(report, ckpt, tmp_path, capsys):
    csv = pd.read_csv(io.StringIO(report[0]))
    for fmt in ("jsonl", "parquet"):
        path = tmp_path / f"scores.{fmt}"
        rc, out, err = run([*SETS, "--model", ckpt, *FAST, "--per-principle", "--format", fmt, "--out", path],
                           capsys)
        assert rc == 0, err
        assert out == ""
        df = pd.read_json(path, lines=True) if fmt == "jsonl" else pd.read_parquet(path)
        assert list(df.columns) == list(csv.columns)
        assert list(df["set"]) == list(csv["set"]) and list(df["level"]) == list(csv["level"])
        for col in ("k", "log_k", "mi_row", "mi_col", "mi_sym", "si", "si_low", "si_high", "acc_row", "acc_col",
                    "pmi_si", "format_rate"):
            a, b = df[col].to_numpy(dtype=float), csv[col].to_numpy(dtype=float)
            assert ((abs(a - b) <= 1e-5 * (1 + abs(b))) | (pd.isna(a) & pd.isna(b))).all(), col


def test_deterministic_for_a_seed(report, ckpt, capsys):
    rc, again, err = run([*SETS, "--model", ckpt, *FAST], capsys)
    assert rc == 0, err
    first = pd.read_csv(io.StringIO(report[0]))
    # Same seed: the set rows are identical to the earlier --per-principle run, to the printed digit.
    expected = first[first.level == "set"].drop(columns="principle").to_csv(index=False, float_format="%.6g")
    assert again == expected
    rc, again2, _ = run([*SETS, "--model", ckpt, *FAST], capsys)
    assert rc == 0 and again2 == again
    rc, other, err = run([*SETS, "--model", ckpt, *FAST, "--seed", "1"], capsys)
    assert rc == 0, err
    assert other != again
    other_df = pd.read_csv(io.StringIO(other))
    assert set(other_df.columns) == SET_COLUMNS and (other_df["seed"] == 1).all()


# ---------------------------------------------------------------------------- critic-matrix wiring (fakes)


class FakeLM:
    """Fakes for `generate` and `score_pairs` whose scores are a function of who wrote what.

    A completion is the id list ``[prompt_index, sample]``; `critic(i, j, q, s)` scores the completion written
    under principle j for question q (sample s) when conditioned on principle i, and `marginal(j, q, s)` scores
    it with no principle. Any pair whose prompt and completion belong to different questions is recorded.
    """

    def __init__(self, questions, critic, marginal=lambda j, q, s: 0.0, strict_principle=0, length=None):
        self.questions = list(questions)
        self.critic, self.marginal, self.strict_principle = critic, marginal, strict_principle
        self.length = length  # length(j, q, s) of the completion in tokens (default 2)
        self.mixed: list[tuple] = []
        self.pairs = 0
        self.prompts: list[str] = []

    def _question(self, text: str) -> int:
        hits = [q for q, question in enumerate(self.questions) if question in text]
        assert len(hits) == 1, text
        return hits[0]

    def generate(self, model, tok, prompts, *, num_samples, **kwargs):
        self.prompts = list(prompts)
        self.k = len(prompts) // len(self.questions)
        pad = (lambda p, s: []) if self.length is None else (
            lambda p, s: [7] * (self.length(p % self.k, p // self.k, s) - 2))
        ids = [[p, s, *pad(p, s)] for p in range(len(prompts)) for s in range(num_samples)]
        strict = (lambda p: True) if self.strict_principle == "all" else (
            lambda p: False) if self.strict_principle is None else (lambda p: p % self.k == self.strict_principle)
        texts = [STRICT if strict(p) else "plain text" for p, *_ in ids]
        return Generation(prompt_ids=[[0]] * len(ids), completion_ids=ids, texts=texts,
                          prompt_index=[p for p, *_ in ids], finished=[True] * len(ids), num_samples=num_samples)

    def score_pairs(self, model, tok, prompt_texts, completion_ids, *, batch_size=64, **kwargs):
        assert batch_size >= 1
        index = {t: n for n, t in enumerate(self.prompts)}
        scores = []
        for text, (p, s, *_) in zip(prompt_texts, completion_ids):
            qc, j = divmod(p, self.k)
            if text in index:
                qp, i = divmod(index[text], self.k)
                scores.append(self.critic(i, j, qc, s))
            else:  # no principle in the prompt: the marginal
                qp = self._question(text)
                assert self.pset is None or not any(pr.text in text for pr in self.pset.principles)
                scores.append(self.marginal(j, qc, s))
            if qp != qc:
                self.mixed.append((text, p, s))
            self.pairs += 1
        return torch.tensor(scores, dtype=torch.float32)

    def install(self, monkeypatch, pset=None):
        self.pset = pset
        monkeypatch.setattr(scoring, "generate", self.generate)
        monkeypatch.setattr(scoring, "score_pairs", self.score_pairs)
        return self


def score_with(monkeypatch, tokenizer, set_name, critic, marginal=lambda j, q, s: 0.0, samples=2, n=3,
               critic_name="mean", **fake_kwargs):
    pset = load_principle_set(set_name)
    fake = FakeLM(QUESTIONS[:n], critic, marginal, **fake_kwargs).install(monkeypatch, pset)
    examples = [Example(q, "1") for q in QUESTIONS[:n]]
    cfg = ScoreConfig(samples=samples, max_new_tokens=4, batch_size=5, seed=0, bootstrap=200, critic=critic_name)
    result = scoring.score_set(SimpleNamespace(tokenizer=tokenizer, model=None), pset, examples, cfg)
    assert fake.mixed == [], "a critic matrix mixes completions of different prompts"
    k = pset.k
    assert fake.pairs == n * samples * (k * k + k)  # K² critic pairs and K marginals per matrix
    return result, fake


def ce_diag(c: float, k: int) -> float:
    """Row (= column) cross-entropy of the matrix c·I_K."""
    return math.log(math.exp(c) + k - 1) - c


@pytest.mark.parametrize("set_name", ["stepwise-vs-oneline", "reasoning-styles"])
def test_wiring_principle_identified(monkeypatch, tokenizer, set_name):
    c = 30.0
    result, _ = score_with(monkeypatch, tokenizer, set_name, lambda i, j, q, s: c * (i == j) - 0.1 * s)
    k = load_principle_set(set_name).k
    row = result.row
    assert row["k"] == k and row["log_k"] == pytest.approx(math.log(k))
    assert row["acc_row"] == 1.0 and row["acc_col"] == 1.0
    expected = math.log(k) - ce_diag(c, k)
    for key in ("mi_row", "mi_col", "mi_sym"):
        assert row[key] == pytest.approx(expected, abs=1e-5)
    assert row["si"] == pytest.approx(1.0, abs=1e-6)
    assert row["si_low"] == pytest.approx(1.0, abs=1e-6) and row["si_high"] == pytest.approx(1.0, abs=1e-6)
    assert row["format_rate"] == pytest.approx(1 / k)  # only principle 0's completions are well formed
    assert result.saturated
    assert [p["si"] for p in result.per_principle] == pytest.approx([1.0] * k, abs=1e-6)


def test_wiring_principle_independent_scores_give_zero(monkeypatch, tokenizer):
    # Every principle gives a completion the same score, so the critic carries no information about C.
    def f(j, q, s):
        return -1.0 - 0.7 * j - 0.3 * q + 0.2 * s

    result, _ = score_with(monkeypatch, tokenizer, "reasoning-styles", lambda i, j, q, s: f(j, q, s), f)
    row = result.row
    assert row["mi_col"] == pytest.approx(0.0, abs=1e-6)  # every column softmax is uniform
    assert row["mi_row"] <= 1e-6 and row["mi_sym"] <= 1e-6 and row["si"] <= 1e-6
    assert row["pmi_mi_row"] == pytest.approx(0.0, abs=1e-6) and row["pmi_si"] == pytest.approx(0.0, abs=1e-6)
    assert not result.saturated
    # Constant scores: exactly chance.
    result, _ = score_with(monkeypatch, tokenizer, "reasoning-styles", lambda i, j, q, s: -2.0)
    assert result.row["si"] == pytest.approx(0.0, abs=1e-9) and result.row["acc_row"] == pytest.approx(0.25)


def test_wiring_rows_are_principles_and_columns_completions(monkeypatch, tokenizer):
    """Completion 0 is likely under every principle: the row softmax is fooled, the column softmax is not.

    Transposing S would swap the two; the pointwise critic (marginal = the column bias) removes the bias.
    """
    k, c, bias = 4, 2.0, 10.0

    def marginal(j, q, s):
        return bias * (j == 0) - 1.0 * q

    result, _ = score_with(monkeypatch, tokenizer, "reasoning-styles",
                           lambda i, j, q, s: c * (i == j) + marginal(j, q, s), marginal)
    row = result.row
    assert row["acc_col"] == 1.0
    assert row["acc_row"] == pytest.approx(1 / k)  # every row picks completion 0; only row 0 is right
    assert row["mi_col"] == pytest.approx(math.log(k) - ce_diag(c, k), abs=1e-5)
    # Row i ≠ 0: logits (bias, 0, .., c, ..) → CE = logsumexp − c; row 0: logits (c + bias, 0, 0, 0).
    ce0 = math.log(math.exp(c + bias) + k - 1) - (c + bias)
    cei = math.log(math.exp(bias) + math.exp(c) + k - 2) - c
    assert row["mi_row"] == pytest.approx(math.log(k) - (ce0 + (k - 1) * cei) / k, abs=1e-5)
    assert row["pmi_mi_row"] == pytest.approx(math.log(k) - ce_diag(c, k), abs=1e-5)
    assert row["pmi_mi_sym"] == pytest.approx(math.log(k) - ce_diag(c, k), abs=1e-5)


def test_wiring_bootstrap_sees_prompts_not_samples(monkeypatch, tokenizer):
    """Question 0 identifies its principle perfectly, questions 1-2 not at all: per-prompt SI = (1, 0, 0)."""
    seen = {}
    real = scoring.bootstrap_si

    def spy(per_prompt, **kwargs):
        seen["per_prompt"] = torch.as_tensor(per_prompt).tolist()
        return real(per_prompt, **kwargs)

    monkeypatch.setattr(scoring, "bootstrap_si", spy)
    result, _ = score_with(monkeypatch, tokenizer, "stepwise-vs-oneline",
                           lambda i, j, q, s: 40.0 * (i == j) if q == 0 else -1.0, samples=3)
    assert seen["per_prompt"] == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert result.row["si"] == pytest.approx(1 / 3, abs=1e-6)
    assert result.row["si_low"] == pytest.approx(0.0, abs=1e-6)
    assert result.row["si_high"] >= 1 / 3 - 1e-9


def test_cli_saturation_warning_and_different_k_note(monkeypatch, ckpt, questions_file, capsys):
    fake = FakeLM(QUESTIONS, lambda i, j, q, s: 30.0 * (i == j), strict_principle="all")
    fake.install(monkeypatch, load_principle_set("reasoning-styles"))
    # Both sets share principle texts; the fake only checks them for the marginal prompts.
    rc, out, err = run(["stepwise-vs-oneline", "reasoning-styles", "--model", ckpt, "--dataset", questions_file,
                        *FAST], capsys)
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(out))
    assert dict(zip(df["set"], df["k"])) == {"stepwise-vs-oneline": 2, "reasoning-styles": 4}
    assert df["si"].to_numpy() == pytest.approx([1.0, 1.0], abs=1e-6)
    text = flat(err)
    assert "differentK(2,4)" in text
    assert text.count("issaturated") == 2
    # Saturation is a caveat: a note under the table, and the rows stay trusted.
    assert "⚠stepwise-vs-oneline(note):mi_sym" in text and "⚠reasoning-styles(note):mi_sym" in text
    assert df["trusted"].all() and df["reason"].str.contains("saturated").all()
    assert fake.mixed == []

    # A random critic is not saturated and one K gives no note.
    fake = FakeLM(QUESTIONS, lambda i, j, q, s: ((7 * i + 3 * j + q + s) % 5) / 10,
                  strict_principle="all").install(monkeypatch, None)
    rc, out, err = run(["stepwise-vs-oneline", "--model", ckpt, "--dataset", questions_file, *FAST], capsys)
    assert rc == 0, err
    assert "saturated" not in err and "different K" not in err


# ------------------------------------------------------------------------------------- critics (fakes)


def _brute_si(matrices) -> float:
    """Symmetric SI of a list of K×K matrices (nested lists) by explicit loops."""
    terms = []
    for M in matrices:
        k = len(M)
        for i in range(k):
            row = math.log(sum(math.exp(M[i][j]) for j in range(k))) - M[i][i]
            col = math.log(sum(math.exp(M[r][i]) for r in range(k))) - M[i][i]
            terms.append(0.5 * (row + col))
    k = len(matrices[0])
    return (math.log(k) - sum(terms) / len(terms)) / math.log(k)


@pytest.mark.parametrize("critic_name", ["mean", "sum"])
def test_sum_critic_scales_each_completion_by_its_length(monkeypatch, tokenizer, critic_name):
    """Completions of different lengths: si_sum and pmi_si_sum against matrices built by hand."""
    n, samples, set_name = 3, 2, "reasoning-styles"
    k = load_principle_set(set_name).k

    def critic(i, j, q, s):
        return -1.0 - 0.05 * ((3 * i + j + q + s) % 4) + 0.08 * (i == j)

    def marginal(j, q, s):
        return -1.1 + 0.03 * ((j + 2 * q + s) % 3)

    def length(j, q, s):
        return 2 + (j + 2 * q + s) % 5

    result, _ = score_with(monkeypatch, tokenizer, set_name, critic, marginal, samples=samples, n=n,
                           critic_name=critic_name, length=length)
    mats = {"mean": [], "sum": [], "pmi_mean": [], "pmi_sum": []}
    for q in range(n):
        for s in range(samples):
            mats["mean"].append([[critic(i, j, q, s) for j in range(k)] for i in range(k)])
            total = [[critic(i, j, q, s) * length(j, q, s) for j in range(k)] for i in range(k)]
            mix = [math.log(sum(math.exp(total[r][j]) for r in range(k)) / k) for j in range(k)]
            mats["sum"].append([[total[i][j] - mix[j] for j in range(k)] for i in range(k)])
            mats["pmi_mean"].append([[critic(i, j, q, s) - marginal(j, q, s) for j in range(k)] for i in range(k)])
            mats["pmi_sum"].append([[(critic(i, j, q, s) - marginal(j, q, s)) * length(j, q, s) for j in range(k)]
                                    for i in range(k)])
    row = result.row
    for name, column in (("mean", "si_mean"), ("sum", "si_sum"), ("pmi_mean", "pmi_si_mean"),
                         ("pmi_sum", "pmi_si_sum")):
        assert row[column] == pytest.approx(_brute_si(mats[name]), abs=1e-5), name
        assert result.variants[name]["si"] == row[column]
    assert row["si_sum"] != pytest.approx(row["si_mean"], abs=1e-3)  # the lengths matter
    assert row["critic"] == critic_name
    assert row["si"] == row[f"si_{critic_name}"] and row["pmi_si"] == row[f"pmi_si_{critic_name}"]
    assert row["si_low"] == result.variants[critic_name]["si_low"]
    assert [p["si"] for p in result.per_principle] == result.variants[critic_name]["per_principle"]


# ------------------------------------------------------------------------------------------- trust (fakes)


def test_each_score_reason(monkeypatch, tokenizer):
    def ident(i, j, q, s):  # a critic that identifies every principle
        return 30.0 * (i == j)

    # Sound: layout followed, interval above 0; saturated is a caveat that keeps the row trusted.
    result, _ = score_with(monkeypatch, tokenizer, "stepwise-vs-oneline", ident, strict_principle="all")
    assert result.trusted and result.row["trusted"]
    assert "saturated" in result.row["reason"] and "format" not in result.row["reason"]
    assert all(p["trusted"] and p["reason"] == "" for p in result.per_principle)
    # No layout: the format reason on the set and on every principle.
    result, _ = score_with(monkeypatch, tokenizer, "stepwise-vs-oneline", ident, strict_principle=None)
    assert not result.trusted
    assert "rarely writes the <reasoning>/<answer> layout (format rate 0.00)" in result.row["reason"]
    assert "enigma sft" in result.row["reason"]
    assert all(not p["trusted"] and "format rate 0.00" in p["reason"] for p in result.per_principle)
    # One principle without the layout: named on the set row, only that principle row untrusted.
    result, _ = score_with(monkeypatch, tokenizer, "stepwise-vs-oneline", ident, strict_principle=0)
    assert not result.trusted and "principle one-line: its completions rarely follow" in result.row["reason"]
    assert [p["trusted"] for p in result.per_principle] == [True, False]
    # Chance-level scores: the interval reaches 0.
    result, _ = score_with(monkeypatch, tokenizer, "stepwise-vs-oneline", lambda i, j, q, s: -1.0,
                           strict_principle="all")
    assert not result.trusted and "reaches 0" in result.row["reason"] and "saturated" not in result.row["reason"]


def test_threshold_options_move_the_verdict(monkeypatch, tokenizer):
    """Format rate 0.5 (one principle of two writes the layout): trusted at 0.5, not at 0.6."""
    pset = load_principle_set("stepwise-vs-oneline")
    examples = [Example(q, "1") for q in QUESTIONS]
    FakeLM(QUESTIONS, lambda i, j, q, s: 2.0 * (i == j)).install(monkeypatch, pset)
    lm = SimpleNamespace(tokenizer=tokenizer, model=None)
    rows = {}
    for rate in (0.5, 0.6):
        cfg = ScoreConfig(samples=2, bootstrap=100, min_format_rate=rate, saturation=0.99)
        rows[rate] = scoring.score_set(lm, pset, examples, cfg).row
    assert rows[0.5]["format_rate"] == 0.5
    assert "rarely writes" not in rows[0.5]["reason"] and "rarely writes" in rows[0.6]["reason"]
    cfg = ScoreConfig(samples=2, bootstrap=100, saturation=0.1)
    assert "saturated" in scoring.score_set(lm, pset, examples, cfg).row["reason"]
    assert "saturated" not in rows[0.5]["reason"]


def test_ranking_puts_every_trusted_set_first():
    from enigma_cli.score.report import rank, report_frame

    def score(name, si, trusted):
        row = {"set": name, "k": 2, "si": si, "trusted": trusted, "reason": "" if trusted else "why"}
        per = [{"set": name, "principle": "a", "si": si, "trusted": trusted, "reason": ""}]
        return scoring.SetScore(name, 2, row, per, trusted=trusted)

    results = [score("untrusted-high", 0.9, False), score("trusted-low", 0.01, True),
               score("unscored", float("nan"), False), score("trusted-high", 0.2, True),
               score("untrusted-low", -0.1, False)]
    expected = ["trusted-high", "trusted-low", "untrusted-high", "untrusted-low", "unscored"]
    assert [r.name for r in rank(results)] == expected
    df = report_frame(results, SimpleNamespace(model="m", seed=0, per_principle=True))
    assert list(df[df.level == "set"]["set"]) == expected
    assert list(df["level"]) == ["set", "principle"] * 5


def test_cli_untrusted_set_never_ranks_above_a_trusted_one(monkeypatch, ckpt, questions_file, capsys):
    """enigma-tiny's folder marks the organisational set unreadable; the fake gives it the higher SI anyway."""
    from enigma_cli.models.loading import enigma_tiny_dir

    fake = FakeLM(QUESTIONS, lambda i, j, q, s: (1.2 if "impartial" in fake.prompts[0] else 0.5) * (i == j),
                  strict_principle="all")
    fake.install(monkeypatch, None)
    org = Path(__file__).parent / "fixtures" / "organisational.yaml"
    rc, out, err = run([org, "stepwise-vs-oneline", "placebo", "--model", enigma_tiny_dir(), "--dataset",
                        questions_file, *FAST, "--per-principle"], capsys)
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(out), keep_default_na=False)
    sets = df[df.level == "set"].set_index("set")
    assert sets.loc["organisational", "si"] > sets.loc["stepwise-vs-oneline", "si"] > 0
    assert list(df[df.level == "set"]["set"])[-1] == "organisational"
    assert bool(sets.loc["stepwise-vs-oneline", "trusted"]) and sets.loc["stepwise-vs-oneline", "reason"] == ""
    reason = sets.loc["organisational", "reason"]
    assert not bool(sets.loc["organisational", "trusted"])
    assert "principle impartial: enigma-tiny cannot read it" in reason and "principle take-side" in reason
    assert "enigma-tiny only knows the shipped principle styles" in reason
    principles = df[df.level == "principle"].set_index("principle")
    assert not bool(principles.loc["impartial", "trusted"]) and principles.loc["show-steps", "reason"] == ""
    text = flat(err)
    assert "⚠organisational(nottrusted):principleimpartial:enigma-tinycannotreadit" in text
    assert "stepwise-vs-oneline(" not in text  # a sound row gets no line under the table


def test_cli_long_principle_is_refused_before_the_model_loads(monkeypatch, questions_file, tmp_path, capsys):
    """A principle whose prompt cannot fit the model's context is bad input: refused (exit 3, one sentence naming
    it) before any weights load, alone or beside a set that fits."""
    from enigma_cli.models import loading
    from enigma_cli.models.loading import enigma_tiny_dir

    long = Path(__file__).parent / "fixtures" / "long-principle.yaml"

    def no_loading(*args, **kwargs):
        raise AssertionError("a prompt longer than the context must be refused before the model loads")

    monkeypatch.setattr(loading, "load_model", no_loading)
    out_file = tmp_path / "report.csv"
    for sets in ([long], [long, "stepwise-vs-oneline"]):
        rc, out, err = run([*sets, "--model", enigma_tiny_dir(), "--dataset", questions_file, *FAST,
                            "--out", out_file], capsys)
        assert rc == 3 and out == "" and not out_file.exists()
        assert err.count("error:") == 1 and "Traceback" not in err
        text = " ".join(err.split())
        assert "long-principle" in text and "512 positions" in text


# ------------------------------------------------------------------------------------------- bad input


def _bad(tmp_path, kind):
    """argv for one kind of bad input, and the text the error must name."""
    if kind == "missing-set":
        return [tmp_path / "nope.yaml"], "nope.yaml"
    if kind == "invalid-set":
        path = tmp_path / "lonely.yaml"
        path.write_text("name: lonely\ndescription: one principle only\nprinciples:\n  - id: a\n    text: Be brief.\n")
        return [path], "lonely.yaml"
    if kind == "unknown-set-name":
        return ["no-such-set"], "no-such-set"
    if kind == "empty-dataset":
        path = tmp_path / "empty.jsonl"
        path.write_text("")
        return ["placebo", "--dataset", path], "empty.jsonl"
    if kind == "unknown-model":
        return ["placebo", "--model", tmp_path / "no-such-model"], "no-such-model"
    if kind == "samples-0":
        return ["placebo", "--samples", "0"], "--samples"
    if kind == "prompts-0":
        return ["placebo", "--prompts", "0"], "--prompts"
    if kind == "bad-format":
        return ["placebo", "--format", "xlsx"], "--format"
    if kind == "critic-foo":
        return ["placebo", "--critic", "foo"], "--critic"
    if kind == "format-rate-above-1":
        return ["placebo", "--min-format-rate", "1.5"], "--min-format-rate"
    if kind == "format-rate-negative":
        return ["placebo", "--min-format-rate=-0.1"], "--min-format-rate"
    if kind == "saturation-0":
        return ["placebo", "--saturation", "0"], "--saturation"
    if kind == "saturation-above-1":
        return ["placebo", "--saturation", "1.01"], "--saturation"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing-set", "invalid-set", "unknown-set-name", "empty-dataset",
                                  "unknown-model", "samples-0", "prompts-0", "bad-format", "critic-foo",
                                  "format-rate-above-1", "format-rate-negative", "saturation-0",
                                  "saturation-above-1"])
@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_exits_3_and_leaves_out_alone(kind, existing, tmp_path, capsys, monkeypatch):
    from enigma_cli.models import loading

    def boom(*args, **kwargs):
        raise AssertionError("bad input must be refused before any weights load")

    monkeypatch.setattr(loading, "load_model", boom)
    argv, culprit = _bad(tmp_path, kind)
    out_file = tmp_path / "report.csv"
    if existing:
        out_file.write_text("old,report\n1,2\n")
    rc, out, err = run([*argv, "--prompts", "2", "--samples", "1", "--max-new-tokens", "4", "--device", "cpu",
                        "--out", out_file] if kind not in ("samples-0", "prompts-0")
                       else [*argv, "--device", "cpu", "--out", out_file], capsys)
    assert rc == 3, err
    assert out == ""
    assert flat(culprit) in flat(err)
    assert err.count("error:") == 1 and "Traceback" not in err
    assert flat(err).endswith(".")
    if existing:
        assert out_file.read_text() == "old,report\n1,2\n"
    else:
        assert not out_file.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_parquet_needs_out(capsys):
    rc, out, err = run(["placebo", "--format", "parquet"], capsys)
    assert rc == 3 and out == ""
    assert "--out" in err and err.count("error:") == 1


def test_dry_run_loads_no_weights_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from enigma_cli.models import loading

    def boom(*args, **kwargs):
        raise AssertionError("--dry-run must not load a model")

    monkeypatch.setattr(loading, "load_model", boom)
    out_file = tmp_path / "report.csv"
    rc, out, err = run(["stepwise-vs-oneline", "reasoning-styles", "--prompts", "3", "--samples", "2",
                        "--dry-run", "--out", out_file], capsys)
    assert rc == 0, err
    assert out == "" and not out_file.exists()
    text = flat(err)
    # 3 prompts × K principles × 2 samples completions and 3 · 2 · K² scored pairs
    assert "stepwise-vs-oneline:K=2,3prompts×2principles×2samples=12completions" in text
    assert "24scoredpairs" in text and "96scoredpairs" in text
    assert "nothingloaded" in text


def test_config_file_fills_options_and_typed_flags_win(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("prompts: 5\nsamples: 3\nprinciples: [placebo]\n")
    rc, out, err = run(["--config", cfg, "--samples", "1", "--dry-run"], capsys)
    assert rc == 0, err
    assert "placebo:K=2,5prompts×2principles×1samples=10completions" in flat(err)
    cfg.write_text("prompts: 5\nsample: 3\n")
    rc, out, err = run(["placebo", "--config", cfg, "--dry-run"], capsys)
    assert rc == 3 and out == "" and "sample" in err and str(cfg.name) in flat(err)
