"""A reward signal that survives the format warm-up (docs/method.md §8): the graded format reward, the coherence
fallback for groups whose reward has no spread, the same totals from the TRL backend's reward functions, the
option's validation and the step-1 warning that names the choice in force."""

from __future__ import annotations

import contextlib
import io
import math

import pandas as pd
import pytest
import torch

from enigma_cli.cli import main
from enigma_cli.core.format_rewards import format_reward
from enigma_cli.core.graded_format import answer_parses, graded_format_reward, reasoning_length_credit
from enigma_cli.core.saturated import fill_saturated_groups, saturated_groups
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.defaults import Watch
from enigma_cli.train.rewards import compute_rewards
from enigma_cli.trl.rewards import enigma_reward_funcs

pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning")


def layout(reasoning: str, answer: str, tail: str = "") -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n{tail}"


PERFECT = 1.0 + 0.5 + 0.5 * 0.5  # strict + soft + half of the four tag lines' 0.5: format_reward's maximum


# -- the graded format reward ------------------------------------------------------------------------------------
def test_graded_reward_against_hand_computed_values():
    texts = [
        layout("2 + 2 = 4, so four", "4"),           # one number, 5 words of reasoning: every credit
        layout("2 + 2 = 4, so four", "The answer is 4."),  # a sentence, not one number
        layout("4", "4"),                            # 1 word of reasoning: 1/3 of the length credit
        layout(" ".join(["step"] * 200), "$1,200"),                # 50 words past the band's 150: 1 - 50/150
        "<reasoning>x</reasoning><answer>4</answer> and more",  # not strict: no graded credit at all
    ]
    reward, terms = graded_format_reward(texts)
    plain = format_reward(texts)[0]
    expected = [PERFECT + 0.25 + 0.25,
                PERFECT + 0.0 + 0.25,
                PERFECT + 0.25 + 0.25 / 3,
                PERFECT + 0.25 + 0.25 * (1 - 50 / 150),
                float(plain[4])]
    assert reward.tolist() == pytest.approx(expected, abs=1e-6)
    assert terms["parse"].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert reward.dtype == torch.float32 and float(plain[4]) < 1.0


def test_graded_parts_follow_their_definitions():
    assert [reasoning_length_credit(n) for n in (0, 1, 3, 150, 225, 300, 999)] == pytest.approx(
        [0.0, 1 / 3, 1.0, 1.0, 0.5, 0.0, 0.0])
    assert [answer_parses(a) for a in ("12", " 3/4 ", "$5", "-0.5", "12 cm", "x = 4", "4\n5", "", None)] == [
        True, True, True, True, False, False, False, False, False]
    assert answer_parses("Paris", numeric=False) and not answer_parses(" ".join(["w"] * 9), numeric=False)


def test_graded_reward_never_lets_a_malformed_completion_outrank_a_wellformed_one():
    worst_strict = graded_format_reward([layout("x", "a sentence, no number")])[0]
    best_loose = graded_format_reward(["<reasoning>\n2+2\n</reasoning>\n<answer>\n4\n</answer> tail"])[0]
    assert float(worst_strict) > float(best_loose)


# -- the fallback for groups with no spread ----------------------------------------------------------------------
def test_fallback_only_in_groups_without_spread():
    rewards = torch.tensor([1.75, 1.75, 1.75, 1.75, 1.75, 0.5, 1.75, 1.75, 0.0, 0.0, 0.0, 0.0])
    fallback = torch.arange(12, dtype=torch.float32) + 1
    term, flat = fill_saturated_groups(rewards, fallback, 4)
    assert flat.tolist() == [True, False, True]
    assert term.tolist() == [1, 2, 3, 4, 0, 0, 0, 0, 9, 10, 11, 12]
    # float sums of equal parts still count as equal; a real difference does not
    assert saturated_groups(torch.tensor([0.1 + 0.2, 0.3, 0.3, 0.3]), 4).tolist() == [True]
    assert saturated_groups(torch.tensor([0.3, 0.3, 0.3, 0.3001]), 4).tolist() == [False]
    with pytest.raises(ValueError):
        saturated_groups(torch.zeros(6), 4)


