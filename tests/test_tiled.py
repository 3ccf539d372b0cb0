"""The LM head in tiles (`models.logprobs.head_logprobs`, `models.tiled.read`): training's log-probs without a
``[B, T, V]`` logits tensor, equal to the untiled computation.

- `head_logprobs` against ``log_softmax(hidden @ W.T + b) / T`` in float64, values and gradients, with tiles small
  enough that every token and vocabulary boundary is crossed (and tiles that do not divide the sizes).
- `tiled.read` against `reader.read` (the untiled reader) on a tiny Llama, shared prompts and per-row reading,
  values and gradients; under CPU bfloat16 autocast too.
- `micro_loss` through the tiled reader against the same with the untiled one: loss, every metric, every gradient.
- No tensor of the logits' size is made in the forward or the backward (the untiled reader, the control, makes
  several).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from enigma_cli.models import logprobs, reader, tiled

PROMPTS = [[1, 2, 3], [4, 5], [1, 2, 3], [7, 8, 9, 10], [4, 5]]
COMPLETIONS = [[5, 6, 7, 8, 30, 31], [9], [11, 12, 13], [], [40, 41, 42, 43, 44, 45, 46]]


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 5 tokens × 9 vocabulary columns, which divide neither the token counts nor the 308 columns of the
    tiny model: every boundary of the kernel's loops is crossed, and the last tiles are partial."""
    from trl.kernels import chunked_logprob

    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", 5)
    monkeypatch.setattr(logprobs, "CPU_HEAD_TILE", 5 * 9)


def _untiled(hidden, weight, bias, targets, mask, temperature):
    logits = F.linear(hidden, weight, bias) / temperature
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros((), dtype=picked.dtype))


@pytest.mark.parametrize("columns", [7, 13, 97, None])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_head_logprobs_equals_the_log_softmax_in_float64(columns, temperature, monkeypatch):
    from trl.kernels import chunked_logprob

    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", 5)  # 23 tokens: slices of 5, 5, 5, 5, 3
    g = torch.Generator().manual_seed(0)
    R, L, H, V = 4, 9, 16, 101  # 101 columns: no tile width above divides them
    hidden = torch.randn(R, L, H, generator=g, requires_grad=True)
    head = torch.nn.Linear(H, V)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
        head.bias.copy_(torch.randn(V, generator=g))
    targets = torch.randint(0, V, (R, L), generator=g)
    targets[0, 0], targets[1, 3] = 0, V - 1  # the first and last columns
    mask = torch.arange(L) < torch.tensor([9, 5, 0, 9])[:, None]
    upstream = torch.randn(R, L, generator=g)

    got = logprobs.head_logprobs(hidden, targets, mask, head, temperature, columns=columns)
    assert got.dtype == torch.float32 and got.shape == (R, L) and bool((got[~mask] == 0).all())
    params = [hidden, head.weight, head.bias]
    grads = torch.autograd.grad((got * upstream).sum(), params)

    ref_params = [t.detach().double().requires_grad_() for t in params]
    want = _untiled(*ref_params, targets, mask, temperature)
    want_grads = torch.autograd.grad((want * upstream.double()).sum(), ref_params)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-6, atol=1e-5)
    for name, a, b in zip(["hidden", "weight", "bias"], grads, want_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5, msg=name)


def test_head_logprobs_of_no_token_is_a_differentiable_zero():
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    got = logprobs.head_logprobs(hidden, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool), head)
    assert bool((got == 0).all())
    got.sum().backward()
    assert bool((hidden.grad == 0).all())


def _loss(r: reader.Reading, g: torch.Generator) -> torch.Tensor:
    """A loss that weighs every log-prob and every pooled coordinate differently."""
    loss = (r.logp * torch.randn(r.logp.shape, generator=g)).sum()
    for x in r.pooled.values():
        loss = loss + (x * torch.randn(x.shape, generator=g)).sum()
    return loss


def _read_and_grads(read, model, grad=True, **kwargs):
    r = read(model, PROMPTS, COMPLETIONS, layers=[1, -1], grad=grad, **kwargs)
    if not grad:
        return r, {}
    model.zero_grad(set_to_none=True)
    _loss(r, torch.Generator().manual_seed(5)).backward()
    return r, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_reading(a: reader.Reading, b: reader.Reading, tol: float = 1e-5):
    assert torch.equal(a.mask, b.mask)
    assert a.logp.dtype == b.logp.dtype == torch.float32
    torch.testing.assert_close(a.logp, b.logp, rtol=tol, atol=tol)
    assert bool((a.logp[~a.mask] == 0).all())
    assert set(a.pooled) == set(b.pooled)
    for layer in a.pooled:
        torch.testing.assert_close(a.pooled[layer], b.pooled[layer], rtol=tol, atol=tol, msg=str(layer))


