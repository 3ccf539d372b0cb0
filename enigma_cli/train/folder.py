"""The run folder of `enigma train`, one for both backends (`train.run` natively, `trl.backend` under TRL).

`RunFolder` owns everything a run keeps on disk and everything that stops it, so that the two training loops only
train:

- the lock and the start point (`claimed`): rank 0 locks the folder, the start is settled under the lock
  (`start_point`: a run is never overwritten; ``--resume latest`` continues from the newest checkpoint, or starts
  from step 0 when there is none), killed saves are cleaned up, and a run that fails before writing anything
  leaves no folder behind;
- the files (`open`, `record`, `finish`): the resolved ``config.yaml`` (also in every checkpoint,
  `write_config`), ``run.json`` (`write_run_info`), ``metrics.csv`` and ``completions.jsonl`` cut back to the
  start point, the rows streamed to stdout (``--format``), the progress line, the run's warnings (`Watch`), the
  native loop's trackers, and the curves at the end;
- the signals (`training`): the first SIGINT/SIGTERM asks the loop to stop after the current step with a
  checkpoint (`stop_requested`), a second stops at once; either ends in `Interrupted` with the line that says
  how to continue.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from .. import options as cfgmod
from .. import plots
from ..console import console
from ..errors import InputError
from ..interrupt import Interrupted, SafeStop, signal_name, signum_of
from ..report import atomic_path, check_output_dir
from ..runlock import RunLock, busy, is_locked
from . import distributed as dist_utils
from .checkpoint import (
    clean_partial_saves,
    find_checkpoint,
    latest_checkpoint,
    rotate_checkpoints,
    verify_checkpoint,
)
from .defaults import Watch
from .records import CURVES, MetricsLog, dump_completions, truncate_dump
from .tracking import Trackers

METRICS = "metrics.csv"
COMPLETIONS = "completions.jsonl"
CONFIG = "config.yaml"
PLOT = "training_curves.png"
RUN_INFO = "run.json"
RUN_FILES = (METRICS, COMPLETIONS, CONFIG, PLOT, RUN_INFO)
LOCK = ".enigma.lock"


@dataclass(frozen=True)
class Start:
    """Where a run starts: the checkpoint to resume (None: step 0) and its step; `note` is said before starting."""

    checkpoint: Path | None
    step: int
    note: str | None = None

    @property
    def done(self) -> int:
        """The steps already trained (those of the checkpoint resumed)."""
        return self.step if self.checkpoint is not None else 0


def start_point(cfg, *, locked: bool = False) -> Start:
    """Where the run in `cfg.output_dir` starts (see the module docstring); refuses a busy or finished folder."""
    out = Path(cfg.output_dir)
    check_output_dir(out, "--output-dir", files=RUN_FILES)
    if not locked and dist_utils.is_main() and is_locked(out):  # other ranks: rank 0 holds it for them
        raise busy(out)
    logged = out.is_dir() and any((out / f).exists() for f in RUN_FILES)
    latest = latest_checkpoint(out) if out.is_dir() else None
    if not cfg.resume:
        if latest is not None:
            raise InputError(f"{out} already holds a run (up to {latest.name}); pass --resume latest to continue "
                             "it or choose another --output-dir.")
        if logged:
            raise InputError(f"{out} already holds a run that stopped before its first checkpoint; pass --resume "
                             "latest to start it again from step 0, or choose another --output-dir.")
        return Start(None, 0)
    if cfg.resume == "latest" and latest is None:
        note = f"--resume latest: no checkpoint in {out} yet, so the run starts from step 0"
        return Start(None, 0, note + (" (the steps it logged are discarded)." if logged else "."))
    checkpoint = latest if cfg.resume == "latest" else find_checkpoint(cfg.resume, out)
    step = verify_checkpoint(checkpoint, cfg.backend)
    if step is not None and step > cfg.steps:
        raise InputError(f"--steps {cfg.steps} is below the step of {checkpoint} ({step}); give --steps above "
                         f"{step} to train further, or resume an earlier checkpoint.")
    return Start(checkpoint, step if step is not None else -1)


class RunFolder:
    """One `enigma train` run folder, as both backends write it (see the module docstring).

    Use: ``with folder.claimed() as start:`` then, once the model is loaded and its defaults resolved,
    ``folder.open(cfg, lm, pset, done)``, and ``with folder.training(step_of) as bar:`` around the loop, which
    calls `record` once a step and `stop_requested` at its safe points; `finish` draws the curves.
    """

    def __init__(self, cfg):
        self.cfg, self.out, self.main = cfg, Path(cfg.output_dir), dist_utils.is_main()
        self.log: MetricsLog | None = None
        self.watch: Watch | None = None  # made by `open`, with the config resolved for the model
        self.fields: list[str] | None = None  # the streamed CSV's columns, fixed by its header
        self.trackers: Trackers | None = None
        self.stop: SafeStop | None = None
        self.stopped: int | None = None  # the signal that asked the loop to stop at a safe point
        self.bar: Progress | None = None
        self.task = None

    # -- the lock and the start point ------------------------------------------------------------------------
    @contextmanager
    def claimed(self) -> Iterator[Start]:
        """Lock the folder (rank 0) and yield where the run starts, settled again under the lock (`start_point`:
        `plan` ran before it), with what killed saves left removed. A failure before anything of the run was
        written removes the folder again, and its parents, when this run created them."""
        out = self.out
        fresh, created = not out.exists(), out  # `created`: the outermost folder that acquiring the lock makes
        while not created.parent.exists():
            created = created.parent
        lock = RunLock.acquire(out, "enigma train") if self.main else None
        try:
            start = start_point(self.cfg, locked=True)
            if self.main:
                clean_partial_saves(out, RUN_FILES)
            yield start
        except BaseException:
            if self.main and fresh and [p.name for p in out.iterdir()] == [LOCK]:
                _remove_empty(out, created)  # nothing of the run was written: leave no folder behind
            raise
        finally:
            if lock is not None:
                lock.release()

    # -- the files ---------------------------------------------------------------------------------------------
    def write_config(self, path: Path) -> None:
        """The resolved options as YAML: the run's ``config.yaml``, and each checkpoint's."""
        cfgmod.write_resolved(self.cfg, path)

    def open(self, cfg, lm, pset, done: int, backend: str = "") -> None:
        """Start writing, with `cfg` resolved for the loaded model: the config, ``run.json``, the logs cut back to
        the `done` steps of the checkpoint resumed, no stale curves; and the line that says what runs."""
        self.cfg, self.watch = cfg, Watch(cfg)
        if not self.main:
            return
        out = self.out
        self.write_config(out / CONFIG)
        write_run_info(out, cfg, lm)
        self.log = MetricsLog(out / METRICS, resume_step=done)
        truncate_dump(out / COMPLETIONS, done)
        (out / PLOT).unlink(missing_ok=True)  # drawn again at the end, from this run's rows
        console.print(f"[bold]enigma train[/] {cfg.ablation}{backend}: {lm.name} on {lm.device}, set {pset.name}, "
                      f"steps {done + 1}..{cfg.steps}, output {out}")

    def record(self, row: dict, completions: list[list[dict]] | None = None) -> None:
        """One step's row (and, natively, every rank's completions): the logs, the trackers, the warnings, the
        stream on stdout, and the progress line (every 10th step without a progress bar)."""
        if self.main:
            self.log.append(row)
            if self.trackers is not None:
                self.trackers.log(row)
            self.watch.see(row)
            if completions is not None:
                dump_completions(self.out / COMPLETIONS, [r for rank in completions for r in rank])
            if self.cfg.format:
                self.fields = stream_row(row, self.cfg.format, self.fields)
        line = summary({"reward_mean": float("nan"), "format_rate": float("nan"), **row})
        if self.main and not self.bar.live.is_started and (row["step"] % 10 == 0 or row["step"] in (1, self.cfg.steps)):
            console.print(line, highlight=False)
        self.bar.update(self.task, completed=row["step"], description=line)

    def rotate(self) -> None:
        """Keep only the newest ``--save-total-limit`` checkpoints (after a save)."""
        if self.main:
            rotate_checkpoints(self.out, self.cfg.save_total_limit)

    def finish(self, pset, checkpoint: Path, backend: str = "") -> None:
        """The end of a run: the training curves, and the line that names what was written."""
        if self.main:
            finish(self.out, self.cfg, pset, self.log.frame(), checkpoint, backend)

    # -- the signals -------------------------------------------------------------------------------------------
    @contextmanager
    def training(self, step_of: Callable[[], int], *, done: int, progress: bool, trackers: bool = False):
        """Around a training loop: the progress bar (`done` steps already there), the trackers when asked (the
        native loop's; TRL runs its own), and the signals. A second signal (or one before the loop) ends in
        `Interrupted` at once; after a safe stop (`stop_requested`), leaving the block raises `Interrupted` with
        the line that names the checkpoint written. `step_of()` is the loop's step count."""
        try:
            if self.main and trackers:
                self.trackers = Trackers(self.cfg.trackers, self.out, cfgmod.to_dict(self.cfg))
            with Progress(console=console, disable=not progress or not self.main, transient=True) as bar, \
                    SafeStop() as stop:
                self.bar, self.stop = bar, stop
                self.task = bar.add_task("training", total=self.cfg.steps, completed=done)
                yield bar
        except KeyboardInterrupt as err:  # a second signal (or the first, before the loop): stop at once
            raise Interrupted(signum_of(err), hard_stop_message(signum_of(err), step_of(), self.out)) from None
        finally:
            if self.trackers is not None:
                self.trackers.close()
                self.trackers = None
        if self.stopped is not None:
            raise Interrupted(self.stopped, safe_stop_message(self.stopped, step_of()))

    def stop_requested(self) -> bool:
        """Whether any rank was signalled to stop (a collective: every rank calls it at the same point); the
        signal is kept for the line `training` ends with."""
        if dist_utils.all_ranks_true(not self.stop.requested):
            return False
        self.stopped = self.stop.signum or signal.SIGTERM  # a rank the launcher signalled, not this one
        return True


def _remove_empty(out: Path, created: Path) -> None:
    """Remove `out` (holding only our lock file) and its empty parents up to `created`."""
    try:
        (out / LOCK).unlink(missing_ok=True)
        folder = out
        while True:
            folder.rmdir()
            if folder == created:
                break
            folder = folder.parent
    except OSError:  # someone else put something there meanwhile: leave it
        pass


def write_run_info(out: Path, cfg, lm) -> None:
    """`RUN_INFO`: the backend, the launch (world size, ranks per node, launcher), the model, the versions."""
    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {"backend": cfg.backend, **dist_utils.launch_info(), "device": str(lm.device),
            "dtype": lm.precision, "model": lm.name,
            "versions": {name: version(name) for name in ("enigma-cli", "torch", "transformers", "trl", "accelerate",
                                                          "peft")}}
    with atomic_path(out / RUN_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def hard_stop_message(signum: int, step: int, out: Path) -> str:
    """The line for a run stopped at once (a second signal, or one during loading)."""
    latest = latest_checkpoint(out)
    where = (f"{latest.name} is the newest checkpoint" if latest is not None else
             "no checkpoint was written yet, so it starts again from step 0")
    return f"interrupted by {signal_name(signum)} during step {step + 1}; {where}; continue with --resume latest."


def safe_stop_message(signum: int, step: int) -> str:
    """The line for a run stopped at a safe point (the first signal): a checkpoint of that step was written."""
    return (f"interrupted by {signal_name(signum)} at step {step}; checkpoint-{step} written; continue with "
            "--resume latest.")


def finish(out: Path, cfg, pset, frame, checkpoint: Path, backend: str = "") -> None:
    """The end of a run, on either backend: the training curves, and the line that names what was written."""
    title = f"{out.name}: {cfg.ablation} on {cfg.model}{backend}, set {pset.name}, seed {cfg.seed}"
    png = plots.grid_plot(frame, "step", CURVES, out / PLOT, title=title, smooth=max(2, min(10, len(frame) // 5)))
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
        writer = csv.DictWriter(sys.stdout, fieldnames=fields or list(row), extrasaction="ignore", restval="")
        if fields is None:
            writer.writeheader()
            fields = list(row)
        writer.writerow(row)
    sys.stdout.flush()
    return fields
