"""One reader of completions for any causal LM: token log-probs, pooled hidden states, and states and next-token
distributions at chosen tokens, with or without a graph.

Training's policy forward (with gradient: GRPO log-probs, the SAMI critic matrix, the OT points, method.md
§2-5), its reference pass, the critic pairs of `score-principles` (§3-4) and the geometry analysis (§6) all read
``prompt + completion`` sequences; `read` serves them all.

Choices (ours):

- **Shared prompts** (``share_prompts=True``, default where `prefix.supports` the model): each distinct prompt
  is run once and every completion that follows it continues from a copy of its cache (`prefix.select`), also
  under gradient, where each row's gradient flows back into its prompt's one forward pass. Prompts are a large
  share of a critic matrix's tokens (about half in bench/reader.py), and SAMI's K² pairs then cost K prompt
  passes instead of K². The values and
  gradients equal those of the padded per-row forward (tests/test_reader.py), except under dropout, where a
  prompt's one pass draws one mask for all of its rows. With activation checkpointing on (training mode, with a
  graph), rows are read per row: transformers drops the cache inside checkpointed layers.
- **Per row** (``share_prompts=False``, and for models `prefix.supports` refuses): each row is ``prompt +
  completion``, right-padded, one forward per chunk (the layout of `logprobs.pack`).
- Rows run in length-sorted chunks of a padded-token budget (``max_tokens``, default `logprobs.chunk_tokens`);
  all chunks' graphs stay alive for one backward, so nothing depends on the chunking.
- Log-probs are of ``softmax(logits / temperature)`` (the sampling distribution, as in TRL), normalised in
  float32 one row at a time (no ``[B, T, V]`` float32 copy).
- The forwards run under the model's autocast (`precision.autocast`: ``--dtype bf16-mixed``, or ``auto`` on a
  bf16 CPU); what `read` returns is float32 all the same, so the losses and estimators computed from it are not
  autocast.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from . import prefix
from .hidden import resolve_layers
from .logprobs import chunk_tokens, length_chunks, pack, sequence_mean_logprob
from .precision import autocast


@dataclass
class Reading:
    """What `read` returns, rows in the input order (float32, float64 for a float64 model; on its device).

    ``logp[i, j]`` is ``log softmax(logits / T)[completion_ids[i][j]]`` for ``j < len(completion_ids[i])`` and 0
    beyond (``mask`` says which); ``pooled[layer]`` ``[n, H]`` is the mean of the completion tokens' hidden states
    at that layer (keys as asked, 0 for an empty completion); ``states[layer]`` ``[m, H]`` and ``next_logprobs``
    ``[m, V]`` (the full log-distribution that predicts the token) are at the ``at`` tokens, in their order.
    """

    logp: torch.Tensor
    mask: torch.Tensor
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)
    states: dict[int, torch.Tensor] = field(default_factory=dict)
    next_logprobs: torch.Tensor | None = None

    @property
    def seq_logp(self) -> torch.Tensor:
        """Mean token log-prob of each completion ``[n]`` (SAMI's critic entry; 0 for an empty completion)."""
        return sequence_mean_logprob(self.logp, self.mask)


def read(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], *, layers=(), grad: bool = False,
         temperature: float = 1.0, share_prompts: bool = True, at: tuple[torch.Tensor, torch.Tensor] | None = None,
         max_tokens: int | None = None, max_rows: int | None = None) -> Reading:
    """Read ``completion_ids[i]`` after ``prompt_ids[i]`` with ``model`` (see `Reading` for the outputs).

    ``layers``: hidden-state indices to pool (0 the embeddings, ``L`` the last, negative from the last;
    `hidden.resolve_layers` checks them). ``grad``: build a graph (else ``no_grad``). ``at``: (rows, offsets)
    of completion tokens, offset ``j`` being token ``j`` of its completion, whose states and next-token
    distributions to return. ``max_tokens`` / ``max_rows``: the padded-token budget and row cap of one forward
    chunk (default `logprobs.chunk_tokens`, no cap). The model's mode is left as it is (call it in eval mode
    for a metric).
    """
    plan = ReadPlan.of(model, prompt_ids, completion_ids, layers=layers, grad=grad, temperature=temperature,
                       share_prompts=share_prompts, max_tokens=max_tokens, max_rows=max_rows)
    completions, wanted, device, width = plan.completions, plan.wanted, plan.device, plan.width
    at_rows, at_offsets = _check_at(at, completions)
    parts: list[tuple] = []
    with torch.enable_grad() if grad else torch.no_grad(), autocast(model):
        for rows, logits, states in plan.chunks():
            parts.append(_collect(rows, logits, states, completions, wanted, temperature, width, at_rows,
                                  at_offsets))
    order = torch.tensor([r for part in parts for r in part[0]], device=device)
    back = torch.argsort(order)  # chunk order -> input order
    logp = torch.cat([part[1] for part in parts])[back]
    pooled = {layer: torch.cat([part[2][layer] for part in parts])[back] for layer in wanted}
    reading = Reading(logp, _lengths_mask(completions, device, width), pooled)
    if at_rows is not None:
        slots = torch.argsort(torch.cat([part[3] for part in parts]))  # chunk order -> order of `at`
        reading.states = {layer: torch.cat([part[4][layer] for part in parts])[slots] for layer in wanted}
        reading.next_logprobs = torch.cat([part[5] for part in parts])[slots]
    return reading


