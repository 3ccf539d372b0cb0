"""What one model computes on the fixed completions: pooled states, sampled-token states and next-token
log-distributions (the inputs of every metric of `enigma_cli.manifold.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
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
    """Read every completion with ``model``; keep pooled, sampled-token and final-distribution states (fp32).

    ``layers`` are hidden-state indices 0..L; ``rows``/``positions`` come from `sample_tokens`. Completions
    are read in length-sorted batches of ``batch_size`` (one forward pass each, the batch's logits in memory).
    """
    from ..models.logprobs import mean_pool, pack

    device = next(model.parameters()).device
    n = len(comps)
    order = sorted(range(n), key=lambda i: len(comps.prompt_ids[i]) + len(comps.completion_ids[i]))
    slots_of_row: dict[int, list[int]] = {}
    for slot, r in enumerate(rows.tolist()):
        slots_of_row.setdefault(r, []).append(slot)
    pooled: dict[int, torch.Tensor] = {}
    tokens: dict[int, torch.Tensor] = {}
    logprobs = None
    num_layers = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, max(1, int(batch_size))):
            idx = order[start:start + batch_size]
            batch = pack([comps.prompt_ids[i] for i in idx], [comps.completion_ids[i] for i in idx], pad_id)
            out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                        output_hidden_states=True, use_cache=False)
            states = out.hidden_states
            if num_layers is None:
                num_layers = len(states) - 1
                bad = [layer for layer in layers if not 0 <= layer <= num_layers]
                if bad:
                    raise InputError(f"--layers {bad[0]} does not exist: the model has hidden states "
                                     f"0..{num_layers}.")
                width = states[0].shape[-1]
                for layer in layers:
                    pooled[layer] = torch.zeros(n, width)
                    tokens[layer] = torch.zeros(len(rows), width)
                logprobs = torch.zeros(len(rows), out.logits.shape[-1])
            # which sampled tokens live in this batch: (batch row, position, output slot)
            b_idx, p_idx, s_idx = [], [], []
            for b, i in enumerate(idx):
                for slot in slots_of_row.get(i, ()):
                    b_idx.append(b)
                    p_idx.append(int(positions[slot]))
                    s_idx.append(slot)
            b_t = torch.tensor(b_idx, dtype=torch.long, device=device)
            p_t = torch.tensor(p_idx, dtype=torch.long, device=device)
            s_t = torch.tensor(s_idx, dtype=torch.long)
            cmask = batch.completion_mask.to(device)
            idx_t = torch.tensor(idx, dtype=torch.long)
            for layer in layers:
                pooled[layer][idx_t] = mean_pool(states[layer], cmask).cpu()
                if len(s_idx):
                    tokens[layer][s_t] = states[layer][b_t, p_t].float().cpu()
            if len(s_idx):
                # logits at position p - 1 predict the completion token at p (a completion never starts at 0)
                logprobs[s_t] = torch.log_softmax(out.logits[b_t, p_t - 1].float(), dim=-1).cpu()
            del out, states
    finally:
        model.train(was_training)
    return States(pooled=pooled, tokens=tokens, logprobs=logprobs, num_layers=int(num_layers))
