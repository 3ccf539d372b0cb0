"""What a model spec (the text after ``--model``) points at, found without loading anything.

See `enigma_cli.models.loading` for the forms a spec takes. `model_path_for` maps a spec to a folder, a GGUF file
or a hub id and checks what can be checked locally (missing folders, folders without a config); whether a hub id
exists is only known when loading.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

from enigma_cli.console import console
from enigma_cli.errors import InputError
from enigma_cli.models.gguf import smollm2_gguf_path
from enigma_cli.models.portable import ALIASES, DEFAULT_MODEL, SMOLLM2_ALIAS

# A hub id: "name" or "org/name" (letters, digits, '-', '_', '.'), nothing path-like.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


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


_ANNOUNCED: set[tuple[str, str]] = set()  # (spec, checkpoint) pairs already named on stderr by this process


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
            if (spec, newest.name) not in _ANNOUNCED:  # once: the checks before loading resolve the spec too
                console.print(f"{spec}: using its newest checkpoint, {newest.name}", highlight=False)
                _ANNOUNCED.add((spec, newest.name))
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
