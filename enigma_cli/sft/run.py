"""`enigma sft`: plan (validate everything, load no weights) and run (TRL's SFTTrainer, then save and measure).

`plan` reads the data, the tokenizer and the model's config (never its weights), tokenises every row, checks
``max_length`` against the model's context, counts the parameters on the meta device to resolve the default
learning rate, and refuses an output folder that already holds something. `run` loads the model, measures the
strict format rate on held-out prompts (`enigma_cli.evaluate.evaluate`), trains with TRL's ``SFTTrainer``
(completion-only loss from our ``completion_mask``; LoRA through ``peft_config``), writes the checkpoint into a
temporary folder renamed into place, measures again, and returns the one-row report (``seconds``: the whole
run, loading and both format measurements included).

Choices (ours): a linear schedule with ``warmup_ratio`` warm-up (TRL's default schedule), AdamW, loss logged every
step; no checkpoints during the run (a warm-up is minutes); nothing reported to trackers (``report_to`` none).
TRL's defaults of bf16 autocast and gradient checkpointing are not taken: the weights train in the precision
``--dtype`` loaded them in (bfloat16 on a GPU that has it; float32 weights under bf16 autocast for ``bf16-mixed``,
which auto picks on a CPU with bf16; as in `enigma train`), and small models need no recomputation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from .. import options as cfgmod
from ..console import console, show_progress
from ..datasets import _quiet_progress
from ..errors import InputError
from ..evaluate import EvalSettings, evaluate
from ..models import loading, precision
from .config import SftConfig, default_lr
from .data import Encoded, encode_rows, load_rows

# TRL, peft, Hugging Face `datasets` and transformers' Auto and Trainer classes are imported inside the
# functions that use them: this module is on `enigma --help`'s import path (enigma_cli.sft exports `plan` and
# `run`), and they would add seconds to it (TRL's SFTTrainer alone ~2 s); peft is optional too ([peft] extra).

MODEL_FILES = ("config.json", "adapter_config.json")


@dataclass(frozen=True)
class Plan:
    cfg: SftConfig
    encoded: Encoded
    held_out: list
    lr: float
    steps: int  # optimiser steps
    num_params: int
    context: int | None
    is_adapter: bool

    def describe(self) -> str:
        mode = f"LoRA r={self.cfg.lora_r} alpha={self.cfg.alpha}" + (" merged" if self.cfg.merge else "") \
            if self.cfg.lora_r else "full fine-tuning"
        tokens = sum(len(x) for x in self.encoded.input_ids)
        return (f"sft {self.cfg.model} ({self.num_params / 1e6:.1f}M parameters, {mode}): {len(self.encoded.input_ids)} "
                f"rows ({tokens} tokens, longest {self.encoded.longest}), {self.steps} steps × batch "
                f"{self.cfg.batch_size} × accumulation {self.cfg.grad_accum}, lr {self.lr:g}"
                f"{'' if self.cfg.lr is not None else ' (default for this size)'}, max length "
                f"{self.cfg.max_length} (context {self.context or '?'}); format rate on {len(self.held_out)} "
                f"held-out prompts × {self.cfg.eval_samples}; output {self.cfg.output_dir}")


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir {out} is a file.")
    if out.is_dir():
        if any((out / f).is_file() for f in MODEL_FILES):
            raise InputError(f"--output-dir {out} already holds a finished sft run; choose another folder.")
        if any(out.iterdir()):
            raise InputError(f"--output-dir {out} is not empty; choose a new or empty folder.")
    parent = out.parent if out.parent != Path("") else Path(".")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        raise InputError(f"--output-dir {out} cannot be written ({existing} is read-only).")


def _check_packages(cfg: SftConfig) -> None:
    if importlib.util.find_spec("trl") is None:
        raise InputError("enigma sft needs TRL: pip install 'trl>=0.19'.")
    if cfg.lora_r and importlib.util.find_spec("peft") is None:
        raise InputError("--lora-r needs peft: pip install peft (or pass --lora-r 0 for full fine-tuning).")


def _peek(spec: str):
    """(config, tokenizer, is_adapter) of a model spec without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    path, gguf_file = loading.model_path_for(spec)
    folder, is_adapter = Path(path), False
    tokenizer_dir = None
    for _ in range(loading.MAX_ADAPTER_DEPTH + 1):  # an adapter's base may be an adapter (load_model merges both)
        if not loading._is_adapter_folder(path, gguf_file):
            break
        is_adapter = True
        if tokenizer_dir is None and loading._has_tokenizer(folder):
            tokenizer_dir = path
        path, gguf_file = loading.model_path_for(loading._adapter_base(spec, folder))
        folder = Path(path)
    if gguf_file is not None:
        cache = loading._gguf_cache_dir(Path(path) / gguf_file)
        if cache is not None and (cache / loading._CACHE_DONE).is_file():
            path, gguf_file = str(cache), None
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if not Path(path).is_dir() and loading.hub_offline():
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or path, **kwargs)
    except Exception as err:  # noqa: BLE001 - any unreadable config or tokenizer is bad input
        raise InputError(f"Could not read the config or tokenizer of model '{spec}': "
                         f"{loading._first_line(err)}") from None
    return config, tokenizer, is_adapter


def _count_params(config) -> int:
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - an architecture we cannot build on meta: guess from the width
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        h, n = getattr(text, "hidden_size", 0), getattr(text, "num_hidden_layers", 0)
        return int(12 * n * h * h + getattr(text, "vocab_size", 0) * h)


