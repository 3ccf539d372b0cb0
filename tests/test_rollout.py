"""Batched generation and scoring agree with naive one-sequence-at-a-time references."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from enigma_cli.errors import InputError
from enigma_cli.models import logprobs
from enigma_cli.models.logprobs import Batch, mean_pool, pack, sequence_mean_logprob, token_logprobs
from enigma_cli.models.rollout import encode_prompts, generate, score_pairs
from enigma_cli.prompts import render_prompt

ENGINES = pytest.mark.parametrize("engine", ["shared", "hf"])


def _random_pairs(vocab: int, lengths: list[tuple[int, int]], seed: int = 0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(7, vocab) for _ in range(p)] for p, _ in lengths]
    completions = [[rng.randrange(7, vocab) for _ in range(c)] for _, c in lengths]
    return prompts, completions


def _naive_logprobs(
    model, prompt: list[int], completion: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """log π(completion | prompt) token by token, one unpadded sequence, full log_softmax."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return torch.stack([logp[len(prompt) + j - 1, tok] for j, tok in enumerate(completion)])


def _naive_hidden(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states


LENGTHS = [(5, 7), (12, 3), (3, 1), (9, 11), (1, 4)]


def test_pack_layout():
    batch = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch.completion_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    assert batch.completion_lengths.tolist() == [2, 3]
    with pytest.raises(ValueError):
        pack([[]], [[1]], pad_id=0)
    with pytest.raises(ValueError):
        pack([[1]], [[1], [2]], pad_id=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_unpadded_loop(tiny_lm, temperature):
    model, tokenizer = tiny_lm
    prompts, completions = _random_pairs(len(tokenizer), LENGTHS)
    batch = pack(prompts, completions, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logp, hidden = token_logprobs(model, batch, temperature=temperature)
    assert hidden is None
    assert logp.shape == batch.input_ids.shape and logp.dtype == torch.float32
    assert torch.all(logp[batch.completion_mask == 0] == 0)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        expected = _naive_logprobs(model, p, c, temperature)
        got = logp[b, len(p) : len(p) + len(c)].double()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_token_logprobs_without_logits_to_keep(tiny_lm, monkeypatch):
    """The fallback for models whose forward lacks `logits_to_keep` gives the same values."""
    model, tokenizer = tiny_lm
    prompts, completions = _random_pairs(len(tokenizer), LENGTHS, seed=1)
    batch = pack(prompts, completions, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        trimmed, _ = token_logprobs(model, batch)
        monkeypatch.setattr(logprobs, "_forward_accepts", lambda model, name: False)
        full, _ = token_logprobs(model, batch)
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=0)


def test_hidden_states_and_mean_pool(tiny_lm):
    model, tokenizer = tiny_lm
    n_layers = model.config.num_hidden_layers
    prompts, completions = _random_pairs(len(tokenizer), LENGTHS, seed=2)
    batch = pack(prompts, completions, pad_id=tokenizer.pad_token_id)
    layers = [0, 2, -1]
    with torch.no_grad():
        _, hidden = token_logprobs(model, batch, hidden_layers=layers)
    assert set(hidden) == set(layers)
    for layer in layers:
        assert hidden[layer].shape == (*batch.input_ids.shape, model.config.hidden_size)
    pooled = mean_pool(hidden[-1], batch.completion_mask)
    assert pooled.shape == (len(prompts), model.config.hidden_size)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        states = _naive_hidden(model, p + c)
        n = len(p) + len(c)
        for layer in layers:
            index = layer % (n_layers + 1)
            torch.testing.assert_close(hidden[layer][b, :n], states[index][0], atol=1e-5, rtol=0)
        manual = states[n_layers][0, len(p) : n].mean(dim=0)
        torch.testing.assert_close(pooled[b], manual, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="layers"):
        token_logprobs(model, batch, hidden_layers=[n_layers + 1])


def test_mean_pool_and_sequence_mean_by_hand():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], (hidden[0, 1] + hidden[0, 2]) / 2)
    torch.testing.assert_close(pooled[1], torch.zeros(3))
    logp = torch.tensor([[0.0, -1.0, -3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_mean_logprob(logp, mask), torch.tensor([-2.0, 0.0]))


def test_gradient_flows(tiny_lm):
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    prompts, completions = _random_pairs(len(tokenizer), LENGTHS[:3], seed=3)
    batch = pack(prompts, completions, pad_id=tokenizer.pad_token_id)
    with torch.enable_grad():
        logp, hidden = token_logprobs(model, batch, hidden_layers=[-2])
        loss = (
            sequence_mean_logprob(logp, batch.completion_mask).sum()
            + mean_pool(hidden[-2], batch.completion_mask).pow(2).sum()
        )
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("share", [True, False])
def test_score_pairs_equals_each_pair_alone(tiny_lm, share):
    model, tokenizer = tiny_lm
    principles = ["Be concise.", "Explain each step carefully.", "Think step by step."]
    question = "What is 3 + 4?"
    prompt_texts = [render_prompt(tokenizer, c, question) for c in principles]
    _, completions = _random_pairs(len(tokenizer), [(0, 6), (0, 2), (0, 9)], seed=4)
    # The K x K critic matrix: row i = principle i, column j = completion j.
    pair_prompts = [prompt_texts[i] for i in range(3) for _ in range(3)]
    pair_completions = [completions[j] for _ in range(3) for j in range(3)]
    scores = score_pairs(model, tokenizer, pair_prompts, pair_completions, batch_size=4, share_prompts=share)
    assert scores.shape == (9,)
    encoded = encode_prompts(tokenizer, prompt_texts)
    for k, (i, j) in enumerate((i, j) for i in range(3) for j in range(3)):
        alone = _naive_logprobs(model, encoded[i], completions[j]).mean()
        assert abs(scores[k].item() - alone.item()) < 1e-5
    # The matrix is not trivially constant.
    assert scores.view(3, 3).std() > 0


def test_encode_prompts_no_duplicate_bos(tiny_lm):
    from tokenizers.processors import TemplateProcessing

    _, tokenizer = tiny_lm
    tok = copy.deepcopy(tokenizer)
    bos = tok.bos_token_id
    # The shipped tiny tokenizer adds no BOS: nothing is prepended.
    text = render_prompt(tok, "Be concise.", "What is 3 + 4?")
    assert encode_prompts(tok, [text])[0] == tok(text, add_special_tokens=False)["input_ids"]
    # A tokenizer that adds BOS: once, and not again when the text already starts with it.
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)]
    )
    assert tok("hi")["input_ids"][0] == bos
    plain, with_bos = encode_prompts(tok, ["hello", tok.bos_token + "hello"])
    assert plain[0] == bos and plain[1] != bos
    assert with_bos == plain


