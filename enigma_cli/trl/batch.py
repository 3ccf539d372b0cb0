"""What the ENIGMA terms need from a TRL batch: its rows as `Episodes`, and hidden states from TRL's own forward.

- `batch_episodes` turns a TRL micro-batch (left-padded prompts, right-padded completions, whole questions in
  `Episodes` order) into the `train.episodes.Episodes` that `train.objective.forward` and `train.terms` read, so
  the off-diagonal critic rows are scored by the same code as in `enigma train`.
- `capture_hidden` records hidden states during TRL's forward: TRL computes log-probs through a fused LM head that
  returns no hidden states, so a pre-hook on the backbone asks it for them and a hook keeps the layers we need.
  The OT term then costs no second forward of the diagonal rows (`enigma train` gets them from its one forward too).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from accelerate.utils import is_peft_model

from ..train.episodes import Episodes


def backbone(model, unwrap=lambda m: m):
    """The decoder stack whose forward TRL's fused LM head calls (``base_model``), under DDP/PEFT wrappers."""
    inner = unwrap(model)
    inner = getattr(inner, "module", inner)
    if is_peft_model(inner):
        inner = inner.get_base_model()
    return inner.base_model


@dataclass
class Captured:
    layers: list[int]
    chunks: list[dict[int, torch.Tensor]] = field(default_factory=list)

    def hidden(self) -> dict[int, torch.Tensor]:
        """layer -> [B, T, H], the chunks of the forward concatenated."""
        if not self.chunks:
            return {}
        width = max(c[self.layers[0]].shape[1] for c in self.chunks)
        for c in self.chunks:  # TRL's chunks share one padded width; guard anyway
            assert all(h.shape[1] == width for h in c.values()), "chunks of different widths"
        return {layer: torch.cat([c[layer] for c in self.chunks]) for layer in self.layers}


@contextmanager
def capture_hidden(module: torch.nn.Module, layers: list[int]):
    """Within the block, every forward of `module` (a backbone) returns and records hidden states `layers`."""
    captured = Captured(list(layers))
    if not layers:
        yield captured
        return

    def ask(mod, args, kwargs):
        return args, {**kwargs, "output_hidden_states": True}

    def keep(mod, args, output):
        states = output.hidden_states
        captured.chunks.append({layer: states[layer] for layer in captured.layers})

    handles = [module.register_forward_pre_hook(ask, with_kwargs=True), module.register_forward_hook(keep)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def completion_mask_full(inputs: dict) -> torch.Tensor:
    """[B, P+C]: 1 on the completion tokens of TRL's prompt+completion rows (hidden states are over both)."""
    return torch.cat([torch.zeros_like(inputs["prompt_mask"]), inputs["completion_mask"]], dim=1)


def batch_episodes(inputs: dict, k: int, m: int) -> Episodes:
    """A TRL micro-batch of whole questions as `Episodes` (token ids only; rewards are not needed here)."""
    prompt_ids, prompt_mask = inputs["prompt_ids"].cpu(), inputs["prompt_mask"].cpu().bool()
    completion_ids, completion_mask = inputs["completion_ids"].cpu(), inputs["completion_mask"].cpu().bool()
    n = completion_ids.shape[0]
    prompts = [prompt_ids[r][prompt_mask[r]].tolist() for r in range(0, n, m)]
    completions = [completion_ids[r][completion_mask[r]].tolist() for r in range(n)]
    return Episodes(n_prompts=n // (k * m), k=k, m=m, prompt_ids=prompts, completion_ids=completions, texts=[],
                    principle_ids=[], questions=[], labels=[], rewards=None,
                    advantages=inputs["advantages"].detach().float().cpu())
