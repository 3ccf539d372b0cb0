"""A lean sampler and scorer for Llama-architecture models: prompts cached once per group.

`transformers`' ``generate`` is general: each decoding step builds a 4-D attention mask, grows a dynamic cache
by ``torch.cat`` (a copy of the whole cache per step), runs a chain of logits processors and stopping
criteria, and keeps computing rows that have already ended. GRPO spends most of its step sampling ``G``
completions of each prompt, so `sample` runs the model through `lean.forward` with none of that:

- **the prompt is run and cached once per distinct prompt**, not once per sample (`lean.Prompts`): the ``G``
  samples of a group attend to one shared prompt cache, with one ``[G·H/H_kv, D] × [D, T_prompt]`` matmul per
  key/value head instead of ``G`` matrix-vector products over ``G`` copies (on a CPU attention is bound by
  reading the cache, and the prompt is most of it);
- each sample's own tokens go into a preallocated ``[B, H_kv, max_new_tokens, D]`` buffer per layer, written in
  place; the scores over prompt and completion are normalised together in float32 (one softmax, as eager
  attention does);
- rows that have ended leave the batch once they are a quarter of it, so later steps cost less.

`score` shares the prompt the same way for per-token log-probs and pooled hidden states (the reference pass of
training and the critic matrix of `score-principles`).

The sampled distribution is the model's: ``softmax(logits / temperature)`` restricted to the smallest top-p
nucleus (the most likely token is always kept), the warpers `rollout.generate` asks ``generate`` for;
``temperature == 0`` is greedy. The random stream differs from ``generate``'s, so a seed gives other, equally
distributed, samples. `supports` says which models this path serves; the rest use ``generate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from enigma_cli.errors import InputError

from .lean import Layer, Prompts, distinct, forward, head, norm, rotary, supports, unwrap
from .logprobs import chunk_tokens, length_chunks

__all__ = ["COMPACT_SHARE", "sample", "score", "supports"]

#: Ended rows leave the batch once they are at least this share of it (each time a gather of the caches).
COMPACT_SHARE = 0.25


class _Groups:
    """Which prompt each row continues, and its slot (rank among that prompt's rows).

    Queries of the rows of prompt ``p`` are laid out as ``[P, H_kv, slots, ·, D]``, so that each prompt's cache
    is read by one matmul for all of its rows.
    """

    def __init__(self, group: torch.Tensor):
        self.group = group
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=order.device)
        self.slot = rank - starts[group]
        self.slots = int(counts.max())

    def spread(self, rows: torch.Tensor, n_prompts: int) -> torch.Tensor:
        """``[R, H_kv, ...]`` → ``[P, H_kv, slots, ...]`` (zeros in unused slots)."""
        out = rows.new_zeros(n_prompts, rows.shape[1], self.slots, *rows.shape[2:])
        out[self.group, :, self.slot] = rows
        return out

    def gather(self, per_prompt: torch.Tensor) -> torch.Tensor:
        """``[P, H_kv, slots, ...]`` → ``[R, H_kv, ...]``."""
        return per_prompt[self.group, :, self.slot]


def _attend_shared(prompts: Prompts, groups: _Groups, index: int, q: torch.Tensor, own_k: torch.Tensor,
                   own_v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one query per row ``q`` ``[R, H, 1, D]`` over its prompt's cache and the row's own keys and
    values so far, ``own_k``/``own_v`` ``[R, H_kv, T, D]`` (the query is the last of those ``T`` positions).

    Query head ``h`` reads key/value head ``h // (H / H_kv)`` (``repeat_kv``'s grouping). The scores over the
    prompt (one matmul per prompt and key/value head, for all of its rows) and over the row's own tokens are
    normalised together, in float32 as eager attention does.
    """
    n_rows, heads, _, dim = q.shape
    kv_heads = own_k.shape[1]
    grouped = q.reshape(n_rows, kv_heads, -1, dim)  # [R, H_kv, H/H_kv, D]
    per_prompt = groups.spread(grouped, len(prompts))
    p_keys, p_values = prompts.keys[index], prompts.values[index]  # [P, H_kv, D, W], [P, H_kv, W, D]
    width = p_values.shape[2]
    prompt_scores = torch.matmul(per_prompt.flatten(2, 3), p_keys).view(*per_prompt.shape[:4], width)
    prompt_scores = groups.gather(prompt_scores).float()  # [R, H_kv, H/H_kv, W]
    prompt_scores = prompt_scores.masked_fill(~prompts.valid[groups.group][:, None, None, :], float("-inf"))
    own_scores = torch.matmul(grouped, own_k.transpose(-1, -2)).float()  # [R, H_kv, H/H_kv, T]
    weights = (torch.cat([prompt_scores, own_scores], dim=-1) * scale).softmax(-1).to(own_v.dtype)
    per_prompt_w = groups.spread(weights[..., :width].contiguous(), len(prompts)).flatten(2, 3)
    from_prompt = groups.gather(torch.matmul(per_prompt_w, p_values).view(per_prompt.shape))
    out = from_prompt + torch.matmul(weights[..., width:], own_v)
    return out.reshape(n_rows, heads, 1, dim)


class _Rows(_Groups):
    """The rows still being sampled: their original index, prompt and slot, rotary tables and own caches."""

    def __init__(self, group: torch.Tensor, layers: int, heads_kv: int, steps: int, head_dim: int,
                 like: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__(group)
        self.index = torch.arange(len(group), device=group.device)
        self.cos, self.sin = cos, sin  # [B, steps, D]: rotary tables at each row's completion positions
        shape = (len(group), heads_kv, steps, head_dim)
        self.keys = [like.new_empty(shape) for _ in range(layers)]
        self.values = [like.new_empty(shape) for _ in range(layers)]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (positions in the current batch), in that order."""
        super().__init__(self.group[rows])
        self.index = self.index[rows]
        self.cos, self.sin = self.cos[rows], self.sin[rows]
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def _probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The sampling distribution ``[B, V]`` (float32) of ``[B, V]`` logits at ``temperature > 0``.

    ``softmax(logits / temperature)``, restricted to the top-p nucleus: a token stays if the tokens strictly
    likelier than it hold less than ``top_p`` of the mass (so the most likely token always stays), then
    renormalised. This is what ``transformers``' temperature and top-p warpers give (ties aside).
    """
    probs = (logits.float() / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the strictly likelier tokens
        kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(before >= top_p, 0.0))
        probs = kept / kept.sum(-1, keepdim=True)
    return probs


def _draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` ``[B, V]`` by inverting the row's CDF at one uniform draw.

    ``B`` random numbers per step, not ``B × V`` as ``torch.multinomial``'s exponential race draws; the CDF is
    accumulated in float64; a token of probability 0 is drawn only if a uniform in [0, 1) rounds up to 1
    (odds of about 2^-53).
    """
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of ``[B, V]`` logits: greedy at temperature 0, else a draw from `_probs`."""
    if temperature == 0:
        return logits.argmax(-1)
    return _draw(_probs(logits, temperature, top_p))


@torch.inference_mode()
def sample(model, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: list[int], pad_id: int,
           temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Continue each prompt (token ids, any lengths; repeats share one prompt cache) by up to
    ``max_new_tokens`` tokens.

    Returns ``[B, n]`` long on the CPU, ``n <= max_new_tokens``: row ``b`` holds its new tokens; after the
    first of ``eos_ids`` a row holds ``pad_id``. Sampling stops once every row has ended. Uses the global RNG
    (the caller seeds and forks it). The model must satisfy `supports`; its mode is not changed, so call it in
    eval mode.
    """
    if max_new_tokens < 1 or not prompts or not all(prompts):
        raise ValueError("sample: needs max_new_tokens >= 1 and at least one prompt, none of them empty")
    lm = unwrap(model)
    device = lm.lm_head.weight.device
    steps = int(max_new_tokens)
    layers = [Layer(layer) for layer in lm.model.layers]
    unique, group = distinct(prompts, device)
    shared = Prompts(lm, layers, unique, device)

    completion_positions = shared.lengths[group].unsqueeze(1) + torch.arange(steps, device=device)
    cos, sin = rotary(lm, completion_positions)
    heads_kv = shared.values[0].shape[1]
    rows = _Rows(group, len(layers), heads_kv, steps, layers[0].attn.head_dim, shared.values[0], cos, sin)
    logits = shared.logits[group]

    eos = torch.tensor(eos_ids or [-1], device=device)
    out = torch.full((len(prompts), steps), int(pad_id), dtype=torch.long, device=device)
    ended = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    done = 0
    for step in range(steps):
        token = _pick(logits, temperature, top_p).masked_fill(ended, int(pad_id))
        out[rows.index, step] = token
        done = step + 1
        ended |= torch.isin(token, eos)
        live = len(ended) - int(ended.sum())
        if live == 0 or done == steps:
            break
        if live <= (1 - COMPACT_SHARE) * len(ended):  # until then, ended rows ride along on pads
            keep = (~ended).nonzero().squeeze(1)
            rows.keep(keep)
            token, ended = token[keep], ended[keep]

        def attend(index, q, k, v, step=step):
            keys, values = rows.keys[index], rows.values[index]
            keys[:, :, step : step + 1] = k
            values[:, :, step : step + 1] = v
            return _attend_shared(shared, rows, index, q, keys[:, :, : step + 1], values[:, :, : step + 1],
                                  layers[index].attn.scaling)

        x = forward(lm, layers, token.unsqueeze(1), rows.cos[:, step : step + 1], rows.sin[:, step : step + 1],
                     attend)
        logits = head(lm, x[:, -1])
    return out[:, :done].cpu()


def score(model, prompts: list[list[int]], completions: list[list[int]], *, hidden_layers: list[int] = (),
          temperature: float = 1.0) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Per-token log-probs of each completion after its prompt, and mean hidden states over its tokens.

    Each distinct prompt is run once and its cache serves all of its completions, so prompt tokens cost once
    per prompt, not once per row; the completions then run in length-sorted chunks (`logprobs.length_chunks`).
    Returns ``(logp, pooled)``: ``logp`` ``[n, L]`` float32,
    ``logp[i, j] = log softmax(logits / temperature)[completions[i][j]]`` for ``j < len(completions[i])`` and 0
    beyond (``L`` the longest completion); ``pooled[layer]`` ``[n, H]`` float32 is the mean over the completion's
    positions of hidden state ``layer`` (0 the embeddings, ``i`` the output of layer ``i``, the last one after
    the final norm, as ``output_hidden_states`` numbers them; negative counts from the last; 0 for an empty
    completion). Runs under the caller's grad mode, with the model's modules as they are (call it in eval mode).
    The model must satisfy `supports`.
    """
    if temperature <= 0:
        raise ValueError("score: temperature must be > 0")
    lm = unwrap(model)
    device = lm.lm_head.weight.device
    layers = [Layer(layer) for layer in lm.model.layers]
    n_states = len(layers) + 1
    for layer in hidden_layers:
        if not -n_states <= int(layer) < n_states:
            raise InputError(f"Hidden layer {layer} does not exist: the model has {n_states - 1} layers "
                             f"(use 0..{n_states - 1}, or negative indices from the last).")
    wanted = {int(layer): int(layer) % n_states for layer in hidden_layers}  # as asked -> state index
    unique, group = distinct(prompts, device)
    shared = Prompts(lm, layers, unique, device)
    lengths = [len(c) for c in completions]
    logp = torch.zeros((len(completions), max(lengths)), dtype=torch.float32, device=device)
    pooled = {asked: torch.zeros((len(completions), lm.config.hidden_size), device=device) for asked in wanted}
    # A row attends over its prompt's (copied) keys and its own: both count towards a chunk's budget.
    spans = (shared.lengths[group] + torch.tensor([max(1, n) for n in lengths], device=device)).tolist()
    for chunk in length_chunks(spans, chunk_tokens(device)):
        rows = torch.tensor(chunk, device=device)
        part_logp, part_pooled = _score_rows(lm, layers, shared, group[rows], [completions[i] for i in chunk],
                                             wanted, temperature)
        logp[rows, : part_logp.shape[1]] = part_logp
        for asked, value in part_pooled.items():
            pooled[asked][rows] = value
    return logp, pooled


def _score_rows(lm, layers: list[Layer], shared: Prompts, group: torch.Tensor, completions: list[list[int]],
                wanted: dict[int, int], temperature: float) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """`score` for one chunk of rows, whose prompts are already in ``shared`` (``wanted``: layer as asked ->
    hidden-state index)."""
    device = group.device
    lengths = torch.tensor([len(c) for c in completions], device=device)
    width = max(1, int(lengths.max()))
    ids = torch.zeros((len(completions), width), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    ids = ids.to(device)
    cos, sin = rotary(lm, shared.lengths[group].unsqueeze(1) + torch.arange(width, device=device))
    # Many queries per row: each row gets a copy of its prompt's keys and one fused attention call runs (the
    # shared-cache matmuls of `_attend_shared` pay off when reading the cache dominates, i.e. when decoding).
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    prompt_keys = shared.valid[group][:, None, None, :].expand(-1, 1, width, -1)
    mask = torch.cat([prompt_keys, causal.expand(len(group), 1, width, width)], dim=-1)

    def attend(index, q, k, v):
        keys = torch.cat([shared.keys[index][group].transpose(-1, -2), k], dim=2)
        values = torch.cat([shared.values[index][group], v], dim=2)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=layers[index].attn.scaling,
                                              enable_gqa=q.shape[1] != k.shape[1])

    capture = dict.fromkeys(wanted.values())
    x = forward(lm, layers, ids, cos, sin, attend, capture)
    if len(layers) in capture:
        capture[len(layers)] = norm(lm.model.norm, x)
    # Token j is predicted by the prompt's last position (j = 0) or by completion position j - 1.
    logits = torch.cat([shared.logits[group].unsqueeze(1), head(lm, x[:, :-1])], dim=1).float() / temperature
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    real = torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    logp = torch.where(real, picked, torch.zeros_like(picked))[:, : int(lengths.max())]
    weights = real.float().unsqueeze(-1)
    pooled = {asked: (capture[index].float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
              for asked, index in wanted.items()}
    return logp, pooled
