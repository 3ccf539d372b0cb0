"""Generation, and the critic-pair scores of `score-principles`, for any causal LM.

Every command samples through `generate`: rollouts for GRPO (method.md §2), completions to score and analyse.
It encodes the prompt texts and hands the token ids to the sampler `sampler.make_sampler` picks (the one place
where the engine is chosen; prompts prefilled once per group by default). `score_pairs` fills the K×K critic
matrix of SAMI without gradient (§3) through `reader.read`, each distinct prompt run once for all of its pairs.
The training-side layout (right-padded rows, log-probs aligned with the input) is `logprobs`'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from enigma_cli.errors import InputError
from enigma_cli.models.reader import read
from enigma_cli.models.sampler import ENGINES, make_sampler

__all__ = ["ENGINES", "Generation", "encode_prompts", "generate", "prompt_seeds", "score_pairs"]


@dataclass(frozen=True)
class Generation:
    """Completions for a list of prompts, one entry per sample.

    Sample order: for prompt ``p`` its ``num_samples`` completions are consecutive, so sample ``i`` belongs to
    prompt ``prompt_index[i] == i // num_samples``. ``prompt_ids[i]`` is the (unpadded) prompt of sample ``i``,
    so ``pack(gen.prompt_ids, gen.completion_ids, pad_id)`` scores the samples directly. ``completion_ids`` stop
    after the first EOS (included when produced); ``finished[i]`` says whether it was produced before
    ``max_new_tokens``; ``texts`` are the completions decoded without special tokens.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    prompt_index: list[int]
    finished: list[bool]
    num_samples: int = 1

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_new_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def encode_prompts(tokenizer, prompt_texts: list[str]) -> list[list[int]]:
    """Token ids of each prompt text, with the BOS the tokenizer would add but never a duplicated one.

    Chat templates often write the BOS token themselves; we encode without special tokens and prepend BOS
    only if the tokenizer adds one on its own and the text does not already begin with it. No EOS is appended.
    """
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]
    out = []
    for text in prompt_texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if adds_bos and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        out.append(ids)
    return out


def prompt_seeds(seed: int, prompt_texts: Sequence[str]) -> list[int]:
    """One sampling seed per prompt text, a stable hash of (``seed``, text): 63 bits of BLAKE2b.

    Passed to `generate` as its ``seed``, a prompt's completions then depend on the seed, its text (principle and
    question, as rendered) and the sample index only, not on the other prompts of the call, in any process
    (Python's own ``hash`` of a string changes between processes). Two identical texts draw the same samples.
    """
    def one(text: str) -> int:
        digest = hashlib.blake2b(f"{int(seed)}\x00{text}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    return [one(t) for t in prompt_texts]


def score_pairs(
    model,
    tokenizer,
    prompt_texts: list[str],
    completion_ids: list[list[int]],
    *,
    batch_size: int = 64,
    temperature: float = 1.0,
    share_prompts: bool = True,
) -> torch.Tensor:
    """Mean token log-prob of ``completion_ids[i]`` under ``prompt_texts[i]`` for every pair, no gradient.

    This fills the critic matrix of method.md §3: for one question with K principles, pass the K² (principle
    prompt, completion) pairs and reshape the result to ``[K, K]``. `reader.read` runs each distinct prompt once
    for all of its pairs (``share_prompts=False``: every pair runs its own prompt), at most ``batch_size`` rows
    per forward. The result (float32, CPU, ``[len(prompt_texts)]``) is in the input order; an empty completion
    scores 0. The model runs in eval mode (restored afterwards). For the training loss, where gradient must flow
    through the matrix, call `reader.read` with ``grad=True``.
    """
    if len(prompt_texts) != len(completion_ids):
        raise ValueError(f"score_pairs: {len(prompt_texts)} prompts but {len(completion_ids)} completions")
    if not prompt_texts:
        return torch.zeros(0, dtype=torch.float32)
    # Encode each distinct prompt once (K² pairs share K prompts).
    distinct = list(dict.fromkeys(prompt_texts))
    encoded = dict(zip(distinct, encode_prompts(tokenizer, distinct)))
    was_training = model.training
    model.eval()  # no dropout noise in a metric
    try:
        reading = read(model, [encoded[t] for t in prompt_texts], [list(c) for c in completion_ids],
                       temperature=temperature, share_prompts=share_prompts, max_rows=max(1, int(batch_size)))
    finally:
        model.train(was_training)
    return reading.seq_logp.float().cpu()


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad) if pad is not None else 0


def _eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models often stop on several)."""
    ids: list[int] = []
    sources = [
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ]
    for value in sources:
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if int(item) not in ids:
                ids.append(int(item))
    return ids


def generate(
    model,
    tokenizer,
    prompt_texts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    engine: str = "auto",
) -> Generation:
    """Sample ``num_samples`` completions for each prompt text (already rendered, e.g. by `render_prompt`).

    ``engine`` picks the sampler (`sampler.make_sampler`): ``"shared"`` (each distinct prompt prefilled once for
    all of its samples), ``"hf"`` (``model.generate``), ``"auto"`` (default: shared wherever the model allows).
    Both draw the same samples for a seed (up to float rounding). ``batch_size`` bounds the number of sequences
    per sampler call (default: all at once). The result is deterministic for a given seed, model, device, engine
    and ``batch_size``; the global RNG state is left untouched. ``seed`` may be one seed per prompt text
    (`prompt_seeds`): each prompt's samples then do not depend on the other prompts of the call. The model runs in eval mode during generation
    and its mode is restored afterwards.
    """
    sampler = make_sampler(model, engine)  # bad engines fail before any encoding
    prompts = encode_prompts(tokenizer, list(prompt_texts))
    for i, p in enumerate(prompts):
        if not p:
            raise InputError(f"Prompt {i} encodes to no tokens; it cannot be completed.")
    samples = sampler.generate(prompts, num_samples=num_samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, eos_ids=_eos_ids(model, tokenizer),
                               pad_id=_pad_id(tokenizer), batch_size=batch_size)
    return Generation(
        prompt_ids=[list(p) for p in prompts for _ in range(num_samples)],
        completion_ids=samples.completion_ids,
        texts=list(tokenizer.batch_decode(samples.completion_ids, skip_special_tokens=True)),
        prompt_index=[i for i in range(len(prompts)) for _ in range(num_samples)],
        finished=samples.finished,
        num_samples=num_samples,
    )