@ENGINES
def test_generate_deterministic_and_ordered(tiny_lm, engine):
    model, tokenizer = tiny_lm
    prompts = [render_prompt(tokenizer, c, "What is 3 + 4?") for c in ["Be concise.", "Think step by step."]]
    kwargs = {"num_samples": 3, "max_new_tokens": 6, "temperature": 1.0, "engine": engine}
    rng_before = torch.get_rng_state()
    a = generate(model, tokenizer, prompts, seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    b = generate(model, tokenizer, prompts, seed=7, **kwargs)
    c = generate(model, tokenizer, prompts, seed=8, **kwargs)
    assert a.completion_ids == b.completion_ids and a.texts == b.texts
    assert a.completion_ids != c.completion_ids
    assert len(a) == 6 and a.prompt_index == [0, 0, 0, 1, 1, 1]
    encoded = encode_prompts(tokenizer, prompts)
    assert a.prompt_ids == [encoded[0]] * 3 + [encoded[1]] * 3
    assert len(set(map(tuple, a.completion_ids[:3]))) > 1  # samples differ within a prompt
    eos = tokenizer.eos_token_id
    for ids, done in zip(a.completion_ids, a.finished):
        assert 1 <= len(ids) <= 6
        assert eos not in ids[:-1]
        assert done == (ids[-1] == eos)


@ENGINES
def test_greedy_batched_equals_one_at_a_time(tiny_lm, engine):
    """Left padding in batched generation must not change greedy continuations."""
    model, tokenizer = tiny_lm
    prompts = [render_prompt(tokenizer, c, q) for c, q in [("Be concise.", "What is 3 + 4?"), ("", "Hi")]]
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0.0, engine=engine)
    for i, text in enumerate(prompts):
        alone = generate(model, tokenizer, [text], max_new_tokens=8, temperature=0.0, engine=engine)
        assert alone.completion_ids[0] == batched.completion_ids[i]
    # batch_size splits into several generate calls with the same greedy result
    split = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0.0, batch_size=1, engine=engine)
    assert split.completion_ids == batched.completion_ids


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engines_draw_the_same_samples(tiny_lm, temperature):
    """For a seed, the shared-prompt sampler draws what `model.generate` draws (greedy and sampled alike)."""
    model, tokenizer = tiny_lm
    prompts = [render_prompt(tokenizer, c, q) for c, q in [("Be concise.", "What is 3 + 4?"), ("", "Hi")]]
    kwargs = {"num_samples": 3, "max_new_tokens": 8, "temperature": temperature, "top_p": 0.9, "seed": 11}
    shared = generate(model, tokenizer, prompts, engine="shared", **kwargs)
    hf = generate(model, tokenizer, prompts, engine="hf", **kwargs)
    assert shared.completion_ids == hf.completion_ids and shared.finished == hf.finished


