"""`enigma train --backend trl`: the same command, trained by `EnigmaGRPOTrainer`, in the same run folder.

`train.run.run` has already locked the folder and settled where the run starts; here the options become an
`EnigmaGRPOConfig` (`mapping.grpo_args`), and a callback keeps enigma's run-folder layout as far as TRL allows:

- ``metrics.csv``: one row per step, with enigma's column names where the quantity is the same (``reward_mean``,
  ``reward_<term>``, ``format_rate``, ``loss_sami``, ``mi_sym``, ``si``, ``ot_divergence``, ``kl_ref``,
  ``grad_norm``, ``lr``, ``completion_len_mean``/``max``, ...) and TRL's own names for the rest (``entropy``,
  ``clip_ratio/...``, ``frac_reward_zero_std``, ...); enigma's ``seconds_*``, ``gen_tokens_per_s``, ``skipped``,
  ``answers_*`` and ``majority_accuracy`` are not there.
- ``completions.jsonl`` (every rank's, with ``rank``), ``config.yaml``, ``run.json``, ``training_curves.png``.
- ``checkpoint-N/``: TRL's (``model.safetensors`` or the LoRA adapter, the tokenizer, ``trainer_state.json``,
  ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``) plus our ``config.yaml``; ``--model`` takes it (or the
  run folder) as it takes a native checkpoint, so ``evaluate``, ``analyze-manifold`` and ``study`` read it as is.
  ``--resume`` continues it with TRL's own resume (optimizer, scheduler, RNG, data position).
- SIGINT/SIGTERM stop after the current step with a checkpoint, as in the native loop.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

from transformers import TrainerCallback

from ..console import console
from ..context import Rows
from ..errors import EnigmaError

RENAME = {"reward": "reward_mean", "completions/mean_length": "completion_len_mean",
          "completions/max_length": "completion_len_max", "learning_rate": "lr", "step_time": "seconds_step"}


def enigma_row(step: int, logs: dict) -> dict:
    """One logged TRL step as a metrics row, under enigma's column names where the quantity is the same."""
    row = {"step": step}
    for key, value in logs.items():
        if key.startswith("rewards/") and key.count("/") == 2:
            _, term, stat = key.split("/")
            key = f"reward_{term}" if stat == "mean" else f"reward_{term}_{stat}"
        row[RENAME.get(key, key)] = float("nan") if value is None else value
    return row


