"""`enigma train` end to end on CPU: ablations, checkpoints, resume, bad input, accumulation, non-finite steps.

Every run uses a randomly initialised tiny Llama (saved once per module) and a tiny batch: 2 prompts × G=4
(K=2 principles × 2), at most 16 new tokens. Three things keep the module fast and meaningful:

- A random model never writes the XML layout, so every format reward is 0, every advantage is 0 and the GRPO
  gradient vanishes. `varied_rewards` adds a deterministic function of each completion's text (crc32) to the
  real rewards, so advantages are non-zero and a resumed run sees the same rewards as the uninterrupted one.
- `grid_plot` (matplotlib, seconds per run) is stubbed out except where the PNG itself is checked.
- Torch runs on one thread: with a 128-wide model, a second OpenMP thread buys nothing and on a busy machine
  makes a generation 10-100× slower.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from enigma_cli.cli import main
from enigma_cli.plots import grid_plot as _real_grid_plot
from enigma_cli.train import episodes as episodes_mod
from enigma_cli.train import trainer as trainer_mod
from enigma_cli.train.episodes import Episodes
from enigma_cli.train.params import rollout_from_train_config

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning"),
    # a skipped step steps the scheduler without the optimizer (on purpose: the LR stays a function of the step)
    pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning"),
]

SMALL = ["--max-new-tokens", "16", "--prompts-per-step", "2", "-G", "4", "-K", "2", "--device", "cpu"]
ABLATIONS = {
    "grpo": ["--no-sami", "--no-ot"],
    "grpo+sami": ["--no-ot"],
    "grpo+ot": ["--no-sami"],
    "enigma": [],
}
TIMING = {"seconds_generation", "seconds_scoring", "seconds_update", "gen_tokens_per_s"}


# -- fixtures and helpers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def start_weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


_real_compute_rewards = episodes_mod.compute_rewards


def varied_rewards(texts, labels, group_size, spec, **kwargs):
    """The real rewards plus a deterministic, text-dependent term in [0, 1) (see the module docstring)."""
    result = _real_compute_rewards(texts, labels, group_size, spec, **kwargs)
    extra = torch.tensor([(zlib.crc32(t.encode()) % 1000) / 1000 for t in texts])
    result.total = result.total + extra
    return result


@pytest.fixture(autouse=True)
def fast_and_varied(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(episodes_mod, "compute_rewards", varied_rewards)
    monkeypatch.setattr("enigma_cli.plots.grid_plot", lambda *args, **kwargs: None)
    yield
    torch.set_num_threads(before)


def train(*args) -> tuple[int, str, str]:
    """`enigma train ARGS` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["train", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def flat(text: str) -> str:
    return " ".join(text.split())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert set(a) == set(b)
    return [k for k in a if not torch.equal(a[k], b[k])]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content (to prove a failed command wrote nothing)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. one step per ablation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_one_step_of_each_ablation_logs_checkpoints_and_updates(ablation, model_dir, start_weights, tmp_path):
    out = tmp_path / "run"
    rc, stdout, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, *ABLATIONS[ablation])
    assert rc == 0, stderr
    assert stdout == ""  # stdout is data only, and no --format was asked for
    assert ablation in stderr

    df = pd.read_csv(out / "metrics.csv")
    assert df["step"].tolist() == [1]
    for col in ("reward_mean", "reward_std", "format_rate", "advantage_std", "loss", "loss_grpo", "grad_norm",
                "ot_divergence", "kl_ref", "lr", "completion_len_mean", "seconds_generation", "seconds_scoring",
                "seconds_update", "gen_tokens_per_s", "skipped", "nonfinite_total", "ot_unconverged"):
        assert col in df.columns, col
    with_sami = ablation in ("grpo+sami", "enigma")
    assert ("loss_sami" in df.columns) == with_sami
    # the MI bound is a metric of every ablation (ref_metrics defaults on); only SAMI trains on it
    assert "mi_sym" in df.columns and "si" in df.columns
    row = df.iloc[0]
    assert row["skipped"] == 0 and row["nonfinite_total"] == 0
    assert row["advantage_std"] > 0  # the varied rewards reach the advantages
    assert np.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
    # first step: the policy is the reference, so the logged OT divergence and KL are ~0 in every ablation
    assert abs(row["ot_divergence"]) < 1e-4 and abs(row["kl_ref"]) < 1e-6
    assert (row[["seconds_generation", "seconds_scoring", "seconds_update"]] > 0).all()

    ckpt = out / "checkpoint-1"
    for name in ("model.safetensors", "tokenizer_config.json", "trainer_state.pt", "config.yaml"):
        assert (ckpt / name).is_file(), name
    assert not list(out.glob(".checkpoint-*"))  # no temporary folder left behind
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1 and state["optimizer"]["state"]
    config = (ckpt / "config.yaml").read_text()
    assert f"sami: {str(with_sami).lower()}" in config
    assert f"ot: {str(ablation in ('grpo+ot', 'enigma')).lower()}" in config

    after = weights(ckpt)
    assert all(torch.isfinite(t).all() for t in after.values())
    # the one update moved the weights (for "grpo" the only gradient is the policy term's: beta = 0)
    assert len(changed(start_weights, after)) > len(after) // 2
    lines = (out / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 4 and {json.loads(x)["step"] for x in lines} == {1}


def test_unconverged_sinkhorn_is_counted_not_warned(model_dir, tmp_path, monkeypatch):
    """A Sinkhorn solve that reaches max_iter shows in the `ot_unconverged` column, not as a warning per step."""
    import warnings

    from enigma_cli.train import terms

    monkeypatch.setattr(terms, "OT_TOL", 1e-30)  # unreachable: every solve runs to max_iter
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rc, _, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", tmp_path / "run")
    assert rc == 0, stderr
    row = pd.read_csv(tmp_path / "run" / "metrics.csv").iloc[0]
    assert row["ot_unconverged"] >= 1
    assert "did not converge" not in stderr


@pytest.mark.parametrize("ablation", ["grpo", "enigma"])
def test_sinkhorn_converges_in_training(ablation, model_dir, tmp_path):
    """At the training tolerance the policy-vs-reference clouds converge (the rule that ran to max_iter is gone).

    Step 1 compares the policy with itself (paired clouds, the case the old rule never stopped on). Step 2 is not
    asserted: after one update of a random model at lr 3e-4 the clouds can split into two far-apart clusters
    (cross costs / eps ~ 14), nearly decoupled problems between which Sinkhorn moves mass sublinearly (one such
    solve ended at 1.3e-4 after 1000 iterations); `ot_unconverged` exists to report exactly that."""
    rc, _, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", tmp_path / "run",
                          *ABLATIONS[ablation])
    assert rc == 0, stderr
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["ot_unconverged"].iloc[0] == 0


