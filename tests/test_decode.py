"""The lean sampler (`decode.sample`) against the model's own forward pass and `transformers`' warpers."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from enigma_cli.models import decode
from enigma_cli.models.rollout import generate
from enigma_cli.models.tiny import make_tiny_lm

# Mixed lengths, and repeats that share one prompt cache (groups of 3, 2 and 1 rows, interleaved). The distinct
# prompts have lengths 5, 8, 2: sorting them by length is a 3-cycle, so a permutation put back wrongly shows.
PROMPTS = [[7, 9, 11, 13, 15], [30, 31, 32, 33, 34, 35, 36, 37], [7, 9, 11, 13, 15], [20, 21],
           [30, 31, 32, 33, 34, 35, 36, 37], [7, 9, 11, 13, 15]]


def _model(**config):
    model, _ = make_tiny_lm(seed=3, **config)
    return model.eval()


MODELS = {
    "mha": {},
    "gqa": {"num_heads": 4},  # 2 key/value heads below
    "bias+rope-scaling": {},
}


def _configured(name: str):
    model = _model(**MODELS[name])
    if name == "gqa":
        config = copy.deepcopy(model.config)
        config.num_key_value_heads = 2
        model = type(model)(config).eval()
    if name == "bias+rope-scaling":
        config = copy.deepcopy(model.config)
        config.attention_bias = True
        config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
        torch.manual_seed(0)
        model = type(model)(config).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    return model


def _recorded_sample(model, prompts, monkeypatch, **kwargs):
    """`decode.sample`, plus the logits it sampled each step from (``[B, V]`` per step)."""
    seen = []
    pick = decode._pick

    def spy(logits, temperature, top_p):
        seen.append(logits.float().clone())
        return pick(logits, temperature, top_p)

    monkeypatch.setattr(decode, "_pick", spy)
    out = decode.sample(model, prompts, **kwargs)
    monkeypatch.setattr(decode, "_pick", pick)
    return out, seen


def _reference_logits(model, prompt, completion):
    """The model's own logits for each completion position: one unpadded forward of ``prompt + completion``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_equal_the_models_forward(name, temperature, monkeypatch):
    """Every step's logits, for every row, equal a plain forward pass over that row alone (no padding, no cache)."""
    model = _configured(name)
    torch.manual_seed(0)
    out, seen = _recorded_sample(model, PROMPTS, monkeypatch, max_new_tokens=10, eos_ids=[], pad_id=0,
                                 temperature=temperature)
    assert out.shape == (len(PROMPTS), 10) and len(seen) == 10
    for row, prompt in enumerate(PROMPTS):
        reference = _reference_logits(model, prompt, out[row].tolist())
        mine = torch.stack([step[row] for step in seen])
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-4)
    if temperature == 0:
        assert all(torch.equal(out[:, i], seen[i].argmax(-1)) for i in range(10))


def test_bfloat16_logits_are_close(monkeypatch):
    """bf16 rounds differently from the model's own bf16 forward (HF's own cached generation is off by ~0.03 on
    this model), but a wrong position, scale or head grouping is off by far more than 0.1."""
    model = _configured("gqa").to(torch.bfloat16)
    out, seen = _recorded_sample(model, PROMPTS, monkeypatch, max_new_tokens=6, eos_ids=[], pad_id=0,
                                 temperature=0.0)
    for row, prompt in enumerate(PROMPTS):
        reference = _reference_logits(model, prompt, out[row].tolist())
        mine = torch.stack([step[row] for step in seen])
        assert (mine - reference).abs().max() < 0.1


def test_rows_that_end_leave_without_changing_the_others(monkeypatch):
    """With EOS, each greedy row is its no-EOS continuation cut after its first EOS, then pads; rows ending at
    different steps make the batch shrink (checked by counting the rows of each step's logits)."""
    model = _configured("mha")
    full = decode.sample(model, PROMPTS, max_new_tokens=12, eos_ids=[], pad_id=0, temperature=0.0)
    # An "EOS" that some rows produce early, some late and some never.
    firsts = {}
    for row in full.tolist():
        for step, token in enumerate(row):
            firsts.setdefault(token, set()).add(step)
    eos = max(firsts, key=lambda t: (len(firsts[t]), -min(firsts[t])))
    assert len(firsts[eos]) >= 2
    out, seen = _recorded_sample(model, PROMPTS, monkeypatch, max_new_tokens=12, eos_ids=[eos], pad_id=0,
                                 temperature=0.0)
    expected = []
    for row in full.tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)
        expected.append(row[:cut] + [0] * (len(row) - cut))
    width = out.shape[1]
    assert out.tolist() == [row[:width] for row in expected]
    assert all(row[width:] == [0] * (12 - width) for row in expected)  # stopped only once every row ended
    assert len(seen[-1]) < len(PROMPTS)  # ended rows left the batch


