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
    handles = memory.release_during_backward(list(net.parameters()), times=4)
    assert len(handles) == 4  # every 2nd of 8 parameters
    with torch.no_grad():
        net(torch.randn(2, 6))
    net(torch.randn(2, 6)).sum()  # a forward with a graph but no backward
    assert calls == []
    _grads(net)
    assert calls == [True] * 4
    _grads(net)
    assert calls == [True] * 8
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
    assert len(handles) == 2  # the two trainable ones, one hook each at most
    net(torch.randn(2, 6)).sum().backward()
    assert calls == [True, True]


def test_nothing_is_hooked_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(memory, "_TRIM", None)
    net = _net()
    assert memory.release_during_backward(list(net.parameters())) == []
    memory.release_freed_memory()  # a no-op, not an error


def test_the_trainer_releases_inside_its_backward(calls, model_dir, tmp_path):
    from enigma_cli.models.loading import load_model
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.run import plan
    from enigma_cli.train.trainer import Trainer

    cfg = TrainConfig(model=str(model_dir), steps=1, prompts_per_step=2, group_size=4, max_new_tokens=8,
                      device="cpu", output_dir=str(tmp_path / "run"))
    pset, examples = plan(cfg)
    trainer = Trainer(load_model(cfg.model, device="cpu", for_training=True), examples, pset, cfg)
    trainer.step()
    assert calls.count(True) >= memory.RELEASES_PER_BACKWARD  # inside the backward
    assert calls.count(False) >= 2  # and between the step's phases


def test_the_trl_backend_releases_inside_its_backward(calls, model_dir, tmp_path, monkeypatch):
    from test_train import SMALL, train  # tests/ is on sys.path

    monkeypatch.setattr("enigma_cli.plots.grid_plot", lambda *args, **kwargs: None)
    rc, _, err = train("--model", model_dir, "--steps", "1", "--backend", "trl", *SMALL, "--output-dir",
                       tmp_path / "trl")
    assert rc == 0, err
    assert calls.count(True) >= memory.RELEASES_PER_BACKWARD


def _llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def _weight_grads(model, ids, loss_of) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_of(model, ids).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _logprob_loss(model, ids):
    logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1], dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).mean()


def test_a_tied_embedding_sends_a_sparse_grad_and_w_grad_is_the_same_dense_sum():
    ids = torch.tensor([[1, 5, 5, 9, 3], [2, 5, 7, 7, 7]])  # repeated tokens: rows of the sparse grad repeat
    dense = _weight_grads(_llama(tied=True), ids, _logprob_loss)
    model = _llama(tied=True)
    assert memory.sparse_tied_embedding_grad(model)
    assert model.get_input_embeddings().sparse
    sparse = _weight_grads(model, ids, _logprob_loss)
    assert dense.keys() == sparse.keys()
    for name in dense:
        assert not sparse[name].is_sparse, name
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-7, msg=name)
    assert not memory.sparse_tied_embedding_grad(model)  # once only


def test_a_backward_that_reaches_only_the_input_side_still_leaves_a_dense_grad():
    model = _llama(tied=True)
    memory.sparse_tied_embedding_grad(model)
    grads = _weight_grads(model, torch.tensor([[1, 2, 3]]), lambda m, ids: m.model(input_ids=ids).last_hidden_state.sum())
    weight = grads["model.embed_tokens.weight"]
    assert weight is not None and not weight.is_sparse and weight[[1, 2, 3]].abs().sum() > 0 and weight[0].eq(0).all()


def test_untied_or_frozen_embeddings_are_left_alone():
    untied = _llama(tied=False)
    assert not memory.sparse_tied_embedding_grad(untied) and not untied.get_input_embeddings().sparse
    frozen = _llama(tied=True)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not memory.sparse_tied_embedding_grad(frozen) and not frozen.get_input_embeddings().sparse
