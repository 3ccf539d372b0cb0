"""Checks before and between models: which layers to read, and whether two models can be compared."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..models.hidden import resolve_layers
from ..models.loading import model_path_for


@dataclass(frozen=True)
class ModelShape:
    """What `check_compatible` needs of a loaded model (so the base's weights can be freed)."""

    name: str
    num_layers: int
    hidden_size: int
    vocab: dict | None = None

    @classmethod
    def of(cls, lm) -> ModelShape:
        cfg = _text_config(lm.model.config)
        return cls(lm.name, int(lm.num_layers), int(cfg.hidden_size), dict(lm.tokenizer.get_vocab()))

    @classmethod
    def peek(cls, spec: str) -> ModelShape | None:
        """Read a local checkpoint's config and tokenizer without its weights; None when that is not possible.

        Follows a LoRA adapter folder to its base (its own tokenizer wins when it has one). Only an early
        check before anything is loaded or generated; `of` on the loaded model is the real one.
        """
        from transformers import AutoConfig, AutoTokenizer  # lazy: they add ~0.2 s to `enigma --help`

        name, tokenizer_dir = spec, None
        for _ in range(3):  # an adapter names its base, which could itself be an adapter; stop somewhere
            path, gguf = model_path_for(spec)
            folder = Path(path)
            if gguf is not None or not folder.is_dir():
                return None
            if (folder / "config.json").is_file():
                try:
                    cfg = _text_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
                    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or folder), local_files_only=True)
                    return cls(name, int(cfg.num_hidden_layers), int(cfg.hidden_size), dict(tok.get_vocab()))
                except Exception:  # noqa: BLE001 - load_model reports an unreadable checkpoint later
                    return None
            has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
            if tokenizer_dir is None and has_tokenizer:
                tokenizer_dir = folder
            try:
                spec = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None


def check_compatible(base: ModelShape, other: ModelShape) -> None:
    """Depth, width and tokenizer of ``other`` must be the base's (the same token ids are fed to both)."""
    if other.num_layers != base.num_layers:
        raise InputError(f"model '{other.name}' has {other.num_layers} layers but the base '{base.name}' has "
                         f"{base.num_layers}; per-layer comparisons need models of the same depth.")
    if other.hidden_size != base.hidden_size:
        raise InputError(f"model '{other.name}' has hidden size {other.hidden_size} but the base "
                         f"'{base.name}' has {base.hidden_size}; drift and principal angles need states of "
                         "the same width.")
    if other.vocab is not None and base.vocab is not None and other.vocab != base.vocab:
        raise InputError(f"model '{other.name}' has a different tokenizer from the base '{base.name}', so it "
                         "cannot read the base's completions token for token.")


def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def analysed_layers(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """The hidden-state indices `analyze-manifold --layers` reads: ``all``/None → 0..L; a comma list → its sorted
    unique indices, each checked and resolved by `models.hidden.resolve_layers` (negative counts from L)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(num_layers + 1))
    items = parse_layers(spec) if isinstance(spec, str) else list(spec)
    return sorted(set(resolve_layers(num_layers, items, what="--layers").values()))


def parse_layers(spec: str) -> list[int] | None:
    """Syntax check of ``--layers``: ``all`` (None) or comma-separated integers."""
    text = (spec or "").strip().lower()
    if text in ("", "all"):
        return None
    try:
        items = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--layers must be 'all' or comma-separated integers such as 0,6,-1, "
                         f"not {spec!r}.") from None
    if not items:
        raise InputError(f"--layers must be 'all' or comma-separated integers, not {spec!r}.")
    return items