def test_probs_match_the_transformers_warpers():
    torch.manual_seed(0)
    logits = torch.randn(5, 40) * 3
    for temperature in (0.7, 1.0, 1.5):
        for top_p in (0.3, 0.9, 1.0):
            warped = TemperatureLogitsWarper(temperature)(None, logits.clone())
            warped = TopPLogitsWarper(top_p)(None, warped) if top_p < 1 else warped
            torch.testing.assert_close(decode._probs(logits, temperature, top_p), warped.softmax(-1))


def test_draw_follows_the_distribution_and_never_draws_zero_mass():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.25, 0.05, 0.0])
    n = 40_000
    torch.manual_seed(1)
    draws = decode._draw(probs.expand(n, -1))
    counts = torch.bincount(draws, minlength=len(probs)).double()
    assert counts[probs == 0].sum() == 0
    nonzero = probs > 0
    expected = probs[nonzero].double() * n
    chi2 = ((counts[nonzero] - expected) ** 2 / expected).sum()
    assert chi2 < 18.5  # 3 degrees of freedom: p ≈ 0.0003 under the null


def test_adapter_layers_are_honoured():
    peft = pytest.importorskip("peft")
    base = _configured("gqa")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, config).eval()
    assert decode.supports(model)
    out, seen = _recorded_sample(model, PROMPTS[:3], pytest.MonkeyPatch(), max_new_tokens=6, eos_ids=[], pad_id=0,
                                 temperature=0.0)
    for row, prompt in enumerate(PROMPTS[:3]):
        reference = _reference_logits(model, prompt, out[row].tolist())
        torch.testing.assert_close(torch.stack([s[row] for s in seen]), reference, atol=1e-4, rtol=1e-4)
    with model.disable_adapter():  # the adapter changes the output, so the check above could fail
        plain = _reference_logits(model, PROMPTS[0], out[0].tolist())
    assert not torch.allclose(plain, _reference_logits(model, PROMPTS[0], out[0].tolist()), atol=1e-3)


def test_other_architectures_fall_back_to_generate(tiny_lm):
    _, tokenizer = tiny_lm
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1,
                                      n_head=2)).eval()
    assert not decode.supports(gpt2)
    gen = generate(gpt2, tokenizer, ["Hi"], max_new_tokens=3, temperature=0.0)
    assert len(gen.completion_ids[0]) >= 1
    with pytest.raises(ValueError, match="Llama-architecture"):
        generate(gpt2, tokenizer, ["Hi"], max_new_tokens=3, engine="lean")


def test_engines_sample_the_same_distribution(tiny_lm):
    """First-token frequencies of either engine match the model's distribution: 2000 samples at temperature 0.1
    (about 24 tokens in play), where sampling noise alone gives a total variation near 0.08."""
    model, tokenizer = tiny_lm
    kwargs = {"num_samples": 2000, "max_new_tokens": 1, "temperature": 0.1, "seed": 5}
    freq = {}
    for engine in ("lean", "hf"):
        gen = generate(model, tokenizer, ["What is 3 + 4?"], engine=engine, **kwargs)
        tokens = torch.tensor([c[0] for c in gen.completion_ids])
        freq[engine] = torch.bincount(tokens, minlength=len(tokenizer)).double() / len(tokens)
    with torch.no_grad():
        from enigma_cli.models.rollout import encode_prompts

        ids = torch.tensor(encode_prompts(tokenizer, ["What is 3 + 4?"]))
        truth = (model(input_ids=ids).logits[0, -1] / 0.1).softmax(-1).double()
    for engine, f in freq.items():
        assert 0.5 * (f - truth).abs().sum() < 0.16, engine


