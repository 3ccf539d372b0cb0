"""SIGINT and SIGTERM on a real `enigma train` process (enigma-tiny): it stops after the current step, writes a
checkpoint, says so in one line, exits 128 + N, and `--resume latest` continues the run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SMALL = ["--max-new-tokens", "16", "--prompts-per-step", "2", "-G", "4", "-K", "2", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def enigma(*args) -> list[str]:
    return [sys.executable, "-m", "enigma_cli", *map(str, args)]


def logged_steps(out: Path) -> int:
    try:
        return max(0, len((out / "metrics.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def start_and_wait(out: Path, steps: int = 400, at_least: int = 2) -> subprocess.Popen:
    proc = subprocess.Popen(enigma("train", "--steps", steps, *SMALL, "--output-dir", out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while logged_steps(out) < at_least:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training did not start: {proc.communicate()[1]}")
        time.sleep(0.1)
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


def assert_resumable(out: Path, steps_done: int) -> None:
    assert not list(out.glob(".checkpoint-*"))
    rc = subprocess.run(enigma("train", "--steps", steps_done + 1, *SMALL, "--output-dir", out, "--resume",
                               "latest"), check=False, env=ENV, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == list(range(1, steps_done + 2))
    assert (out / f"checkpoint-{steps_done + 1}").is_dir()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_one_line(sig, tmp_path):
    out = tmp_path / "run"
    proc = start_and_wait(out)
    proc.send_signal(sig)
    rc, stdout, stderr = finish(proc)
    assert rc == 128 + sig and stdout == ""
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"interrupted by {sig.name} at step (\d+); checkpoint-\1 written; continue with "
                         r"--resume latest\.", last)
    assert found, stderr
    step = int(found.group(1))
    assert (out / f"checkpoint-{step}" / "trainer_state.pt").is_file()
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == list(range(1, step + 1))
    assert_resumable(out, step)


def test_a_second_signal_stops_at_once_and_the_run_still_resumes(tmp_path):
    out = tmp_path / "run"
    proc = start_and_wait(out)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    rc, _stdout, stderr = finish(proc)
    assert rc == 128 + signal.SIGTERM and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM") and last.endswith("continue with --resume latest."), stderr
    # whatever it finished, --resume latest goes on from the newest whole checkpoint (or from step 0)
    rc2 = subprocess.run(enigma("train", "--steps", 3, *SMALL, "--output-dir", out, "--resume", "latest"),
                         check=False, env=ENV, capture_output=True, text=True, timeout=600)
    done = pd.read_csv(out / "metrics.csv")["step"].tolist()
    if rc2.returncode == 3:  # it had already passed step 3 before the signal
        assert "below the step" in rc2.stderr
    else:
        assert rc2.returncode == 0, rc2.stderr
        assert done == [1, 2, 3]


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_while_starting_prints_one_line_and_no_traceback(delay, tmp_path):
    """From the first line of enigma's code on (the interpreter's own start-up, ~60 ms, is Python's)."""
    proc = subprocess.Popen(enigma("train", "--steps", 2, *SMALL, "--output-dir", tmp_path / "run"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    rc, stdout, stderr = finish(proc)
    if rc == 0:
        pytest.skip("the run finished before the signal")
    assert rc == 130 and stdout == "" and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted"), stderr