def plan(cfg: SftConfig) -> Plan:
    """Everything `run` needs, checked without loading weights; InputError (exit 3) on any bad input."""
    out = Path(cfg.output_dir)
    _check_output(out)
    _check_packages(cfg)
    rows, held_out = load_rows(cfg)
    config, tokenizer, is_adapter = _peek(cfg.model)
    if is_adapter and cfg.lora_r and not cfg.merge:
        raise InputError(f"model {cfg.model} is a LoRA adapter: a second adapter on top of it would not load on its "
                         "base; pass --merge, or train it in full (--lora-r 0).")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(text, "max_position_embeddings", None)
    if context is not None and cfg.max_length > context:
        raise InputError(f"--max-length {cfg.max_length} exceeds the context of model {cfg.model} ({context} "
                         "tokens).")
    encoded = encode_rows(tokenizer, rows, cfg.principle, cfg.max_length)
    if not encoded.input_ids:
        raise InputError(f"every prompt is at least --max-length {cfg.max_length} tokens long; raise --max-length.")
    if encoded.truncated or encoded.dropped:
        console.print(f"[yellow]warning:[/] {encoded.truncated} rows cut at --max-length {cfg.max_length} and "
                      f"{encoded.dropped} dropped (prompt alone too long); longest row {encoded.longest} tokens.",
                      highlight=False)
    num_params = _count_params(config)
    lr = cfg.lr if cfg.lr is not None else default_lr(num_params, cfg.lora_r > 0)
    per_step = cfg.batch_size * cfg.grad_accum
    steps = cfg.steps or max(1, math.ceil(len(encoded.input_ids) * cfg.epochs / per_step))
    return Plan(cfg, encoded, held_out, lr, steps, num_params, context, is_adapter)


def _format_rate(lm, held_out, cfg: SftConfig) -> float:
    if not held_out:
        return float("nan")

    settings = EvalSettings(samples=cfg.eval_samples, max_new_tokens=cfg.eval_max_new_tokens, temperature=1.0,
                            seed=cfg.seed, batch_size=64)
    return float(evaluate(lm, held_out, cfg.principle, settings)["format_rate"])


def _loss_lines(total: int):
    """Without a progress bar (stderr not a terminal): one loss line every 10 steps, and at the first and last."""
    from transformers import TrainerCallback

    class LossLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            step = state.global_step
            if logs and "loss" in logs and (step % 10 == 0 or step in (1, total)):
                console.print(f"step {step}/{total}  loss {logs['loss']:.4f}", highlight=False)

    return LossLines()


def _trainer(p: Plan, model, tokenizer, workdir: Path):
    import datasets
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    cfg = p.cfg
    data = datasets.Dataset.from_dict({"input_ids": p.encoded.input_ids,
                                       "completion_mask": p.encoded.completion_mask})
    args = SFTConfig(
        output_dir=str(workdir), max_steps=p.steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=p.lr, warmup_steps=round(cfg.warmup_ratio * p.steps),
        lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, completion_only_loss=True, max_length=None, disable_tqdm=not show_progress(),
        use_cpu=str(next(model.parameters()).device) == "cpu", dataloader_num_workers=0,
        # TRL turns both on by default; we train in the precision the model was loaded in (--dtype), as `enigma
        # train` does: bf16 autocast (accelerate's, on the CPU too) exactly when the loaded model autocasts
        # (`--dtype bf16-mixed`, or auto on a CPU with bf16), and a warm-up of a small model needs no recomputation.
        bf16=precision.autocast_dtype(model) == torch.bfloat16, fp16=False, gradient_checkpointing=False,
    )
    peft_config = None
    if cfg.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # it prints log dicts to stdout, which is for data
    if not show_progress():
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_loss_lines(p.steps))
    return trainer


@contextlib.contextmanager
def _quiet():
    """Library chatter (TRL/transformers/peft warnings) only when a person watches stderr."""
    if show_progress():
        yield
        return
    import datasets

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_progress(datasets):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def run(p: Plan) -> dict:
    """Train, save and measure; returns the report row."""
    cfg, start = p.cfg, time.perf_counter()
    torch.manual_seed(cfg.seed)
    lm = loading.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    console.print(f"[bold]enigma[/] {p.describe()}", highlight=False)
    before = _format_rate(lm, p.held_out, cfg)
    if p.held_out:
        console.print(f"format rate before: {before:.3f}", highlight=False)
    out = Path(cfg.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet():
            trainer = _trainer(p, lm.model, lm.tokenizer, tmp / "trainer")
            trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        model = trainer.model
        if cfg.lora_r and cfg.merge:
            model = model.merge_and_unload()
        model.eval()
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        with _quiet():
            model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        cfgmod.write_resolved(cfg, tmp / "sft_config.yaml")
        (tmp / "sft_losses.json").write_text(json.dumps(losses))
        trained = loading.LoadedModel(model, lm.tokenizer, lm.name, lm.source, lm.device, lm.dtype)
        after = _format_rate(trained, p.held_out, cfg)
        row = {"model": cfg.model, "mode": f"lora-r{cfg.lora_r}" + ("-merged" if cfg.merge else "")
               if cfg.lora_r else "full", "rows": len(p.encoded.input_ids), "steps": trainer.state.global_step,
               "lr": p.lr, "loss_first": losses[0] if losses else float("nan"),
               "loss_last": losses[-1] if losses else float("nan"), "format_rate_before": before,
               "format_rate_after": after, "eval_prompts": len(p.held_out), "eval_samples": cfg.eval_samples,
               "output_dir": str(out), "seconds": round(time.perf_counter() - start, 1)}
        if out.exists():
            out.rmdir()  # _check_output allowed only an empty folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    measured = f"format rate after: {after:.3f}; " if p.held_out else ""
    console.print(f"{measured}loss {row['loss_first']:.3f} → {row['loss_last']:.3f}; wrote {out}", highlight=False)
    return row