def _assert_same_grads(a: dict, b: dict, tol: float = 1e-5):
    assert set(a) == set(b) and a
    scale = max(float(g.abs().max()) for g in b.values())
    for name, want in b.items():
        torch.testing.assert_close(a[name], want, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiled_read_equals_the_untiled_reader(tiny_lm, small_tiles, temperature, checkpointing):
    """Shared prompts (and, under activation checkpointing, per-row reading): values and gradients equal."""
    model = copy.deepcopy(tiny_lm[0]).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got, got_grads = _read_and_grads(tiled.read, model, temperature=temperature)
    want, want_grads = _read_and_grads(reader.read, model, temperature=temperature)
    _assert_same_reading(got, want)
    _assert_same_grads(got_grads, want_grads)
    assert "lm_head.weight" in got_grads or "model.embed_tokens.weight" in got_grads
    # without a graph too, and the head is restored after each read
    _assert_same_reading(tiled.read(model, PROMPTS, COMPLETIONS, layers=[2], temperature=temperature),
                         reader.read(model, PROMPTS, COMPLETIONS, layers=[2], temperature=temperature))
    assert "forward" not in model.get_output_embeddings().__dict__


def test_tiled_read_per_row_equals_the_untiled_reader(tiny_lm, small_tiles, monkeypatch):
    """The reader's padded per-row chunks (models whose prompts cannot be shared), in several chunks."""
    model = copy.deepcopy(tiny_lm[0]).eval()
    monkeypatch.setattr(reader.prefix, "supports", lambda m: False)  # the plan both reads share (reader.ReadPlan)
    monkeypatch.setattr(reader, "chunk_tokens", lambda device: 12)  # two or three rows per chunk
    got, got_grads = _read_and_grads(tiled.read, model, temperature=0.8)
    want, want_grads = _read_and_grads(lambda *a, **k: reader.read(*a, **k, max_tokens=12), model, temperature=0.8)
    _assert_same_reading(got, want)
    _assert_same_grads(got_grads, want_grads)


def test_tiled_read_under_cpu_bfloat16_autocast(tiny_lm, small_tiles):
    """Under ``torch.autocast("cpu", bfloat16)`` the head projects in bfloat16 and normalises in float32, as the
    untiled reader normalises the bfloat16 logits in float32: the same log-probs to float32 rounding. The gradients
    agree to bfloat16 rounding (the kernel accumulates its gradient products in float32, autograd's bfloat16 linear
    does not; on this model they differ by 0.7% of the largest, bfloat16 against float32 by 0.5%)."""
    model = copy.deepcopy(tiny_lm[0]).train()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got, got_grads = _read_and_grads(tiled.read, model, temperature=0.7)
        want, want_grads = _read_and_grads(reader.read, model, temperature=0.7)
    assert got.logp.dtype == torch.float32
    _assert_same_reading(got, want)
    _assert_same_grads(got_grads, want_grads, tol=2e-2)
    with torch.no_grad():  # and it does run in bfloat16: far from the float32 values
        exact = reader.read(model, PROMPTS, COMPLETIONS, temperature=0.7).logp
    assert float((got.logp.detach() - exact).abs().max()) > 1e-4


def test_a_model_marked_bf16_mixed_is_read_under_its_autocast(tiny_lm):
    """``--dtype bf16-mixed`` marks the model (`precision.mark`): the tiled read enters its autocast as the reader
    does, so the two agree, and both differ from the float32 read."""
    from enigma_cli.models.precision import mark

    model = copy.deepcopy(tiny_lm[0])
    exact = tiled.read(model, PROMPTS, COMPLETIONS, temperature=0.7).logp
    mark(model, torch.bfloat16)
    got = tiled.read(model, PROMPTS, COMPLETIONS, temperature=0.7).logp
    torch.testing.assert_close(got, reader.read(model, PROMPTS, COMPLETIONS, temperature=0.7).logp,
                               rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32 and float((got - exact).abs().max()) > 1e-4


class _Shapes(TorchDispatchMode):
    """The shape of every tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _vocab_sized(read, model) -> list[tuple[int, ...]]:
    """Shapes with a vocabulary-sized dimension, other than the head's parameters and their gradients."""
    vocab, hidden = model.get_output_embeddings().weight.shape
    with _Shapes() as seen:
        r = read(model, PROMPTS, COMPLETIONS, layers=[-1], grad=True, temperature=0.9)
        _loss(r, torch.Generator().manual_seed(1)).backward()
    return [s for s in seen.shapes if vocab in s and s not in ((vocab, hidden), (hidden, vocab), (vocab,))]


def test_no_logits_sized_tensor_in_the_forward_or_the_backward(tiny_lm, small_tiles):
    model = copy.deepcopy(tiny_lm[0]).train()
    assert _vocab_sized(tiled.read, model) == []
    control = _vocab_sized(reader.read, model)  # the untiled reader: [R, Lc, V] logits, their gradients, ...
    n_tokens = sum(map(len, COMPLETIONS))
    assert sum(1 for s in control if len(s) == 3 and s[0] * s[1] >= n_tokens) >= 3


def test_micro_loss_through_the_tiled_head_equals_the_untiled(tiny_lm, monkeypatch):
    """The whole objective (GRPO with β > 0 against an old policy, SAMI, OT, temperature 0.7, completions of
    different lengths): the tiled reader changes no loss, metric or gradient beyond float32 rounding."""
    from test_objective import _grads, _setup

    from enigma_cli.train import objective
    from enigma_cli.train.params import from_train_config

    model, _, cfg, ep, layers, ref, old = _setup(tiny_lm, "enigma", beta=0.1, sami_matrices=0, lambda_sami=0.7,
                                                   lambda_ot=2.0, temperature=0.7)
    params = from_train_config(cfg)
    assert params.temperature == 0.7 and len({len(c) for c in ep.completion_ids}) > 1
    num_items = sum(map(len, ep.completion_ids))
    runs = {}
    for name, read in [("tiled", tiled.read), ("untiled", reader.read)]:
        monkeypatch.setattr(objective, "read", read)
        loss, metrics = objective.micro_loss(model, ep, range(2), params, layers=layers, ref=ref, old=old,
                                             num_items=num_items)
        runs[name] = loss, metrics, _grads(model, loss)
    (loss, metrics, grads), (want_loss, want_metrics, want_grads) = runs["tiled"], runs["untiled"]
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-7)
    assert metrics["loss_sami"] > 0 and metrics["ot_divergence"] > 1e-4 and metrics["kl_ref"] > 1e-4
    for key, value in want_metrics.items():
        if key != "ot_unconverged":  # a solve at the edge of its tolerance turns on the last digits
            assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    _assert_same_grads(grads, want_grads)


def test_heads_that_cannot_be_tiled_are_read_untiled(tiny_lm):
    model = copy.deepcopy(tiny_lm[0])
    assert logprobs.lm_head(model) is model.get_output_embeddings()
    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0  # the model's logits are not the head's output
    double = copy.deepcopy(model).double()  # the kernel folds in float32; the reader keeps float64
    for declined in (capped, double):
        assert logprobs.lm_head(declined) is None
        got = tiled.read(declined, PROMPTS, COMPLETIONS, temperature=0.5)
        want = reader.read(declined, PROMPTS, COMPLETIONS, temperature=0.5)
        assert torch.equal(got.logp, want.logp)


def test_a_ddp_that_looks_for_unused_parameters_is_read_untiled(tiny_lm, tmp_path):
    """Such a DDP would take the deferred head for unused and reduce its gradient before the tiles make it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = copy.deepcopy(tiny_lm[0])
        assert logprobs.lm_head(DistributedDataParallel(model)) is model.get_output_embeddings()
        assert logprobs.lm_head(DistributedDataParallel(model, find_unused_parameters=True)) is None
    finally:
        dist.destroy_process_group()


def test_lora_models_read_the_base_head_and_an_adapted_head_is_declined(tiny_lm):
    peft = pytest.importorskip("peft")
    base = copy.deepcopy(tiny_lm[0])
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    assert logprobs.lm_head(model) is base.get_output_embeddings()
    got, got_grads = _read_and_grads(tiled.read, model)
    want, want_grads = _read_and_grads(reader.read, model)
    _assert_same_reading(got, want)
    _assert_same_grads(got_grads, want_grads)
    adapted = peft.get_peft_model(copy.deepcopy(tiny_lm[0]), peft.LoraConfig(r=4, target_modules=["lm_head"]))
    assert logprobs.lm_head(adapted) is None


def test_deferred_head_restores_an_instance_forward():
    head = torch.nn.Linear(3, 5)
    x = torch.randn(2, 3)
    with logprobs.deferred_head(head):
        assert head(x) is x
    assert "forward" not in head.__dict__ and head(x).shape == (2, 5)

    def hooked(inputs):  # as accelerate's device hooks replace a module's forward
        return torch.zeros(1)

    head.forward = hooked
    with pytest.raises(RuntimeError), logprobs.deferred_head(head):
        assert head(x) is x
        raise RuntimeError("restored on the way out too")
    assert head.forward is hooked
