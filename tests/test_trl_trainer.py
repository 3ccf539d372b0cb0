"""`EnigmaGRPOTrainer` (enigma_cli.trl): the same ENIGMA terms as `enigma train`, principle-grouped batches and
question-level advantages.

The central test hands both backends the same episodes (generated once by `enigma train`'s own `collect`) and the
same weights, and compares the SAMI and OT terms' values and gradients, and the whole loss's gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from enigma_cli.core import grpo_advantages
from enigma_cli.datasets import load_examples
from enigma_cli.principles import load_principle_set
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.episodes import collect
from enigma_cli.train.objective import micro_loss, reference_pass
from enigma_cli.train.params import from_train_config, rollout_from_train_config
from enigma_cli.train.trainer import default_layers
from enigma_cli.trl import EnigmaGRPOConfig, EnigmaGRPOTrainer
from enigma_cli.trl.data import PrincipleGroupSampler, check_layout, principle_rows

K, M, P = 2, 2, 2  # principles per question, completions per principle, questions per batch
G = K * M


def _config(tmp_path, **kw) -> EnigmaGRPOConfig:
    base = {"output_dir": str(tmp_path / "out"), "max_steps": 1, "per_device_train_batch_size": P * G,
            "num_generations": M, "principles_per_prompt": K, "max_completion_length": 10, "learning_rate": 1e-3,
            "use_cpu": True, "bf16": False, "report_to": "none", "logging_steps": 1, "save_strategy": "no",
            "gradient_checkpointing": False, "disable_dropout": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
            "seed": 0, "importance_sampling_level": "token", "loss_type": "grpo"}
    return EnigmaGRPOConfig(**{**base, **kw})


def _questions(n=8):
    from datasets import Dataset

    examples = load_examples("synthetic", seed=0, split="train", purpose="train")[:n]
    return Dataset.from_list([{"question": e.question, "answer": e.answer} for e in examples])


def _trl_inputs(ep, pad_id: int) -> dict:
    """`Episodes` as TRL's batch: left-padded prompts, right-padded completions."""
    prompts = [ep.prompt_ids[ep.prompt_of(i)] for i in range(len(ep.completion_ids))]
    pw, cw = max(map(len, prompts)), max(map(len, ep.completion_ids))
    prompt_ids = torch.tensor([[pad_id] * (pw - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (pw - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([c + [pad_id] * (cw - len(c)) for c in ep.completion_ids])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (cw - len(c)) for c in ep.completion_ids])
    n = len(prompts)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": ep.advantages.clone(),
            "num_items_in_batch": completion_mask.sum(),
            "enigma_question": torch.arange(n) // G, "enigma_principle_index": (torch.arange(n) // M) % K}


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in model.parameters() if p.requires_grad])


