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
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ..console import console
from ..context import Rows
from ..errors import EnigmaError
from ..train.folder import RunFolder, Start
from ..train.tracking import TENSORBOARD_DIR
from .mapping import grpo_args, lora_config
from .options import trl_train_config
from .rewards import enigma_reward_funcs
from .trainer import EnigmaGRPOTrainer

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


def train_trl(cfg, pset, examples, lm, start: Start, folder: RunFolder, *, progress: bool = False) -> Path:
    """`train.run.Loop` for ``--backend trl``: `EnigmaGRPOTrainer` trains in the run folder that `train.run.run`
    claimed (`folder`), from `start`, with `cfg` resolved for the loaded model `lm`."""
    out, cfg = folder.out, trl_train_config(cfg)  # TRL's own options at their defaults, where a library caller gave none
    args = grpo_args(cfg, dtype=lm.dtype, device=lm.device, autocast=lm.autocast)
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
        if folder.main and rows.skipped:
            console.print(f"[yellow]warning:[/] skipped {rows.skipped:,} of {len(rows):,} rows of dataset "
                          f"{cfg.dataset}: their prompts plus --max-new-tokens {cfg.max_new_tokens} exceed the "
                          "model's context.", highlight=False)
    # prompt_text: a multiple-choice row's question with its options, as the native loop renders it
    questions = Dataset.from_list([{"question": ex.prompt_text, "answer": ex.answer} for ex in examples])
    trainer = EnigmaGRPOTrainer(model=lm.model, reward_funcs=funcs, args=args, train_dataset=questions,
                                processing_class=lm.tokenizer, peft_config=lora_config(cfg, lm.model),
                                principle_set=pset)
    folder.open(cfg, lm, pset, done=start.done, backend=" (TRL)")
    for noisy in (PrinterCallback, ProgressCallback):  # they print the logs to stdout, which is for data
        trainer.remove_callback(noisy)
    with folder.training(lambda: trainer.state.global_step, done=start.done, progress=progress):
        trainer.add_callback(RunFiles(folder))
        trainer.train(resume_from_checkpoint=str(start.checkpoint) if start.checkpoint else None)
    folder.finish(pset, out / f"checkpoint-{trainer.state.global_step}", backend=" (TRL)")
    return out


class RunFiles(TrainerCallback):
    """The run folder (`RunFolder`) on top of TRL's loop: each logged step's row, the checkpoints' config, the
    last step's checkpoint, a safe stop on a signal, and the abort after ``--max-nonfinite`` bad steps."""

    def __init__(self, folder: RunFolder):
        self.folder, self.cfg, self.nonfinite = folder, folder.cfg, 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:
            return
        row = enigma_row(state.global_step, logs)
        bad = [k for k in ("loss", "grad_norm") if isinstance(row.get(k), float) and not math.isfinite(row[k])]
        self.nonfinite = self.nonfinite + 1 if bad else 0
        self.folder.record(row)
        if self.nonfinite >= self.cfg.max_nonfinite:
            raise EnigmaError(f"{self.nonfinite} steps in a row had a non-finite {bad[0]} (last at step "
                              f"{state.global_step}); lower --lr or --max-grad-norm, or check the model's dtype.")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True  # the last step always has its checkpoint, as in the native loop
        elif self.folder.stop_requested():
            control.should_save = control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = self.folder.out / f"checkpoint-{state.global_step}"
        if self.folder.main and folder.is_dir():
            self.folder.write_config(folder / "config.yaml")