def test_compute_rewards_ranks_saturated_groups_by_coherence():
    """Group 0: all perfect, answers 4,4,5,4 → coherence; group 1: one malformed → its rewards as they were."""
    group0 = [layout("two and two", a) for a in ("4", "4", "5", "4")]
    group1 = [layout("two and two", "4")] * 3 + ["no layout at all"]
    texts = group0 + group1
    plain = compute_rewards(texts, [None] * 8, 4, "format")
    result = compute_rewards(texts, [None] * 8, 4, "format", saturated="coherence")
    # γ = 2: q ∝ p̂², p̂ = (3/4, 1/4) → q = (0.9, 0.1); r = log q − log p̂
    r4, r5 = math.log(0.9) - math.log(0.75), math.log(0.1) - math.log(0.25)
    assert result.terms["saturated"].tolist() == pytest.approx([r4, r4, r5, r4, 0, 0, 0, 0], abs=1e-6)
    assert result.total.tolist() == pytest.approx((plain.total + result.terms["saturated"]).tolist(), abs=1e-6)
    assert result.total[4:].tolist() == plain.total[4:].tolist()  # a group with spread is left exactly alone
    assert result.saturated.tolist() == plain.saturated.tolist() == [True, False]
    assert "saturated" not in plain.terms


def test_the_fallback_looks_at_the_whole_spec_not_only_format():
    """format ties but coherence already separates the group: no fallback on top."""
    texts = [layout("two and two", a) for a in ("4", "4", "5", "4")]
    result = compute_rewards(texts, [None] * 4, 4, "format=1,coherence=0.5", saturated="coherence")
    assert result.saturated.tolist() == [False] and result.terms["saturated"].abs().sum() == 0


@pytest.mark.parametrize("spec", ["format", "graded", "format=1,coherence=0.5", "format=2,diversity=0.1"])
@pytest.mark.parametrize("saturated", ["coherence", "none"])
def test_trl_reward_functions_sum_to_the_native_total(spec, saturated):
    """`--backend trl` scores with one function per term plus `saturated`; TRL's weighted sum is train's total."""
    texts = ([layout("two and two", a) for a in ("4", "4", "5", "4")]
             + [layout("2+2", "4"), layout("2 + 2 is 4", "4"), layout("x", "it is 4"), "nothing"])
    labels = ["4"] * 8
    native = compute_rewards(texts, labels, 4, spec, saturated=saturated)
    funcs, weights = enigma_reward_funcs(spec, 4, saturated=saturated)
    per_func = torch.tensor([f(prompts=[""] * 8, completions=texts, answer=labels) for f in funcs]).T
    trl_total = (per_func * torch.tensor(weights)).sum(dim=1)
    assert trl_total.tolist() == pytest.approx(native.total.tolist(), abs=1e-6)
    assert [f.__name__ for f in funcs][-1] == ("saturated" if saturated != "none" else list(native.terms)[-1])


def test_the_trl_trainer_logs_the_saturated_share_as_train_does():
    from types import SimpleNamespace

    from enigma_cli.trl.trainer import EnigmaGRPOTrainer

    texts = [layout("two and two", a) for a in ("4", "4", "5", "4")] + [layout("x", "4")] * 3 + ["nothing"]
    funcs, weights = enigma_reward_funcs("format", 4, saturated="coherence")
    per_func = torch.tensor([f(prompts=[""] * 8, completions=texts) for f in funcs]).T
    stub = SimpleNamespace(reward_func_names=[f.__name__ for f in funcs], reward_weights=torch.tensor(weights),
                           args=SimpleNamespace(group_size=4))
    native = compute_rewards(texts, [None] * 8, 4, "format", saturated="coherence")
    assert EnigmaGRPOTrainer._saturated_share(stub, per_func) == float(native.saturated.float().mean()) == 0.5


