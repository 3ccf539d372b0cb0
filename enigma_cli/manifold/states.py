"""What one model computes on the fixed completions: pooled states, sampled-token states and next-token
log-distributions (the inputs of every metric of `enigma_cli.manifold.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..models.hidden import num_layers
from ..models.reader import read
from .completions import Completions


@dataclass
class States:
    """What one model computes on the completions (CPU, fp32)."""

    pooled: dict[int, torch.Tensor]  # layer -> [N, H]
    tokens: dict[int, torch.Tensor]  # layer -> [T, H]
    logprobs: torch.Tensor  # [T, V] final-layer next-token log-distributions at the sampled tokens
    num_layers: int
    extra: dict = field(default_factory=dict)


def sample_tokens(prompt_lens: Sequence[int], completion_lens: Sequence[int], n_tokens: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of at most ``n_tokens`` completion tokens, uniformly without replacement, sorted.

    Positions are absolute in the right-padded prompt + completion sequence (independent of batching).
    """
    lens = torch.tensor(list(completion_lens), dtype=torch.long)
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if n_tokens >= total:
        flat = torch.arange(total)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        flat = torch.randperm(total, generator=gen)[:n_tokens].sort().values
    ends = lens.cumsum(0)
    row = torch.searchsorted(ends, flat, right=True)
    starts = ends - lens
    pos = torch.tensor(list(prompt_lens), dtype=torch.long)[row] + (flat - starts[row])
    return row, pos


@torch.no_grad()
def gather_states(model, pad_id: int, comps: Completions, layers: Sequence[int], rows: torch.Tensor,
                  positions: torch.Tensor, batch_size: int = 16) -> States:
    """Read every completion with ``model``; keep pooled, sampled-token and final-distribution states (fp32, CPU).

    ``layers`` are hidden-state indices 0..L; ``rows``/``positions`` come from `sample_tokens` (positions absolute
    in ``prompt + completion``). Through `models.reader.read`, the reader of every command: each distinct prompt
    runs once for the completions that follow it, at most ``batch_size`` rows per forward chunk (the chunk's
    logits are in memory). ``pad_id`` is kept for callers; the reader pads by itself.
    """
    prompt_lens = torch.tensor([len(p) for p in comps.prompt_ids], dtype=torch.long)
    offsets = positions - prompt_lens[rows]  # token j of its completion
    was_training = model.training
    model.eval()
    try:
        r = read(model, comps.prompt_ids, comps.completion_ids, layers=list(layers), at=(rows, offsets),
                 max_rows=max(1, int(batch_size)))
    finally:
        model.train(was_training)
    return States(pooled={layer: r.pooled[layer].float().cpu() for layer in layers},
                  tokens={layer: r.states[layer].float().cpu() for layer in layers},
                  logprobs=r.next_logprobs.float().cpu(), num_layers=num_layers(model))
