"""The life of an `enigma train` run folder: a run killed before its first checkpoint can be started again,
leftovers of killed saves are removed, --steps is checked against the checkpoint, a failure before the first
write leaves no folder, library warnings stay off stderr, and the non-finite abort names the guilty term."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest

from enigma_cli.cli import main
from enigma_cli.train import trainer as trainer_mod
from enigma_cli.train.trainer import nonfinite_cause

pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning")

SMALL = ["--max-new-tokens", "8", "--prompts-per-step", "2", "-G", "4", "-K", "2", "--device", "cpu", "--no-ref-metrics",
         "--no-ot", "--no-sami"]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr("enigma_cli.plots.grid_plot", lambda *args, **kwargs: None)


def train(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_resume_latest(model_dir, tmp_path):
    out = tmp_path / "run"
    assert train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out)[0] == 0
    for ckpt in out.glob("checkpoint-*"):  # as if killed after logging, before any checkpoint
        shutil.rmtree(ckpt)
    (out / ".checkpoint-2.k1ll3d").mkdir()  # and in the middle of a save
    (out / ".checkpoint-2.k1ll3d" / "model.safetensors").write_bytes(b"half")
    rc, _, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out)
    assert rc == 3 and "stopped before its first checkpoint; pass --resume latest" in " ".join(stderr.split())
    rc, _stdout, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out, "--resume", "latest")
    assert rc == 0, stderr
    assert "starts from step 0 (the steps it logged are discarded)" in " ".join(stderr.split())
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == [".enigma.lock", "checkpoint-2", "completions.jsonl",
                                                     "config.yaml", "metrics.csv", "run.json"]


def test_resume_latest_on_an_empty_folder_starts_the_run(model_dir, tmp_path):
    out = tmp_path / "run"
    rc, _, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, "--resume", "latest")
    assert rc == 0, stderr
    assert (out / "checkpoint-1").is_dir()


def test_steps_are_checked_against_the_checkpoint(model_dir, tmp_path):
    out = tmp_path / "run"
    assert train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".enigma.lock"}
    rc, stdout, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, "--resume", "latest")
    assert rc == 3 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert "--steps 1 is below the step of" in stderr and "checkpoint-2 (2)" in stderr
    rc, stdout, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out, "--resume", "latest")
    assert rc == 0 and stderr.strip().endswith("checkpoint-2 has reached --steps 2; nothing to do.")
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".enigma.lock"} == before


def test_a_truncated_checkpoint_is_refused_before_the_model_loads(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out)[0] == 0
    weights = out / "checkpoint-1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("enigma_cli.models.loading.load_model", no_loading)
    rc, stdout, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out, "--resume", "latest")
    assert rc == 3 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert f"{weights} is damaged or truncated" in stderr


def test_a_failure_after_the_lock_but_before_any_write_leaves_no_folder(model_dir, tmp_path):
    out = tmp_path / "new" / "run"
    rc, _, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, "--ot-layers", "9")
    assert rc == 3 and "--ot-layers 9 does not exist" in stderr
    assert not (tmp_path / "new").exists()  # nor the parent made for it


def test_no_library_warning_reaches_the_user_from_lora_or_a_skipped_step(model_dir, tmp_path, monkeypatch):
    real = trainer_mod.micro_loss

    def nan_first(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        nan_first.calls += 1
        return (loss * math.nan if nan_first.calls == 1 else loss), metrics

    nan_first.calls = 0
    monkeypatch.setattr(trainer_mod, "micro_loss", nan_first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", tmp_path / "run",
                              "--lora-r", 2)
    assert rc == 0, stderr
    shown = [str(w.message) for w in caught]
    assert not [m for m in shown if "is_gradient_checkpointing" in m or "lr_scheduler.step()" in m], shown
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["skipped"].tolist() == [1, 0]


@pytest.mark.parametrize("metrics, options, needle", [
    ({"loss_grpo": 0.1, "ot_divergence": 5.0}, {"lambda_ot": 1e308}, ("the OT term was --lambda-ot 1e+308 × "
                                                                     "ot_divergence 5; lower --lambda-ot")),
    ({"loss_grpo": 0.1, "loss_sami": 2.0}, {"lambda_sami": 1e308}, "lower --lambda-sami"),
    ({"loss_grpo": 0.1, "ot_divergence": 1e-3}, {"lambda_ot": 1e300}, "lower --lambda-ot"),  # beyond float32
    ({"loss_grpo": math.nan, "ot_divergence": math.nan}, {}, "the GRPO term (loss_grpo) was nan"),
    ({"loss_grpo": 0.1, "ot_divergence": 0.2}, {}, "the gradient norm was inf; lower --lr"),
])
def test_the_non_finite_abort_names_the_term_that_went_non_finite(metrics, options, needle):
    cfg = SimpleNamespace(**{"lambda_sami": 0.1, "lambda_ot": 1.0, "use_sami": True, "use_ot": True, **options})
    assert needle in nonfinite_cause(cfg, metrics, math.inf)


def test_the_abort_blames_lambda_ot_not_lr_in_a_real_run(model_dir, tmp_path, monkeypatch):
    """--lambda-ot 1e308 is finite and allowed, but times an OT divergence of 5 it is not."""
    from enigma_cli.train import terms

    monkeypatch.setattr(terms, "sinkhorn_divergence", lambda x, y, **kw: (x.sum() - x.sum().detach()) + 5.0)
    base = [a for a in SMALL if a not in ("--no-ot", "--no-ref-metrics")]
    rc, _, stderr = train("--model", model_dir, "--steps", 3, *base, "--output-dir", tmp_path / "run",
                          "--lambda-ot", "1e308", "--max-nonfinite", 1)
    assert rc == 1
    error = " ".join(stderr[stderr.index("error:"):].split())
    assert "the OT term was --lambda-ot 1e+308" in error and "--lr" not in error
