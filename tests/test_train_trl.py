"""`enigma train --backend trl` end to end on CPU: enigma's run folder from TRL's loop, resume, checkpoints,
tracking, and two processes under torchrun (slow).

The model is the random tiny Llama of conftest (`model_dir`); a batch is 2 prompts × G=4 (K=2 × 2), 16 tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from test_bad_inputs import assert_refused  # tests/ is on sys.path (pytest's rootdir import mode)
from test_train import SMALL, train

from enigma_cli.train import checkpoint as ckpt

pytestmark = [pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
TRL = ["--backend", "trl", *SMALL]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr("enigma_cli.plots.grid_plot", lambda *args, **kwargs: None)


def _completions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]


def test_a_trl_run_keeps_enigmas_run_folder(model_dir, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = train("--model", model_dir, "--steps", "2", *TRL, "--output-dir", out)
    assert rc == 0, err
    assert stdout == ""  # TRL's printer of the logs is gone: stdout is for data
    assert {"checkpoint-2", "completions.jsonl", "config.yaml", "metrics.csv", "run.json"} <= {
        p.name for p in out.iterdir()}
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2]
    for column in ("reward_mean", "reward_format", "format_rate", "advantage_std", "loss_sami", "mi_sym", "si",
                   "ot_divergence", "kl_ref", "grad_norm", "lr", "completion_len_mean", "loss"):
        assert column in metrics, column
    rows = _completions(out)
    assert len(rows) == 2 * 2 * 4 and [r["step"] for r in rows] == [1] * 8 + [2] * 8
    assert len({(r["prompt"], r["principle"]) for r in rows if r["step"] == 1}) == 4  # 2 questions × K
    info = json.loads((out / "run.json").read_text())
    assert info["backend"] == "trl" and info["world_size"] == 1
    assert ckpt.checkpoint_kind(out / "checkpoint-2") == "trl"
    assert (out / "checkpoint-2" / "config.yaml").is_file()
    from enigma_cli.models.loading import load_model

    loaded = load_model(str(out), device="cpu")  # --model takes the run folder (its newest checkpoint)
    assert loaded.model.config.num_hidden_layers > 0


def test_sami_prompts_runs_on_the_trl_backend(model_dir, tmp_path):
    """--sami-prompts reaches EnigmaGRPOTrainer (once refused there): one of the step's two prompts is scored, in
    the first of two micro-batches, so SAMI is logged as the mean over the micro-steps that scored it."""
    import torch

    from enigma_cli.trl.mapping import grpo_args
    from enigma_cli.trl.options import TrlTrainConfig

    cfg = TrlTrainConfig(backend="trl", prompts_per_step=2, group_size=4, grad_accum=2, sami_prompts=1, lr=1e-3)
    assert grpo_args(cfg, dtype=torch.float32, device=torch.device("cpu")).sami_prompts == 1
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "1", *TRL, "--sami-prompts", "1", "--grad-accum", "2",
                       "--output-dir", out)
    assert rc == 0, err
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["loss_sami"].notna().all() and metrics["si"].notna().all()


def test_stream_and_the_trained_weights(model_dir, tmp_path):
    """--format streams one row per step to stdout; SAMI and OT move the weights even when GRPO has no signal."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    rc, stdout, err = train("--model", model_dir, "--steps", "1", *TRL, "--output-dir", out, "--format", "jsonl")
    assert rc == 0, err
    row = json.loads(stdout)
    assert row["step"] == 1 and "mi_sym" in row
    start, trained = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "checkpoint-1" /
                                                                                    "model.safetensors"))
    assert any(not (start[k] == trained[k]).all() for k in start)


def test_resume_continues_a_trl_run_and_refuses_the_other_backends_checkpoints(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "2", *TRL, "--output-dir", out, "--save-every", "1",
                       "--save-total-limit", "1")
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # TRL's rotation
    rc, out_text, err = train("--model", model_dir, "--steps", "2", *SMALL, "--output-dir", out, "--resume",
                              "latest", "--steps", "3")
    assert_refused(rc, out_text, err, 3, ["written by --backend trl", "--backend trl"])
    rc, _, err = train("--model", model_dir, "--steps", "3", *TRL, "--output-dir", out, "--resume", "latest")
    assert rc == 0, err
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2, 3]
    assert sorted({r["step"] for r in _completions(out)}) == [1, 2, 3]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    native = tmp_path / "native"
    assert train("--model", model_dir, "--steps", "1", *SMALL, "--output-dir", native)[0] == 0
    rc, out_text, err = train("--model", model_dir, "--steps", "2", *TRL, "--output-dir", native, "--resume",
                              "latest")
    assert_refused(rc, out_text, err, 3, ["written by --backend native"])


def test_a_trl_model_only_checkpoint_is_not_resumed(model_dir, tmp_path):
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "1", *TRL, "--output-dir", out, "--save-model-only")
    assert rc == 0, err
    assert not (out / "checkpoint-1" / "optimizer.pt").exists()
    rc, stdout, err = train("--model", model_dir, "--steps", "2", *TRL, "--output-dir", out, "--resume", "latest")
    assert_refused(rc, stdout, err, 3, ["--save-model-only", "--model"])


def test_report_to_tensorboard_under_trl(model_dir, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "2", *TRL, "--output-dir", out, "--report-to", "tensorboard")
    assert rc == 0, err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/mi_sym")] == [1, 2]
    assert "train/ot_divergence" in events.Tags()["scalars"]


# -- two processes ---------------------------------------------------------------------------------------------------
WORKER = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    import enigma_cli.plots
    from enigma_cli.trl import trainer as trl_trainer
    enigma_cli.plots.grid_plot = lambda *a, **k: None
    report, args = sys.argv[1], sys.argv[2:]
    real_train = trl_trainer.EnigmaGRPOTrainer.train
    def train(self, *a, **k):
        result = real_train(self, *a, **k)
        h = hashlib.sha256()
        for name, t in sorted(self.accelerator.unwrap_model(self.model).state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        with open(os.path.join(report, f"rank{os.environ['RANK']}.json"), "w") as fh:
            json.dump({"hash": h.hexdigest(), "world": self.accelerator.num_processes}, fh)
        return result
    trl_trainer.EnigmaGRPOTrainer.train = train
    from enigma_cli.cli import main
    sys.exit(main(["train", *args]))
''')


@pytest.mark.slow
def test_two_processes_under_torchrun_train_in_sync(model_dir, tmp_path):
    worker, report, out = tmp_path / "worker.py", tmp_path / "report", tmp_path / "run"
    worker.write_text(WORKER)
    report.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(report), "--model", str(model_dir), "--steps", "2", *TRL, "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["hash"] == ranks[1]["hash"]  # DDP kept the replicas identical
    from safetensors.torch import load_file

    assert load_file(str(out / "checkpoint-2" / "model.safetensors"))  # rank 0's save is whole
    rows = _completions(out)
    assert {(r["step"], r["rank"]) for r in rows} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert len(rows) == 2 * 2 * (2 * 4)  # steps × ranks × prompts × G
    by_rank = {rank: [r["question"] for r in rows if r["rank"] == rank] for rank in (0, 1)}
    assert by_rank[0] != by_rank[1]  # each rank trained on its own questions
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["launcher"] == "torchrun"
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2]
