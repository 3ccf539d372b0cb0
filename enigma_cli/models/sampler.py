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

Seeds: one ``seed`` seeds one stream for the whole call, so a row's draws depend on its place in the batch. A list
of seeds, one per prompt, gives each prompt a generator of its own: its ``num_samples`` rows draw from it as they
would if the prompt were sampled alone with that seed (``generate``'s draws at that seed), whatever else is in
the batch. `score-principles` needs this, so that a completion depends on its prompt and sample index only and a
principle set scored alone equals the same set cut out of a larger pool (`enigma_cli.score.pool`). Batches then
hold whole prompts (a prompt with more samples than ``batch_size`` is split into batches of its own rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from . import prefix
from .precision import autocast

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
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | Sequence[int] = 0, eos_ids=(),
                 pad_id: int = 0, batch_size: int | None = None) -> Samples:
        """Sample ``num_samples`` continuations of each prompt (non-empty token id lists).

        ``batch_size`` bounds the rows per engine call (default: all at once). Deterministic for a seed, model,
        device, engine and ``batch_size``; the global RNG is left untouched. ``seed`` may be one seed per prompt
        (module docstring): each prompt's rows then draw from their own generator, independently of the batch.
        The model runs in eval mode (its mode is restored afterwards).
        """
        if num_samples < 1 or max_new_tokens < 1:
            raise ValueError("generate: num_samples and max_new_tokens must be >= 1")
        if temperature < 0:
            raise ValueError("generate: temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("generate: top_p must be in (0, 1]")
        if not prompts or not all(prompts):
            raise ValueError("generate: needs at least one prompt, and no empty one")
        seeds = None if isinstance(seed, int) else [int(s) for s in seed]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
        rows = [list(p) for p in prompts for _ in range(num_samples)]
        step = len(rows) if not batch_size else max(1, int(batch_size))
        eos = [int(e) for e in eos_ids]
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        completions, finished = [], []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode(), \
                    autocast(model):  # the model's mixed precision (precision.mark), if any
                if seeds is None:
                    torch.manual_seed(seed)
                    batches = [(start, min(start + step, len(rows)), None) for start in range(0, len(rows), step)]
                else:
                    batches = self._seeded_batches(seeds, num_samples, step, device)
                for start, end, groups in batches:
                    out = self._continue(rows[start:end], int(max_new_tokens), float(temperature), float(top_p),
                                         eos, int(pad_id), groups)
                    for row in out.tolist():
                        cut = next((j for j, tok in enumerate(row) if tok in eos), None)
                        completions.append(row if cut is None else row[: cut + 1])
                        finished.append(cut is not None)
        finally:
            model.train(was_training)
        return Samples(completions, finished)

    #: whether one engine call can hold several prompts with generators of their own (`next_tokens`' groups)
    mixes_generators = False

    def _seeded_batches(self, seeds: list[int], num_samples: int, step: int, device):
        """(first row, end row, groups) of each engine call for per-prompt seeds: whole prompts up to ``step`` rows
        (one prompt a call for an engine that cannot mix generators), a prompt's rows split only when they alone
        exceed ``step``; ``groups`` lists (generator, rows) in row order, one generator per prompt, seeded once."""
        per_call = max(1, step // num_samples) if self.mixes_generators else 1
        chunk = min(num_samples, step)
        for first in range(0, len(seeds), per_call):
            prompts = range(first, min(first + per_call, len(seeds)))
            generators = [torch.Generator(device=device).manual_seed(seeds[p]) for p in prompts]
            for offset in range(0, num_samples, chunk):
                n = min(chunk, num_samples - offset)
                if n == num_samples:  # whole prompts, all of them in this call
                    yield first * num_samples, (prompts[-1] + 1) * num_samples, [(g, n) for g in generators]
                    break
                start = first * num_samples + offset  # one prompt (per_call is 1 here), a share of its rows
                yield start, start + n, [(generators[0], n)]

    def _continue(self, rows, steps, temperature, top_p, eos, pad_id, groups=None) -> torch.Tensor:
        """New tokens ``[B, n ≤ steps]`` of each row (CPU long), pad after a row's first EOS; ``groups`` (or None:
        the global stream) are the per-prompt generators of `_seeded_batches`."""
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
                top_p: float, groups=None) -> torch.Tensor:
    """One token for each of ``total`` rows (``[total]``) from the logits ``[R, V]`` of the ``live`` ones.

    Greedy at temperature 0. Else one ``torch.multinomial`` over all ``total`` rows, the ended ones given any
    distribution: it draws one exponential per (row, token) whatever the probabilities, so the random stream,
    and each live row's draw, are those of ``generate``, which keeps ended rows in its batch. With ``groups``
    ((generator, rows) in row order) each group's rows are drawn by one ``torch.multinomial`` from its own
    generator: the draws of a group alone in a batch, seeded with that generator's seed.
    """
    if temperature == 0:
        out = torch.zeros(total, dtype=torch.long, device=logits.device)
        out[live] = logits.argmax(-1)
        return out
    probs = logits.new_zeros(total, logits.shape[-1], dtype=torch.float32)
    probs[:, 0] = 1.0
    probs[live] = warp(logits, temperature, top_p).softmax(-1)
    if groups is None:
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    parts = probs.split([n for _, n in groups])
    return torch.cat([torch.multinomial(p, num_samples=1, generator=g) for p, (g, _) in zip(parts, groups)]).squeeze(1)


@contextmanager
def drawing_from(generator: torch.Generator | None):
    """Within the block the default generator of ``generator``'s device continues ``generator``'s stream (for
    ``model.generate``, which takes no generator); afterwards ``generator`` holds the advanced state."""
    if generator is None:
        yield
        return
    device = generator.device
    default = (torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else torch.default_generator)
    default.set_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(default.get_state())


class SharedPrefixSampler(Sampler):
    """Each distinct prompt prefilled once; a decoding loop over the model's own forward and cache."""

    name = "shared"
    mixes_generators = True

    def _continue(self, rows, steps, temperature, top_p, eos, pad_id, groups=None) -> torch.Tensor:
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
            token = next_tokens(logits, live, total, temperature, top_p, groups).masked_fill(ended, pad_id)
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

    def _continue(self, rows, steps, temperature, top_p, eos, pad_id, groups=None) -> torch.Tensor:
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
        with drawing_from(groups[0][0] if groups else None):  # one prompt a call (mixes_generators is False)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config)
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
