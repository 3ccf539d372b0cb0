"""Generation, and the critic-pair scores of `score-principles`, for any causal LM.

Every command samples through `generate`: rollouts for GRPO (method.md §2), completions to score and analyse.
`score_pairs` fills the K×K critic matrix of SAMI without gradient (§3). The scoring layout (right-padded rows,
log-probs aligned with the input) is `logprobs`'.

Choices (ours):

- **Generation** runs on Llama-architecture models through the lean sampler of `decode` (each distinct prompt run
  and cached once for all of its samples, ended rows dropped from the batch), and on other models through
  ``model.generate`` on left-padded batches; both return plain id lists, truncated after the first EOS (EOS
  kept when produced), so no pad id ever leaks into scoring.
- Sampling is plain ancestral sampling at ``temperature`` with nucleus ``top_p``: top-k, min-p, typical-p and
  repetition penalties from the model's own ``generation_config`` are switched off, so the sampled
  distribution is the one GRPO's log-ratios assume. ``temperature == 0`` means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from enigma_cli.errors import InputError
from enigma_cli.models import decode
from enigma_cli.models.lean import left_padded
from enigma_cli.models.logprobs import (
    chunk_tokens,
    completion_positions,
    length_chunks,
    pack,
    sequence_mean_logprob,
    token_logprobs,
)


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


@torch.no_grad()
def score_pairs(
    model,
    tokenizer,
    prompt_texts: list[str],
    completion_ids: list[list[int]],
    *,
    batch_size: int = 64,
    temperature: float = 1.0,
    engine: str = "auto",
) -> torch.Tensor:
    """Mean token log-prob of ``completion_ids[i]`` under ``prompt_texts[i]`` for every pair, no gradient.

    This fills the critic matrix of method.md §3: for one question with K principles, pass the K² (principle
    prompt, completion) pairs and reshape the result to ``[K, K]``. ``engine="lean"`` runs each distinct prompt
    once for all of its pairs (`decode.score`, Llama-architecture models); ``"hf"`` runs the model's forward on
    right-padded rows, sorted by length and cut into chunks of at most ``batch_size`` to keep padding small;
    ``"auto"`` (default) is lean where `decode.supports` the model. Either way the result (float32, CPU,
    ``[len(prompt_texts)]``) is in the input order. An empty completion scores 0. The model runs in eval mode
    (restored afterwards). For the training loss, where gradient must flow through the matrix, use `pack` + `token_logprobs` +
    `sequence_mean_logprob` directly.
    """
    if len(prompt_texts) != len(completion_ids):
        raise ValueError(f"score_pairs: {len(prompt_texts)} prompts but {len(completion_ids)} completions")
    lean = _lean_engine(engine, model, "score_pairs")
    n = len(prompt_texts)
    result = torch.zeros(n, dtype=torch.float32)
    if n == 0:
        return result
    # Encode each distinct prompt once (K² pairs share K prompts).
    distinct = list(dict.fromkeys(prompt_texts))
    encoded = dict(zip(distinct, encode_prompts(tokenizer, distinct)))
    prompts = [encoded[t] for t in prompt_texts]
    was_training = model.training
    model.eval()  # no dropout noise in a metric
    try:
        if lean:
            logp, _ = decode.score(model, prompts, [list(c) for c in completion_ids], temperature=temperature)
            return sequence_mean_logprob(logp, completion_positions(completion_ids, logp)).float().cpu()
        lengths = [len(prompts[i]) + len(completion_ids[i]) for i in range(n)]
        device = next(model.parameters()).device
        pad_id = _pad_id(tokenizer)
        for idx in length_chunks(lengths, chunk_tokens(device), max_rows=max(1, int(batch_size))):
            batch = pack([prompts[i] for i in idx], [list(completion_ids[i]) for i in idx], pad_id)
            logp, _ = token_logprobs(model, batch, temperature=temperature)
            means = sequence_mean_logprob(logp, batch.completion_mask.to(logp.device))
            result[torch.tensor(idx)] = means.float().cpu()
    finally:
        model.train(was_training)
    return result


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


def _hf_generate(model, prompts: list[list[int]], pad_id: int, config: GenerationConfig) -> torch.Tensor:
    """``model.generate`` on left-padded ``prompts``: the new tokens ``[B, n]`` on the CPU."""
    ids, mask = left_padded(prompts, pad_id)
    device = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    return out[:, ids.shape[1] :].cpu()


ENGINES = ("auto", "lean", "hf")


def _lean_engine(engine: str, model, caller: str) -> bool:
    """Whether `caller` runs ``model`` on the lean path for ``engine`` (auto, lean or hf); bad choices raise."""
    if engine not in ENGINES:
        raise ValueError(f"{caller}: engine must be auto, lean or hf, not {engine!r}")
    supported = decode.supports(model)
    if engine == "lean" and not supported:
        raise ValueError(f"{caller}: the lean engine runs Llama-architecture models only; use engine='hf'")
    return engine == "lean" or (engine == "auto" and supported)


def generate(
    model,
    tokenizer,
    prompt_texts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    engine: str = "auto",
) -> Generation:
    """Sample ``num_samples`` completions for each prompt text (already rendered, e.g. by `render_prompt`).

    ``engine`` picks the sampler: ``"lean"`` is `decode.sample` (Llama-architecture models; each prompt is
    run once for all of its samples), ``"hf"`` is ``model.generate``, ``"auto"`` (default) the lean one where
    `decode.supports` the model. Both draw from the same distribution, but from different random streams.
    ``batch_size`` bounds the number of sequences per sampler call (default: all at once). The result is
    deterministic for a given seed, model, device, engine and ``batch_size``; the global RNG state is left
    untouched. The model runs in eval mode during generation and its mode is restored afterwards.
    """
    if num_samples < 1:
        raise ValueError("generate: num_samples must be >= 1")
    if max_new_tokens < 1:
        raise ValueError("generate: max_new_tokens must be >= 1")
    if temperature < 0:
        raise ValueError("generate: temperature must be >= 0")
    if not 0 < top_p <= 1:
        raise ValueError("generate: top_p must be in (0, 1]")
    lean = _lean_engine(engine, model, "generate")
    device = next(model.parameters()).device
    prompts = encode_prompts(tokenizer, list(prompt_texts))
    for i, p in enumerate(prompts):
        if not p:
            raise InputError(f"Prompt {i} encodes to no tokens; it cannot be completed.")
    sample_prompts = [p for p in prompts for _ in range(num_samples)]
    prompt_index = [i for i in range(len(prompts)) for _ in range(num_samples)]
    pad_id = _pad_id(tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    sampling = temperature > 0
    config = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=sampling,
        pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
        bos_token_id=tokenizer.bos_token_id,
        num_beams=1,
        use_cache=True,
        # Neutral values, so that the model's own generation_config cannot add warpers we did not ask for.
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        **(
            {
                "temperature": float(temperature),
                "top_p": float(top_p),
                "top_k": 0,
                "typical_p": 1.0,
                "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0,
            }
            if sampling
            else {}
        ),
    )
    model_min_p = getattr(getattr(model, "generation_config", None), "min_p", None)
    if sampling and model_min_p is not None:
        config.min_p = 0.0

    total = len(sample_prompts)
    step = total if not batch_size else max(1, int(batch_size))
    completions: list[list[int]] = []
    finished: list[bool] = []
    eos_set = set(eos_ids)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, total, step):
                chunk = sample_prompts[start : start + step]
                if lean:
                    out = decode.sample(model, chunk, max_new_tokens=int(max_new_tokens), eos_ids=eos_ids,
                                        pad_id=pad_id, temperature=float(temperature), top_p=float(top_p))
                else:
                    out = _hf_generate(model, chunk, pad_id, config)
                for row in out.tolist():
                    cut = next((j for j, tok in enumerate(row) if tok in eos_set), None)
                    completions.append(row if cut is None else row[: cut + 1])
                    finished.append(cut is not None)
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Generation(
        prompt_ids=[list(p) for p in sample_prompts],
        completion_ids=completions,
        texts=list(texts),
        prompt_index=prompt_index,
        finished=finished,
        num_samples=num_samples,
    )