def train_trl(cfg, pset, examples, lm, start, *, progress: bool = False) -> Path:
    from datasets import Dataset
    from rich.progress import Progress
    from transformers import PrinterCallback, ProgressCallback

    from .. import options as cfgmod
    from ..interrupt import Interrupted, SafeStop, signum_of
    from ..train import distributed as dist_utils
    from ..train.folder import (
        COMPLETIONS,
        CONFIG,
        METRICS,
        PLOT,
        finish,
        hard_stop_message,
        safe_stop_message,
        write_run_info,
    )
    from ..train.records import MetricsLog, truncate_dump
    from ..train.tracking import TENSORBOARD_DIR
    from .mapping import grpo_args, lora_config
    from .rewards import enigma_reward_funcs
    from .trainer import EnigmaGRPOTrainer

    out, main = Path(cfg.output_dir), dist_utils.is_main()
    args = grpo_args(cfg, dtype=lm.dtype, device=lm.device)
    funcs, weights = enigma_reward_funcs(cfg.reward, cfg.group_size, format_weights=cfg.format_weights,
                                         gamma=cfg.coherence_gamma, gibbs_beta=cfg.gibbs_beta,
                                         numeric=cfg.numeric_answers, saturated=cfg.saturated_reward)
    args.reward_weights = weights
    if "tensorboard" in cfg.trackers:  # where transformers' TensorBoardCallback writes, as the native loop does
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / TENSORBOARD_DIR)
    # TRL samples rows itself, so rows still owing a context check (context.Rows: a large file) are checked here,
    # all of them: only the native loop starts before they are
    if isinstance(examples, Rows) and examples.lazy:
        rows = examples
        examples = [ex for ex in rows if rows.fits(ex.prompt_text)]
        if main and rows.skipped:
            console.print(f"[yellow]warning:[/] skipped {rows.skipped:,} of {len(rows):,} rows of dataset "
                          f"{cfg.dataset}: their prompts plus --max-new-tokens {cfg.max_new_tokens} exceed the "
                          "model's context.", highlight=False)
    # prompt_text: a multiple-choice row's question with its options, as the native loop renders it
    questions = Dataset.from_list([{"question": ex.prompt_text, "answer": ex.answer} for ex in examples])
    trainer = EnigmaGRPOTrainer(model=lm.model, reward_funcs=funcs, args=args, train_dataset=questions,
                                processing_class=lm.tokenizer, peft_config=lora_config(cfg, lm.model),
                                principle_set=pset)

    def write_config(path: Path) -> None:
        cfgmod.write_resolved(cfg, path)

    log = None
    if main:
        write_config(out / CONFIG)
        write_run_info(out, cfg, lm)
        log = MetricsLog(out / METRICS, resume_step=start.step if start.checkpoint else 0)
        truncate_dump(out / COMPLETIONS, start.step if start.checkpoint else 0)
        (out / PLOT).unlink(missing_ok=True)
        console.print(f"[bold]enigma train[/] {cfg.ablation} (TRL): {lm.name} on {lm.device}, set {pset.name}, "
                      f"steps {start.step + 1 if start.checkpoint else 1}..{cfg.steps}, output {out}")
    for noisy in (PrinterCallback, ProgressCallback):  # they print the logs to stdout, which is for data
        trainer.remove_callback(noisy)
    try:
        with Progress(console=console, disable=not progress or not main, transient=True) as bar, SafeStop() as stop:
            files = RunFiles(cfg, out, log, write_config, stop, bar, main)
            trainer.add_callback(files)
            trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
    except KeyboardInterrupt as err:  # a second signal: stop at once
        raise Interrupted(signum_of(err), hard_stop_message(signum_of(err), trainer.state.global_step, out)) from None
    step = trainer.state.global_step
    if files.stopped is not None:
        raise Interrupted(files.stopped, safe_stop_message(files.stopped, step))
    if main:
        finish(out, cfg, pset, log.frame(), out / f"checkpoint-{step}", backend=" (TRL)")
    return out


class RunFiles(TrainerCallback):
    """enigma's run folder on top of TRL's loop: metrics rows, warnings, stdout stream, checkpoints' config,
    the last step's checkpoint, a safe stop on a signal, and the abort after ``--max-nonfinite`` bad steps."""

    def __init__(self, cfg, out: Path, log, write_config, stop, bar, main: bool):
        from ..train.defaults import Watch

        self.cfg, self.out, self.log, self.write_config, self.stop, self.main = cfg, out, log, write_config, stop, main
        self.bar, self.task = bar, bar.add_task("training", total=cfg.steps)
        self.watch, self.fields, self.nonfinite, self.stopped = Watch(cfg), None, 0, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        from ..train.folder import stream_row, summary

        if not logs or "train_runtime" in logs:
            return
        row = enigma_row(state.global_step, logs)
        bad = [k for k in ("loss", "grad_norm") if isinstance(row.get(k), float) and not math.isfinite(row[k])]
        self.nonfinite = self.nonfinite + 1 if bad else 0
        if self.main:
            self.log.append(row)
            self.watch.see(row)
            if self.cfg.format:
                self.fields = stream_row(row, self.cfg.format, self.fields)
            if not self.bar.live.is_started and (row["step"] % 10 == 0 or row["step"] in (1, self.cfg.steps)):
                console.print(summary({"reward_mean": float("nan"), "format_rate": float("nan"), **row}),
                              highlight=False)
        self.bar.update(self.task, completed=state.global_step)
        if self.nonfinite >= self.cfg.max_nonfinite:
            raise EnigmaError(f"{self.nonfinite} steps in a row had a non-finite {bad[0]} (last at step "
                              f"{state.global_step}); lower --lr or --max-grad-norm, or check the model's dtype.")

    def on_step_end(self, args, state, control, **kwargs):
        from ..train import distributed as dist_utils

        if state.global_step >= state.max_steps:
            control.should_save = True  # the last step always has its checkpoint, as in the native loop
        elif not dist_utils.all_ranks_true(not self.stop.requested):
            control.should_save = control.should_training_stop = True
            self.stopped = self.stop.signum or signal.SIGTERM
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = self.out / f"checkpoint-{state.global_step}"
        if self.main and folder.is_dir():
            self.write_config(folder / "config.yaml")
