"""The lean forward pass of Llama-architecture models: the model's own modules without `transformers`' plumbing.

`decode` samples and scores with it. What it does differently from the model's ``forward`` (and what
`supports` guarantees keeps the numbers the same):

- the model's own modules (embeddings, norms, rotary embedding, projections, MLP, head) do the arithmetic, with
  q/k/v and gate/up fused into one matmul each when they are plain ``Linear`` layers; adapter layers injected by
  ``peft`` (LoRA) are called as they are;
- attention is the caller's (``attend``), so a caller can keep keys and values where it likes: `Prompts` runs
  each distinct prompt once and keeps its cache for all the rows that continue it;
- positions follow ``generate``'s for left-padded prompts: a row's first real token is at position 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .logprobs import chunk_tokens, length_chunks

#: Rotary embeddings whose frequencies do not depend on the sequence length (dynamic / longrope ones do).
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


def unwrap(model):
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # peft: the base model, its Linear layers carrying the adapters
        model = model.get_base_model()
    return model


def _bypassed(lm) -> list[torch.nn.Module]:
    """The modules whose ``forward`` the lean path does not call (it reads their weights or calls their parts)."""
    body = lm.model
    out = [body, body.norm]
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        out += [layer, attn, mlp, layer.input_layernorm, layer.post_attention_layernorm]
        out += [m for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj) if _plain(m)]
    return out


def supports(model) -> bool:
    """Whether `sample` and `score` can run `model` exactly as its own forward would.

    Yes for a Llama-architecture causal LM (also under DDP, or with ``peft`` adapters that replace layers, such
    as LoRA) with a rotary embedding that does not depend on the sequence length. No for prompt-learning
    adapters (virtual tokens), FSDP, quantised or device-mapped (offloaded) models, and models with forward hooks
    on modules the lean path does not call.
    """
    from transformers import LlamaForCausalLM

    peft_config = getattr(getattr(model, "module", model), "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    if "FullyShardedDataParallel" in type(model).__name__:
        return False
    lm = unwrap(model)
    if not isinstance(lm, LlamaForCausalLM) or getattr(lm, "hf_quantizer", None) is not None:
        return False
    if getattr(lm, "hf_device_map", None) or int(getattr(lm.config, "pretraining_tp", 1) or 1) != 1:
        return False
    if getattr(lm.model.rotary_emb, "rope_type", None) not in _STATIC_ROPE:
        return False
    return not any(_hooked(m) for m in _bypassed(lm))


def _hooked(module: torch.nn.Module) -> bool:
    """Whether someone hooked ``module``'s forward (``transformers``' own output recorders, which only act when
    hidden states or attentions are asked for, do not count)."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    foreign = [h for h in hooks if "output_capturing_hook" not in getattr(h, "__qualname__", "")]
    return bool(foreign) or hasattr(module, "_hf_hook")


def _plain(*modules) -> bool:
    return all(type(m) is torch.nn.Linear for m in modules)


