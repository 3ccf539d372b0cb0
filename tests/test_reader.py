"""`reader.read` against each architecture's own unpadded forward: values and gradients, with and without shared
prompts, mixed prompt lengths, several completions per prompt (SAMI's critic layout), any chunking."""

from __future__ import annotations

import pytest
import torch
from archs import ARCHS, build, naive

from enigma_cli.errors import InputError
from enigma_cli.models import prefix
from enigma_cli.models.hidden import num_layers, resolve_layers
from enigma_cli.models.reader import _plan, read

# Distinct prompts of lengths 5, 8, 2 (sorting them by length is a 3-cycle, so a permutation put back wrongly
# shows), interleaved, each followed by several completions as in a K = 3 critic matrix; one completion empty.
P5, P8, P2 = [7, 9, 11, 13, 15], [30, 31, 32, 33, 34, 35, 36, 37], [20, 21]
PROMPTS = [P5, P8, P5, P2, P8, P5, P2, P8]
COMPLETIONS = [[40, 41, 42], [50], [60, 61, 62, 63, 44, 45], [], [40, 41], [50, 51], [52, 53, 54, 55], [40, 41, 42]]
LAYERS = [0, 1, -1]
AT = (torch.tensor([0, 2, 2, 6, 7]), torch.tensor([0, 0, 5, 3, 2]))  # (row, token of its completion)


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request):
    return build(request.param)


def _expected(model, prompts=PROMPTS, completions=COMPLETIONS, layers=LAYERS, temperature=1.0):
    """Per-row unpadded forwards: token log-probs, pooled states, and the `AT` states and distributions."""
    logp, pooled, states, dists = [], {layer: [] for layer in layers}, {layer: [] for layer in layers}, []
    n_states = num_layers(model) + 1
    for row, (p, c) in enumerate(zip(prompts, completions)):
        logits, hidden = naive(model, p, c)
        log_dist = torch.log_softmax(logits / temperature, dim=-1)  # row t predicts token t + 1
        logp.append(torch.stack([log_dist[len(p) + j - 1, tok] for j, tok in enumerate(c)]) if c else None)
        for layer in layers:
            h = hidden[layer % n_states][len(p):]
            pooled[layer].append(h.double().mean(0) if c else torch.zeros(h.shape[-1], dtype=torch.float64))
    for row, j in zip(*AT):
        p, c = prompts[row], completions[row]
        logits, hidden = naive(model, p, c)
        dists.append(torch.log_softmax(logits[len(p) + j - 1] / temperature, dim=-1))
        for layer in layers:
            states[layer].append(hidden[layer % n_states][len(p) + j].double())
    return logp, {k: torch.stack(v) for k, v in pooled.items()}, {k: torch.stack(v) for k, v in states.items()}, \
        torch.stack(dists)


