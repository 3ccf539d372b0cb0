"""Running `enigma train` end to end: validate, lock, load, loop, log, checkpoint, plot.

The run folder's life (our choices; `folder.RunFolder` carries them out for both backends):

- `plan` checks everything it can without weights or writes; `run` locks the folder (`RunFolder.claimed`),
  settles where the run starts again under that lock, removes what killed saves left, and only then loads the
  model.
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
- ``--backend trl`` shares all of the above (lock, start point, logs, signals, plot) and trains in
  `enigma_cli.trl.backend`, the loop that `commands/train.py` hands to `run` (train/ never imports trl/, which
  imports train/).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from ..console import console
from ..context import ContextCheck, Rows, principles_of
from ..datasets import load_examples
from ..errors import InputError
from ..modelfiles import depth_of, inspect
from ..models import loading, prefix
from ..models.hidden import resolve_layers
from ..models.loading import resolve_device, resolve_dtype
from ..models.portable import _record_name, portable_spec
from ..principles import load_principle_set
from . import distributed as dist_utils
from .config import TrainConfig
from .custom_rewards import probe
from .defaults import for_model
from .folder import RunFolder, Start, start_point
from .records import completion_records
from .rewards import custom_rewards
from .tracking import check_trackers
from .trainer import Trainer

__all__ = ["Loop", "Start", "load", "plan", "run", "start_point"]

#: a backend's training loop: (cfg resolved for the model, principle set, rows, loaded model, `Start`, `RunFolder`,
#: progress=bool) -> the run folder
Loop = Callable[..., Path]


def plan(cfg: TrainConfig):
    """Everything that can be checked without loading weights: the model spec and its files, the principle set,
    K, the data, prompt lengths against the model's context, and the output folder (a run is never overwritten;
    --resume must name a whole checkpoint). Returns (principle set, the examples that fit)."""
    pset = load_principle_set(cfg.principles)
    if cfg.principles_per_prompt > pset.k:
        raise InputError(f"--principles-per-prompt ({cfg.principles_per_prompt}) exceeds the {pset.k} principles "
                         f"of set {pset.name}.")
    examples = load_examples(cfg.dataset, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column, split="train", purpose="train")
    if not examples:
        raise InputError(f"dataset {cfg.dataset or 'synthetic'} has no prompts.")
    probe(custom_rewards(cfg.reward), examples)  # a broken reward function of your own: now, before any file
    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype, device)  # --device cuda without CUDA: now, not after the lock
    check_trackers(cfg.trackers)  # a tracker's library missing: now, with its pip command
    # lazily: a large file starts at once, and the rows that cannot fit are skipped as training draws them
    check = ContextCheck(principles_of(pset), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}", lazy=True)
    examples = Rows(examples).also(check, check.before_load(cfg.model, [ex.prompt_text for ex in examples]))
    if cfg.ot_layers:  # against the depth on disk where it can be read; the trainer checks the loaded model again
        files = inspect(cfg.model)
        depth = depth_of(files.config) if files is not None else None
        if depth is not None:
            resolve_layers(depth, cfg.ot_layers, what="--ot-layers")
    start_point(cfg)
    return pset, examples


def run(cfg: TrainConfig, pset, examples, *, progress: bool = False, loop: Loop | None = None) -> Path:
    """Train in ``cfg.output_dir`` with `plan`'s principle set and rows; returns the run folder.

    Claims the folder (`RunFolder.claimed`: the lock, where the run starts, what killed saves left), then loads
    the model, resolves its per-model defaults, and trains: with the native `Trainer` (`_train`), or with ``loop``
    for another backend (``--backend trl``: `trl.backend.train_trl`, which the command passes, so that nothing
    here imports the layer above). A run whose checkpoint already reached ``--steps`` does nothing; a failure
    before anything was written leaves no folder behind.
    """
    if (cfg.backend != "native") != (loop is not None):
        raise ValueError(f"--backend {cfg.backend} needs its training loop (commands/train.py passes it), and only "
                         "a backend other than native takes one.")
    folder = RunFolder(cfg)
    with folder.claimed() as start:
        if start.checkpoint is not None and start.step == cfg.steps:
            console.print(f"{folder.out}: {start.checkpoint.name} has reached --steps {cfg.steps}; nothing to do.",
                          highlight=False)
            return folder.out
        if start.note and folder.main:
            console.print(start.note, highlight=False)
        lm, examples = load(cfg, pset, examples)
        # the learning rate and LoRA rank for this model's size, said once, before either backend builds its trainer
        cfg = for_model(cfg, lm.model)
        if loop is not None:
            return loop(cfg, pset, examples, lm, start, folder, progress=progress)
        return _train(cfg, pset, examples, lm, start, folder, progress=progress)


def load(cfg: TrainConfig, pset, examples):
    """The model, and `plan`'s rows (`context.Rows`) with the context check that could not run before loading (a
    GGUF file, a hub id) now run on the loaded model."""
    # An adapter comes merged: it is the starting policy (and the reference); a LoRA run adds a fresh adapter on
    # top, whose checkpoints name this adapter as their base (load_model then merges it first again).
    # through the module, so that a test's stand-in for load_model is the one called
    lm = loading.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if lm.adapter is not None:
        _record_name(lm.model, portable_spec(cfg.model, lm.adapter))
    if cfg.sampler in ("shared", "lean") and not prefix.supports(lm.model):
        raise InputError(f"--sampler {cfg.sampler} needs a decoder-only model with a key/value cache, and "
                         f"{cfg.model} is {type(lm.model).__name__}; use --sampler auto or hf.")
    # only what `plan` could not check (a GGUF file not yet converted, a hub id): a second sample would double
    # the start-up cost and every row's check
    check = ContextCheck(principles_of(pset), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}",
                         deferred=examples.deferred, lazy=True)
    return lm, examples.also(check, check.loaded(lm, [ex.prompt_text for ex in examples]))


def _train(cfg: TrainConfig, pset, examples, lm, start: Start, folder: RunFolder, *, progress: bool) -> Path:
    """The native loop: a `Trainer` step at a time, each step's row and completions recorded in the run folder,
    checkpoints every ``--save-every`` steps and at the end (or at a safe stop)."""
    trainer = Trainer(lm, examples, pset, cfg, resume=str(start.checkpoint) if start.checkpoint else None,
                      write_config=folder.write_config)
    folder.open(cfg, lm, pset, done=trainer.step_no)
    saved = trainer.step_no if start.checkpoint else None  # the step whose checkpoint is on disk

    def save() -> Path | None:
        path = trainer.save()
        folder.rotate()
        return path

    with folder.training(lambda: trainer.step_no, done=trainer.step_no, progress=progress, trackers=True), \
            _quiet_skipped_step_warning():
        while trainer.step_no < cfg.steps:
            row, episodes = trainer.step()
            folder.record(row, dist_utils.gather_to_main(completion_records(row["step"], episodes, trainer.rank)))
            if cfg.save_every and trainer.step_no % cfg.save_every == 0 and trainer.step_no < cfg.steps:
                save()
                saved = trainer.step_no
            if trainer.step_no < cfg.steps and folder.stop_requested():
                if saved != trainer.step_no:
                    save()
                break
        final = save() if folder.stopped is None else None  # a signal now waits for this save
    if folder.main and examples.known:  # rows checked as drawn (context.Rows, from `load`): say what was skipped
        console.print(f"rows of dataset {cfg.dataset} checked as drawn: {examples.skipped:,} of the "
                      f"{len(examples.known):,} checked could not fit the context and were skipped (redrawn; "
                      "metrics.csv: rows_too_long per step).", highlight=False)
    folder.finish(pset, final)
    trainer.close()
    dist_utils.barrier()
    dist_utils.shutdown()
    return folder.out


class _quiet_skipped_step_warning(warnings.catch_warnings):
    """A skipped (non-finite) step steps the scheduler without the optimizer, on purpose (the learning rate stays
    a function of the step); torch warns about exactly that, once. Ignore that one message, nothing else."""

    def __enter__(self):
        super().__enter__()
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                                                  r"`optimizer\.step\(\)`", category=UserWarning)
        return self
