"""Model size: one threshold decides which defaults suit a model (a ~1M-parameter toy or a real 0.1–1B model)."""

from __future__ import annotations

#: Below this many parameters a model is a toy such as enigma-tiny (0.7M), where rates of 1e-4–1e-3 suit; above
#: it (SmolLM2-135M and up) such rates destroy the model in a few updates (docs/method.md §8).
SMALL_MODEL = 20_000_000


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def is_small(n_params: int) -> bool:
    return n_params < SMALL_MODEL
