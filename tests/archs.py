"""Tiny random causal LMs of several architectures, built in-process (no download), for the reader and sampler
tests: the same prompts and completions must read and sample alike on each of them."""

from __future__ import annotations

import torch

VOCAB = 64
_COMMON = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

#: name -> what it adds to the Llama baseline
ARCHS = {
    "llama": "grouped-query attention, rotary positions",
    "qwen2": "q/k/v projections with bias",
    "mistral": "sliding-window attention (window 4, shorter than the prompts)",
    "gemma2": "alternating sliding and full layers, logit soft-capping, scaled embeddings",
    "gpt2": "learned absolute positions, fused Conv1D attention, LayerNorm",
}


def build(name: str, seed: int = 0, dtype=torch.float32):
    """A randomly initialised, eval-mode model of architecture ``name`` with every weight (biases included)
    perturbed, so that no projection is trivially zero."""
    import transformers as T

    torch.manual_seed(seed)
    if name == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(**_COMMON))
    elif name == "qwen2":
        model = T.Qwen2ForCausalLM(T.Qwen2Config(**_COMMON))
    elif name == "mistral":
        model = T.MistralForCausalLM(T.MistralConfig(**_COMMON, sliding_window=4))
    elif name == "gemma2":
        model = T.Gemma2ForCausalLM(T.Gemma2Config(**_COMMON, head_dim=8, sliding_window=4))
    elif name == "gpt2":
        model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                               bos_token_id=1, eos_token_id=2))
    else:
        raise ValueError(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    config = model.generation_config  # no token ids from the config may steer generate in the tests
    config.eos_token_id = config.bos_token_id = config.pad_token_id = None
    return model.to(dtype).eval()


def naive(model, prompt: list[int], completion: list[int]):
    """One unpadded forward of ``prompt + completion``: (logits [T, V] float64, hidden states tuple [T, H])."""
    ids = torch.tensor([prompt + completion], device=next(model.parameters()).device)
    out = model(input_ids=ids, output_hidden_states=True)
    return out.logits[0].double(), tuple(h[0] for h in out.hidden_states)