@dataclass
class ReadPlan:
    """A read's checked inputs and its chunks: the model, the rows, the hidden-state layers to pool, and which of
    the two chunkers runs the forwards (`_shared_chunks`: each distinct prompt once, its cache shared; or
    `_padded_chunks`). `read` and `tiled.read` (the same read with the LM head in tiles) both start here."""

    model: Any
    prompts: list[list[int]]
    completions: list[list[int]]
    wanted: dict[int, int]
    device: torch.device
    width: int
    share: bool
    budget: tuple[int, int | None]

    @classmethod
    def of(cls, model, prompt_ids, completion_ids, *, layers=(), grad: bool = False, temperature: float = 1.0,
           share_prompts: bool = True, max_tokens: int | None = None, max_rows: int | None = None) -> ReadPlan:
        """Check `read`'s arguments (ValueError naming what is wrong) and plan its chunks."""
        if len(prompt_ids) != len(completion_ids):
            raise ValueError(f"read: {len(prompt_ids)} prompts but {len(completion_ids)} completions")
        if not prompt_ids or not all(prompt_ids):
            raise ValueError("read: needs at least one row, and every prompt non-empty")
        if temperature <= 0:
            raise ValueError("read: temperature must be > 0")
        device = next(model.parameters()).device
        completions = [list(c) for c in completion_ids]
        return cls(model, [list(p) for p in prompt_ids], completions, resolve_layers(model, layers), device,
                   max(1, max(len(c) for c in completions)),
                   share_prompts and prefix.supports(model) and not (grad and _checkpointed(model)),
                   (max_tokens or chunk_tokens(device), max_rows))

    def chunks(self):
        """The forwards, chunk by chunk: (rows, what predicts each completion token, the hidden states)."""
        chunker = _shared_chunks if self.share else _padded_chunks
        return chunker(self.model, self.prompts, self.completions, self.wanted, self.budget, self.device)


