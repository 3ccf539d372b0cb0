"""`enigma train` under `torchrun --nproc_per_node 2` (DDP, gloo on CPU).

Each rank runs a small worker that calls the real CLI with the same test hooks as `test_train.py` (text-dependent
rewards so advantages are non-zero, no plot, one thread) and records, per rank, a hash of its weights at every
save, its completions, and its metrics before they are averaged over ranks. Checked: the ranks end with identical
weights, they drew different prompts, rank 0 alone wrote files, the logged metrics are the mean over ranks, and a
non-finite loss on one rank only makes every rank skip the step instead of hanging in the gradient all-reduce; the
completions of both ranks reach completions.jsonl and run.json records the launch.
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

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import hashlib, json, os, sys, zlib
    import torch
    torch.set_num_threads(1)
    import enigma_cli.plots
    from enigma_cli.train import distributed, episodes, trainer as trainer_mod

    rank = int(os.environ["RANK"])
    report, args = sys.argv[1], sys.argv[2:]
    records = {"local": [], "texts": [], "hashes": {}}

    real_rewards = episodes.compute_rewards
    def rewards(texts, labels, group_size, spec, **kwargs):
        result = real_rewards(texts, labels, group_size, spec, **kwargs)
        result.total = result.total + torch.tensor([(zlib.crc32(t.encode()) % 1000) / 1000 for t in texts])
        return result
    episodes.compute_rewards = rewards
    enigma_cli.plots.grid_plot = lambda *a, **k: None

    real_mean = distributed.mean_over_ranks
    def mean_over_ranks(values):
        records["local"].append(dict(values))
        return real_mean(values)
    distributed.mean_over_ranks = mean_over_ranks

    nan_rank = os.environ.get("TEST_NAN_RANK")
    real_micro = trainer_mod.micro_loss
    calls = [0]
    def micro_loss(*a, **k):
        loss, metrics = real_micro(*a, **k)
        calls[0] += 1
        if nan_rank is not None and rank == int(nan_rank) and calls[0] == 1:
            loss = loss * float("nan")
        return loss, metrics
    trainer_mod.micro_loss = micro_loss

    real_step, real_save = trainer_mod.Trainer.step, trainer_mod.Trainer.save
    def step(self):
        row, episodes = real_step(self)
        records["texts"].append(episodes.texts)
        return row, episodes
    def save(self):
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        records["hashes"][self.step_no] = h.hexdigest()
        return real_save(self)
    trainer_mod.Trainer.step, trainer_mod.Trainer.save = step, save

    from enigma_cli.cli import main
    rc = main(["train", *args])
    with open(os.path.join(report, f"rank{rank}.json"), "w") as fh:
        json.dump(records, fh)
    sys.exit(rc)
''')


def torchrun(tmp_path: Path, model_dir: Path, *args, env: dict | None = None) -> tuple[Path, list[dict]]:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    report = tmp_path / "report"
    report.mkdir()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(report), "--model", str(model_dir), "--steps", "2", "--max-new-tokens", "16", "--prompts-per-step",
           "2", "-G", "4", "-K", "2", "--device", "cpu", "--output-dir", str(out), *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=full_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


def _check_rank0_alone_wrote(out: Path, ranks: list[dict]) -> pd.DataFrame:
    assert sorted(p.name for p in out.iterdir()) == [".enigma.lock", "checkpoint-2", "completions.jsonl",
                                                     "config.yaml", "metrics.csv", "run.json"]  # rank 0's lock
    df = pd.read_csv(out / "metrics.csv")
    assert df["step"].tolist() == [1, 2]
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    # every rank's completions, gathered to rank 0: per step, rank 0's then rank 1's
    expected = [(step + 1, rank, text) for step in range(2) for rank in (0, 1) for text in ranks[rank]["texts"][step]]
    assert [(r["step"], r["rank"], r["completion"]) for r in records] == expected
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["ranks_per_node"] == 2 and info["launcher"] == "torchrun"
    # the two ranks drew different prompts, and the logged metrics are their mean
    assert ranks[0]["texts"] != ranks[1]["texts"]
    for i, step_rows in enumerate(zip(ranks[0]["local"], ranks[1]["local"])):
        for key in ("reward_mean", "completion_len_mean", "skipped"):
            assert df[key][i] == pytest.approx((step_rows[0][key] + step_rows[1][key]) / 2, rel=1e-5), key
    return df


@pytest.mark.parametrize("ablation", [[], ["--no-sami"]], ids=["enigma", "no-sami"])
def test_two_ranks_end_identical_and_only_rank0_writes(ablation, model_dir, tmp_path):
    """Also without SAMI, whose logged critic runs a no-grad forward in the middle of the DDP micro-step."""
    out, ranks = torchrun(tmp_path, model_dir, *ablation)
    assert ranks[0]["hashes"] == ranks[1]["hashes"] and list(ranks[0]["hashes"]) == ["2"]
    df = _check_rank0_alone_wrote(out, ranks)
    assert df["skipped"].tolist() == [0, 0]
    assert (df["grad_norm"] > 0).all()


def test_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(model_dir, tmp_path):
    out, ranks = torchrun(tmp_path, model_dir, env={"TEST_NAN_RANK": "1"})
    assert ranks[0]["hashes"] == ranks[1]["hashes"]
    df = _check_rank0_alone_wrote(out, ranks)
    assert df["skipped"].tolist() == [1, 0] and df["nonfinite_total"].tolist() == [1, 1]
