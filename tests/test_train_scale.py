"""The native loop's scale features: --report-to (tensorboard, trackio, wandb), --save-total-limit,
--save-model-only (and --resume refusing it), run.json; the refusals of options only --backend trl has.

Runs use the random tiny model of conftest (`model_dir`) and a tiny batch, as tests/test_train.py does.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_bad_inputs import assert_refused  # tests/ is on sys.path (pytest's rootdir import mode)
from test_train import SMALL, fast_and_varied, train  # noqa: F401 - fast_and_varied is an autouse fixture

from enigma_cli.train import checkpoint as ckpt

pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning")


def test_report_to_tensorboard_writes_events_that_tensorboard_reads_back(model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "2", *SMALL, "--output-dir", out, "--report-to", "tensorboard")
    assert rc == 0, err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/reward_mean", "train/loss_sami", "train/mi_sym", "train/ot_divergence", "train/grad_norm"):
        assert tag in tags, tag
    metrics = pd.read_csv(out / "metrics.csv")
    logged = events.Scalars("train/reward_mean")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx(metrics["reward_mean"].tolist(), rel=1e-5)


@pytest.mark.parametrize("tracker", ["trackio", "wandb"])
def test_report_to_trackio_and_wandb_go_through_their_libraries(model_dir, tmp_path, monkeypatch, tracker):
    """The library's own init / log / finish calls, with the rows of metrics.csv (a stand-in module records them:
    neither library is installed here, and both would want an account or a server)."""
    calls = []
    fake = types.ModuleType(tracker)
    fake.__spec__ = importlib.machinery.ModuleSpec(tracker, None)
    run = types.SimpleNamespace(log=lambda values, step: calls.append(("log", step, values)),
                                finish=lambda: calls.append(("finish",)))
    fake.init = lambda **kw: calls.append(("init", kw)) or run
    fake.log, fake.finish = run.log, run.finish
    monkeypatch.setitem(sys.modules, tracker, fake)
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "2", *SMALL, "--output-dir", out, "--report-to", tracker)
    assert rc == 0, err
    assert calls[0][0] == "init" and calls[0][1]["project"] == "enigma" and calls[0][1]["name"] == "run"
    assert calls[0][1]["config"]["steps"] == 2
    logs = [c for c in calls if c[0] == "log"]
    assert [c[1] for c in logs] == [1, 2]
    metrics = pd.read_csv(out / "metrics.csv")
    assert logs[1][2]["mi_sym"] == pytest.approx(metrics["mi_sym"][1], rel=1e-5)
    assert calls[-1] == ("finish",)


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio", "wandb"])
def test_a_missing_tracker_library_is_refused_with_its_pip_command(tmp_path, monkeypatch, capsys, tracker):
    import importlib.util  # a library is missing when find_spec says so

    from enigma_cli.cli import main

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else find(name, *a))
    rc = main(["train", "--output-dir", str(tmp_path / "run"), "--report-to", tracker, "--dry-run"])
    cap = capsys.readouterr()
    assert_refused(rc, cap.out, cap.err, 3, ["--report-to " + tracker, f"pip install {tracker}"])
    assert not (tmp_path / "run").exists()


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def test_save_total_limit_keeps_the_newest_checkpoints(model_dir, tmp_path):
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "3", *SMALL, "--output-dir", out, "--save-every", "1",
                       "--save-total-limit", "2")
    assert rc == 0, err
    assert _steps(out) == [2, 3]
    rc, _, err = train("--model", model_dir, "--steps", "4", *SMALL, "--output-dir", out, "--resume", "latest",
                       "--save-total-limit", "2")
    assert rc == 0, err
    assert _steps(out) == [3, 4]


def _fake_checkpoint(out: Path, step: int, kind: str) -> None:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / {"native": ckpt.STATE_FILE, "model-only": ckpt.MODEL_ONLY_FILE}[kind]).write_text("{}")


def test_rotation_never_deletes_the_checkpoint_a_resume_needs(tmp_path):
    """Newer model-only checkpoints cannot be resumed: the newest resumable one stays, whatever the limit."""
    for step, kind in [(1, "native"), (2, "native"), (3, "model-only"), (4, "model-only")]:
        _fake_checkpoint(tmp_path, step, kind)
    removed = ckpt.rotate_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in removed) == ["checkpoint-1", "checkpoint-3"]
    assert _steps(tmp_path) == [2, 4]
    assert ckpt.rotate_checkpoints(tmp_path, None) == [] and _steps(tmp_path) == [2, 4]


def test_a_model_only_checkpoint_is_smaller_loads_as_a_model_and_is_not_resumed(model_dir, tmp_path, capsys):
    full, light = tmp_path / "full", tmp_path / "light"
    assert train("--model", model_dir, "--steps", "1", *SMALL, "--output-dir", full)[0] == 0
    rc, _, err = train("--model", model_dir, "--steps", "1", *SMALL, "--output-dir", light, "--save-model-only")
    assert rc == 0, err
    folder = light / "checkpoint-1"
    assert (folder / ckpt.MODEL_ONLY_FILE).is_file() and not (folder / ckpt.STATE_FILE).exists()

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    assert size(folder) < 0.6 * size(full / "checkpoint-1")  # the optimizer's two moments are gone
    from enigma_cli.models.loading import load_model

    assert load_model(str(light), device="cpu").model is not None  # --model takes it, or its run folder
    before = sorted(p.name for p in light.iterdir())
    rc, out, err = train("--model", model_dir, "--steps", "2", *SMALL, "--output-dir", light, "--resume", "latest")
    assert_refused(rc, out, err, 3, [str(folder), "--save-model-only", f"--model {folder}"])
    assert sorted(p.name for p in light.iterdir()) == before


def test_run_json_records_how_the_run_was_launched(model_dir, tmp_path):
    out = tmp_path / "run"
    assert train("--model", model_dir, "--steps", "1", *SMALL, "--output-dir", out)[0] == 0
    info = json.loads((out / "run.json").read_text())
    assert info["backend"] == "native" and info["world_size"] == 1 and info["launcher"] == "none"
    assert info["versions"]["torch"] == torch.__version__ and info["dtype"] == "float32"
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in records} == {0}


def test_run_json_says_a_mixed_precision_run_is_one(model_dir, tmp_path):
    """float32 weights under bf16 autocast: run.json names the precision, not only the weights' dtype."""
    out = tmp_path / "run"
    assert train("--model", model_dir, "--steps", "1", *SMALL, "--dtype", "bf16-mixed", "--output-dir", out)[0] == 0
    assert json.loads((out / "run.json").read_text())["dtype"] == "bf16-mixed"


