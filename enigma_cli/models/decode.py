"""The names the training loop calls for its reference pass, now served by `reader` for every architecture.

`supports` says whether a model's prompts can be shared (`prefix.supports`: any decoder-only LM whose cache holds
keys and values, not just Llama); `score` reads completions with each distinct prompt run once. Both are thin
wrappers: new code calls `reader.read` (and `sampler.make_sampler` to sample).
"""

from __future__ import annotations

import torch

from .prefix import supports
from .reader import read

__all__ = ["score", "supports"]


def score(model, prompts: list[list[int]], completions: list[list[int]], *, hidden_layers=(),
          temperature: float = 1.0) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Per-token log-probs of each completion after its prompt, and mean hidden states over its tokens.

    ``(logp, pooled)`` of `reader.read` (``logp`` ``[n, L]``, 0 beyond each completion; ``pooled[layer]``
    ``[n, H]``), under the caller's grad mode, with the model's mode as it is (call it in eval mode).
    """
    reading = read(model, prompts, completions, layers=hidden_layers, temperature=temperature,
                   grad=torch.is_grad_enabled())
    return reading.logp, reading.pooled
