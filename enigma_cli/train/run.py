"""Running `enigma train` end to end: validate, lock, load, loop, log, checkpoint, plot.

The run folder's life (our choices):

- `plan` checks everything it can without weights or writes; `run` locks the folder (`runlock`), settles where
  the run starts again under that lock, removes what killed saves left, and only then loads the model.
- A folder that holds a run is never overwritten: without ``--resume`` it is refused, naming ``--resume latest``.
- ``--resume latest`` continues from the newest checkpoint, and starts from step 0 when there is none (a run
  killed before its first checkpoint, or a first launch): the same command line both starts and continues a run,
  which is what a preemptible job needs. The logged steps of a run with no checkpoint are discarded, with a note.
- ``--steps`` below the checkpoint's step is refused; equal to it, there is nothing to do (exit 0).
- SIGINT / SIGTERM stop after the current step with a checkpoint and one line saying how to continue; a second
  signal stops at once (the newest checkpoint stays whole). Exit code 128 + the signal (130, 143).
- A failure before anything was written removes the folder again if this run created it.
- `RUN_INFO` (run.json) records how the run was launched: backend, world size, ranks per node, launcher.
- Under DDP every rank's completions reach `completions.jsonl` (gathered to rank 0, with their rank).
- ``--backend trl`` shares all of the above (lock, start point, logs, plot) and trains in `enigma_cli.trl.backend`,
  the loop that `commands/train.py` hands to `run` (train/ never imports trl/, which imports train/).
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..console import console
from ..errors import InputError
from . import distributed as dist_utils
from .config import TrainConfig
from .folder import (
    COMPLETIONS,
    CONFIG,
    METRICS,
    PLOT,
    RUN_FILES,
    finish,
    hard_stop_message,
    safe_stop_message,
    stream_row,
    summary,
    write_run_info,
)
from .records import MetricsLog, completion_records, dump_completions, truncate_dump

#: a backend's training loop: (cfg resolved for the model, principle set, rows, loaded model, `Start`,
#: progress=bool) -> the run folder
Loop = Callable[..., Path]


@dataclass(frozen=True)
class Start:
    """Where a run starts: the checkpoint to resume (None: step 0) and its step; `note` is said before starting."""

    checkpoint: Path | None
    step: int
    note: str | None = None


def plan(cfg: TrainConfig):
    """Everything that can be checked without loading weights: the model spec and its files, the principle set,
    K, the data, prompt lengths against the model's context, and the output folder (a run is never overwritten;
    --resume must name a whole checkpoint). Returns (principle set, the examples that fit)."""
    from ..context import ContextCheck, Rows, principles_of
    from ..datasets import load_examples
    from ..principles import load_principle_set

    pset = load_principle_set(cfg.principles)
    if cfg.principles_per_prompt > pset.k:
        raise InputError(f"--principles-per-prompt ({cfg.principles_per_prompt}) exceeds the {pset.k} principles "
                         f"of set {pset.name}.")
    examples = load_examples(cfg.dataset, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column, split="train", purpose="train")
    if not examples:
        raise InputError(f"dataset {cfg.dataset or 'synthetic'} has no prompts.")
    from .custom_rewards import probe
    from .rewards import custom_rewards

    probe(custom_rewards(cfg.reward), examples)  # a broken reward function of your own: now, before any file
    from ..models.loading import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype, device)  # --device cuda without CUDA: now, not after the lock
    from .tracking import check_trackers

    check_trackers(cfg.trackers)  # a tracker's library missing: now, with its pip command
    # lazily: a large file starts at once, and the rows that cannot fit are skipped as training draws them
    check = ContextCheck(principles_of(pset), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}", lazy=True)
    examples = Rows(examples).also(check, check.before_load(cfg.model, [ex.prompt_text for ex in examples]))
    if cfg.ot_layers:  # against the depth on disk where it can be read; the trainer checks the loaded model again
        from ..modelfiles import depth_of, inspect
        from ..models.hidden import resolve_layers

        files = inspect(cfg.model)
        depth = depth_of(files.config) if files is not None else None
        if depth is not None:
            resolve_layers(depth, cfg.ot_layers, what="--ot-layers")
    start_point(cfg)
    return pset, examples


def start_point(cfg: TrainConfig, *, locked: bool = False) -> Start:
    """Where the run in `cfg.output_dir` starts (see the module docstring); refuses a busy or finished folder."""
    from ..report import check_output_dir
    from ..runlock import busy, is_locked
    from .checkpoint import find_checkpoint, latest_checkpoint, verify_checkpoint

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


def run(cfg: TrainConfig, pset, examples, *, progress: bool = False, loop: Loop | None = None) -> Path:
    """Train in ``cfg.output_dir`` with `plan`'s principle set and rows; returns the run folder.

    Locks the folder (rank 0), settles where the run starts under the lock (`start_point`), removes what killed
    saves left, then loads the model and trains (`_train`): with the native `Trainer`, or with ``loop`` for
    another backend (``--backend trl``: `trl.backend.train_trl`, which the command passes, so that nothing here
    imports the layer above). A run whose checkpoint already reached ``--steps`` does nothing; a failure before
    anything was written leaves no folder behind.
    """
    if (cfg.backend != "native") != (loop is not None):
        raise ValueError(f"--backend {cfg.backend} needs its training loop (commands/train.py passes it), and only "
                         "a backend other than native takes one.")
    from ..runlock import RunLock
    from .checkpoint import clean_partial_saves

    out = Path(cfg.output_dir)
    main = dist_utils.is_main()
    fresh, created = not out.exists(), out  # `created`: the outermost folder that acquiring the lock makes
    while not created.parent.exists():
        created = created.parent
    lock = RunLock.acquire(out, "enigma train") if main else None
    try:
        start = start_point(cfg, locked=True)  # settled again under the lock: plan() ran before it
        if main:
            clean_partial_saves(out, RUN_FILES)
        if start.checkpoint is not None and start.step == cfg.steps:
            console.print(f"{out}: {start.checkpoint.name} has reached --steps {cfg.steps}; nothing to do.",
                          highlight=False)
            return out
        if start.note and main:
            console.print(start.note, highlight=False)
        return _train(cfg, pset, examples, start, progress=progress, loop=loop)
    except BaseException:
        if main and fresh and [p.name for p in out.iterdir()] == [".enigma.lock"]:
            _remove_empty(out, created)  # nothing of the run was written: leave no folder behind
        raise
    finally:
        if lock is not None:
            lock.release()


def _remove_empty(out: Path, created: Path) -> None:
    """Remove `out` (holding only our lock file) and its empty parents up to `created`."""
    try:
        (out / ".enigma.lock").unlink(missing_ok=True)
        folder = out
        while True:
            folder.rmdir()
            if folder == created:
                break
            folder = folder.parent
    except OSError:  # someone else put something there meanwhile: leave it
        pass


def load(cfg: TrainConfig, pset, examples):
    """The model, and `plan`'s rows (`context.Rows`) with the context check that could not run before loading (a
    GGUF file, a hub id) now run on the loaded model."""
    from ..context import ContextCheck, principles_of
    from ..models import prefix
    from ..models.loading import load_model

    # An adapter comes merged: it is the starting policy (and the reference); a LoRA run adds a fresh adapter on
    # top, whose checkpoints name this adapter as their base (load_model then merges it first again).
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if lm.adapter is not None:
        from ..models.portable import _record_name, portable_spec

        _record_name(lm.model, portable_spec(cfg.model, lm.adapter))
    if cfg.sampler in ("shared", "lean") and not prefix.supports(lm.model):
        raise InputError(f"--sampler {cfg.sampler} needs a decoder-only model with a key/value cache, and "
                         f"{cfg.model} is {type(lm.model).__name__}; use --sampler auto or hf.")
    # only what `plan` could not check (a GGUF file not yet converted, a hub id): a second sample would double
    # the start-up cost and every row's check
    check = ContextCheck(principles_of(pset), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}",
                         deferred=examples.deferred, lazy=True)
    return lm, examples.also(check, check.loaded(lm, [ex.prompt_text for ex in examples]))


def _train(cfg: TrainConfig, pset, examples, start: Start, *, progress: bool, loop: Loop | None) -> Path:
    from .. import options as cfgmod
    from ..interrupt import Interrupted, SafeStop, signum_of
    from .checkpoint import rotate_checkpoints
    from .defaults import Watch, for_model
    from .tracking import Trackers
    from .trainer import Trainer

    stream = cfg.format
    out = Path(cfg.output_dir)
    lm, examples = load(cfg, pset, examples)
    # the learning rate and LoRA rank for this model's size, said once, before either backend builds its trainer
    cfg = for_model(cfg, lm.model)
    if loop is not None:
        return loop(cfg, pset, examples, lm, start, progress=progress)

    def write_config(path: Path) -> None:
        cfgmod.write_resolved(cfg, path)

    resume = str(start.checkpoint) if start.checkpoint is not None else None
    trainer = Trainer(lm, examples, pset, cfg, resume=resume, write_config=write_config)
    main = dist_utils.is_main()
    log = None
    trackers = None
    if main:
        write_config(out / CONFIG)
        write_run_info(out, cfg, lm)
        log = MetricsLog(out / METRICS, resume_step=trainer.step_no)
        truncate_dump(out / COMPLETIONS, trainer.step_no)
        (out / PLOT).unlink(missing_ok=True)  # drawn again at the end, from this run's rows
        console.print(f"[bold]enigma train[/] {cfg.ablation}: {lm.name} on {lm.device}, set {pset.name}, "
                      f"steps {trainer.step_no + 1}..{cfg.steps}, output {out}")
    fields = None  # the streamed CSV's columns, fixed by its header
    watch = Watch(cfg)
    saved = trainer.step_no if resume else None  # the step whose checkpoint is on disk
    from rich.progress import Progress

    def save() -> Path | None:
        path = trainer.save()
        if main:
            rotate_checkpoints(out, cfg.save_total_limit)
        return path

    stopped = None  # the signal that asked the loop to stop at a safe point
    try:
        if main:
            trackers = Trackers(cfg.trackers, out, cfgmod.to_dict(cfg))
        with Progress(console=console, disable=not progress or not main, transient=True) as bar, \
                SafeStop() as stop, _quiet_skipped_step_warning():
            task = bar.add_task("training", total=cfg.steps, completed=trainer.step_no)
            while trainer.step_no < cfg.steps:
                row = trainer.step()
                records = dist_utils.gather_to_main(completion_records(row["step"], trainer._last_episodes,
                                                                       trainer.rank))
                if main:
                    log.append(row)
                    trackers.log(row)
                    watch.see(row)
                    dump_completions(out / COMPLETIONS, [r for rank in records for r in rank])
                    if stream:
                        fields = stream_row(row, stream, fields)
                    if not progress and (row["step"] % 10 == 0 or row["step"] in (1, cfg.steps)):
                        console.print(summary(row), highlight=False)
                bar.update(task, advance=1, description=summary(row))
                if cfg.save_every and trainer.step_no % cfg.save_every == 0 and trainer.step_no < cfg.steps:
                    save()
                    saved = trainer.step_no
                if not dist_utils.all_ranks_true(not stop.requested) and trainer.step_no < cfg.steps:
                    if saved != trainer.step_no:
                        save()
                    stopped = stop.signum or signal.SIGTERM  # a rank the launcher signalled, not this one
                    break
            final = save() if stopped is None else None  # a signal now waits for this save
    except KeyboardInterrupt as err:  # a second signal (or the first, before the loop): stop at once
        raise Interrupted(signum_of(err), hard_stop_message(signum_of(err), trainer.step_no, out)) from None
    finally:
        if trackers is not None:
            trackers.close()
    if stopped is not None:
        raise Interrupted(stopped, safe_stop_message(stopped, trainer.step_no))
    if main and examples.known:  # rows checked as drawn (context.Rows, from `load`): say what was skipped
        console.print(f"rows of dataset {cfg.dataset} checked as drawn: {examples.skipped:,} of the "
                      f"{len(examples.known):,} checked could not fit the context and were skipped (redrawn; "
                      "metrics.csv: rows_too_long per step).", highlight=False)
    if main:
        finish(out, cfg, pset, log.frame(), final)
    trainer.close()
    dist_utils.barrier()
    dist_utils.shutdown()
    return out


class _quiet_skipped_step_warning(warnings.catch_warnings):
    """A skipped (non-finite) step steps the scheduler without the optimizer, on purpose (the learning rate stays
    a function of the step); torch warns about exactly that, once. Ignore that one message, nothing else."""

    def __enter__(self):
        super().__enter__()
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                                                  r"`optimizer\.step\(\)`", category=UserWarning)
        return self
