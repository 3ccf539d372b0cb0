"""Batched scoring for any causal LM: per-token log-probs and hidden states of right-padded ``prompt + completion``
rows, and the chunking and pooling helpers that `reader` shares.

`reader.read` is the one reader of completions (shared prompts, any layout the callers need); `pack` +
`token_logprobs` remain for callers that want the input-aligned layout below (and as the peer bench/reader.py
times the reader against).

Layout choices (ours):

- **Batches are right-padded** (`pack`): each row is ``prompt + completion + pad…``. Position ``t`` of a row
  then has position id ``t`` exactly as when the row is run alone, and causal attention never looks at the
  trailing pads, so padding cannot change any value we read (the tests check this against one-at-a-time runs).
  No position-id bookkeeping is needed, which left padding would require.
- **Log-probs are aligned with the input**: ``logp[b, t] = log π(input_ids[b, t] | input_ids[b, :t])`` where
  ``completion_mask[b, t] == 1`` and exactly 0 elsewhere (including ``t = 0``). Hidden states are
  ``[B, T, H]`` on the same positions, so ``completion_mask`` selects both.
- Log-probs avoid a full ``[B, T, V]`` log-softmax copy: logits are computed only from the first position that
  predicts a completion token (``logits_to_keep``, where the model supports it), and the normaliser is a
  per-row ``logsumexp`` in float32 (as in TRL's ``selective_log_softmax``).
- Rows run in length-sorted chunks of a padded-token budget (`length_chunks`, `chunk_tokens`).

The LM head in tiles (`lm_head`, `deferred_head`, `head_logprobs`; `tiled.read` puts them together for training):
with the head deferred, the model returns the head's input (its last hidden states, ``[B, T, H]``, H ≪ V) where
it would return logits, and `head_logprobs` projects only the completion tokens' states through the head in
tiles of tokens × vocabulary columns with TRL's `trl.kernels.ChunkedLogProbFunction` (the kernel behind TRL's
own fused LM head): an online log-sum-exp in float32 whatever the dtype, the backward recomputing each tile, so
no ``[B, T, V]`` tensor exists in the forward or the backward.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from enigma_cli.models.hidden import resolve_layers


@dataclass(frozen=True)
class Batch:
    """A right-padded batch of ``prompt + completion`` rows, each ``[B, T]`` (long / long / long).

    ``attention_mask`` is 1 on real tokens; ``completion_mask`` is 1 on completion tokens only.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device)
        )

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> Batch:
    """Right-pad the concatenations ``prompt + completion`` into a `Batch` (CPU tensors).

    Every prompt must be non-empty (the first completion token needs a context to be scored).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"pack: {len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if not prompt_ids:
        raise ValueError("pack: empty batch")
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    width = max(lengths)
    batch = len(prompt_ids)
    input_ids = torch.full((batch, width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    completion_mask = torch.zeros((batch, width), dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        if len(p) == 0:
            raise ValueError(f"pack: prompt {b} is empty")
        n = len(p) + len(c)
        input_ids[b, :n] = torch.tensor([*p, *c], dtype=torch.long)
        attention_mask[b, :n] = 1
        completion_mask[b, len(p) : n] = 1
    return Batch(input_ids, attention_mask, completion_mask)


def _forward_accepts(model, name: str) -> bool:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    target = getattr(target, "module", target)  # DDP / FSDP wrappers
    try:
        return name in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


def _selected_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` gathered at ``targets``, in float32, one row at a time."""
    rows = []
    for row_logits, row_targets in zip(logits, targets):
        row = row_logits.float()
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def token_logprobs(
    model,
    batch: Batch,
    *,
    hidden_layers: list[int] | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, dict[int, torch.Tensor] | None]:
    """One forward pass: per-token log-probs of the batch and, if asked, hidden states.

    Returns ``(logp, hidden)``. ``logp`` is ``[B, T]`` float32 aligned with ``batch.input_ids``:
    ``logp[b, t] = log softmax(logits[b, t-1] / temperature)[input_ids[b, t]]`` where
    ``completion_mask[b, t] == 1``, else 0. ``hidden`` maps each requested layer index (as given; negative
    indices count from the last, 0 is the embedding output, ``num_hidden_layers`` the last block, after the
    final norm in HF Llama-style models) to a ``[B, T, H]`` tensor in the model's dtype, or is ``None`` when
    no layers were asked for (then ``output_hidden_states`` stays off). Runs under whatever grad mode the
    caller is in: gradient flows to both outputs under ``torch.enable_grad``.
    """
    if temperature <= 0:
        raise ValueError("token_logprobs: temperature must be > 0")
    device = next(model.parameters()).device
    batch = batch.to(device)
    input_ids, attention_mask, completion_mask = batch.input_ids, batch.attention_mask, batch.completion_mask
    bsz, width = input_ids.shape

    wanted = resolve_layers(model, hidden_layers)

    # The first position whose logits predict a completion token; earlier logits are never needed.
    has_completion = completion_mask.any(dim=0)
    first_target = int(has_completion.nonzero()[0].item()) if bool(has_completion.any()) else width
    first_target = max(first_target, 1)
    keep = width - (first_target - 1)  # logits for positions first_target-1 .. width-1

    kwargs: dict = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if wanted:
        kwargs["output_hidden_states"] = True
    trimmed = keep < width and _forward_accepts(model, "logits_to_keep")
    if trimmed:
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs)
    logits = out.logits
    if not trimmed:
        logits = logits[:, width - keep :]
    # logits[:, j] is at position (width - keep + j) and predicts the token at position (width - keep + j + 1).
    targets = input_ids[:, width - keep + 1 :]
    logp = torch.zeros((bsz, width), dtype=torch.float32, device=device)
    if keep > 1:
        picked = _selected_logprobs(logits[:, :-1], targets, temperature)
        logp = torch.cat([logp[:, : width - keep + 1], picked], dim=1)
    logp = torch.where(completion_mask.bool(), logp, torch.zeros_like(logp))

    hidden = None
    if wanted:
        states = out.hidden_states
        hidden = {layer: states[index] for layer, index in wanted.items()}
    return logp, hidden


