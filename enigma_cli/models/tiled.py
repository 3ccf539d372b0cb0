"""`read` with the LM head applied in tiles: training's reads of completions without a ``[B, T, V]`` logits tensor.

`reader.read` takes the logits that predict each completion token from the model's forward and normalises them
row by row; under gradient the forward then holds up to three tensors of the logits' size at once (the model's
logits, their per-chunk concatenation, the scaled per-row copies log-sum-exp keeps for the backward), and the
backward makes their gradients (on SmolLM2 with 16 rows of 64 tokens, 0.22 GiB of the step's peak: BENCHMARKS.md,
"No [B, T, V] logits in training"). Here the same chunks run with the LM head deferred
(`logprobs.deferred_head`): where the reader's chunks carry the logits predicting each completion token, they carry
the last hidden states those logits are projected from (``[R, Lc, H]``, H = 576 against V = 49152 in SmolLM2), and
`logprobs.head_logprobs` projects only the completion tokens through the head, in tiles, with TRL's kernel (its
fused LM head's: float32 log-sum-exp, each tile recomputed in the backward). The hidden states pooled for the OT
term come from the same forward, as in the reader.

Everything else is the reader's: its chunking, shared prompts (each distinct prompt run once, its cache copied for
every row after it, also under gradient), per-row reading under activation checkpointing, the model's autocast
(`precision.autocast`: the head then projects in bfloat16 and still normalises in float32), the `Reading` layout.
The values equal the reader's to float32 rounding, and so do the gradients (tests/test_tiled.py). Models whose
head cannot be read so (`logprobs.lm_head` says None: a LoRA-adapted or sharded head, scaled or soft-capped
logits, float64 weights) are read by `reader.read` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reader
from .logprobs import completion_positions, deferred_head, head_logprobs, lm_head, mean_pool
from .precision import autocast


def read(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, layers=(), grad: bool = False,
         temperature: float = 1.0) -> reader.Reading:
    """`reader.read`'s log-probs and pooled hidden states (``logp``, ``mask``, ``pooled``), the head in tiles.

    The same arguments and results as `reader.read` without ``at``; rows in the input order. Falls back to
    `reader.read` when `logprobs.lm_head` declines the model.
    """
    head = lm_head(model)
    if head is None:
        return reader.read(model, prompt_ids, completion_ids, layers=layers, grad=grad, temperature=temperature)
    plan = reader.ReadPlan.of(model, prompt_ids, completion_ids, layers=layers, grad=grad, temperature=temperature)
    completions, wanted, device, width = plan.completions, plan.wanted, plan.device, plan.width
    parts = []
    with torch.enable_grad() if grad else torch.no_grad(), autocast(model), deferred_head(head):
        for rows, states_before, states in plan.chunks():
            # states_before[i, j]: the last hidden state that predicts token j of completion rows[i]
            ids, mask = _right_padded([completions[r] for r in rows], states_before.shape[1], device)
            logp = head_logprobs(states_before, ids, mask, head, temperature)
            pooled = {layer: mean_pool(states[index], mask) for layer, index in wanted.items()}
            parts.append((rows, F.pad(logp, (0, width - logp.shape[1])), pooled))
    back = torch.argsort(torch.tensor([r for part in parts for r in part[0]], device=device))  # chunk -> input order
    logp = torch.cat([part[1] for part in parts])[back]
    pooled = {layer: torch.cat([part[2][layer] for part in parts])[back] for layer in wanted}
    return reader.Reading(logp, completion_positions(completions, logp), pooled)


def _right_padded(completions: list[list[int]], width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[R, width]`` (0 past each completion) and the boolean mask of the completion tokens."""
    ids = torch.zeros((len(completions), width), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    lengths = torch.tensor([len(c) for c in completions])
    return ids.to(device), (torch.arange(width) < lengths.unsqueeze(1)).to(device)