def test_equal_rewards_give_no_policy_gradient(model_dir, start_weights, tmp_path, monkeypatch):
    """Control for the test above: with the real format reward (0 for a random model) GRPO alone changes nothing."""
    monkeypatch.setattr(episodes_mod, "compute_rewards", _real_compute_rewards)
    out = tmp_path / "run"
    rc, _, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, "--no-sami", "--no-ot")
    assert rc == 0, stderr
    row = pd.read_csv(out / "metrics.csv").iloc[0]
    assert row["reward_std"] == 0 and row["advantage_std"] == 0 and row["grad_norm"] == 0
    assert changed(start_weights, weights(out / "checkpoint-1")) == []


# -- 7. --format csv -------------------------------------------------------------------------------------------
def test_format_csv_streams_metric_rows_and_nothing_else(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("enigma_cli.plots.grid_plot", _real_grid_plot)  # the PNG is an output too
    out = tmp_path / "run"
    rc, stdout, stderr = train("--model", model_dir, "--steps", 2, *SMALL, "--output-dir", out, "--format", "csv")
    assert rc == 0, stderr
    rows = list(csv.reader(io.StringIO(stdout)))
    assert len(rows) == 3 and all(len(r) == len(rows[0]) for r in rows)
    streamed = pd.read_csv(io.StringIO(stdout))
    logged = pd.read_csv(out / "metrics.csv")
    assert list(streamed.columns) == list(logged.columns)
    assert streamed["step"].tolist() == [1, 2]
    np.testing.assert_allclose(streamed["reward_mean"], logged["reward_mean"], rtol=1e-5)
    assert (out / "training_curves.png").stat().st_size > 0


# -- 2. resume ---------------------------------------------------------------------------------------------------
def _same_metrics(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    cols = [c for c in a.columns if c not in TIMING]
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=1e-5, atol=1e-7)


def _same_run(a: Path, b: Path, step: int) -> None:
    wa, wb = weights(a / f"checkpoint-{step}"), weights(b / f"checkpoint-{step}")
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=0, atol=1e-6), key
    sa = torch.load(a / f"checkpoint-{step}" / "trainer_state.pt", weights_only=True)
    sb = torch.load(b / f"checkpoint-{step}" / "trainer_state.pt", weights_only=True)
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.allclose(pa["exp_avg_sq"], pb["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    _same_metrics(pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv"))
    assert (a / "completions.jsonl").read_text() == (b / "completions.jsonl").read_text()