def _fused(*modules: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """One matmul computing the outputs of several plain Linears side by side; None if any is not plain.

    The weights are concatenated (not detached: under autograd the gradient reaches each module's own)."""
    if not _plain(*modules) or len({m.bias is None for m in modules}) != 1:
        return None
    weight = torch.cat([m.weight for m in modules])
    bias = None if modules[0].bias is None else torch.cat([m.bias for m in modules])
    return lambda x: F.linear(x, weight, bias)


class Layer:
    """One decoder layer's projections, with q/k/v and gate/up fused into single matmuls when they are plain
    Linear layers (weights copied at construction, i.e. once per `sample` call); adapter-wrapped layers
    (``peft``) are called as they are."""

    def __init__(self, layer):
        self.layer = layer
        attn = layer.self_attn
        self.attn = attn
        self.qkv = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
        self.split = (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)
        mlp = layer.mlp
        self.act = mlp.act_fn
        self.gate_up = _fused(mlp.gate_proj, mlp.up_proj)

    def project(self, h: torch.Tensor):
        if self.qkv is None:
            return self.attn.q_proj(h), self.attn.k_proj(h), self.attn.v_proj(h)
        return self.qkv(h).split(self.split, dim=-1)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.gate_up is None:
            return self.layer.mlp(h)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.layer.mlp.down_proj(self.act(gate) * up)


def norm(module, x: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm`` in one fused kernel: ``weight * (x / rms(x))``, normalised in float32, cast back first."""
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        return module(x)
    return module.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def forward(lm, layers: list[Layer], ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
             capture: dict[int, torch.Tensor | None] | None = None) -> torch.Tensor:
    """The last decoder layer's output ``[B, q, H]`` (before the final norm) for ``ids`` ``[B, q]``.

    ``cos``/``sin`` ``[B, q, D]`` are the rotary tables at these positions. ``attend(layer, q, k, v)`` gets the
    rotated queries ``[B, H, q, D]`` and this chunk's keys/values ``[B, H_kv, q, D]``, stores what it needs and
    returns the attention output ``[B, H, q, D]``. ``capture`` keys are hidden-state indices (0: the embeddings,
    ``i``: the output of layer ``i``); their values are filled in.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    batch, width = ids.shape
    x = lm.model.embed_tokens(ids)
    if capture is not None and 0 in capture:
        capture[0] = x
    for index, proj in enumerate(layers):
        layer, head_dim = proj.layer, proj.attn.head_dim
        q, k, v = proj.project(norm(layer.input_layernorm, x))
        q = q.view(batch, width, -1, head_dim).transpose(1, 2)
        k = k.view(batch, width, -1, head_dim).transpose(1, 2)
        v = v.view(batch, width, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        o = attend(index, q, k, v)
        x = x + proj.attn.o_proj(o.transpose(1, 2).reshape(batch, width, -1))
        x = x + proj.mlp(norm(layer.post_attention_layernorm, x))
        if capture is not None and index + 1 in capture:
            capture[index + 1] = x
    return x


def head(lm, x: torch.Tensor) -> torch.Tensor:
    """Logits of the final-layer states ``x`` (final norm, then the LM head)."""
    return lm.lm_head(norm(lm.model.norm, x))


class Prompts:
    """The distinct prompts, run once: their key/value caches per layer (``keys[layer]`` ``[P, H_kv, D, W]``,
    transposed; ``values[layer]`` ``[P, H_kv, W, D]``), left-padded to the longest, the mask of real tokens
    ``valid`` ``[P, W]``, their ``lengths`` and the logits of each prompt's last position ``[P, V]``.

    The prompts run in length-sorted chunks (`logprobs.length_chunks`), each left-padded to its own longest.
    """

    def __init__(self, lm, layers: list[Layer], prompts: list[list[int]], device):
        self.lengths = torch.tensor([len(p) for p in prompts], device=device)
        width = max(len(p) for p in prompts)
        parts, order = [], []
        for chunk in length_chunks([len(p) for p in prompts], chunk_tokens(device)):
            parts.append(_prefill(lm, layers, [prompts[i] for i in chunk], device))
            order.extend(chunk)
        back = torch.argsort(torch.tensor(order, device=device))  # chunk order -> prompt order

        def joined(tensors: list[torch.Tensor], dim: int, fill) -> torch.Tensor:
            padded = [_left_pad(t, width, dim, fill) for t in tensors]
            return torch.cat(padded)[back]

        self.valid = joined([part[0] for part in parts], 1, False)
        self.logits = torch.cat([part[1] for part in parts])[back]
        self.keys = [joined([part[2][i] for part in parts], 3, 0.0) for i in range(len(layers))]
        self.values = [joined([part[3][i] for part in parts], 2, 0.0) for i in range(len(layers))]

    def __len__(self) -> int:
        return len(self.lengths)


def _left_pad(t: torch.Tensor, width: int, dim: int, fill) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_full(shape, fill), t], dim=dim)


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


def _prefill(lm, layers: list[Layer], prompts: list[list[int]], device):
    """Run left-padded ``prompts``: (valid ``[P, W]``, last logits ``[P, V]``, keys and values per layer)."""
    ids, real = left_padded(prompts, 0)
    ids, valid = ids.to(device), real.to(device).bool()  # valid: real tokens, not left padding
    width = ids.shape[1]
    columns = torch.arange(width, device=device)
    pads = width - valid.sum(1)
    cos, sin = rotary(lm, (columns.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=0))
    # Causal and key-padding mask; a padded query row sees itself, so no row of scores is all -inf (NaN).
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=device)
    mask = (causal & valid[:, None, None, :]) | eye
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []

    def attend(index, q, k, v):
        # Stored in the layouts the later matmuls read, so that they never copy: keys transposed.
        keys.append(k.transpose(-1, -2).contiguous())  # [P, H_kv, D, W]
        values.append(v.contiguous())  # [P, H_kv, W, D]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layers[index].attn.scaling,
                                              enable_gqa=q.shape[1] != k.shape[1])

    logits = head(lm, forward(lm, layers, ids, cos, sin, attend)[:, -1])
    return valid, logits, keys, values


def rotary(lm, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's rotary ``cos``/``sin`` at integer ``positions`` ``[B, T]``: ``[B, T, D]`` each."""
    reach = int(positions.max()) + 1
    probe = lm.model.embed_tokens.weight[:1]
    cos, sin = lm.model.rotary_emb(probe, torch.arange(reach, device=positions.device).unsqueeze(0))
    return cos[0][positions], sin[0][positions]


def distinct(prompts: list[list[int]], device) -> tuple[list[list[int]], torch.Tensor]:
    """The distinct prompts (first-seen order) and, for each row, the index of its prompt among them."""
    distinct = list(dict.fromkeys(tuple(p) for p in prompts))
    where = {p: i for i, p in enumerate(distinct)}
    return [list(p) for p in distinct], torch.tensor([where[tuple(p)] for p in prompts], device=device)
