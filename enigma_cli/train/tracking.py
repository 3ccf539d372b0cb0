"""Experiment tracking for `enigma train` (``--report-to``): each metrics row goes to the trackers asked for,
through their own libraries (no hand-written file formats), on the main process only.

- ``tensorboard``: `torch.utils.tensorboard.SummaryWriter` in ``OUTPUT_DIR/tensorboard`` (one scalar per column);
- ``trackio``: ``trackio.init(project, name, config)`` / ``trackio.log`` / ``trackio.finish``;
- ``wandb``: ``wandb.init(project, name, config, dir)`` / ``wandb.log`` / ``wandb.finish``.

The libraries are imported only when asked for; `check_trackers` refuses a missing one with its pip command before
anything loads. The project is ``enigma`` and the run is named after the output folder (trackio's and wandb's own
environment variables, e.g. ``WANDB_PROJECT``, ``WANDB_MODE=offline``, still apply). ``--backend trl`` passes
``--report-to`` to TRL instead, whose callbacks use the same libraries.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from ..errors import InputError

PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
TENSORBOARD_DIR = "tensorboard"
PROJECT = "enigma"


def check_trackers(trackers: tuple[str, ...]) -> None:
    """Every tracker's library is importable; one sentence with the pip command if not."""
    for name in trackers:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise InputError(f"--report-to {name} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]} "
                             "(or pip install 'enigma-cli[tracking]' for tensorboard).")


class Trackers:
    """The trackers of one run: `log(row)` after every step, `close()` at the end (also on failure)."""

    def __init__(self, trackers: tuple[str, ...], output_dir: Path, config: dict):
        self.sinks = []
        name = Path(output_dir).resolve().name
        for tracker in trackers:
            if tracker == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.sinks.append(_TensorBoard(SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD_DIR))))
            elif tracker == "trackio":
                import trackio

                trackio.init(project=PROJECT, name=name, config=config)
                self.sinks.append(_Module(trackio))
            elif tracker == "wandb":
                import wandb

                run = wandb.init(project=PROJECT, name=name, config=config, dir=str(output_dir))
                self.sinks.append(_Module(wandb, run))

    def log(self, row: dict) -> None:
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for sink in self.sinks:
            sink.log(values, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


class _TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Module:
    """trackio and wandb: the same log(dict, step=) / finish() calls."""

    def __init__(self, module, run=None):
        self.module, self.run = module, run

    def log(self, values: dict, step: int) -> None:
        (self.run or self.module).log(values, step=step)

    def close(self) -> None:
        (self.run or self.module).finish()