def test_resume_reproduces_the_uninterrupted_run(model_dir, tmp_path):
    # a warm-up longer than the run: every step's learning rate differs, so a scheduler not restored shows
    common = ["--model", model_dir, *SMALL, "--seed", 3, "--warmup-steps", 6]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert train(*common, "--steps", 4, "--save-every", 2, "--output-dir", a)[0] == 0
    assert (a / "checkpoint-2").is_dir() and (a / "checkpoint-4").is_dir()
    assert changed(weights(a / "checkpoint-2"), weights(a / "checkpoint-4"))  # steps 3-4 did something

    # stopped cleanly after 2 steps, then continued
    assert train(*common, "--steps", 2, "--output-dir", b)[0] == 0
    rc, _, stderr = train(*common, "--steps", 4, "--resume", "latest", "--output-dir", b)
    assert rc == 0, stderr
    assert "steps 3..4" in flat(stderr)
    _same_run(a, b, 4)

    # killed after logging step 4 but before its checkpoint: resume from checkpoint-2 drops the stale rows
    shutil.copytree(a, c)
    shutil.rmtree(c / "checkpoint-4")
    rc, _, stderr = train(*common, "--steps", 4, "--resume", c / "checkpoint-2", "--output-dir", c)
    assert rc == 0, stderr
    _same_run(a, c, 4)
    assert pd.read_csv(c / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]


def test_resume_restores_the_rng_states(model_dir, tmp_path):
    """--resume puts back torch's, Python's and NumPy's generators as they were at the save: whatever draws from them
    (dropout under --keep-dropout, a custom reward) continues as in the uninterrupted run."""
    import random

    from enigma_cli.models.loading import load_model
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.defaults import for_model
    from enigma_cli.train.run import plan

    cfg = TrainConfig(model=str(model_dir), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                      device="cpu", output_dir=str(tmp_path / "run"))
    pset, examples = plan(cfg)

    def trainer(resume=None):
        lm = load_model(cfg.model, device="cpu", for_training=True)
        return trainer_mod.Trainer(lm, examples, pset, for_model(cfg, lm.model), resume=resume)

    first = trainer()
    first.step()
    torch.rand(3), random.random(), np.random.rand()  # the generators move on from the trainer's own seeding
    saved = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    path = first.save()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    trainer(resume=str(path))
    assert torch.equal(torch.get_rng_state(), saved[0])
    assert random.getstate() == saved[1]
    assert np.array_equal(np.random.get_state()[1], saved[2])


