"""Sampling completions: one interface, its engine chosen once (`make_sampler`).

Every command samples through a `Sampler`: rollouts for GRPO (method.md §2), completions to score and analyse.
``make_sampler(model, engine)`` is the only place where the engine is chosen:

- ``"shared"`` (`SharedPrefixSampler`, the default wherever `prefix.supports` the model: any decoder-only LM
  whose cache holds keys and values): each distinct prompt is run once and its cache copied to its samples
  (`prefix`), then a small loop calls the model's own forward one token at a time, with the cache's full-attention
  layers given room to grow in place (`prefix.reserve`) and ended rows dropped from the batch;
- ``"hf"`` (`GenerateSampler`): ``model.generate`` on left-padded rows, every row running its prompt.

Both draw exactly as ``generate`` does: ``transformers``' own temperature and top-p warpers, then
``torch.multinomial`` over the whole batch (ended rows included, as ``generate`` keeps them), so for a seed the
shared sampler draws the very samples ``generate`` draws (up to float rounding of the logits), at any
architecture. Sampling is plain ancestral sampling at ``temperature`` with nucleus ``top_p``: top-k, min-p,
typical-p and repetition penalties from the model's ``generation_config`` are off, so the sampled distribution is
the one GRPO's log-ratios assume; ``temperature == 0`` is greedy. Completions stop after the first EOS (kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from . import prefix

ENGINES = ("auto", "shared", "hf")
#: Former engine names still accepted: "lean" was the Llama-only shared-prompt sampler this one replaces, so that
#: configs written with ``--sampler lean`` keep running (on the same models, and now on every other one).
ALIASES = {"lean": "shared"}
#: Ended rows leave the batch once they are at least this share of it (each time a gather of the cache).
COMPACT_SHARE = 0.25


@dataclass(frozen=True)
class Samples:
    """Completions of ``prompts × num_samples`` rows, prompt-major (row ``i`` continues prompt
    ``i // num_samples``): token ids cut after the first EOS (kept), and whether that EOS came."""

    completion_ids: list[list[int]]
    finished: list[bool]


class Sampler:
    """Validation, seeding, eval mode, row batches and EOS cuts, shared by every engine (`_continue` differs)."""

    name = "base"

    def __init__(self, model):
        self.model = model

    def generate(self, prompts: list[list[int]], num_samples: int = 1, max_new_tokens: int = 128,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, eos_ids=(), pad_id: int = 0,
                 batch_size: int | None = None) -> Samples:
        """Sample ``num_samples`` continuations of each prompt (non-empty token id lists).

        ``batch_size`` bounds the rows per engine call (default: all at once). Deterministic for a seed, model,
        device, engine and ``batch_size``; the global RNG is left untouched. The model runs in eval mode (its
        mode is restored afterwards).
        """
        if num_samples < 1 or max_new_tokens < 1:
            raise ValueError("generate: num_samples and max_new_tokens must be >= 1")
        if temperature < 0:
            raise ValueError("generate: temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("generate: top_p must be in (0, 1]")
        if not prompts or not all(prompts):
            raise ValueError("generate: needs at least one prompt, and no empty one")
        rows = [list(p) for p in prompts for _ in range(num_samples)]
        step = len(rows) if not batch_size else max(1, int(batch_size))
        eos = [int(e) for e in eos_ids]
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        completions, finished = [], []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
                torch.manual_seed(seed)
                for start in range(0, len(rows), step):
                    out = self._continue(rows[start : start + step], int(max_new_tokens), float(temperature),
                                         float(top_p), eos, int(pad_id))
                    for row in out.tolist():
                        cut = next((j for j, tok in enumerate(row) if tok in eos), None)
                        completions.append(row if cut is None else row[: cut + 1])
                        finished.append(cut is not None)
        finally:
            model.train(was_training)
        return Samples(completions, finished)

    def _continue(self, rows, steps, temperature, top_p, eos, pad_id) -> torch.Tensor:
        """New tokens ``[B, n ≤ steps]`` of each row (CPU long), pad after a row's first EOS."""
        raise NotImplementedError


def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The scores ``generate`` samples from (float32 ``[B, V]``): ``transformers``' own temperature and top-p
    warpers, as ``rollout``'s generation config asks for them (nothing else)."""
    scores = logits.float()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


def next_tokens(logits: torch.Tensor, live: torch.Tensor, total: int, temperature: float,
                top_p: float) -> torch.Tensor:
    """One token for each of ``total`` rows (``[total]``) from the logits ``[R, V]`` of the ``live`` ones.

    Greedy at temperature 0. Else one ``torch.multinomial`` over all ``total`` rows, the ended ones given any
    distribution: it draws one exponential per (row, token) whatever the probabilities, so the random stream,
    and each live row's draw, are those of ``generate``, which keeps ended rows in its batch.
    """
    if temperature == 0:
        out = torch.zeros(total, dtype=torch.long, device=logits.device)
        out[live] = logits.argmax(-1)
        return out
    probs = logits.new_zeros(total, logits.shape[-1], dtype=torch.float32)
    probs[:, 0] = 1.0
    probs[live] = warp(logits, temperature, top_p).softmax(-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


class SharedPrefixSampler(Sampler):
    """Each distinct prompt prefilled once; a decoding loop over the model's own forward and cache."""

    name = "shared"

    def _continue(self, rows, steps, temperature, top_p, eos, pad_id) -> torch.Tensor:
        model = prefix.unwrap(self.model)
        device = next(model.parameters()).device
        unique, group = prefix.distinct(rows, device)
        pre = prefix.prefill(model, unique, device, pad_id)
        cache = pre.cache
        cache.batch_select_indices(group)  # one copy of its prompt's cache per row
        prefix.reserve(cache, steps)
        total, width = len(rows), pre.width
        mask = torch.cat([pre.mask[group], pre.mask.new_ones(total, steps)], dim=1)
        start = pre.lengths[group]
        logits = pre.logits[group]
        live = torch.arange(total, device=device)
        ended = torch.zeros(total, dtype=torch.bool, device=device)
        stop = torch.tensor(eos or [-1], device=device)
        out = torch.full((total, steps), pad_id, dtype=torch.long, device=device)
        done = 0
        for step in range(steps):
            token = next_tokens(logits, live, total, temperature, top_p).masked_fill(ended, pad_id)
            out[:, step] = token
            done = step + 1
            ended |= torch.isin(token, stop)
            if done == steps or bool(ended.all()):
                break
            keep = (~ended[live]).nonzero().squeeze(1)
            if len(keep) <= (1 - COMPACT_SHARE) * len(live):  # until then, ended rows ride along
                cache.batch_select_indices(keep)
                live = live[keep]
            output, cache = prefix.run(model, token[live].unsqueeze(1), mask[live, : width + step + 1],
                                       (start[live] + step).unsqueeze(1), cache)
            logits = output.logits[:, -1]
        return out[:, :done].cpu()


class GenerateSampler(Sampler):
    """``model.generate`` on left-padded rows (each row runs its own prompt), with only the warpers asked for."""

    name = "hf"

    def _continue(self, rows, steps, temperature, top_p, eos, pad_id) -> torch.Tensor:
        model = prefix.unwrap(self.model)
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=steps, do_sample=sampling, pad_token_id=pad_id,
            eos_token_id=list(eos),  # [] never stops (None would take the model's own EOS)
            num_beams=1, use_cache=True,
            # Neutral values, so that the model's own generation_config cannot add warpers we did not ask for.
            repetition_penalty=1.0, no_repeat_ngram_size=0,
            **({"temperature": temperature, "top_p": top_p, "top_k": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0} if sampling else {}),
        )
        if sampling and getattr(getattr(model, "generation_config", None), "min_p", None) is not None:
            config.min_p = 0.0
        ids, mask = prefix.left_padded(rows, pad_id)
        device = next(model.parameters()).device
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        return out[:, ids.shape[1] :].cpu()


def make_sampler(model, engine: str = "auto") -> Sampler:
    """The sampler for ``model``: ``"shared"`` (prompts prefilled once), ``"hf"`` (``model.generate``), or
    ``"auto"``: shared wherever `prefix.supports` the model, else hf. An unknown engine, or ``"shared"`` for a
    model it cannot serve, raises ``ValueError``."""
    engine = ALIASES.get(engine, engine)
    if engine not in ENGINES:
        raise ValueError(f"sampler engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    supported = prefix.supports(model)
    if engine == "shared" and not supported:
        raise ValueError(f"the shared-prompt sampler cannot serve {type(prefix.unwrap(model)).__name__} "
                         "(no key/value cache, recurrent or chunked layers, or virtual-token adapters); use 'hf'")
    if engine == "shared" or (engine == "auto" and supported):
        return SharedPrefixSampler(model)
    return GenerateSampler(model)
