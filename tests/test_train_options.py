"""`enigma train` options around the objective: the true GRPO-only ablation, dropout, gradient checkpointing,
the reference's dtype, the surrogate; and the advantage grouping and reward weights that feed the objective.

Uses the module-scoped random tiny Llama of `conftest.py` and the text-dependent rewards of `test_train.py`
(random completions all get format reward 0, so the advantages would otherwise be 0).
"""

from __future__ import annotations

import gc
import statistics
import zlib

import pandas as pd
import pytest
import torch
from test_train import SMALL, fast_and_varied, train  # noqa: F401 - fast_and_varied is an autouse fixture

from enigma_cli.train import episodes as episodes_mod
from enigma_cli.train import trainer as trainer_mod

pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning")

TRUE_GRPO = {"sami": False, "ot": False, "ref_metrics": False, "critic_metrics": False}


def _trainer(model_dir, out, **options):
    from enigma_cli.models.loading import load_model
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.defaults import for_model
    from enigma_cli.train.run import plan

    options = {"prompts_per_step": 2, "group_size": 4, "principles_per_prompt": 2, "max_new_tokens": 12,
               "max_grad_norm": 1e9, **options}
    cfg = TrainConfig(model=str(model_dir), steps=2, device="cpu", output_dir=str(out), **options)
    pset, examples = plan(cfg)
    lm = load_model(cfg.model, device="cpu", for_training=True)
    return trainer_mod.Trainer(lm, examples, pset, for_model(cfg, lm.model))


def _grads_at_first_step(trainer) -> tuple[dict[str, torch.Tensor], dict]:
    grads: dict[str, torch.Tensor] = {}

    def capture(optimizer, args, kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    return grads, trainer.step()[0]


def _models_alive() -> int:
    """Causal LMs alive in the process (a deep copy of the policy would be one more)."""
    from transformers import LlamaForCausalLM

    gc.collect()
    return sum(type(o) is LlamaForCausalLM for o in gc.get_objects())


def _spy_reads(monkeypatch) -> list[bool]:
    """Record each read of the update's objective (models.reader.read): True when it builds a graph."""
    from enigma_cli.train import objective

    reads: list[bool] = []
    real = objective.read

    def spy(*args, **kwargs):
        reads.append(bool(kwargs.get("grad")))
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "read", spy)
    return reads


# -- the true GRPO-only ablation -------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [0, 4])
def test_true_grpo_only_holds_no_reference_and_runs_only_the_policy_forward(lora, model_dir, tmp_path, monkeypatch):
    passes, entered = [], []
    real_pass = trainer_mod.reference_pass
    monkeypatch.setattr(trainer_mod, "reference_pass", lambda *a, **k: passes.append(1) or real_pass(*a, **k))
    real_ctx = trainer_mod.Trainer._reference_model
    monkeypatch.setattr(trainer_mod.Trainer, "_reference_model", lambda self: entered.append(1) or real_ctx(self))
    before = _models_alive()
    trainer = _trainer(model_dir, tmp_path / "run", lora_r=lora, **TRUE_GRPO)
    assert trainer.reference is None
    assert _models_alive() - before == 1  # the policy, and no copy of it anywhere
    reads = _spy_reads(monkeypatch)
    row, _ = trainer.step()
    assert passes == [] and entered == []
    assert reads == [True]  # one read of the G·P sequences with a graph; no critic, no reference
    for col in ("kl_ref", "ot_divergence", "mi_sym", "loss_sami"):
        assert col not in row
    assert row["grad_norm"] > 0


def test_each_logged_extra_brings_back_only_its_own_work(model_dir, tmp_path, monkeypatch):
    """--critic-metrics alone: one no-grad critic forward, still no reference; --ref-metrics alone: a reference
    copy and one reference pass, no critic."""
    passes = []
    real_pass = trainer_mod.reference_pass
    monkeypatch.setattr(trainer_mod, "reference_pass", lambda *a, **k: passes.append(1) or real_pass(*a, **k))
    critic = _trainer(model_dir, tmp_path / "c", **{**TRUE_GRPO, "critic_metrics": True})
    reads = _spy_reads(monkeypatch)
    row, _ = critic.step()
    assert critic.reference is None and passes == [] and reads == [True, False]
    assert "mi_sym" in row and "kl_ref" not in row
    ref = _trainer(model_dir, tmp_path / "r", **{**TRUE_GRPO, "ref_metrics": True})
    row, _ = ref.step()
    assert ref.reference is not None and passes == [1]
    assert "kl_ref" in row and "ot_divergence" in row and "mi_sym" not in row


def test_a_kl_penalty_alone_brings_back_the_reference(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path / "run", **TRUE_GRPO, beta=0.1)
    assert trainer.reference is not None
    row, _ = trainer.step()
    assert row["grpo_kl"] == 0.0 and row["kl_ref"] == 0.0  # step 1: the policy is the reference


