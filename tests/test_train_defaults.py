"""Training defaults per model size, and the warnings that tell a user why a run cannot learn."""

from __future__ import annotations

import contextlib
import io

import pytest

from enigma_cli.cli import main
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.defaults import FULL_LR, LORA_LR, LORA_R, SMALL_LR, Watch, resolve_for_model


@pytest.mark.parametrize("params, given, expected", [
    (1_000_000, {}, (SMALL_LR, 0)),
    (135_000_000, {}, (LORA_LR, LORA_R)),
    (135_000_000, {"lora_r": 0}, (FULL_LR, 0)),
    (135_000_000, {"lr": 5e-5}, (5e-5, LORA_R)),
    (1_000_000, {"lora_r": 8}, (SMALL_LR, 8)),
    (135_000_000, {"lr": 1e-3, "lora_r": 4}, (1e-3, 4)),
])
def test_learning_rate_and_lora_resolve_per_model_and_user_values_win(params, given, expected):
    cfg = resolve_for_model(TrainConfig(**given), params)
    assert (cfg.lr, cfg.lora_r) == expected


def test_watch_warns_once_about_no_signal_and_a_kl_jump():
    watch = Watch(TrainConfig(model="m", lr=3e-4, lora_r=0, kl_warn=0.1))
    said = watch.see({"step": 1, "advantage_std": 0.0, "format_rate": 0.0, "kl_ref": 0.0})
    assert len(said) == 1 and "no signal" in said[0] and "enigma sft --model m" in said[0]
    assert watch.see({"step": 2, "advantage_std": 0.0, "format_rate": 0.0, "kl_ref": 0.05}) == []
    said = watch.see({"step": 3, "advantage_std": 0.5, "kl_ref": 0.27})
    assert len(said) == 1 and "0.270" in said[0] and "--lora-r 16" in said[0]
    assert watch.see({"step": 4, "advantage_std": 0.5, "kl_ref": 0.5}) == []


def test_a_saturated_reward_is_not_blamed_on_the_model():
    """Every completion perfect is no signal too, but the fix is not a warm-up."""
    said = Watch(TrainConfig(model="m", lr=3e-4, lora_r=0)).see({"step": 18, "advantage_std": 0.0,
                                                                   "format_rate": 1.0})
    assert len(said) == 1 and "saturated" in said[0] and "enigma sft" not in said[0]


def test_a_model_that_never_writes_the_layout_is_told_to_warm_up(model_dir, tmp_path):
    """A random tiny model writes no tags: with the strict reward alone every group is all zeros."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", "--model", str(model_dir), "--steps", "1", "--max-new-tokens", "8", "--prompts-per-step",
                   "1", "-G", "2", "--format-weights", "1,0,0", "--no-sami", "--no-ot", "--device", "cpu",
                   "--output-dir", str(tmp_path / "run")])
    text = " ".join(err.getvalue().split())
    assert rc == 0, text
    assert "GRPO has no signal" in text and "enigma sft" in text
    assert "full fine-tuning and lr 5e-05 (auto" in text
