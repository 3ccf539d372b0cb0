"""The tiny Llama-architecture causal LM behind `enigma-tiny`, and its byte-level BPE tokenizer.

Everything here is built in-process from a config, with no download: the tokenizer is trained by our code on
the texts it is given (byte-level BPE through the `tokenizers` library), and the model is a randomly initialised
`transformers.LlamaForCausalLM`. `make_tiny_lm` gives tests across the project a ~0.7M-parameter model in about a
second; `enigma build-default-model` (see `pretrain.py`) pre-trains the same architecture into enigma-tiny.

Choices (ours, not the papers'):

- Chat template with four role/turn tokens, ``<|system|>``, ``<|user|>``, ``<|assistant|>`` and ``<|end|>``;
  every turn ends with ``<|end|>``, which is also the EOS token, so generation stops at the end of the assistant
  turn. The tokenizer adds no BOS when encoding and the template writes none, so ``render_prompt`` text encodes
  to exactly the ids the model was trained on.
- Byte-level BPE with digits split one by one, so any text round-trips and numbers tokenise uniformly.
- Tied input/output embeddings (at this size the embedding is a large share of the parameters).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"  # ends every turn; the EOS token
BOS_TOKEN = "<|begin|>"  # declared for tools that want one; never added when encoding
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = [SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, END_TOKEN, *ROLE_TOKENS]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM_TOKEN + "\n{{ message['content'] }}" + END_TOKEN + "\n"
    "{% elif message['role'] == 'user' %}" + USER_TOKEN + "\n{{ message['content'] }}" + END_TOKEN + "\n"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT_TOKEN + "\n{{ message['content'] }}" + END_TOKEN
    + "\n"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_TOKEN + "\n{% endif %}"
)

# A small built-in corpus so that `make_tiny_lm()` needs no data: the prompt scaffolding, the completion tags,
# digits and arithmetic words. Tests that need the tokenizer to compress something else pass their own texts.
_DEFAULT_CORPUS = [
    "Answer in this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>",
    "<reasoning>\nWe add 12 and 30 to get 42.\n</reasoning>\n<answer>\n42\n</answer>",
    (
        "<reasoning>\nFirst, 7 times 6 is 42. Then 42 minus 5 is 37. So the answer is 37.\n</reasoning>\n"
        "<answer>\n37\n</answer>"
    ),
    "What is 3 + 4? How many apples are left? Compute the sum, the difference and the product.",
    "Be concise. Explain each step carefully. Check the result. Think step by step.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) , . ? !",
    "the quick brown fox jumps over the lazy dog THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for `transformers`.

    The 256 byte symbols are always in the vocabulary, so any text round-trips; ``vocab_size`` bounds the
    vocabulary including the special tokens (the result may be smaller when the texts offer fewer merges).
    The returned tokenizer pads on the left (for batched generation) and carries ``CHAT_TEMPLATE``.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    # Digits are split one by one (as Llama does): arithmetic is far easier to learn than with arbitrary
    # multi-digit merges, and every number is spelled the same way wherever it occurs.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,  # ids 0..5, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=ROLE_TOKENS,
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
) -> transformers.LlamaConfig:
    """A Llama config of about 0.7–1M parameters (defaults), with tied embeddings.

    Special token ids follow `train_tokenizer`: pad 0, bos 1, eos 2.
    """
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(END_TOKEN),
        attention_bias=False,
        mlp_bias=False,
    )


def init_tiny_lm(tokenizer, seed: int = 0, **config_kwargs) -> transformers.LlamaForCausalLM:
    """A randomly initialised tiny Llama sized to ``tokenizer`` (``config_kwargs`` go to `tiny_config`).

    The global RNG is left untouched. The model is in eval mode, fp32, on CPU; its generation config stops at
    EOS and pads with the pad token.
    """
    config = tiny_config(len(tokenizer), **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()
    return model


def make_tiny_lm(
    seed: int = 0, texts: Iterable[str] | None = None, *, vocab_size: int = 512, **config_kwargs
) -> tuple[transformers.LlamaForCausalLM, transformers.PreTrainedTokenizerFast]:
    """A randomly initialised tiny Llama and its tokenizer, built in-process in about a second.

    ``texts`` trains the tokenizer (default: a small built-in corpus); ``config_kwargs`` go to `tiny_config`.
    """
    tokenizer = train_tokenizer(_DEFAULT_CORPUS if texts is None else texts, vocab_size=vocab_size)
    return init_tiny_lm(tokenizer, seed, **config_kwargs), tokenizer


def param_count(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
