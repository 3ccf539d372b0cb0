"""Checkpoints: `save_pretrained` weights + tokenizer + trainer state, written atomically.

A checkpoint folder `checkpoint-<step>` holds the model (safetensors; the adapter alone under LoRA), the tokenizer,
`trainer_state.pt` (optimizer, scheduler, RNG states, step — the data cursor, since prompts are drawn from
(seed, step)), and the resolved `config.yaml`. It is written to a hidden temporary folder and renamed into place,
so an interrupted save never leaves a half-written checkpoint (`clean_partial_saves` removes what a killed save
left behind, at the next start of the run, under the run folder's lock).

Three kinds of checkpoint share the name (`checkpoint_kind`): ``native`` (the above), ``model-only``
(``--save-model-only``: weights, tokenizer and config, plus `MODEL_ONLY_FILE` instead of the trainer state; it
cannot be resumed exactly, since the optimizer's moments are gone, so ``--resume`` refuses it), and ``trl`` (written
by ``--backend trl``: TRL's ``trainer_state.json``, ``optimizer.pt``, ...; without ``optimizer.pt`` it is
model-only too). `rotate_checkpoints` keeps the newest N (``--save-total-limit``) and never the one a resume needs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, first_line
from ..modelfiles import check_safetensors
from ..report import WriteError, public_mode

STATE_FILE = "trainer_state.pt"
MODEL_ONLY_FILE = "model_only.json"  # a --save-model-only checkpoint: its step, no optimizer state
TRL_STATE_FILE = "trainer_state.json"  # a --backend trl checkpoint (TRL / transformers' Trainer)
TRL_OPTIMIZER_FILE = "optimizer.pt"
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")
PARTIAL_PREFIX = ".checkpoint-"  # save_checkpoint's temporary folders: .checkpoint-<step>.<random>


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
                    config_writer=None, model_only: bool = False) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically and return its path (``model_only``: no trainer state).

    An existing checkpoint of that step (from a run that went past it before being resumed from an earlier one)
    is first renamed aside, never deleted in place: a kill at any moment leaves either the old or the new folder
    whole under the final name, or neither (then `--resume latest` takes the one before), plus hidden temporary
    folders that `clean_partial_saves` removes at the next start.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{step}.", dir=output_dir))
    except OSError as err:
        raise WriteError(f"could not write checkpoint {final}: {err.strerror or err}.") from None
    try:
        public_mode(tmp, folder=True)
        with warnings.catch_warnings():
            # peft looks for the base's config.json to see whether embeddings changed; an alias or an adapter as
            # the base has none there, and LoRA on all-linear layers never touches the embeddings.
            warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if model_only:
            (tmp / MODEL_ONLY_FILE).write_text(json.dumps({"step": step}) + "\n")
        else:
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), **extra}, tmp / STATE_FILE)
        if config_writer is not None:
            config_writer(tmp / "config.yaml")
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{step}.old.", dir=output_dir))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as err:  # disk full, read-only: torch and safetensors raise RuntimeError, OSError, ...
        reason = _write_failure(err, output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"could not write checkpoint {final}: {reason}.") from err
    except BaseException:  # an interrupt: no half-written folder, and the signal goes on
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_failure(err: Exception, folder: Path) -> str:
    """Why a save failed, in words. torch reports a full disk as '[enforce fail at inline_container.cc] unexpected
    pos', without errno, so look at the free space before the partial files are removed."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return "No space left on device"
    except OSError:
        pass
    return first_line(err)


def clean_partial_saves(output_dir: Path, files: tuple[str, ...] = ()) -> list[Path]:
    """Remove what killed saves left in a run folder (under its lock): our temporary checkpoint folders, and the
    temporary files of `report.atomic_path` for the `files` named (``.<name>.<random>.tmp``)."""
    removed = []
    folder = Path(output_dir)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        name = path.name
        if path.is_dir() and name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif path.is_file() and name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in files):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def checkpoint_kind(path: Path) -> str | None:
    """"native", "model-only", "trl", "trl-model-only", or None when `path` is not a checkpoint of ours."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return "native"
    if (path / MODEL_ONLY_FILE).is_file():
        return "model-only"
    if (path / TRL_STATE_FILE).is_file():
        return "trl" if (path / TRL_OPTIMIZER_FILE).is_file() else "trl-model-only"
    return None


def checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoint folders of every kind, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if _step_of(p) >= 0 and checkpoint_kind(p)]
    return sorted(found, key=_step_of)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint folder with the highest step (of any kind, so that no run is ever overwritten), or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def resumable(path: Path) -> bool:
    return checkpoint_kind(path) in ("native", "trl")


def rotate_checkpoints(output_dir: Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond the newest `limit`, never the newest one nor the newest resumable one
    (what ``--resume latest`` needs when the newer ones are model-only). Returns what was deleted."""
    if not limit:
        return []
    found = checkpoints(output_dir)
    keep = set(found[-limit:])
    whole = [p for p in found if resumable(p)]
    if whole:
        keep.add(whole[-1])
    removed = [p for p in found if p not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def verify_checkpoint(path: Path, backend: str = "native") -> int | None:
    """Check that `path` is a checkpoint ``--resume`` can continue under `backend`, without loading it (weights:
    safetensors headers; state: the zip directory or the JSON); returns its step from the folder name (None when
    the name has none). One sentence naming the file if not."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind in ("model-only", "trl-model-only"):
        raise InputError(f"checkpoint {path} was saved without its optimizer state (--save-model-only), so it cannot "
                         f"be resumed exactly; start a new run from its weights with --model {path}.")
    want = "trl" if backend == "trl" else "native"
    if kind is not None and kind != want:
        raise InputError(f"checkpoint {path} was written by --backend {kind}; resume it with --backend {kind}.")
    if want == "trl":
        try:
            json.loads((path / TRL_STATE_FILE).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"checkpoint {path} is unreadable ({TRL_STATE_FILE}: {first_line(err)}).") from None
    else:
        try:
            with zipfile.ZipFile(path / STATE_FILE):  # torch's format; a truncated file has lost its directory
                pass
        except (OSError, zipfile.BadZipFile) as err:
            raise InputError(f"checkpoint {path} is unreadable ({STATE_FILE} is damaged or truncated: "
                             f"{first_line(err)}).") from None
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise InputError(f"checkpoint {path} is unreadable (it has no {' or '.join(WEIGHT_FILES[:2])}).")
    check_safetensors(path, f"checkpoint {path} is unreadable")
    step = _step_of(path)
    return step if step >= 0 else None


def find_checkpoint(spec: str | Path, output_dir: Path) -> Path:
    """`--resume latest` (newest checkpoint in output_dir) or a checkpoint folder path."""
    if str(spec) == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise InputError(f"--resume latest: no checkpoint in {output_dir}.")
        return found
    path = Path(spec)
    if checkpoint_kind(path) is None:
        raise InputError(f"--resume {path}: not a checkpoint folder (no {STATE_FILE} inside).")
    return path


def load_state(path: Path) -> dict:
    try:
        with warnings.catch_warnings():  # a foreign pickle makes torch warn, then fail: our sentence says it once
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
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