@ENGINES
def test_generate_truncates_after_eos(tiny_lm, engine):
    """Force EOS at the 3rd new token of row 0 only: its completion stops there, EOS included."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    calls = {"n": 0}

    def boost_eos(module, inputs, output):
        calls["n"] += 1
        output = output.clone()  # [B, T, V]
        output[..., eos] = -1e4  # never EOS by chance...
        if calls["n"] >= 3 and output.shape[0] == 2:  # (the shared sampler drops row 0 once it has ended)
            output[0, ..., eos] = 1e4  # ...except row 0 from its 3rd token on
        return output

    model.lm_head.register_forward_hook(boost_eos)
    prompts = [render_prompt(tokenizer, "Be concise.", "What is 3 + 4?"), render_prompt(tokenizer, "", "Hi")]
    gen = generate(model, tokenizer, prompts, max_new_tokens=6, temperature=1.0, seed=0, engine=engine)
    assert len(gen.completion_ids[0]) == 3 and gen.completion_ids[0][-1] == eos and gen.finished[0]
    assert len(gen.completion_ids[1]) == 6 and eos not in gen.completion_ids[1] and not gen.finished[1]
    assert gen.texts[0] == tokenizer.decode(gen.completion_ids[0][:-1], skip_special_tokens=True)
    # the trailing pads of row 0 never leak into the result
    assert tokenizer.pad_token_id not in gen.completion_ids[0]


def test_generate_restores_training_mode(tiny_lm):
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    model.train()
    generate(model, tokenizer, ["Hi"], max_new_tokens=2)
    assert model.training


def test_batch_to_device_roundtrip():
    batch = pack([[1, 2]], [[3]], pad_id=0)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.input_ids, batch.input_ids)


def test_length_chunks_sort_by_length_and_respect_the_token_budget():
    from enigma_cli.models.logprobs import length_chunks

    lengths = [50, 10, 30, 10, 200, 40, 20]
    chunks = length_chunks(lengths, 60)
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # in length order
    for c in chunks:  # the padded size fits, except a single row longer than the budget
        assert len(c) * max(lengths[i] for i in c) <= 60 or len(c) == 1
    assert chunks == [[1, 3, 6], [2], [5], [0], [4]]
    assert length_chunks([], 10) == []
    assert length_chunks([5] * 5, 100, max_rows=2) == [[0, 1], [2, 3], [4]]  # the row cap applies too
