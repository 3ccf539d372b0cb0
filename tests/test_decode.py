"""`decode.supports` / `decode.score`, the names the training loop's reference pass calls, over `reader.read`."""

from __future__ import annotations

import pytest
import torch
from archs import ARCHS, build

from enigma_cli.models import decode
from enigma_cli.models.logprobs import mean_pool, pack, token_logprobs

PROMPTS = [[7, 9, 11, 13, 15], [30, 31, 32, 33, 34, 35, 36, 37], [7, 9, 11, 13, 15], [20, 21]]
COMPLETIONS = [[40, 41, 42], [50], [], [60, 61, 62, 63]]


@pytest.mark.parametrize("name", list(ARCHS))
def test_score_equals_the_padded_forward(name):
    """Every architecture (not only Llama, as before): log-probs and mean hidden states of `token_logprobs` on
    the right-padded batch, each distinct prompt run once, empty completion included."""
    model = build(name)
    layers = [0, -1]
    assert decode.supports(model)
    with torch.no_grad():
        logp, pooled = decode.score(model, PROMPTS, COMPLETIONS, hidden_layers=layers, temperature=0.7)
        batch = pack(PROMPTS, COMPLETIONS, pad_id=0)
        ref, hidden = token_logprobs(model, batch, hidden_layers=layers, temperature=0.7)
    assert logp.shape == (len(PROMPTS), 4) and not logp.requires_grad
    for i, c in enumerate(COMPLETIONS):
        torch.testing.assert_close(logp[i, : len(c)], ref[i][batch.completion_mask[i].bool()], atol=1e-5, rtol=1e-5)
        assert (logp[i, len(c) :] == 0).all()
        for layer in layers:
            expected = mean_pool(hidden[layer][i : i + 1], batch.completion_mask[i : i + 1])[0]
            torch.testing.assert_close(pooled[layer][i], expected, atol=1e-5, rtol=1e-5)


def test_score_follows_the_callers_grad_mode():
    model = build("qwen2")
    with torch.enable_grad():
        logp, _ = decode.score(model, PROMPTS, COMPLETIONS)
    assert logp.requires_grad
    with torch.no_grad():
        logp, _ = decode.score(model, PROMPTS, COMPLETIONS)
    assert not logp.requires_grad


def test_supports_refuses_virtual_token_adapters():
    peft = pytest.importorskip("peft")
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert not decode.supports(peft.get_peft_model(build("llama"), config))
    lora = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert decode.supports(lora)  # adapters that replace layers run inside the model's own forward
