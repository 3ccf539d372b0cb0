"""Each distinct prompt run once, and its key/value cache shared by every row that continues it.

GRPO samples ``G`` completions of each prompt, and SAMI's critic scores ``K`` completions after each principle
prompt: most of the tokens a step reads are prompt tokens, the same ones many times. The sampler (`sampler`) and
the reader (`reader`) both run each *distinct* prompt once through the model's own forward pass and continue
every row from a copy of its prompt's cache. Nothing of the model is re-implemented: the cache is the model's
own (``DynamicCache`` and its per-layer classes), filled by its forward and copied row by row with the cache's
``batch_select_indices``; so any decoder-only architecture whose cache holds plain keys and values (full or
sliding-window attention) is served, with its own attention, norms, positions and adapters.

Layout (the one ``generate`` uses for batches): distinct prompts are left-padded to the longest, ``W`` columns;
positions count from each prompt's first real token (``cumsum(mask) - 1``); a row's own tokens follow at
columns ``W, W + 1, …`` with positions ``len(prompt), len(prompt) + 1, …``. Padding is masked as keys, so it
changes no value we read (tests/test_reader.py checks every architecture against its unpadded forward).
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

#: Cache layer kinds whose rows are plain keys and values, so that left padding and row copies are exact.
#: Chunked attention (fixed chunks of absolute columns) and recurrent states (which read the pads) are not.
_SHAREABLE_LAYERS = {"full_attention", "sliding_attention"}


def unwrap(model):
    """The module to call: DDP/FSDP wrappers hold it in ``.module`` (peft models are kept: they route adapters)."""
    return getattr(model, "module", model)


def accepts(model, name: str) -> bool:
    """Whether the forward of ``model`` (under peft: its base model's) takes a keyword ``name``."""
    target = unwrap(model)
    target = target.get_base_model() if hasattr(target, "get_base_model") else target
    return name in _parameters(type(target))


@functools.cache
def _parameters(cls) -> frozenset[str]:
    """The keyword names of ``cls.forward`` (asked at every decoding step, so looked up once per class)."""
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def supports(model) -> bool:
    """Whether prompts can be shared for ``model``: a decoder-only LM whose forward takes a cache, whose cache
    layers are all full or sliding-window attention, and no prompt-learning adapter (virtual tokens would
    shift every position). Other models read and sample without sharing (``generate``, padded rows)."""
    target = unwrap(model)
    peft_config = getattr(target, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    config = target.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    if not (accepts(target, "cache") or accepts(target, "past_key_values")):
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    kinds = getattr(text, "layer_types", None) or ["full_attention"]
    return set(kinds) <= _SHAREABLE_LAYERS


def distinct(prompts: list[list[int]], device=None) -> tuple[list[list[int]], torch.Tensor]:
    """The distinct prompts (first-seen order) and, for each row, the index of its prompt among them."""
    unique = list(dict.fromkeys(tuple(p) for p in prompts))
    where = {p: i for i, p in enumerate(unique)}
    return [list(p) for p in unique], torch.tensor([where[tuple(p)] for p in prompts], device=device)


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompts`` left-padded with ``pad_id`` to the longest: ids and attention mask (1 on real tokens), each
    ``[B, W]`` long on the CPU (the layout ``generate`` expects)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded batch as ``generate`` computes them: each row counts its real tokens from 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def run(model, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor | None, cache=None, *,
        hidden: bool = False, logits_to_keep: int | None = None, use_cache: bool = True):
    """One call of the model's own forward on ``ids`` ``[B, q]`` after ``cache`` (None: a fresh one), with the
    full attention ``mask`` ``[B, cache + q]`` (``position_ids`` None: the model's own, from 0). Returns
    ``(output, cache)`` (the cache None with ``use_cache=False``); ``output.logits`` covers the last
    ``logits_to_keep`` positions when the model can trim them (else all ``q``)."""
    kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": use_cache}
    if position_ids is not None and accepts(model, "position_ids"):  # ALiBi models derive them from the mask
        kwargs["position_ids"] = position_ids
    if cache is not None:
        kwargs["cache" if accepts(model, "cache") else "past_key_values"] = cache
    if hidden:
        kwargs["output_hidden_states"] = True
    if logits_to_keep is not None and accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = int(logits_to_keep)
    out = model(**kwargs)
    if not use_cache:
        return out, None
    cache = out.get("cache" if accepts(model, "cache") else "past_key_values")  # renamed in transformers 5.2x
    if cache is None:
        raise RuntimeError(f"{type(unwrap(model)).__name__} returned no cache; prompts cannot be shared for it.")
    return out, cache


@dataclass
class Prefix:
    """Distinct prompts after one forward pass: the model's cache (one row per prompt, ``W`` columns), the
    attention ``mask`` ``[P, W]`` (1 on real tokens), the prompt ``lengths`` ``[P]`` and the ``logits`` of each
    prompt's last token ``[P, V]`` (the model's dtype), which predict a continuation's first token."""

    cache: object
    mask: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def prefill(model, prompts: list[list[int]], device, pad_id: int = 0) -> Prefix:
    """Run the (non-empty) ``prompts`` once, left-padded, under the caller's grad mode."""
    ids, mask = left_padded(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    out, cache = run(model, ids, mask, positions(mask), logits_to_keep=1)
    return Prefix(cache, mask, mask.sum(-1), out.logits[:, -1])


def select(cache, index: torch.Tensor):
    """A cache holding rows ``index`` of ``cache`` (repeats allowed), in that order; ``cache`` is left intact.

    The layers are shallow copies whose tensors ``batch_select_indices`` replaces by gathered ones, so the
    result is differentiable: gradients of every row reach its prompt's one forward pass.
    """
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(index)
    return out


def reserve(cache, extra: int) -> None:
    """Give every full-attention layer of ``cache`` room for ``extra`` more positions, written in place.

    ``DynamicLayer.update`` concatenates, i.e. copies the whole cache at every decoding step: sampling 32 rows
    of 200 tokens from enigma-tiny took 1.63 s so, 1.29 s with room reserved (equal at 96 tokens, where the
    cache is short). Other layer kinds (sliding windows) are left as they are.
    """
    cache.layers = [_Reserved(layer, extra) if type(layer) is DynamicLayer and layer.is_initialized else layer
                    for layer in cache.layers]


class _Reserved(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers with free room at the end: ``update`` writes
    the new positions in place and returns views (``keys``/``values`` are always the filled part). For
    inference only (in-place writes); past its room it concatenates like its parent."""

    def __init__(self, layer, extra: int):
        super().__init__()
        self.device, self.is_initialized = layer.keys.device, True
        self.filled = layer.keys.shape[-2]
        self._keys = self._room(layer.keys, extra)
        self._values = self._room(layer.values, extra)
        self._view()

    @staticmethod
    def _room(t: torch.Tensor, extra: int) -> torch.Tensor:
        out = t.new_empty(*t.shape[:-2], t.shape[-2] + extra, t.shape[-1])
        out[..., : t.shape[-2], :] = t
        return out

    def _view(self) -> None:
        self.keys, self.values = self._keys[..., : self.filled, :], self._values[..., : self.filled, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self.filled + new > self._keys.shape[-2]:
            self._keys = torch.cat([self.keys, key_states], dim=-2)
            self._values = torch.cat([self.values, value_states], dim=-2)
        else:
            self._keys[..., self.filled : self.filled + new, :] = key_states
            self._values[..., self.filled : self.filled + new, :] = value_states
        self.filled += new
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._view()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self.filled = max(0, self.filled + tokens_to_remove)
            self._view()