@pytest.fixture
def backends(tiny_lm, tmp_path):
    """(trainer, native policy, native reference, episodes, inputs, native cfg): one set of weights, one batch.

    The policy is the starting model plus noise, so that the OT divergence to the reference (the starting model)
    and its gradient are not zero."""
    model, tok = tiny_lm
    start = copy.deepcopy(model)
    trainer = EnigmaGRPOTrainer(model=copy.deepcopy(start), args=_config(tmp_path), train_dataset=_questions(),
                                processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    native = copy.deepcopy(start)  # not a copy of trainer.model: its patched forward stays bound to the original
    native.load_state_dict(trainer.model.state_dict())
    native.train()
    cfg = TrainConfig(prompts_per_step=P, group_size=G, principles_per_prompt=K, max_new_tokens=10, loss_type="grpo",
                      importance_level="token", sampler="hf", lora_r=0, lr=1e-3, output_dir=str(tmp_path / "n"))
    examples = load_examples("synthetic", seed=0, split="train", purpose="train")
    ep = collect(native, tok, examples, load_principle_set(cfg.principles), rollout_from_train_config(cfg), step=1)
    ep.advantages = torch.randn(len(ep.completion_ids), generator=gen)  # a GRPO gradient to compare as well
    inputs = _trl_inputs(ep, tok.pad_token_id)
    inputs.update(trainer._reference_pass(inputs))
    return trainer, native, start.eval(), ep, inputs, cfg


def _native(native, start, ep, cfg, pad_id):
    native.zero_grad(set_to_none=True)
    layers = default_layers(native.config.num_hidden_layers)
    ref = reference_pass(start, ep, layers, cfg.temperature)
    loss, metrics = micro_loss(native, ep, range(ep.n_prompts), from_train_config(cfg), layers=layers, ref=ref,
                               old=None, num_items=sum(map(len, ep.completion_ids)))
    loss.backward()
    return float(loss.detach()), metrics, _grads(native)


def _trl(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    loss.backward()
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    return float(loss.detach()), metrics, _grads(trainer.model)


@pytest.mark.parametrize("lambdas", [(0.1, 1.0), (0.5, 0.0), (0.0, 5.0), (0.0, 0.0)],
                         ids=["enigma", "sami-only", "ot-only", "grpo-only"])
def test_the_sami_and_ot_terms_match_enigma_train_on_the_same_batch(backends, lambdas):
    """Values of every logged term and gradients of the whole loss, per ablation: since the GRPO-only gradients
    agree too, each term's gradient (the difference) agrees."""
    trainer, native, start, ep, inputs, cfg = backends
    lambda_sami, lambda_ot = lambdas
    trainer.args.lambda_sami, trainer.args.lambda_ot = lambda_sami, lambda_ot
    cfg = dataclasses.replace(cfg, lambda_sami=lambda_sami, lambda_ot=lambda_ot)
    pad = trainer._tokenizer.pad_token_id
    n_loss, n_metrics, n_grad = _native(native, start, ep, cfg, pad)
    t_loss, t_metrics, t_grad = _trl(trainer, inputs)
    keys = ["mi_sym", "mi_row", "si", "sami_mi_sym", "sami_mi_row", "sami_acc_row", "ot_divergence", "kl_ref",
            "loss_grpo"]
    keys += ["loss_sami"] if lambda_sami else []
    for key in keys:
        assert t_metrics[key] == pytest.approx(n_metrics[key], rel=1e-4, abs=1e-6), key
    assert n_metrics["ot_divergence"] > 1e-4  # the policy was moved away from the reference: a real OT term
    assert t_loss == pytest.approx(n_loss, rel=1e-4, abs=1e-6)
    assert n_grad.norm() > 0
    torch.testing.assert_close(t_grad, n_grad, rtol=1e-4, atol=1e-6)


def test_sami_prompts_on_trl_scores_the_same_critic_as_enigma_train(backends):
    """--sami-prompts 1 under two micro-batches: both backends score the critic of the step's first prompt only
    (in the first micro-batch, at the same share), so metrics and the summed gradient agree."""
    trainer, native, start, ep, inputs, cfg = backends
    trainer.args.lambda_sami, trainer.args.sami_prompts = 0.5, 1
    cfg = dataclasses.replace(cfg, lambda_sami=0.5, sami_prompts=1, grad_accum=2)
    params, layers = from_train_config(cfg), default_layers(native.config.num_hidden_layers)
    ref = reference_pass(start, ep, layers, cfg.temperature)
    native.zero_grad(set_to_none=True)
    n_metrics = []
    for a in range(2):
        loss, metrics = micro_loss(native, ep, range(a, a + 1), params, layers=layers, ref=ref, old=None,
                                   num_items=sum(map(len, ep.completion_ids)), accum_steps=2)
        loss.backward()
        n_metrics.append(metrics)
    trainer.model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = 2
    t_metrics = []
    for a in range(2):
        trainer._step = a  # TRL counts its micro-steps after each one
        rows = torch.arange(a * G, (a + 1) * G)
        micro = {key: value[rows] if isinstance(value, torch.Tensor) and value.ndim and len(value) == P * G else value
                 for key, value in inputs.items()}
        trainer._metrics["train"].clear()
        trainer.compute_loss(trainer.model, micro).backward()
        t_metrics.append({key: values[-1] for key, values in trainer._metrics["train"].items()})
    assert "loss_sami" in n_metrics[0] and "loss_sami" in t_metrics[0]
    assert "loss_sami" not in n_metrics[1] and "loss_sami" not in t_metrics[1] and "si" not in t_metrics[1]
    for key in ("loss_sami", "mi_sym", "si", "sami_mi_sym"):
        assert t_metrics[0][key] == pytest.approx(n_metrics[0][key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(_grads(trainer.model), _grads(native), rtol=1e-4, atol=1e-6)


def test_each_term_moves_the_gradient(backends):
    """The comparison above can fail: the SAMI and OT gradients are not negligible next to GRPO's."""
    trainer, *_rest, inputs, _cfg = backends
    grads = {}
    for lambdas in [(0.0, 0.0), (0.5, 0.0), (0.0, 5.0)]:
        trainer.args.lambda_sami, trainer.args.lambda_ot = lambdas
        grads[lambdas] = _trl(trainer, inputs)[2]
    base = grads[(0.0, 0.0)]
    for lambdas in [(0.5, 0.0), (0.0, 5.0)]:
        assert (grads[lambdas] - base).norm() > 1e-3 * base.norm(), lambdas


# -- the batch layout ------------------------------------------------------------------------------------------------
def test_principle_rows_and_the_sampler_give_whole_questions_in_episode_order():
    rows = principle_rows(_questions(5), n_principles=3)
    assert len(rows) == 15 and rows[7]["enigma_question"] == 2 and rows[7]["enigma_principle_index"] == 1
    sampler = PrincipleGroupSampler(5, 3, k=2, m=3, questions_per_batch=2, repeat_count=2, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 2 * 2 * 2 * 3 * 2  # 2 batches × 2 questions × K × M × repeats
    questions, principles = [i // 3 for i in order], [i % 3 for i in order]
    check_layout(questions, principles, 2, 3)
    batch = order[:12]
    assert order[12:24] == batch  # repeated for num_iterations × steps_per_generation
    assert len(set(questions[:24])) == 2 and len(set(questions[24:])) == 2
    assert set(questions[:24]).isdisjoint(questions[24:])  # no question twice in an epoch
    with pytest.raises(RuntimeError, match="whole questions"):
        check_layout(questions[1:] + questions[:1], principles[1:] + principles[:1], 2, 3)


def _train(tiny_lm, tmp_path, **kw):
    model, tok = tiny_lm

    def reward(completions, **kwargs):  # depends on the text, so that the groups have spread
        return [(sum(map(ord, c)) % 97) / 97 for c in completions]

    args = _config(tmp_path, completions_jsonl=True, **kw)
    trainer = EnigmaGRPOTrainer(model=copy.deepcopy(model), reward_funcs=reward, args=args,
                                train_dataset=_questions(), processing_class=tok)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
    return trainer, rows


@pytest.mark.parametrize("grouping, group", [("question", G), ("principle", M)])
def test_advantages_are_normalised_over_the_question_by_default(tiny_lm, tmp_path, grouping, group):
    """As `enigma train`: over a question's G completions (TRL's own, per principle: advantage_grouping)."""
    _trainer, rows = _train(tiny_lm, tmp_path, advantage_grouping=grouping)
    assert len(rows) == P * G
    check_layout([r["prompt"] for r in rows], [r["principle"] for r in rows], K, M)
    rewards = torch.tensor([r["reward"] for r in rows])
    expected = grpo_advantages(rewards, group, scale="group")
    got = torch.tensor([r["advantage"] for r in rows])
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    other = grpo_advantages(rewards, M if group == G else G, scale="group")
    assert not torch.allclose(got, other, atol=1e-3)  # the two groupings differ on this batch


def test_a_trl_step_logs_the_enigma_metrics_and_changes_the_weights(tiny_lm, tmp_path):
    trainer, _rows = _train(tiny_lm, tmp_path)
    logged = trainer.state.log_history[0]
    for key in ("loss_sami", "mi_sym", "si", "ot_divergence", "kl_ref", "format_rate", "advantage_std", "reward"):
        assert key in logged, key
    before = dict(tiny_lm[0].named_parameters())
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved


def test_the_readme_example_runs(tiny_lm, tmp_path, monkeypatch):
    """The snippet of the README (NOTES-trl-backend.md), on the tiny model and a small batch."""
    from datasets import Dataset

    model, tokenizer = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    monkeypatch.chdir(tmp_path)
    # --- README ---
    from enigma_cli.trl import EnigmaGRPOConfig, EnigmaGRPOTrainer  # instead of trl's GRPOConfig, GRPOTrainer

    questions = Dataset.from_list([{"question": "What is 2 + 3?", "answer": "5"},
                                   {"question": "What is 7 - 4?", "answer": "3"}])
    args = EnigmaGRPOConfig(
        output_dir="enigma-grpo", max_steps=1, per_device_train_batch_size=8, num_generations=2,
        max_completion_length=16, use_cpu=True, bf16=False, report_to="none",
        principles="stepwise-vs-oneline", principles_per_prompt=2,  # K principles per question, G = K × 2
        lambda_sami=0.1, lambda_ot=1.0,                              # the ENIGMA terms
    )
    trainer = EnigmaGRPOTrainer(model=model, args=args, train_dataset=questions, processing_class=tokenizer)
    trainer.train()
    # --- end ---
    assert "mi_sym" in trainer.state.log_history[0]

