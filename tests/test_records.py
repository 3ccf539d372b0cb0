"""The run logs and every report survive kills and full disks: torn last lines are dropped on resume, rewrites
are atomic, and a failed write names its file and leaves nothing behind."""

from __future__ import annotations

import errno
import json
import stat
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from enigma_cli.cli import main
from enigma_cli.report import WriteError, atomic_path, write_table
from enigma_cli.train import checkpoint as ckpt
from enigma_cli.train.records import (
    MetricsLog,
    append_text,
    completion_records,
    dump_completions,
    truncate_dump,
    whole_lines,
)


def _episodes(n: int, step: int):
    return SimpleNamespace(texts=[f"c{step}-{i}" for i in range(n)], group_size=n, questions=["q"],
                           principle_ids=["p"] * n, labels=[None] * n,
                           rewards=SimpleNamespace(answers=[None] * n, total=torch.zeros(n)),
                           advantages=torch.zeros(n))


def test_metrics_resume_drops_a_torn_last_line_and_later_steps(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path)
    for step in (1, 2, 3):
        log.append({"step": step, "reward_mean": step / 10, "loss": 0.5})
    with open(path, "a") as fh:
        fh.write("1")  # step 10's row, torn after its first byte: read naively it is a second step 1
    log = MetricsLog(path, resume_step=2)
    assert pd.read_csv(path)["step"].tolist() == [1, 2]
    log.append({"step": 3, "reward_mean": 0.3, "loss": 0.5})
    assert pd.read_csv(path)["step"].tolist() == [1, 2, 3]
    assert path.read_text().endswith("\n")


def test_a_start_from_step_0_discards_the_old_logs(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (tmp_path / "completions.jsonl").write_text('{"step": 1}\n')
    MetricsLog(tmp_path / "metrics.csv", resume_step=0)
    truncate_dump(tmp_path / "completions.jsonl", 0)
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "completions.jsonl").exists()


def test_the_completions_dump_drops_a_torn_line_on_resume(tmp_path):
    path = tmp_path / "completions.jsonl"
    for step in (1, 2, 3):
        dump_completions(path, completion_records(step, _episodes(2, step)))
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # killed in the middle of step 3's last line
    truncate_dump(path, 3)
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 1, 2, 2, 3]
    truncate_dump(path, 1)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 1]


def test_whole_lines_keeps_complete_lines_only(tmp_path):
    path = tmp_path / "x"
    path.write_text("a\nb\nc")
    assert whole_lines(path) == ["a", "b"]
    path.write_text("a\nb\n")
    assert whole_lines(path) == ["a", "b"]


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("enigma_cli.report._serialise", full)
    with pytest.raises(WriteError, match=rf"could not write {tmp_path / 'r.csv'}: No space left on device\."):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "r.csv")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("os.write", full)
    with pytest.raises(WriteError, match="metrics.csv: No space left on device"):
        append_text(tmp_path / "metrics.csv", "1,2\n")


def test_a_full_disk_during_a_report_exits_1_with_one_sentence(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("enigma_cli.report._serialise", full)
    rc = main(["principles", "list", "--out", str(tmp_path / "sets.csv")])
    cap = capsys.readouterr()
    assert rc == 1 and cap.out == ""
    assert cap.err.strip() == f"error: could not write {tmp_path / 'sets.csv'}: No space left on device."
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_ordinary_permissions(tmp_path):
    with atomic_path(tmp_path / "r.csv") as tmp:
        tmp.write_text("a\n")
    mode = stat.S_IMODE((tmp_path / "r.csv").stat().st_mode)
    probe = tmp_path / "probe"
    probe.write_text("")
    assert mode == stat.S_IMODE(probe.stat().st_mode)  # what open() gives, not mkstemp's 0600


def test_a_killed_save_is_cleaned_at_the_next_start(tmp_path):
    (tmp_path / ".checkpoint-3.abc123").mkdir()
    (tmp_path / ".checkpoint-3.abc123" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".metrics.csv.xyz.tmp").write_text("partial")
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / ".notes.txt.mine.tmp").write_text("the user's too")
    removed = ckpt.clean_partial_saves(tmp_path, ("metrics.csv", "completions.jsonl"))
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.mine.tmp", "checkpoint-2", "notes.txt"]


def test_saving_over_an_existing_checkpoint_replaces_it_whole(tmp_path, tiny_lm):
    model, tokenizer = tiny_lm
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    first = ckpt.save_checkpoint(tmp_path, 4, model, tokenizer, opt, sched, {"mark": 1})
    second = ckpt.save_checkpoint(tmp_path, 4, model, tokenizer, opt, sched, {"mark": 2})
    assert first == second and ckpt.load_state(second)["mark"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
    assert ckpt.verify_checkpoint(second) == 4


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary(tmp_path, tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt.save_checkpoint(tmp_path, 4, model, tokenizer, opt, sched, {"mark": 1})

    def full(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match="could not write checkpoint .*checkpoint-4: PytorchStreamWriter"):
        ckpt.save_checkpoint(tmp_path, 4, model, tokenizer, opt, sched, {"mark": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
    assert ckpt.load_state(tmp_path / "checkpoint-4")["mark"] == 1


@pytest.mark.parametrize("damage", ["truncated weights", "truncated state", "no weights"])
def test_a_damaged_checkpoint_is_found_without_loading_it(damage, tmp_path, tiny_lm):
    model, tokenizer = tiny_lm
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = ckpt.save_checkpoint(tmp_path, 2, model, tokenizer, opt, sched, {})
    target = {"truncated weights": "model.safetensors", "truncated state": ckpt.STATE_FILE,
              "no weights": "model.safetensors"}[damage]
    data = (path / target).read_bytes()
    if damage == "no weights":
        (path / target).unlink()
    else:
        (path / target).write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match=rf"checkpoint {path} is unreadable") as err:
        ckpt.verify_checkpoint(path)
    assert err.type.__name__ == "InputError"
    if damage != "no weights":
        assert target in str(err.value)


def test_a_foreign_pickle_is_refused_without_a_library_warning(tmp_path, recwarn):
    import pickle

    (tmp_path / ckpt.STATE_FILE).write_bytes(pickle.dumps({"a": 1}, protocol=5))
    with pytest.raises(Exception, match="unreadable"):
        ckpt.load_state(tmp_path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
