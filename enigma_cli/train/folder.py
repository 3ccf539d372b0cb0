"""The files of an `enigma train` run folder, shared by both backends (`train.run` and `trl.backend`).

The names of the run's files, `write_run_info` (how the run was launched), and the lines a run prints: the
progress summary, the rows streamed to stdout (``--format``), and the message of a run stopped at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import distributed as dist_utils
from .records import CURVES

METRICS = "metrics.csv"
COMPLETIONS = "completions.jsonl"
CONFIG = "config.yaml"
PLOT = "training_curves.png"
RUN_INFO = "run.json"
RUN_FILES = (METRICS, COMPLETIONS, CONFIG, PLOT, RUN_INFO)


def write_run_info(out: Path, cfg, lm) -> None:
    """`RUN_INFO`: the backend, the launch (world size, ranks per node, launcher), the model, the versions."""
    import importlib.metadata as md

    from ..report import atomic_path

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {"backend": cfg.backend, **dist_utils.launch_info(), "device": str(lm.device),
            "dtype": str(lm.dtype).removeprefix("torch."), "model": lm.name,
            "versions": {name: version(name) for name in ("enigma-cli", "torch", "transformers", "trl", "accelerate",
                                                          "peft")}}
    with atomic_path(out / RUN_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def hard_stop_message(signum: int, step: int, out: Path) -> str:
    """The line for a run stopped at once (a second signal, or one during loading)."""
    from ..interrupt import signal_name
    from .checkpoint import latest_checkpoint

    latest = latest_checkpoint(out)
    where = (f"{latest.name} is the newest checkpoint" if latest is not None else
             "no checkpoint was written yet, so it starts again from step 0")
    return f"interrupted by {signal_name(signum)} during step {step + 1}; {where}; continue with --resume latest."


def safe_stop_message(signum: int, step: int) -> str:
    """The line for a run stopped at a safe point (the first signal): a checkpoint of that step was written."""
    from ..interrupt import signal_name

    return (f"interrupted by {signal_name(signum)} at step {step}; checkpoint-{step} written; continue with "
            "--resume latest.")


def finish(out: Path, cfg, pset, frame, checkpoint: Path, backend: str = "") -> None:
    """The end of a run, on either backend: the training curves, and the line that names what was written."""
    from ..console import console
    from ..plots import grid_plot

    title = f"{out.name}: {cfg.ablation} on {cfg.model}{backend}, set {pset.name}, seed {cfg.seed}"
    png = grid_plot(frame, "step", CURVES, out / PLOT, title=title, smooth=max(2, min(10, len(frame) // 5)))
    console.print(f"done: {out / METRICS}, {checkpoint}" + (f", {png}" if png else ""), highlight=False)


def summary(row: dict) -> str:
    parts = [f"step {row['step']}", f"reward {row['reward_mean']:.3f}", f"format {row['format_rate']:.2f}"]
    for key, label in (("mi_sym", "MI"), ("ot_divergence", "OT"), ("kl_ref", "KL")):
        if key in row:
            parts.append(f"{label} {row[key]:.4f}")
    return "  ".join(parts)


def stream_row(row: dict, fmt: str, fields: list[str] | None) -> list[str] | None:
    """Write one row to stdout; returns the CSV columns, which the first row fixes (a header cannot change)."""
    if fmt == "jsonl":
        sys.stdout.write(json.dumps(row) + "\n")
    else:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=fields or list(row), extrasaction="ignore", restval="")
        if fields is None:
            writer.writeheader()
            fields = list(row)
        writer.writerow(row)
    sys.stdout.flush()
    return fields
