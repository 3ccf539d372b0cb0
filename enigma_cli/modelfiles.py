"""What can be known of a model without loading its weights: its config, its tokenizer folder, and whether its
weight files are whole.

`inspect(spec)` follows the same specs as `models.loading.load_model` (aliases, folders, LoRA adapter folders,
run folders, GGUF files, hub ids) and reads only small files: ``config.json`` as JSON, and the header of every
``*.safetensors`` file (the safetensors library checks that the header covers the whole file, so a truncated or
overwritten file is found here, in milliseconds, rather than minutes later when the weights load). A GGUF file
is read through its converted copy in the enigma cache when there is one, else through its metadata (the
``gguf`` package) for the context length alone. A hub id is looked up in the local cache only.

Unreadable files are an `InputError` naming the file; what cannot be known without loading is None, and the
caller checks it after loading instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open

from .errors import InputError, first_line
from .models.gguf import _CACHE_DONE, _gguf_cache_dir
from .models.loading import model_path_for

#: config keys that hold the number of positions, in the order models use them (GPT-2: n_positions, ...)
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx",
                 "max_sequence_length")


@dataclass(frozen=True)
class ModelFiles:
    """A model as it lies on disk. `config` is the parsed config.json (None when unknown); `tokenizer_dir` the
    folder to load its tokenizer from (None when it cannot be loaded cheaply)."""

    spec: str
    config: dict | None
    tokenizer_dir: Path | None
    positions: int | None


def positions_of(config: dict | None) -> int | None:
    """The model's context length from its config (a multimodal config's text part first), or None."""
    if not isinstance(config, dict):
        return None
    for part in (config.get("text_config"), config):
        if isinstance(part, dict):
            for key in POSITION_KEYS:
                value = part.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


def depth_of(config: dict | None) -> int | None:
    """The model's number of decoder layers from its config (the text part first, as `models.hidden.num_layers`
    reads a loaded model), or None."""
    if not isinstance(config, dict):
        return None
    for part in (config.get("text_config"), config):
        if isinstance(part, dict):
            for key in ("num_hidden_layers", "n_layer", "num_layers"):
                value = part.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


def check_safetensors(folder: Path, what: str) -> None:
    """Every ``*.safetensors`` file in `folder` must have a readable header covering the whole file."""
    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: the file is unusable either way
            raise InputError(f"{what}: weight file {file} is damaged or truncated ({first_line(err)}).") from None


def _read_config(folder: Path, spec: str) -> dict:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"model '{spec}': {path} cannot be read ({first_line(err)}).") from None
    if not isinstance(data, dict):
        raise InputError(f"model '{spec}': {path} does not hold a JSON object.")
    return data


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def inspect(spec: str) -> ModelFiles | None:
    """Read what a model spec names without its weights (see the module docstring); None for an uncached hub id."""
    tokenizer_dir, name = None, spec
    for _ in range(4):  # an adapter names its base, which could itself be an adapter; stop somewhere
        path, gguf = model_path_for(spec)
        if gguf is not None:
            return _gguf(name, Path(path) / gguf, tokenizer_dir)
        folder = Path(path)
        if not folder.is_dir():
            return _hub(name, path)
        check_safetensors(folder, f"model '{name}'")
        if tokenizer_dir is None and _has_tokenizer(folder):
            tokenizer_dir = folder
        if (folder / "config.json").is_file():
            config = _read_config(folder, name)
            return ModelFiles(name, config, tokenizer_dir, positions_of(config))
        try:
            spec = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"model '{name}': {folder / 'adapter_config.json'} does not name a base model "
                             f"({first_line(err)}).") from None
        if not isinstance(spec, str) or not spec.strip():
            raise InputError(f"model '{name}': {folder / 'adapter_config.json'} does not name a base model.")
    return None


def _gguf(name: str, file: Path, tokenizer_dir: Path | None) -> ModelFiles:
    cache = _gguf_cache_dir(file)
    if cache is not None and (cache / _CACHE_DONE).is_file() and (cache / "config.json").is_file():
        config = _read_config(cache, name)
        return ModelFiles(name, config, tokenizer_dir or cache, positions_of(config))
    return ModelFiles(name, None, tokenizer_dir, _gguf_positions(file))


def _gguf_positions(file: Path) -> int | None:
    """``<architecture>.context_length`` from a GGUF file's metadata (a few seconds: the reader maps the file)."""
    try:
        from gguf import GGUFReader  # lazy: gguf is optional (the [gguf] extra)

        reader = GGUFReader(str(file))
        arch = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{arch}.context_length"].contents())
    except Exception:  # noqa: BLE001 - no gguf package or an odd file: loading will tell
        return None


def _hub(name: str, hub_id: str) -> ModelFiles | None:
    """A hub id already in the local cache (config only; nothing is downloaded)."""
    try:
        cached = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001 - an odd id or cache: loading will tell
        return None
    if not isinstance(cached, str):
        return None
    folder = Path(cached).parent
    config = _read_config(folder, name)
    return ModelFiles(name, config, folder if _has_tokenizer(folder) else None, positions_of(config))