#: Padded tokens per forward chunk (rows × longest row) on a CPU; see `length_chunks`.
CPU_CHUNK_TOKENS = 2048
#: The same on an accelerator: large, so that a chunk is usually the whole batch.
GPU_CHUNK_TOKENS = 1 << 16


def chunk_tokens(device: torch.device | str) -> int:
    """The padded-token budget of one forward chunk on `device`."""
    return CPU_CHUNK_TOKENS if torch.device(device).type == "cpu" else GPU_CHUNK_TOKENS


def length_chunks(lengths: list[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices of `lengths` sorted by length and cut into chunks whose padded size (rows × longest) ≤ max_tokens.

    Every chunk holds at least one row, and at most `max_rows`. Forwarding such chunks instead of one
    right-padded batch wastes less compute on padding and, on a CPU, keeps the activations in cache: 64 training
    sequences of 70-160 tokens take 0.72 s (fwd+bwd, enigma-tiny, one thread) in chunks of 8-16 against 0.97 s
    as one batch, and critic scoring runs 2.4x faster in chunks of 16 than of 64 (BENCHMARKS.md).
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        full = max_rows is not None and len(current) >= max_rows
        if current and (full or (len(current) + 1) * lengths[i] > max_tokens):
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over positions: ``[B, T, H]``, ``[B, T]`` → ``[B, H]`` in float32 (0 for an empty mask)."""
    weights = mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    total = (hidden.float() * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp(min=1.0)


def completion_positions(completion_ids: list[list[int]], like: torch.Tensor) -> torch.Tensor:
    """Boolean ``[n, L]`` on ``like``'s device: True at ``j < len(completion_ids[i])`` (`reader.Reading`'s layout)."""
    lengths = torch.tensor([len(c) for c in completion_ids], device=like.device)
    return torch.arange(like.shape[1], device=like.device).unsqueeze(0) < lengths.unsqueeze(1)


def sequence_mean_logprob(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token log-prob of each row over ``mask``: ``[B, T]`` → ``[B]`` (0 for an empty mask)."""
    mask = mask.to(device=logp.device, dtype=logp.dtype)
    return (logp * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


#: Config fields by which a model scales or caps its logits after the LM head (those TRL's ``add_fused_lm_head``
#: reads): the head's input then does not give the logits by the projection alone, so `lm_head` declines.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")
#: Vocabulary columns of one head tile on an accelerator: TRL's own choice for its fused LM head.
GPU_HEAD_COLUMNS = 32768
#: Elements of one head tile (tokens × vocabulary columns) on a CPU: 4 MiB in float32. The CPU fold makes a few
#: temporaries of a tile's size (about six in the backward), so this bounds the transient memory.
CPU_HEAD_TILE = 1 << 20


def lm_head(model) -> torch.nn.Linear | None:
    """The output projection of ``model`` when its log-probs can be read in tiles from the projection's input, else None.

    That is a plain ``nn.Linear`` (not a LoRA-adapted or wrapped head) whose output the model returns unchanged as its
    logits (no `LOGIT_TRANSFORMS` field in its config), with whole parameters in float32, bfloat16 or float16 on a
    real device. Not: float64 models (the kernel folds in float32; the untiled reader keeps float64 exact), sharded
    heads (FSDP, ZeRO-3), offloaded ones, and models under a DDP that looks for unused parameters (TRL's default
    without gradient checkpointing): it would take the deferred head for unused and reduce its gradient before the
    tiles make it. DDP wrappers and peft models are looked through.
    """
    if getattr(model, "find_unused_parameters", False):
        return None
    target = getattr(model, "module", model)  # DDP
    if type(target).__name__ == "FullyShardedDataParallel" or type(model).__name__ == "FullyShardedDataParallel":
        return None
    if hasattr(target, "get_base_model"):  # peft
        target = target.get_base_model()
    get = getattr(target, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear:
        return None
    config = target.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) is not None for name in LOGIT_TRANSFORMS):
        return None
    weight = head.weight
    if (weight.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.device.type == "meta"
            or hasattr(weight, "ds_id") or type(weight).__name__ == "DTensor" or weight.dim() != 2):
        return None
    return head


def _returns_input(hidden_states, *args, **kwargs):
    return hidden_states


@contextmanager
def deferred_head(head: torch.nn.Module):
    """Within, ``head`` returns its input: the model's ``logits`` are the states the head would project ``[.., H]``.

    The module stays in place (DDP and peft see the same parameters); its forward is shadowed on the instance and
    restored on exit, keeping an instance forward that was there (accelerate's device hooks set one).
    """
    own = head.__dict__.get("forward")
    head.forward = _returns_input
    try:
        yield head
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def head_columns(n_tokens: int, vocab: int, device: torch.device | str) -> int:
    """Vocabulary columns per head tile for ``n_tokens`` tokens (the kernel takes the tokens in slices of its
    ``TOKEN_CHUNK_SIZE``, 4096): `GPU_HEAD_COLUMNS` on an accelerator, `CPU_HEAD_TILE` elements on a CPU."""
    from trl.kernels import chunked_logprob

    if torch.device(device).type != "cpu":
        return min(GPU_HEAD_COLUMNS, vocab)
    return max(1, min(vocab, CPU_HEAD_TILE // max(1, min(n_tokens, chunked_logprob.TOKEN_CHUNK_SIZE))))


def head_logprobs(hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, head: torch.nn.Linear,
                  temperature: float = 1.0, columns: int | None = None) -> torch.Tensor:
    """``log softmax(head(hidden) / temperature)[targets]`` where ``mask``, 0 elsewhere, without a ``[.., V]`` tensor.

    ``hidden`` ``[R, L, H]`` are the states the head projects (the model's last hidden states), ``targets`` and
    ``mask`` ``[R, L]``. Only the masked tokens are projected, in tiles of tokens × ``columns`` vocabulary columns
    (default `head_columns`), by `trl.kernels.ChunkedLogProbFunction`: float32 log-sum-exp (the projection in the
    autocast dtype under autocast), gradients to ``hidden`` and to the head's weight and bias, each tile recomputed in
    the backward. Returns ``[R, L]`` float32.
    """
    from trl.kernels import ChunkedLogProbFunction  # TRL's fused LM head's kernel (torch ops where no Triton)

    mask = mask.bool()
    flat = hidden[mask]
    weight = head.weight
    tile = columns or head_columns(flat.shape[0], weight.shape[0], flat.device)
    picked = ChunkedLogProbFunction.apply(flat, weight, head.bias, targets[mask], float(temperature), tile, None, 1.0,
                                          ("log_probs",))[0]
    # masked_scatter keeps the output in the graph even with no token (a differentiable zero, as in TRL)
    return picked.new_zeros(mask.shape).masked_scatter(mask, picked)