def test_kl_ref_and_the_loss_share_one_k3_estimator(model_dir, tmp_path):
    """With β > 0 the loss's KL statistic and the logged kl_ref are the same number (the second update has moved
    away from the reference, so it is not 0)."""
    _, row = _grads_at_first_step(_trainer(model_dir, tmp_path / "run", sami=False, ot=False, beta=0.1, lr=1e-2,
                                           updates_per_generation=2))
    assert row["kl_ref"] > 1e-6
    assert row["grpo_kl"] == pytest.approx(row["kl_ref"], rel=1e-6)


def test_reference_dtype(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path / "run", ref_dtype="bfloat16")
    ref, policy = trainer.reference, trainer.model
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert ref.lm_head.weight is ref.model.embed_tokens.weight  # tied weights stay tied in the copy
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    for (name, p), q in zip(policy.named_parameters(), ref.parameters()):
        assert torch.equal(q, p.detach().to(torch.bfloat16)), name
        assert q.data_ptr() != p.data_ptr()
    row, _ = trainer.step()
    # the bf16 reference rounds the starting weights: KL and drift are small but no longer exactly 0
    assert 0 <= row["kl_ref"] < 1e-2 and abs(row["ot_divergence"]) < 1e-2


# -- dropout ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dropout_model_dir(tiny_lm, tmp_path_factory):
    """A GPT-2-shaped model with dropout 0.1 everywhere (embeddings, attention, residuals)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=2, n_positions=512,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("gpt2-dropout")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("keep", [False, True])
def test_dropout_is_off_so_step_one_has_no_kl_and_no_drift(keep, dropout_model_dir, tmp_path):
    """Before any update the policy is the reference: KL and OT divergence are exactly 0 with dropout off, and
    clearly not with --keep-dropout (the policy's update forward then drops units the reference keeps)."""
    trainer = _trainer(dropout_model_dir, tmp_path / "run", keep_dropout=keep)
    row, _ = trainer.step()
    if keep:
        assert row["kl_ref"] > 1e-4 and row["ot_divergence"] > 1e-3
    else:
        assert row["kl_ref"] == 0.0 and row["ot_divergence"] == 0.0
        assert all(m.p == 0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
        assert trainer.model.config.resid_pdrop == 0.1  # the saved config keeps the model's own setting


# -- gradient checkpointing ------------------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_gradients(model_dir, tmp_path, monkeypatch):
    # a layer's MLP calls in the update: during micro_loss (the forward) and after it (the backward's replay)
    calls = {(ckpt, phase): 0 for ckpt in (False, True) for phase in ("forward", "backward")}
    real = trainer_mod.micro_loss
    checkpointing = [False]  # which trainer is running (micro_loss reads only the terms' parameters)

    def counted(model, ep, prompts, params, **kwargs):
        key, mlp = checkpointing[0], model.model.layers[0].mlp
        forward = mlp.forward  # (a forward hook would not do: torch's checkpoint replays the forward without hooks)
        phase = ["forward"]

        def spy(*a, **k):
            calls[(key, phase[0])] += 1
            return forward(*a, **k)

        mlp.forward = spy
        try:
            return real(model, ep, prompts, params, **kwargs)
        finally:
            phase[0] = "backward"

    monkeypatch.setattr(trainer_mod, "micro_loss", counted)
    plain, row1 = _grads_at_first_step(_trainer(model_dir, tmp_path / "a"))
    checkpointing[0] = True
    checkpointed, row2 = _grads_at_first_step(_trainer(model_dir, tmp_path / "b", gradient_checkpointing=True))
    assert calls[(False, "forward")] > 0 and calls[(False, "backward")] == 0
    # the checkpointed layer ran again in the backward, once per forward call
    assert calls[(True, "backward")] == calls[(True, "forward")] > 0
    scale = max(float(g.abs().max()) for g in plain.values())
    assert set(plain) == set(checkpointed) and scale > 0
    for name in plain:
        # (the checkpointed run reads every row on its own, the plain one shares prompts: float32 sums differ)
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert row2["loss"] == pytest.approx(row1["loss"], rel=1e-5)


# -- what feeds the objective: advantages per prompt, weighted rewards ----------------------------------------
def test_advantages_are_normalised_over_each_prompts_whole_group(model_dir, tmp_path):
    """A prompt's G completions (all K principle sub-groups together) form one GRPO group."""
    trainer = _trainer(model_dir, tmp_path / "run", group_size=8, principles_per_prompt=2, prompts_per_step=2)
    _, ep = trainer.step()
    total = ep.rewards.total.tolist()
    for p in range(ep.n_prompts):
        group = total[p * 8:(p + 1) * 8]
        mean, std = statistics.mean(group), statistics.stdev(group)
        for i, r in enumerate(group):
            assert ep.advantages[p * 8 + i].item() == pytest.approx((r - mean) / (std + 1e-4), rel=1e-4, abs=1e-5)
    # the sub-groups' own means differ from the prompt's, so per-sub-group normalisation would be caught
    assert any(abs(statistics.mean(total[s * 4:(s + 1) * 4]) - statistics.mean(total[(s // 2) * 8:(s // 2 + 1) * 8]))
               > 1e-3 for s in range(4))


def test_reward_terms_are_weighted_as_the_spec_says():
    from enigma_cli.core import diversity_rewards, format_reward, normalize_answer, parse_completion
    from enigma_cli.train.rewards import compute_rewards

    texts = ["<reasoning>\na\n</reasoning>\n<answer>\n1\n</answer>", "<answer>1</answer>", "no tags at all",
             "<reasoning>\nb\n</reasoning>\n<answer>\n2\n</answer>"]
    answers = [normalize_answer(parse_completion(t).answer) if parse_completion(t).answer is not None else None
               for t in texts]
    fmt = format_reward(texts)[0].float()
    div = diversity_rewards(answers, 4).float()
    assert fmt.std() > 0 and div.std() > 0
    for spec, (wf, wd) in {"format=1,diversity=0.5": (1.0, 0.5), "format=0.25,diversity=2": (0.25, 2.0)}.items():
        result = compute_rewards(texts, [None] * 4, 4, spec)
        torch.testing.assert_close(result.total, wf * fmt + wd * div)
        torch.testing.assert_close(result.terms["diversity"], div)  # logged unweighted


def test_weighted_rewards_reach_the_advantages(model_dir, tmp_path, monkeypatch):
    """End to end through the real `compute_rewards`: a step's rewards are Σ_w w·term (its format term made
    text-dependent, since a random model's completions all score the same), and its advantages come from them."""
    from enigma_cli.train import rewards as rewards_mod

    monkeypatch.setattr(episodes_mod, "compute_rewards", rewards_mod.compute_rewards)
    monkeypatch.setattr(rewards_mod, "format_reward", lambda texts, **kw: (
        torch.tensor([(zlib.crc32(t.encode()) % 1000) / 1000 for t in texts]),))
    trainer = _trainer(model_dir, tmp_path / "run", reward="format=0.25,diversity=2", sami=False, ot=False)
    row, ep = trainer.step()
    r = ep.rewards
    assert r.terms["format"].std() > 0
    torch.testing.assert_close(r.total, 0.25 * r.terms["format"] + 2 * r.terms["diversity"].float())
    assert row["reward_mean"] == pytest.approx(0.25 * row["reward_format"] + 2 * row["reward_diversity"], abs=1e-6)
    from enigma_cli.core import grpo_advantages

    torch.testing.assert_close(ep.advantages, grpo_advantages(r.total, ep.group_size))


# -- the CLI ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--surrogate", "sapo"], ["--surrogate", "cispo", "--epsilon-high", "5",
                                                            "--loss-type", "dapo"],
                                   ["--loss-type", "luspo"], ["--no-ref-metrics", "--no-critic-metrics",
                                                              "--no-sami", "--no-ot"]])
def test_surrogates_aggregations_and_ablation_flags_run(flags, model_dir, tmp_path):
    out = tmp_path / "run"
    rc, _, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", out, *flags)
    assert rc == 0, stderr
    row = pd.read_csv(out / "metrics.csv").iloc[0]
    assert row["grad_norm"] > 0
    config = (out / "config.yaml").read_text()
    for flag, value in zip(flags, flags[1:] + [""]):
        if flag in ("--surrogate", "--loss-type"):
            assert f"{flag[2:].replace('-', '_')}: {value}" in config


@pytest.mark.parametrize("flags, needle", [(["--surrogate", "cispo"], "--epsilon-high"),
                                           (["--surrogate", "ppo"], "--surrogate"),
                                           (["--ref-dtype", "int8"], "--ref-dtype")])
def test_bad_surrogate_options_exit_3_before_loading(flags, needle, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("enigma_cli.models.loading.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    rc, stdout, stderr = train("--model", model_dir, "--steps", 1, *SMALL, "--output-dir", tmp_path / "r", *flags)
    assert rc == 3 and stdout == "" and needle in stderr
    assert not (tmp_path / "r").exists()


def test_every_sampler_engine_is_a_train_option():
    """--sampler offers what the sampler has (plus the old name lean), so a new engine cannot be forgotten."""
    from enigma_cli.models.sampler import ALIASES, ENGINES
    from enigma_cli.train.config import SAMPLERS

    assert set(SAMPLERS) == set(ENGINES) | set(ALIASES)
