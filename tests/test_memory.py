"""`train.memory`: the heap releases happen inside the backward, spread over it, and change no gradient.

What they save is memory, which a test cannot measure reliably; BENCHMARKS.md ("Peak memory") does, with
bench/peak_memory.py. Here `malloc_trim` is replaced by a recorder of where each call came from.
"""

from __future__ import annotations

import pytest
import torch

from enigma_cli.train import memory


@pytest.fixture
def calls(monkeypatch) -> list[bool]:
    """Each release, recorded as whether it ran inside a backward pass."""
    seen: list[bool] = []
    monkeypatch.setattr(memory, "_TRIM", lambda pad: seen.append(torch._C._current_graph_task_id() != -1))
    return seen


def _net(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(4)))  # 8 parameters


def _grads(net) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    net(torch.randn(3, 6, generator=torch.Generator().manual_seed(1))).square().sum().backward()
    return [p.grad.clone() for p in net.parameters()]


def test_releases_run_inside_every_backward_spread_over_the_parameters(calls):
    net = _net()
    params = list(net.parameters())
    handles = memory.release_during_backward(params, times=4)
    assert [i for i, p in enumerate(params) if getattr(p, "_post_accumulate_grad_hooks", None)] == [1, 3, 5, 7]
    assert len(handles) == 4
    with torch.no_grad():
        net(torch.randn(2, 6))
    net(torch.randn(2, 6)).sum()  # a forward with a graph but no backward
    assert calls == []
    _grads(net)
    assert calls == [True] * 4
    _grads(net)
    assert calls == [True] * 8
    assert memory.release_during_backward(list(_net().parameters()), times=0) == []
    for h in handles:
        h.remove()
    _grads(net)
    assert len(calls) == 8


def test_releases_change_no_gradient(calls):
    plain = _grads(_net())
    net = _net()
    memory.release_during_backward(list(net.parameters()), times=8)
    hooked = _grads(net)
    assert calls and all(torch.equal(a, b) for a, b in zip(plain, hooked))


def test_frozen_parameters_get_no_hook_and_times_is_capped(calls):
    net = _net()
    for p in list(net.parameters())[:6]:
        p.requires_grad_(False)
    handles = memory.release_during_backward(list(net.parameters()), times=16)
    assert len(handles) == 1  # of the two trainable ones, from the second on
    net(torch.randn(2, 6)).sum().backward()
    assert calls == [True]


def test_nothing_is_hooked_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(memory, "_TRIM", None)
    net = _net()
    assert memory.release_during_backward(list(net.parameters())) == []
    memory.release_freed_memory()  # a no-op, not an error


def test_the_trainer_releases_inside_its_backward(calls, model_dir, tmp_path):
    from enigma_cli.models.loading import load_model
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.defaults import for_model
    from enigma_cli.train.run import plan
    from enigma_cli.train.trainer import Trainer

    cfg = TrainConfig(model=str(model_dir), steps=1, prompts_per_step=2, group_size=4, max_new_tokens=8,
                      device="cpu", output_dir=str(tmp_path / "run"))
    pset, examples = plan(cfg)
    lm = load_model(cfg.model, device="cpu", for_training=True)
    trainer = Trainer(lm, examples, pset, for_model(cfg, lm.model))
    assert trainer.model.get_input_embeddings().sparse  # the tiny model's embedding is tied
    trainer.step()
    assert calls.count(True) == memory.RELEASES_PER_BACKWARD  # inside the backward
    assert calls.count(False) >= 2  # and between the step's phases


def test_the_trl_backend_releases_inside_its_backward(calls, model_dir, tmp_path, monkeypatch):
    from test_train import SMALL, train  # tests/ is on sys.path

    monkeypatch.setattr("enigma_cli.plots.grid_plot", lambda *args, **kwargs: None)
    rc, _, err = train("--model", model_dir, "--steps", "1", "--backend", "trl", *SMALL, "--output-dir",
                       tmp_path / "trl")
    assert rc == 0, err
    assert calls.count(True) >= memory.RELEASES_PER_BACKWARD


def _weight_grads(model, ids, loss_of) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_of(model, ids).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _logprob_loss(model, ids):
    logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).mean()


IDS = torch.tensor([[1, 5, 5, 9, 3], [2, 5, 7, 7, 7]])  # repeated tokens: rows of the sparse grad repeat


@pytest.mark.parametrize("arch", ["gemma2", "gpt2"])  # tied; Gemma2's table is an nn.Embedding subclass
def test_a_tied_embedding_sends_a_sparse_grad_and_w_grad_is_the_same_dense_sum(arch):
    from archs import build

    dense = _weight_grads(build(arch).train(), IDS, _logprob_loss)
    model = build(arch).train()
    assert memory.sparse_tied_embedding_grad(model)
    assert model.get_input_embeddings().sparse
    sparse = _weight_grads(model, IDS, _logprob_loss)
    assert dense.keys() == sparse.keys()
    for name in dense:
        assert not sparse[name].is_sparse, name
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-7, msg=name)
    assert not memory.sparse_tied_embedding_grad(model)  # once only


def test_accumulated_micro_batches_clip_and_fused_adamw_see_the_same_dense_grads():
    from archs import build

    from enigma_cli.train.trainer import adamw

    def grads_per_step(sparse: bool) -> list[dict[str, torch.Tensor]]:
        model = build("gpt2").eval()  # no dropout: both runs see the same activations
        if sparse:
            memory.sparse_tied_embedding_grad(model)
        opt, seen = adamw(list(model.parameters()), lr=1e-3), []
        for _ in range(2):  # steps, each of two micro-batches
            for ids in IDS.split(1):
                _logprob_loss(model, ids).backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
            seen.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()  # fused AdamW refuses sparse gradients
            opt.zero_grad(set_to_none=True)
        return seen

    dense, sparse = grads_per_step(False), grads_per_step(True)
    for step, (d, s) in enumerate(zip(dense, sparse)):
        for name in d:
            assert not s[name].is_sparse
            # step 2 starts from weights that differ by float rounding, amplified by Adam on near-zero gradients
            torch.testing.assert_close(s[name], d[name], rtol=1e-5 if step == 0 else 1e-3,
                                       atol=1e-7 if step == 0 else 1e-5, msg=f"step {step + 1}: {name}")


def test_a_backward_that_reaches_only_the_input_side_still_leaves_a_dense_grad():
    from archs import build

    model = build("gpt2").train()
    memory.sparse_tied_embedding_grad(model)
    embed = model.get_input_embeddings().weight
    model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True).hidden_states[0].sum().backward()
    assert embed.grad is not None and not embed.grad.is_sparse
    assert embed.grad[[1, 2, 3]].abs().sum() > 0 and embed.grad[0].eq(0).all()


def test_untied_or_frozen_embeddings_are_left_alone():
    from archs import build

    untied = build("llama")
    assert untied.get_input_embeddings().weight is not untied.get_output_embeddings().weight
    assert not memory.sparse_tied_embedding_grad(untied) and not untied.get_input_embeddings().sparse
    frozen = build("gpt2")
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not memory.sparse_tied_embedding_grad(frozen) and not frozen.get_input_embeddings().sparse