def test_each_step_and_rank_samples_with_its_own_seed(tiny_lm, monkeypatch):
    """The sampler's seed is a function of (seed, step, rank): another step or rank draws afresh, and the same
    (seed, step, rank) again (a resumed run) draws the same completions."""
    from enigma_cli.datasets import load_examples
    from enigma_cli.models.rollout import Generation
    from enigma_cli.principles import load_principle_set
    from enigma_cli.train.config import TrainConfig

    seeds = []

    def fake_generate(model, tokenizer, prompts, *, num_samples, seed, **kwargs):
        seeds.append(seed)
        n = len(prompts) * num_samples
        return Generation([[1]] * n, [[2, 3]] * n, ["x"] * n, [i // num_samples for i in range(n)], [True] * n,
                          num_samples)

    monkeypatch.setattr(episodes_mod, "generate", fake_generate)
    cfg = TrainConfig(prompts_per_step=1, group_size=4, max_new_tokens=4, seed=7)
    examples, pset = load_examples(None, seed=0, split="train"), load_principle_set(cfg.principles)
    for step, rank in [(1, 0), (2, 0), (1, 1), (1, 0)]:
        episodes_mod.collect(None, tiny_lm[1], examples, pset, rollout_from_train_config(cfg), step, rank)
    assert len(set(seeds[:3])) == 3 and seeds[3] == seeds[0]


# -- 3. bad input ----------------------------------------------------------------------------------------------
def _bad_checkpoint(out: Path) -> Path:
    ckpt = out / "checkpoint-1"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(b"this is not a torch file")
    return ckpt


def _whole_checkpoint(model_dir: Path, tmp_path: Path) -> Path:
    """A checkpoint whose files pass the pre-load checks (weights and a torch zip state)."""
    ckpt = tmp_path / "whole"
    shutil.copytree(model_dir, ckpt)
    torch.save({"step": 3}, ckpt / "trainer_state.pt")
    return ckpt


def _existing_run(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "metrics.csv").write_text("step,reward_mean\n1,0.5\n")


def _config(out: Path) -> Path:
    path = out.parent / "run.yaml"
    path.write_text("steps: 1\nlearning_rate: 0.1\n")
    return path


BAD = {
    "G not divisible by K": (["-G", 5], None, "--group-size (5) must be divisible"),
    "K above the set size": (["-G", 6, "-K", 3], None, "exceeds the 2 principles"),
    "unknown principle set": (["--principles", "no-such-set"], None, "no-such-set"),
    "unknown reward": (["--reward", "format,bogus"], None, "'bogus'"),
    "bad loss type": (["--loss-type", "ppo"], None, "--loss-type"),
    "bad stream format": (["--format", "xml"], None, "--format"),
    "bad OT layers": (["--ot-layers", "a,b"], None, "--ot-layers"),
    "OT layer out of range": (["--ot-layers", "2,9"], None, "9"),
    "zero steps": (["--steps", 0], None, "--steps"),
    "missing model folder": (["--model", "./no/such/model"], None, "no/such/model"),
    "missing dataset file": (["--dataset", "no_such_file.jsonl"], None, "no_such_file.jsonl"),
    "config with unknown key": ([], "config", "learning_rate"),
    "unreadable checkpoint": (["--resume", "latest"], "bad_checkpoint", "unreadable"),
    "resume a non-checkpoint": (["--resume", "no_such_checkpoint"], None, "not a checkpoint folder"),
    "resume a checkpoint past --steps": (["--resume", "latest"], "later_checkpoint", "below the step"),
    "existing run without --resume": ([], "existing_run", "--resume"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_3_with_one_sentence_and_writes_nothing(case, model_dir, tmp_path):
    extra, setup, needle = BAD[case]
    out = tmp_path / "run"
    extra = list(extra)
    if setup == "config":
        extra += ["--config", _config(out)]
    elif setup == "bad_checkpoint":
        _bad_checkpoint(out)
    elif setup == "existing_run":
        _existing_run(out)
    elif setup == "later_checkpoint":  # a whole checkpoint of step 3, and --steps 1
        shutil.copytree(_whole_checkpoint(model_dir, tmp_path), out / "checkpoint-3")
    before = tree(out)
    args = ["--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, *extra]
    rc, stdout, stderr = train(*args)
    assert rc == 3, stderr
    assert stdout == ""
    message = flat(stderr)
    assert "Traceback" not in stderr
    assert message.count("error:") == 1 and message.endswith(".")
    assert needle in message.split("error:", 1)[1], message
    assert tree(out) == before  # nothing written, not even an empty folder or a config
    assert out.exists() == bool(before)


def test_dry_run_prints_the_plan_and_loads_and_writes_nothing(model_dir, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr("enigma_cli.models.loading.load_model", no_loading)
    out = tmp_path / "run"
    rc, stdout, stderr = train("--model", model_dir, "--steps", 3, *SMALL, "--output-dir", out, "--dry-run")
    assert rc == 0, stderr
    assert stdout == "" and not out.exists()
    plan = flat(stderr)
    assert "3 steps × 2 prompts × G=4" in plan and "= 24 completions" in plan and "--dry-run" in plan
    # it still validates what can be checked without weights
    rc, stdout, stderr = train("--model", model_dir, *SMALL, "--output-dir", out, "--dry-run", "--principles", "nope")
    assert rc == 3 and stdout == "" and "nope" in stderr and not out.exists()
    # ... including the model spec and the output folder, so a dry run that passes is a run that starts
    rc, stdout, stderr = train("--model", tmp_path / "no-such-model", *SMALL, "--output-dir", out, "--dry-run")
    assert rc == 3 and "no-such-model" in stderr and not out.exists()
    # --resume latest with no checkpoint starts from step 0 (the same command starts and continues a run)
    rc, stdout, stderr = train("--model", model_dir, *SMALL, "--output-dir", out, "--dry-run", "--resume", "latest")
    assert rc == 0 and "starts from step 0" in flat(stderr) and not out.exists()
    out.mkdir()
    (out / "metrics.csv").write_text("step\n1\n")
    rc, stdout, stderr = train("--model", model_dir, *SMALL, "--output-dir", out, "--dry-run")
    assert rc == 3 and "already holds a run" in stderr and (out / "metrics.csv").read_text() == "step\n1\n"


# -- 4. gradient accumulation ----------------------------------------------------------------------------------
def _first_update(model_dir, out: Path, **options) -> tuple[dict[str, torch.Tensor], dict, Episodes]:
    """Gradients handed to the optimizer at step 1 (after clipping, which is off here), the row, the episodes."""
    from enigma_cli.models.loading import load_model
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.defaults import for_model
    from enigma_cli.train.run import plan
    from enigma_cli.train.trainer import Trainer

    cfg = TrainConfig(model=str(model_dir), steps=1, prompts_per_step=2, group_size=4, principles_per_prompt=2,
                      max_new_tokens=16, device="cpu", output_dir=str(out), max_grad_norm=1e9, **options)
    pset, examples = plan(cfg)
    lm = load_model(cfg.model, device="cpu", for_training=True)
    trainer = Trainer(lm, examples, pset, for_model(cfg, lm.model))
    grads: dict[str, torch.Tensor] = {}

    def capture(optimizer, args, kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    row, episodes = trainer.step()
    return grads, row, episodes


def _mean_logprob(model, prompt: list[int], completion: list[int]) -> float:
    """Mean token log-prob of `completion` after `prompt`: one unpadded forward, no packing or compaction."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    token = logp.gather(1, targets[:, None])[:, 0]
    return float(token[len(prompt) - 1:].mean())


@pytest.mark.parametrize("sami, sami_matrices, grad_accum", [(True, 0, 1), (True, 1, 1), (True, 1, 2), (False, 0, 2)])
def test_sami_term_is_the_infonce_of_the_within_prompt_critic(sami, sami_matrices, grad_accum, model_dir, tmp_path):
    """loss_sami and sami_mi_sym of a step equal the core functions on S[p,s][i,j] = mean log π(y_(p,j,s) | c_i, x_p),
    each entry scored by an independent unpadded forward; --sami-matrices m' keeps matrices s < m' only. Without
    SAMI the critic is still logged (from a no-grad forward of its off-diagonal)."""
    from enigma_cli.core import infonce_bounds, sami_loss
    from enigma_cli.core.infonce import posterior_critic, sufficiency_index, sum_critic
    from enigma_cli.models.loading import load_model

    _, row, ep = _first_update(model_dir, tmp_path / "run", sami=sami, ot=False, sami_matrices=sami_matrices,
                               grad_accum=grad_accum)
    base = load_model(str(model_dir), device="cpu").model.eval()
    m_used = sami_matrices or ep.m
    S = torch.empty(ep.n_prompts * m_used, ep.k, ep.k, dtype=torch.float64)
    for p in range(ep.n_prompts):
        for s in range(m_used):
            for i in range(ep.k):
                for j in range(ep.k):
                    S[p * m_used + s, i, j] = _mean_logprob(base, ep.prompt_ids[p * ep.k + i],
                                                            ep.completion_ids[ep.completion_index(p, j, s)])
    if sami:
        assert row["loss_sami"] == pytest.approx(float(sami_loss(S)[0]), abs=5e-6)
    else:
        assert "loss_sami" not in row
    bounds = infonce_bounds(S)
    assert row["sami_mi_sym"] == pytest.approx(bounds["mi_sym"], abs=5e-6)
    # the row bound is not symmetric in (i, j): it catches a transposed critic, which the symmetric terms cannot
    assert row["sami_mi_row"] == pytest.approx(bounds["mi_row"], abs=5e-6)
    assert abs(bounds["mi_row"] - bounds["mi_col"]) > 4 * 5e-6
    # one SI: score-principles' sum critic, from the same scores and the completions' lengths
    lengths = torch.tensor([[len(ep.completion_ids[ep.completion_index(p, j, s)]) for j in range(ep.k)]
                            for p in range(ep.n_prompts) for s in range(m_used)], dtype=torch.float64)
    centred = posterior_critic(sum_critic(S, lengths))
    assert row["si"] == pytest.approx(sufficiency_index(centred)["si"], abs=5e-5)
    assert row["mi_row"] == pytest.approx(infonce_bounds(centred)["mi_row"], abs=5e-5)


@pytest.mark.parametrize("sami", [False, True])
def test_length_chunked_forward_gives_the_one_batch_loss_and_gradient(sami, model_dir, tmp_path, monkeypatch):
    """The update's rows run in length-sorted chunks; a budget of one row per chunk changes nothing but speed."""
    from enigma_cli.models import logprobs

    monkeypatch.setattr(logprobs, "CPU_CHUNK_TOKENS", 1 << 30)
    whole, row1, ep1 = _first_update(model_dir, tmp_path / "a", sami=sami, ot=True)
    monkeypatch.setattr(logprobs, "CPU_CHUNK_TOKENS", 1)  # every row alone
    chunked, row2, ep2 = _first_update(model_dir, tmp_path / "b", sami=sami, ot=True)
    assert ep1.texts == ep2.texts
    scale = max(float(g.abs().max()) for g in whole.values())
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
    for key in ("loss", "loss_grpo", "mi_sym", "ot_divergence"):
        assert row2[key] == pytest.approx(row1[key], rel=1e-4, abs=1e-6), key


def test_metrics_of_several_updates_per_generation_are_means_not_sums(model_dir, tmp_path):
    """With μ updates per generation a logged metric is the mean over the μ updates (μ·value was a bug)."""
    _, one, _ = _first_update(model_dir, tmp_path / "u1", sami=True, ot=False)
    _, two, _ = _first_update(model_dir, tmp_path / "u2", sami=True, ot=False, updates_per_generation=2)
    assert two["grpo_tokens"] == one["grpo_tokens"]  # the same completions in both updates
    # the first update sees the same weights; the second, one small step later, moves the loss only slightly
    assert two["loss_sami"] == pytest.approx(one["loss_sami"], rel=0.05)


@pytest.mark.parametrize("loss_type, sami", [("grpo", False), ("grpo", True), ("dr_grpo", True), ("dapo", True)])
def test_grad_accumulation_gives_the_full_batch_gradient(loss_type, sami, model_dir, tmp_path):
    opts = {"loss_type": loss_type, "sami": sami, "ot": False}
    full, row1, ep1 = _first_update(model_dir, tmp_path / "a1", grad_accum=1, **opts)
    accum, row2, ep2 = _first_update(model_dir, tmp_path / "a2", grad_accum=2, **opts)
    assert ep1.texts == ep2.texts  # the same episodes
    assert set(full) == set(accum) and full
    scale = max(float(g.abs().max()) for g in full.values())
    assert scale > 0
    for name in full:
        torch.testing.assert_close(accum[name], full[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
    assert row2["grad_norm"] == pytest.approx(row1["grad_norm"], rel=1e-4)
    assert row2["loss"] == pytest.approx(row1["loss"], rel=1e-4, abs=1e-7)
    if sami:
        assert row2["loss_sami"] == pytest.approx(row1["loss_sami"], rel=1e-5)


# -- 5. non-finite steps ---------------------------------------------------------------------------------------
class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _Backward(torch.autograd.Function):
    """Identity that records each backward through it: a non-finite loss must never be backpropagated."""

    calls: ClassVar[list[int]] = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _Backward.calls.append(1)
        return grad


def _poison(monkeypatch, bad_steps: set[int] | None, where: str) -> list[int]:
    """Make the loss (or only its gradient) non-finite at the given steps (every step when None); returns the list
    that records every backward of a non-finite loss."""
    real = trainer_mod.micro_loss
    calls = {"n": 0}
    _Backward.calls = []

    def micro_loss(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        calls["n"] += 1  # one micro-batch per step here (grad_accum = updates_per_generation = 1)
        if bad_steps is None or calls["n"] in bad_steps:
            loss = _Backward.apply(loss * float("nan")) if where == "loss" else _NanGrad.apply(loss)
        return loss, metrics

    monkeypatch.setattr(trainer_mod, "micro_loss", micro_loss)
    return _Backward.calls


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_and_counted(where, model_dir, start_weights, tmp_path, monkeypatch):
    backwards = _poison(monkeypatch, {1, 3}, where)
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text("max_nonfinite: 2\n")
    rc, stdout, stderr = train("--model", model_dir, "--steps", 3, *SMALL, "--no-sami", "--output-dir", out,
                               "--save-every", 1, "--config", config, "--format", "csv")
    assert rc == 0, stderr  # never two in a row
    df = pd.read_csv(out / "metrics.csv")
    assert df["skipped"].tolist() == [1, 0, 1]
    assert backwards == []  # a non-finite loss stops before its backward (under DDP the others would wait for it)
    assert df["nonfinite_total"].tolist() == [1, 1, 2]
    assert np.isnan(df["grad_norm"][0]) and np.isfinite(df["grad_norm"][1])
    assert changed(start_weights, weights(out / "checkpoint-1")) == []  # the skipped step changed nothing
    assert changed(weights(out / "checkpoint-1"), weights(out / "checkpoint-2"))
    assert changed(weights(out / "checkpoint-2"), weights(out / "checkpoint-3")) == []
    assert torch.load(out / "checkpoint-3" / "trainer_state.pt", weights_only=True)["nonfinite_total"] == 2
    # the stream stays a rectangular CSV even though the skipped first row lacks the loss columns
    rows = list(csv.reader(io.StringIO(stdout)))
    assert len(rows) == 4 and all(len(r) == len(rows[0]) for r in rows)
    assert pd.read_csv(io.StringIO(stdout))["skipped"].tolist() == [1, 0, 1]


def test_too_many_non_finite_steps_in_a_row_abort(model_dir, tmp_path, monkeypatch):
    _poison(monkeypatch, None, "loss")
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text("max_nonfinite: 2\n")
    rc, _, stderr = train("--model", model_dir, "--steps", 5, *SMALL, "--no-sami", "--no-ot",
                          "--output-dir", out, "--config", config)
    assert rc == 1
    message = flat(stderr).split("error:", 1)[1]
    assert "2 steps in a row had a non-finite loss or gradient" in message and "step 2" in message
    assert "Traceback" not in stderr
    assert not list(out.glob("checkpoint-*"))
    assert pd.read_csv(out / "metrics.csv")["skipped"].tolist() == [1]


def test_reference_pass_equals_the_padded_forward(tiny_lm, model_dir, tmp_path):
    """The reference pass runs each prompt once for all of its completions (`models.reader`); its log-probs,
    masks and pooled hidden states are those of reading every row on its own, right-padded."""
    from enigma_cli.train import objective
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.episodes import collect
    from enigma_cli.train.run import plan

    model, tokenizer = tiny_lm
    cfg = TrainConfig(model=str(model_dir), prompts_per_step=3, group_size=4, max_new_tokens=12, device="cpu",
                      output_dir=str(tmp_path / "run"))
    pset, examples = plan(cfg)
    ep = collect(model, tokenizer, examples, pset, rollout_from_train_config(cfg), step=1)
    assert len({tuple(p) for p in ep.prompt_ids}) < len(ep.completion_ids)  # prompts shared by several rows
    layers = [0, 2, 4]
    lean = objective.reference_pass(model, ep, layers)
    idx = list(range(len(ep.completion_ids)))
    from enigma_cli.models.reader import read

    plain = read(model, [ep.prompt_ids[ep.prompt_of(i)] for i in idx], [ep.completion_ids[i] for i in idx],
                 layers=layers, share_prompts=False)
    assert torch.equal(lean.mask, plain.mask.bool())
    torch.testing.assert_close(lean.logp, plain.logp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lean.seq_logp, plain.seq_logp, atol=2e-5, rtol=1e-5)
    assert set(lean.pooled) == set(plain.pooled) == set(layers)
    for layer in layers:
        torch.testing.assert_close(lean.pooled[layer], plain.pooled[layer], atol=2e-5, rtol=1e-5)
