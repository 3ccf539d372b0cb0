"""One writer per run folder: a second run is refused at once, and a lock never outlives its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from enigma_cli.cli import main
from enigma_cli.errors import InputError
from enigma_cli.runlock import LOCK_FILE, RunLock, is_locked


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with RunLock.acquire(tmp_path / "run", "enigma train"):
        assert is_locked(tmp_path / "run")
        with pytest.raises(InputError, match=rf"--output-dir {tmp_path / 'run'} is in use by another run "
                                             rf"\(pid {os.getpid()}, enigma train\)"):
            RunLock.acquire(tmp_path / "run", "enigma train")
    assert not is_locked(tmp_path / "run")
    RunLock.acquire(tmp_path / "run", "enigma train").release()  # free again


def test_a_lock_dies_with_its_process_even_after_kill_9(tmp_path):
    folder = tmp_path / "run"
    code = (f"from enigma_cli.runlock import RunLock; RunLock.acquire({str(folder)!r}, 'holder'); "
            "print('locked', flush=True); import time; time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(folder)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (folder / LOCK_FILE).exists()  # the file stays; the lock does not
    deadline = time.monotonic() + 10
    while is_locked(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    RunLock.acquire(folder, "next").release()


@pytest.mark.parametrize("dry_run", [False, True])
def test_train_into_a_folder_in_use_is_refused_before_loading(dry_run, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("enigma_cli.models.loading.load_model", no_loading)
    out = tmp_path / "run"
    with RunLock.acquire(out, "enigma train"):
        before = sorted(p.name for p in out.iterdir())
        rc = main(["train", "--output-dir", str(out), "--steps", "1", *(["--dry-run"] if dry_run else [])])
        cap = capsys.readouterr()
        assert rc == 3 and cap.out == ""
        assert len(cap.err.strip().splitlines()) == 1 and "is in use by another run" in cap.err
        assert sorted(p.name for p in out.iterdir()) == before