@pytest.mark.parametrize("name", list(MODELS))
def test_score_equals_the_padded_forward(name):
    """`decode.score` (each prompt run once) against `token_logprobs` on the right-padded batch: log-probs of
    every completion token at temperature 0.7 and mean hidden states, empty completion included."""
    from enigma_cli.models.logprobs import mean_pool, pack, token_logprobs

    model = _configured(name)
    completions = [[40, 41, 42], [50], [60, 61, 62, 63, 64, 65], [], [70, 71], [80, 81]]
    layers = [0, 1, -1]
    with torch.no_grad():
        logp, pooled = decode.score(model, PROMPTS, completions, hidden_layers=layers, temperature=0.7)
        batch = pack(PROMPTS, completions, pad_id=0)
        ref, hidden = token_logprobs(model, batch, hidden_layers=layers, temperature=0.7)
    assert logp.shape == (len(PROMPTS), max(map(len, completions)))
    for i, c in enumerate(completions):
        torch.testing.assert_close(logp[i, : len(c)], ref[i][batch.completion_mask[i].bool()], atol=1e-5,
                                   rtol=1e-5)
        assert (logp[i, len(c) :] == 0).all()
        for layer in layers:
            expected = mean_pool(hidden[layer][i : i + 1], batch.completion_mask[i : i + 1])[0]
            torch.testing.assert_close(pooled[layer][i], expected, atol=1e-5, rtol=1e-5)


def test_supports_only_models_whose_forward_it_reproduces(tiny_lm):
    model = _configured("mha")
    model(input_ids=torch.tensor([PROMPTS[0]]), output_hidden_states=True)  # transformers' own recorder hooks
    assert decode.supports(model)
    handle = model.model.layers[0].register_forward_hook(lambda module, args, output: output)
    assert not decode.supports(model)  # the lean path never calls the layer, so the hook would be skipped
    handle.remove()
    handle = model.lm_head.register_forward_hook(lambda module, args, output: output)
    assert decode.supports(model)  # the head is called as a module: its hooks run
    handle.remove()
    peft = pytest.importorskip("peft")
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert not decode.supports(peft.get_peft_model(_configured("mha"), config))  # virtual tokens


def test_chunked_prompts_and_rows_change_nothing(monkeypatch):
    """Prompts and scored rows run in length-sorted chunks; a budget of one row per chunk gives the same."""
    from enigma_cli.models import logprobs

    model = _configured("gqa")
    prompts = PROMPTS
    completions = [[40, 41, 42], [50], [60, 61, 62, 63, 64, 65], [], [70, 71], [80, 81]]
    with torch.no_grad():
        whole = decode.score(model, prompts, completions, hidden_layers=[1, -1])
        greedy = decode.sample(model, prompts, max_new_tokens=6, eos_ids=[], pad_id=0, temperature=0.0)
    monkeypatch.setattr(logprobs, "CPU_CHUNK_TOKENS", 1)
    with torch.no_grad():
        chunked = decode.score(model, prompts, completions, hidden_layers=[1, -1])
        assert torch.equal(decode.sample(model, prompts, max_new_tokens=6, eos_ids=[], pad_id=0, temperature=0.0),
                           greedy)
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-5, rtol=1e-5)
    for layer in (1, -1):
        torch.testing.assert_close(chunked[1][layer], whole[1][layer], atol=1e-5, rtol=1e-5)


def test_score_keeps_layers_as_asked_and_rejects_bad_input():
    from enigma_cli.errors import InputError

    model = _configured("mha")  # 4 layers: 4 and -1 are the same state, asked for twice
    with torch.no_grad():
        _, pooled = decode.score(model, PROMPTS[:2], [[40], [50, 51]], hidden_layers=[4, -1])
    assert set(pooled) == {4, -1} and torch.equal(pooled[4], pooled[-1])
    with pytest.raises(InputError, match="Hidden layer 7 does not exist"):
        decode.score(model, PROMPTS[:2], [[40], [50]], hidden_layers=[7])
    with pytest.raises(ValueError, match="temperature"):
        decode.score(model, PROMPTS[:2], [[40], [50]], temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode.sample(model, PROMPTS[:2], max_new_tokens=0, eos_ids=[], pad_id=0)
