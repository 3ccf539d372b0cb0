"""Checkpoints: `save_pretrained` weights + tokenizer + trainer state, written atomically.

A checkpoint folder `checkpoint-<step>` holds the model (safetensors; the adapter alone under LoRA), the tokenizer,
`trainer_state.pt` (optimizer, scheduler, RNG states, step — the data cursor, since prompts are drawn from
(seed, step)), and the resolved `config.yaml`. It is written to a hidden temporary folder and renamed into place,
so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, first_line

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    """All RNG states as tensors and plain Python values, so `torch.load(weights_only=True)` reads them."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, model, tokenizer, optimizer, scheduler, extra: dict,
                    config_writer=None) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically and return its path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=output_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), **extra}, tmp / STATE_FILE)
        if config_writer is not None:
            config_writer(tmp / "config.yaml")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_checkpoint(spec: str | Path, output_dir: Path) -> Path:
    """`--resume latest` (newest checkpoint in output_dir) or a checkpoint folder path."""
    if str(spec) == "latest":
        found = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: _step_of(p))
        found = [p for p in found if (p / STATE_FILE).is_file()]
        if not found:
            raise InputError(f"--resume latest: no checkpoint with {STATE_FILE} in {output_dir}.")
        return found[-1]
    path = Path(spec)
    if not (path / STATE_FILE).is_file():
        raise InputError(f"--resume {path}: not a checkpoint folder (no {STATE_FILE} inside).")
    return path


def load_state(path: Path) -> dict:
    try:
        state = torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable state is bad input
        raise InputError(f"checkpoint {path} is unreadable ({STATE_FILE}: {first_line(err, with_type=True)}).") from None
    missing = [k for k in ("step", "optimizer", "scheduler", "rng") if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"checkpoint {path} is unreadable ({STATE_FILE} has no {missing[0]!r}).")
    return state


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("-")[-1])
    except ValueError:
        return -1
