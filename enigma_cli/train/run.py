"""Running `enigma train` end to end: validate, load, loop, log, checkpoint, plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..console import console
from ..errors import InputError
from . import distributed as dist_utils
from .config import TrainConfig
from .records import CURVES, MetricsLog, dump_completions, truncate_dump

METRICS = "metrics.csv"
COMPLETIONS = "completions.jsonl"


def plan(cfg: TrainConfig):
    """Everything that can be checked without loading weights: the model spec, the principle set, K, the data,
    and the output folder (a finished run is never overwritten; --resume needs a checkpoint)."""
    from ..datasets import load_examples
    from ..principles import load_principle_set

    pset = load_principle_set(cfg.principles)
    if cfg.principles_per_prompt > pset.k:
        raise InputError(f"--principles-per-prompt ({cfg.principles_per_prompt}) exceeds the {pset.k} principles "
                         f"of set {pset.name}.")
    examples = load_examples(cfg.dataset, seed=cfg.seed, question_column=cfg.question_column,
                             answer_column=cfg.answer_column, split="train")
    if not examples:
        raise InputError(f"dataset {cfg.dataset or 'synthetic'} has no prompts.")
    from ..models.loading import model_path_for

    model_path_for(cfg.model)  # a missing folder or package is an InputError here, before anything is written
    _check_output(cfg)
    return pset, examples


def _check_output(cfg: TrainConfig) -> None:
    from ..report import check_output_dir

    out, resume = Path(cfg.output_dir), cfg.resume
    check_output_dir(out)
    if not resume and (out / METRICS).exists():
        raise InputError(f"{out} already holds a run ({METRICS}); pass --resume latest to continue it or choose "
                         "another --output-dir.")
    if resume:
        from .checkpoint import find_checkpoint

        find_checkpoint(resume, out)


def run(cfg: TrainConfig, pset, examples, *, progress: bool = False) -> Path:
    from .. import options as cfgmod
    from ..models import decode
    from ..models.loading import load_model
    from .defaults import Watch
    from .trainer import Trainer

    resume, stream = cfg.resume, cfg.format
    out = Path(cfg.output_dir)  # plan() has checked it (and the model spec) before anything was loaded
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, for_training=True)
    if cfg.sampler == "lean" and not decode.supports(lm.model):
        raise InputError(f"--sampler lean runs Llama-architecture models only, and {cfg.model} is "
                         f"{type(lm.model).__name__}; use --sampler auto or hf.")

    def write_config(path: Path) -> None:
        cfgmod.write_resolved(cfg, path)

    trainer = Trainer(lm, examples, pset, cfg, resume=resume, write_config=write_config)
    cfg = trainer.cfg  # with the learning rate and LoRA rank resolved for this model
    main = dist_utils.is_main()
    log = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out / "config.yaml")
        log = MetricsLog(out / METRICS, resume_step=trainer.step_no if resume else None)
        if resume:
            truncate_dump(out / COMPLETIONS, trainer.step_no)
    fields = None  # the streamed CSV's columns, fixed by its header
    watch = Watch(cfg)
    if main:
        console.print(f"[bold]enigma train[/] {cfg.ablation}: {lm.name} on {lm.device}, set {pset.name}, "
                      f"steps {trainer.step_no + 1}..{cfg.steps}, output {out}")
    from rich.progress import Progress

    with Progress(console=console, disable=not progress or not main, transient=True) as bar:
        task = bar.add_task("training", total=cfg.steps, completed=trainer.step_no)
        while trainer.step_no < cfg.steps:
            row = trainer.step()
            if main:
                log.append(row)
                watch.see(row)
                dump_completions(out / COMPLETIONS, row["step"], trainer._last_episodes)
                if stream:
                    fields = _stream(row, stream, fields)
                if not progress and (row["step"] % 10 == 0 or row["step"] in (1, cfg.steps)):
                    console.print(_summary(row), highlight=False)
            bar.update(task, advance=1, description=_summary(row))
            if cfg.save_every and trainer.step_no % cfg.save_every == 0 and trainer.step_no < cfg.steps:
                trainer.save()
    final = trainer.save()
    if main:
        from ..plots import grid_plot

        frame = log.frame()
        title = f"{out.name}: {cfg.ablation} on {cfg.model}, set {pset.name}, seed {cfg.seed}"
        png = grid_plot(frame, "step", CURVES, out / "training_curves.png", title=title,
                        smooth=max(2, min(10, len(frame) // 5)))
        console.print(f"done: {out / METRICS}, {final}" + (f", {png}" if png else ""))
    dist_utils.barrier()
    dist_utils.shutdown()
    return out


def _summary(row: dict) -> str:
    parts = [f"step {row['step']}", f"reward {row['reward_mean']:.3f}", f"format {row['format_rate']:.2f}"]
    for key, label in (("mi_sym", "MI"), ("ot_divergence", "OT"), ("kl_ref", "KL")):
        if key in row:
            parts.append(f"{label} {row[key]:.4f}")
    return "  ".join(parts)


def _stream(row: dict, fmt: str, fields: list[str] | None) -> list[str] | None:
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
