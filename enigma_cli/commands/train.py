"""`enigma train`: the ENIGMA loop (GRPO + SAMI InfoNCE + Sinkhorn OT), ablations, checkpoints and resume."""

from __future__ import annotations

from ..cli_options import command
from ..console import console, show_progress
from ..models.loading import resolve_device
from ..train.run import plan, start_point
from ..train.run import run as train_run
from ..trl.options import TrlTrainConfig, check_trl_environment


def run(cfg: TrlTrainConfig, dry_run: bool) -> None:
    """Check, plan, and train on the chosen backend: ``--backend trl``'s own checks come first (the options TRL
    cannot run were refused with the values, `TrlTrainConfig.check`; then what the machine lacks for them),
    before `plan` reads any data."""
    if cfg.backend == "trl":
        check_trl_environment(cfg, resolve_device(cfg.device))
    pset, examples = plan(cfg)
    if dry_run:
        start = start_point(cfg)
        if start.note or start.checkpoint:
            console.print(start.note or f"continues from {start.checkpoint} (step {start.step}).", highlight=False)
        g, k = cfg.group_size, cfg.principles_per_prompt
        backend = " (--backend trl: TRL's GRPOTrainer)" if cfg.backend == "trl" else ""
        console.print(f"{cfg.ablation}{backend}: {cfg.steps} steps × {cfg.prompts_per_step} prompts × G={g} "
                      f"({k} principles × {g // k}) = {cfg.steps * cfg.prompts_per_step * g} completions of ≤"
                      f"{cfg.max_new_tokens} tokens; set {pset.name} (K={pset.k}); {len(examples)} prompts "
                      f"available; model {cfg.model}; output {cfg.output_dir}. Nothing loaded (--dry-run).",
                      highlight=False)
        return
    loop = None
    if cfg.backend == "trl":
        from ..trl.backend import train_trl  # here: TRL's import costs seconds that --dry-run and native skip

        loop = train_trl
    train_run(cfg, pset, examples, progress=show_progress(), loop=loop)


train = command(TrlTrainConfig, "train", run,
                help="Train a model with ENIGMA: GRPO on format-only rewards + SAMI InfoNCE + Sinkhorn OT to the "
                     "reference.")
