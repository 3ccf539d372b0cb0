"""Hidden-state indices: how many layers a model has, and which state a requested layer names.

``output_hidden_states`` gives ``L + 1`` states for ``L`` decoder layers: index 0 is the embedding output, index
``i`` the output of layer ``i``, and index ``L`` the last one (after the final norm in Llama-style models).
Every reader of hidden states validates the layers a user asks for here, with the same sentence.
"""

from __future__ import annotations

from collections.abc import Iterable

from enigma_cli.errors import InputError


def num_layers(model) -> int:
    """The number of decoder layers ``L`` of ``model`` (a Hugging Face causal LM, possibly under DDP/FSDP or peft).

    Reads ``num_hidden_layers`` from the text config (multimodal configs nest it), or the older ``n_layer`` /
    ``num_layers`` names.
    """
    config = getattr(model, "module", model).config  # DDP / FSDP wrappers hold the model in .module
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise InputError("Cannot tell how many layers the model has: its config has no num_hidden_layers.")


def resolve_layers(model, layers: Iterable[int] | None, *, what: str = "Hidden layer") -> dict[int, int]:
    """Map each requested layer (as asked) to its hidden-state index in ``0..L``.

    ``model`` is a model or its layer count ``L``. Negative layers count from the last (``-1`` is ``L``). A layer
    outside ``-(L+1)..L`` raises `InputError` naming it as ``what`` (e.g. ``"--layers"``) and the valid range,
    before any forward pass. Duplicates naming the same state keep both keys.
    """
    if not layers:
        return {}
    n_states = (model if isinstance(model, int) else num_layers(model)) + 1
    resolved: dict[int, int] = {}
    for layer in layers:
        layer = int(layer)
        if not -n_states <= layer < n_states:
            raise InputError(
                f"{what} {layer} does not exist: the model has {n_states - 1} layers "
                f"(use 0..{n_states - 1}, or negative indices from the last)."
            )
        resolved[layer] = layer % n_states
    return resolved