def _checkpointed(model) -> bool:
    """Whether activation checkpointing would run on a graph: transformers then drops the cache inside each
    layer (a replayed layer must not write it twice), so a continuation could not see its prompt."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _check_at(at, completions):
    if at is None:
        return None, None
    rows, offsets = (torch.as_tensor(t, dtype=torch.long).cpu() for t in at)
    lengths = torch.tensor([len(c) for c in completions])
    if rows.shape != offsets.shape or rows.dim() != 1:
        raise ValueError("read: `at` must be two 1-D tensors of equal length (rows, offsets)")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(completions) or offsets.min() < 0
                      or bool((offsets >= lengths[rows]).any())):
        raise ValueError("read: every `at` token must be a token of its completion")
    return rows, offsets


def _lengths_mask(completions, device, width: int) -> torch.Tensor:
    lengths = torch.tensor([len(c) for c in completions], device=device)
    return torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def _right_padded(completions: list[list[int]], width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros((len(completions), width), dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, : len(c)] = 1
    return ids.to(device), mask.to(device)


def _shared_chunks(model, prompts, completions, wanted, budget, device):
    """Yield (rows, logits ``[R, Lc, V]`` predicting each completion token, states ``{index: [R, Lc, H]}``),
    each distinct prompt prefilled once per chunk of prompts (`_plan`)."""
    unique, group = prefix.distinct(prompts)
    for prompt_set, row_chunks in _plan([len(p) for p in unique], group.tolist(),
                                        [len(c) for c in completions], *budget):
        pre = prefix.prefill(model, [unique[p] for p in prompt_set], device)
        local = {p: i for i, p in enumerate(prompt_set)}
        for rows in row_chunks:
            own = torch.tensor([local[int(group[r])] for r in rows], device=device)
            width = max(1, max(len(completions[r]) for r in rows))
            ids, cmask = _right_padded([completions[r] for r in rows], width, device)
            mask = torch.cat([pre.mask[own], cmask], dim=1)
            position_ids = pre.lengths[own].unsqueeze(1) + torch.arange(width, device=device)
            out, _ = prefix.run(model, ids, mask, position_ids, prefix.select(pre.cache, own), hidden=bool(wanted))
            # Token j is predicted by the prompt's last position (j = 0) or by completion position j - 1.
            logits = torch.cat([pre.logits[own].unsqueeze(1), out.logits[:, :-1]], dim=1)
            states = {index: out.hidden_states[index] for index in set(wanted.values())}
            yield rows, logits, states


def _plan(prompt_lens: list[int], group: list[int], comp_lens: list[int], budget: int, max_rows: int | None):
    """Chunks of distinct prompts (by length), each with its rows cut into chunks: a prompt chunk grows while
    its rows × (longest prompt + longest completion) fit ``budget`` and its rows ``max_rows`` (at least one
    prompt per chunk); its rows are cut by `logprobs.length_chunks` on (chunk width + completion length)."""
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, p in enumerate(group):
        rows_of[p].append(row)
    plan, current, rows = [], [], []
    for p in sorted(rows_of, key=lambda p: prompt_lens[p]):  # so that p is the widest prompt of its chunk
        grown = rows + rows_of[p]
        cost = len(grown) * (prompt_lens[p] + max(1, *(comp_lens[r] for r in grown)))
        if current and (cost > budget or (max_rows is not None and len(grown) > max_rows)):
            plan.append((current, rows, prompt_lens[current[-1]]))
            current, grown = [], rows_of[p]
        current.append(p)
        rows = grown
    plan.append((current, rows, prompt_lens[current[-1]]))
    out = []
    for prompt_set, rows, widest in plan:
        spans = [widest + max(1, comp_lens[r]) for r in rows]
        chunks = length_chunks(spans, budget, max_rows)
        out.append((prompt_set, [[rows[i] for i in chunk] for chunk in chunks]))
    return out


def _padded_chunks(model, prompts, completions, wanted, budget, device):
    """The same as `_shared_chunks`, each row running its own prompt: ``prompt + completion``, right-padded
    (`logprobs.pack`), positions from 0 (so models without position ids, or with virtual tokens, read it too)."""
    spans = [len(p) + max(1, len(c)) for p, c in zip(prompts, completions)]
    for rows in length_chunks(spans, *budget):
        batch = pack([prompts[r] for r in rows], [completions[r] for r in rows], 0).to(device)
        starts = torch.tensor([len(prompts[r]) for r in rows], device=device)
        width = max(1, max(len(completions[r]) for r in rows))
        first = int(starts.min()) - 1  # the first column whose logits predict a completion token
        keep = batch.input_ids.shape[1] - first
        out, _ = prefix.run(model, batch.input_ids, batch.attention_mask, None, hidden=bool(wanted),
                            logits_to_keep=keep, use_cache=False)
        column = (starts.unsqueeze(1) + torch.arange(width, device=device)).clamp(max=batch.input_ids.shape[1])
        logits = out.logits[:, -keep:]
        logits = logits.gather(1, (column - 1 - first).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        states = {}
        for index in set(wanted.values()):
            h = out.hidden_states[index][:, -batch.input_ids.shape[1] :]  # (virtual tokens of adapters come first)
            states[index] = h.gather(1, column.clamp(max=h.shape[1] - 1).unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        yield rows, logits, states


def _collect(rows, logits, states, completions, wanted, temperature, width, at_rows, at_offsets):
    """One chunk's share of the `Reading`: (rows, logp ``[R, width]``, pooled, at slots, at states, at dists)."""
    device, dtype = logits.device, torch.promote_types(logits.dtype, torch.float32)  # float64 models stay exact
    chunk = [completions[r] for r in rows]
    ids, cmask = _right_padded(chunk, logits.shape[1], device)
    picked = []
    for row_logits, row_ids in zip(logits, ids):  # float32 one row at a time, as TRL's selective_log_softmax
        scaled = row_logits.to(dtype) / temperature
        picked.append(scaled.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1))
    logp = torch.where(cmask.bool(), torch.stack(picked), torch.zeros((), device=device))
    logp = F.pad(logp, (0, width - logp.shape[1]))
    weights = cmask.to(dtype).unsqueeze(-1)
    pooled = {layer: (states[index].to(dtype) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
              for layer, index in wanted.items()}
    if at_rows is None:
        return rows, logp, pooled, None, None, None
    local = torch.full((len(completions),), -1, dtype=torch.long)
    local[torch.tensor(rows)] = torch.arange(len(rows))
    slots = (local[at_rows] >= 0).nonzero().squeeze(1)
    b, j = local[at_rows[slots]].to(device), at_offsets[slots].to(device)
    at_states = {layer: states[index][b, j].to(dtype) for layer, index in wanted.items()}
    dists = torch.log_softmax(logits[b, j].to(dtype) / temperature, dim=-1)
    return rows, logp, pooled, slots.to(device), at_states, dists