# -- the option, the warning, a run ------------------------------------------------------------------------------
def run_train(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", *map(str, args)])
    return rc, out.getvalue(), " ".join(err.getvalue().split())


@pytest.mark.parametrize("flags, needle", [(["--saturated-reward", "majority"], "--saturated-reward"),
                                           (["--reward", "grade"], "--reward"),
                                           (["--reward", "graded=x"], "--reward")])
def test_bad_reward_options_exit_3_in_one_sentence_before_loading(flags, needle, tmp_path, monkeypatch):
    monkeypatch.setattr("enigma_cli.models.loading.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    rc, stdout, stderr = run_train("--steps", 1, "--output-dir", tmp_path / "r", *flags)
    assert rc == 3 and stdout == "" and needle in stderr
    assert stderr.count(". ") <= 1 and not (tmp_path / "r").exists()


def test_compute_rewards_refuses_an_unknown_fallback():
    from enigma_cli.errors import InputError

    with pytest.raises(InputError, match="--saturated-reward"):
        compute_rewards([layout("x", "4")] * 2, [None] * 2, 2, "format", saturated="majority")


def watch_says(saturated_reward: str, row: dict, **cfg) -> list[str]:
    return Watch(TrainConfig(model="m", lr=2e-5, lora_r=16, saturated_reward=saturated_reward, **cfg)).see(row)


def test_the_step1_warning_names_the_choice_in_force():
    saturated = {"step": 1, "format_rate": 1.0, "saturated_groups": 1.0}
    said = watch_says("coherence", {**saturated, "advantage_std": 0.87})
    assert len(said) == 1 and "(--saturated-reward coherence)" in said[0] and "saturated" in said[0]
    assert "no signal" not in said[0] and "enigma sft" not in said[0]
    said = watch_says("none", {**saturated, "advantage_std": 0.0})
    assert len(said) == 1 and "no signal" in said[0] and "--saturated-reward none" in said[0]
    said = watch_says("coherence", {**saturated, "advantage_std": 0.0})
    assert len(said) == 1 and "agreeing on one answer" in said[0] and "no signal" in said[0]
    said = watch_says("none", {**saturated, "advantage_std": 0.0}, reward="graded")
    assert "(--reward graded)" in said[0]
    # a model that never writes the layout is told to warm up, whatever the fallback
    said = watch_says("coherence", {"step": 1, "format_rate": 0.0, "saturated_groups": 1.0, "advantage_std": 0.0})
    assert "enigma sft --model m" in said[0] and "no signal" in said[0]
    # some groups with spread: nothing to say
    assert watch_says("coherence", {"step": 1, "format_rate": 0.9, "saturated_groups": 0.5,
                                    "advantage_std": 0.9}) == []


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("backend", ["native", "trl"])
def test_a_run_logs_the_saturated_share_and_the_fallback_term(backend, model_dir, tmp_path, monkeypatch):
    """A random tiny model writes no layout: every group is saturated at 0, and both backends' metrics say so."""
    monkeypatch.setattr("enigma_cli.plots.grid_plot", lambda *args, **kwargs: None)
    out = tmp_path / "run"
    rc, _, stderr = run_train("--model", model_dir, "--steps", 1, "--max-new-tokens", 8, "--prompts-per-step", 1,
                              "-G", 4, "--no-sami", "--no-ot", "--device", "cpu", "--backend", backend,
                              "--output-dir", out)
    assert rc == 0, stderr
    row = pd.read_csv(out / "metrics.csv").iloc[0]
    assert row["saturated_groups"] == 1.0 and row["reward_saturated"] == 0.0
    assert "saturated_reward: coherence" in (out / "config.yaml").read_text()  # the default
    assert "enigma sft" in stderr and "no signal" in stderr