@pytest.mark.parametrize("share", [True, False])
def test_read_equals_the_models_own_forward(model, share):
    assert prefix.supports(model)
    with torch.no_grad():
        logp, pooled, states, dists = _expected(model, temperature=0.7)
    r = read(model, PROMPTS, COMPLETIONS, layers=LAYERS, temperature=0.7, share_prompts=share, at=AT)
    assert r.logp.shape == r.mask.shape == (len(PROMPTS), 6) and r.logp.dtype == torch.float32
    assert r.mask.sum(1).tolist() == [len(c) for c in COMPLETIONS]
    assert (r.logp[~r.mask] == 0).all() and not r.logp.requires_grad
    for i, c in enumerate(COMPLETIONS):
        if c:
            torch.testing.assert_close(r.logp[i, : len(c)].double(), logp[i], atol=1e-5, rtol=1e-5)
    for layer in LAYERS:
        torch.testing.assert_close(r.pooled[layer].double(), pooled[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.states[layer].double(), states[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.next_logprobs.double(), dists, atol=1e-5, rtol=1e-5)
    means = torch.stack([lp.mean() if lp is not None else torch.zeros((), dtype=torch.float64) for lp in logp])
    torch.testing.assert_close(r.seq_logp.double(), means, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_read_gradients_equal_the_models_own(share):
    """A loss over log-probs (weighted, as GRPO's), pooled states (as OT's) and `at` states: the gradient of every
    parameter equals the one through per-row unpadded forwards, to float32 rounding (not float64: RMSNorm
    normalises in float32 whatever the dtype, and transformers' Gemma2 turns left padding into NaN in float64)."""
    for name in ARCHS:
        model = build(name)
        weights = torch.linspace(-1, 1, len(PROMPTS))

        def loss_of(logp_rows, pooled, states, weights=weights):
            return (sum(w * lp.mean() for w, lp in zip(weights, logp_rows) if lp is not None)
                    + pooled.pow(2).sum() + states.sum())

        model.zero_grad()
        r = read(model, PROMPTS, COMPLETIONS, layers=[-1], grad=True, share_prompts=share, at=AT)
        assert r.logp.requires_grad
        rows = [r.logp[i, : len(c)] if c else None for i, c in enumerate(COMPLETIONS)]
        loss_of(rows, r.pooled[-1], r.states[-1]).backward()
        mine = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        logp, pooled, states, _ = _expected(model, layers=[-1])
        loss_of(logp, pooled[-1], states[-1]).backward()
        for key, p in model.named_parameters():
            assert p.grad.abs().sum() > 0 or mine[key].abs().sum() == 0, (name, key)
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(mine[key], p.grad, atol=2e-5 * scale, rtol=1e-4, msg=f"{name} {key}")


def test_chunking_changes_nothing(model):
    """One row (or one prompt) per chunk, a row cap, or everything at once: the same numbers."""
    whole = read(model, PROMPTS, COMPLETIONS, layers=[-1], at=AT)
    for kwargs in ({"max_tokens": 1}, {"max_rows": 2}, {"max_tokens": 1, "share_prompts": False}):
        part = read(model, PROMPTS, COMPLETIONS, layers=[-1], at=AT, **kwargs)
        torch.testing.assert_close(part.logp, whole.logp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(part.pooled[-1], whole.pooled[-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(part.next_logprobs, whole.next_logprobs, atol=1e-5, rtol=1e-5)


def test_a_misordered_prompt_cache_is_caught(monkeypatch):
    """The data above can tell a row continuing another row's prompt: with the cache rows shuffled, the shared
    read no longer matches the unpadded forward (so the equality tests guard the ordering)."""
    model = build("llama")
    with torch.no_grad():
        logp, *_ = _expected(model)
    select = prefix.select
    monkeypatch.setattr(prefix, "select", lambda cache, index: select(cache, index.roll(1)))
    r = read(model, PROMPTS, COMPLETIONS)
    worst = max(float((r.logp[i, : len(c)].double() - logp[i]).abs().max()) for i, c in enumerate(COMPLETIONS) if c)
    assert worst > 1e-2


def test_plan_covers_every_row_once_within_the_budget():
    prompt_lens, group = [5, 8, 2, 30], [0, 1, 0, 2, 1, 0, 2, 1, 3, 3]
    comp_lens = [3, 1, 6, 0, 2, 2, 4, 3, 9, 1]
    for budget, cap in ((10_000, None), (40, None), (1, None), (10_000, 2)):
        plan = _plan(prompt_lens, group, comp_lens, budget, cap)
        rows = [r for _, chunks in plan for chunk in chunks for r in chunk]
        assert sorted(rows) == list(range(len(group)))
        for prompt_set, chunks in plan:
            assert {group[r] for chunk in chunks for r in chunk} == set(prompt_set)  # rows stay with their prompt
            width = max(prompt_lens[p] for p in prompt_set)
            for chunk in chunks:
                assert len(chunk) == 1 or len(chunk) * (width + max(max(1, comp_lens[r]) for r in chunk)) <= budget
                assert cap is None or len(chunk) <= cap
    assert len(_plan(prompt_lens, group, comp_lens, 10_000, None)) == 1  # everything fits: one prefill
    assert len(_plan(prompt_lens, group, comp_lens, 1, None)) == 4  # one prompt per prefill


def test_layers_are_checked_in_one_place(model):
    n = num_layers(model)
    assert n == 2 and resolve_layers(model, [0, -1, n]) == {0: 0, -1: n, n: n}
    with pytest.raises(InputError, match="Hidden layer 3 does not exist: the model has 2 layers"):
        read(model, PROMPTS[:1], COMPLETIONS[:1], layers=[3])
    with pytest.raises(InputError, match="Hidden layer -4"):
        resolve_layers(model, [-4])
    with pytest.raises(InputError, match="--layers 5 does not exist: the model has 4 layers"):
        resolve_layers(4, [0, 5], what="--layers")  # a layer count works before any weights load


def test_bad_input_is_refused():
    model = build("llama")
    with pytest.raises(ValueError, match="temperature"):
        read(model, PROMPTS, COMPLETIONS, temperature=0)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        read(model, PROMPTS[:2], COMPLETIONS[:1])
    with pytest.raises(ValueError, match="non-empty"):
        read(model, [[]], [[1]])
    with pytest.raises(ValueError, match="token of its completion"):
        read(model, PROMPTS, COMPLETIONS, at=(torch.tensor([3]), torch.tensor([0])))  # row 3 is empty


def test_models_that_cannot_share_read_per_row():
    """A prompt-learning adapter (virtual tokens) shifts every position: no sharing, and still exact."""
    peft = pytest.importorskip("peft")
    base = build("llama")
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = peft.get_peft_model(base, config).eval()
    assert not prefix.supports(model)
    r = read(model, PROMPTS[:3], COMPLETIONS[:3])
    with torch.no_grad():
        for i in range(3):
            p, c = PROMPTS[i], COMPLETIONS[i]
            logits = model(input_ids=torch.tensor([p + c])).logits[0, -len(c) - 1 : -1].double()
            expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(c).unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(r.logp[i, : len(c)].double(), expected, atol=1e-5, rtol=1e-5)


def test_lora_adapters_are_read_through_the_models_own_forward():
    """Adapters that replace layers (LoRA) run inside the model's forward: shared reads see them."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    model = peft.get_peft_model(build("llama"), config).eval()
    assert prefix.supports(model)
    with torch.no_grad():
        logp, *_ = _expected(model, layers=[])
        r = read(model, PROMPTS, COMPLETIONS)
        with model.disable_adapter():
            plain = read(model, PROMPTS, COMPLETIONS)
    for i, c in enumerate(COMPLETIONS):
        if c:
            torch.testing.assert_close(r.logp[i, : len(c)].double(), logp[i], atol=1e-5, rtol=1e-5)
    assert (r.logp - plain.logp).abs().max() > 1e-3  # the adapter matters, so the check above could fail


def test_activation_checkpointing_reads_per_row():
    """transformers drops the cache inside checkpointed layers: with a graph, such a model is read per row, and
    its gradients still equal the unpadded forwards'."""
    model = build("llama")
    model.gradient_checkpointing_enable()
    model.train()  # no dropout in these configs: training mode only switches checkpointing on
    r = read(model, PROMPTS, COMPLETIONS, grad=True)
    r.seq_logp.sum().backward()
    mine = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    logp, *_ = _expected(model, layers=[])
    sum(lp.mean() for lp in logp if lp is not None).backward()
    for key, p in model.named_parameters():
        torch.testing.assert_close(mine[key], p.grad, atol=2e-5 * float(p.grad.abs().max()), rtol=1e-4)