@pytest.mark.parametrize("args, needles", [
    (["--use-vllm"], ["--use-vllm", "--backend trl"]),
    (["--push-to-hub"], ["--push-to-hub", "--backend trl"]),
    (["--backend", "trl", "--hub-model-id", "me/x"], ["--hub-model-id", "--push-to-hub"]),
    (["--backend", "trl", "--vllm-server-url", "http://x:8000"], ["--vllm-server-url", "--vllm-mode server"]),
    (["--report-to", "none,tensorboard"], ["--report-to none"]),
    (["--backend", "trl", "-G", "2", "-K", "2"], ["--backend trl", "--group-size"]),
    (["--backend", "trl", "--surrogate", "cispo", "--epsilon-high", "5"], ["--surrogate cispo", "--loss-type dapo"]),
    (["--backend", "trl", "--surrogate", "sapo", "--loss-type", "dapo"], ["--surrogate sapo", "--loss-type grpo"]),
    (["--backend", "trl", "--sampler", "lean"], ["--sampler lean"]),
    (["--backend", "trl", "--dtype", "float16"], ["--dtype float16"]),
    (["--backend", "trl", "--use-vllm", "--device", "cpu"], ["--use-vllm"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else None)
def test_what_a_backend_cannot_honour_is_refused_before_loading(args, needles, tmp_path, capsys):
    from enigma_cli.cli import main

    rc = main(["train", "--output-dir", str(tmp_path / "run"), *args, "--dry-run"])
    cap = capsys.readouterr()
    assert_refused(rc, cap.out, cap.err, 3, needles)
    assert list(tmp_path.iterdir()) == []
