"""Reward functions of your own (`--reward my_rewards.py:brevity=0.5`): TRL's signature, both backends alike, and
one sentence for every way such a function can be broken, before anything is written."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from clirun import invoke

from enigma_cli.errors import InputError
from enigma_cli.train.rewards import compute_rewards, parse_reward_spec
from enigma_cli.trl.rewards import enigma_reward_funcs

REWARDS = '''
def brevity(prompts, completions, **kwargs):
    return [1.0 / (1 + len(c)) for c in completions]

def echo_answer(prompts, completions, answer, question, **kwargs):
    # None where there is no label: no opinion
    return [None if a is None else float(str(a) in c) for c, a in zip(completions, answer)]

def short(prompts, completions, **kwargs):
    return [1.0]

def infinite(prompts, completions, **kwargs):
    return [float("inf")] * len(completions)

def words(prompts, completions, **kwargs):
    return ["many"] * len(completions)

def boom(prompts, completions, **kwargs):
    raise ValueError("no idea")

CALLS = []

def counted(prompts, completions, **kwargs):
    CALLS.append(len(completions))
    return [1.0] * len(completions)

not_a_function = 3
'''


def done(answer: str) -> str:
    return f"<reasoning>\nwork\n</reasoning>\n<answer>\n{answer}\n</answer>"


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


TEXTS = [done("5"), "5", done("7"), done("10")]
LABELS = ["5", "5", None, "10"]


def test_a_reward_of_your_own_is_weighted_into_the_total(rewards_file):
    spec = f"format,{rewards_file}:brevity=0.5"
    assert parse_reward_spec(spec) == {"format": 1.0, "brevity": 0.5}
    plain = compute_rewards(TEXTS, LABELS, 2, "format")
    mine = compute_rewards(TEXTS, LABELS, 2, spec)
    expected = [1 / (1 + len(t)) for t in TEXTS]
    assert mine.terms["brevity"].tolist() == pytest.approx(expected)
    assert mine.total.tolist() == pytest.approx((plain.total + 0.5 * mine.terms["brevity"]).tolist())


def test_none_is_no_opinion_and_the_columns_arrive(rewards_file):
    result = compute_rewards(TEXTS, LABELS, 2, f"{rewards_file}:echo_answer=2",
                             prompts=["p"] * 4, columns={"question": ["q"] * 4})
    term = result.terms["echo_answer"]
    assert term[:2].tolist() == [1.0, 1.0] and math.isnan(term[2]) and term[3] == 1.0
    assert result.total.tolist() == [2.0, 2.0, 0.0, 2.0]  # None adds nothing, as TRL's nansum


def test_the_trl_backend_scores_it_as_the_native_loop_does(rewards_file):
    spec = f"format=1,{rewards_file}:echo_answer=0.5,{rewards_file}:brevity=2"
    funcs, weights = enigma_reward_funcs(spec, 2, saturated="coherence")
    assert [f.__name__ for f in funcs] == ["format", "echo_answer", "brevity", "saturated"]
    assert weights == [1.0, 0.5, 2.0, 1.0]
    native = compute_rewards(TEXTS, LABELS, 2, spec, saturated="coherence", prompts=["p"] * 4,
                             columns={"question": ["q"] * 4})
    per_func = [f(["p"] * 4, TEXTS, answer=LABELS, question=["q"] * 4) for f in funcs]
    total = [sum(w * (0.0 if v is None else v) for w, v in zip(weights, values)) for values in zip(*per_func)]
    assert total == pytest.approx(native.total.tolist())
    assert per_func[1][2] is None  # TRL sees the None, and nansums it away as enigma does


def test_the_trl_backend_calls_a_function_of_your_own_once_per_batch(tmp_path, monkeypatch, rewards_file):
    """TRL calls its reward functions one after the other on one batch: the term functions and the saturated
    fallback share one scoring, so a costly function of your own (a judge) runs once per batch, not per term."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    calls = importlib.import_module("my_rewards").CALLS
    calls.clear()
    funcs, _ = enigma_reward_funcs("format=1,my_rewards:counted=1,coherence=0.5", 2, saturated="coherence")
    for texts in (TEXTS, TEXTS[::-1], TEXTS[::-1]):  # a new batch, then the same batch again
        for f in funcs:
            f(["p"] * 4, texts, answer=LABELS)
    assert calls == [4, 4]


def test_a_module_works_like_a_file(tmp_path, monkeypatch, rewards_file):
    monkeypatch.syspath_prepend(str(tmp_path))
    result = compute_rewards(TEXTS, LABELS, 2, "my_rewards:brevity")
    assert result.terms["brevity"].tolist() == pytest.approx([1 / (1 + len(t)) for t in TEXTS])


def train(*argv) -> tuple[int, str, str]:
    return invoke("train", *argv)


def test_training_logs_the_reward_under_its_name(tmp_path, rewards_file):
    rc, _out, err = train("--reward", f"format,{rewards_file}:brevity=0.5", "--steps", "1", "--prompts-per-step",
                          "1", "-G", "4", "--max-new-tokens", "24", "--output-dir", tmp_path / "run")
    assert rc == 0, err
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert 0 < metrics["reward_brevity"][0] < 1


@pytest.mark.parametrize("term, needle", [
    ("{f}:short", "reward function 'short' of {f} returned 1 values for 2 completions"),
    ("{f}:infinite", "reward function 'infinite' of {f} returned a non-finite value (inf) for completion 0"),
    ("{f}:words", "reward function 'words' of {f} returned str 'many' for completion 0"),
    ("{f}:boom", "reward function 'boom' of {f} failed: ValueError: no idea"),
    ("{f}:missing", "--reward: {f} has no function 'missing'."),
    ("{f}:not_a_function", "--reward: {f}'s 'not_a_function' is a int, not a function."),
    ("{d}/nowhere.py:brevity", "--reward: no such file {d}/nowhere.py"),
    ("{d}/broken.py:brevity", "--reward: importing {d}/broken.py failed (SyntaxError"),
    ("no_such_module_here:brevity", "importing module no_such_module_here failed (ModuleNotFoundError"),
    ("{f}:", "a reward of your own is SOURCE:FUNCTION"),
    ("{f}:brevity,{f}:brevity", "--reward names 'brevity' twice."),
])
def test_a_broken_reward_stops_the_run_in_one_sentence_before_anything_is_written(tmp_path, rewards_file, term,
                                                                                   needle):
    (tmp_path / "broken.py").write_text("def brevity(:\n")
    spec = "format," + term.format(f=rewards_file, d=tmp_path)
    folder = tmp_path / "run"
    rc, out, err = train("--reward", spec, "--steps", "1", "--output-dir", folder)
    assert rc == 3 and out == "" and needle.format(f=rewards_file, d=tmp_path) in err, err
    assert not folder.exists()


def test_a_function_named_like_a_built_in_reward_is_refused(tmp_path):
    (tmp_path / "clash.py").write_text("def format(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    with pytest.raises(InputError, match="has the name of a built-in reward"):
        parse_reward_spec(f"{tmp_path / 'clash.py'}:format")
