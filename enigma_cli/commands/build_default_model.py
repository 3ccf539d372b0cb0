"""`enigma build-default-model`: pre-train enigma-tiny, the built-in default model, from scratch.

Seeded and CPU-only: synthetic examples (with a fraction of format defects and off-principle reasoning, so the
model leaves room for GRPO and the principle term), a byte-level BPE tokenizer trained by our code, a tiny Llama,
completion-only supervised training, then an evaluation on held-out problems. The folder (safetensors, tokenizer,
``build_info.json``, ``build_config.yaml``) is written atomically; the metrics go to stdout as one CSV row.

The run uses one CPU thread by default: it is then bit-for-bit reproducible on any machine with the same torch
version, and on a shared 2-core machine more threads are slower, not faster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
import yaml

from ..cli_options import command
from ..console import console
from ..errors import InputError
from ..options import to_dict
from ..pretrain.card import model_card
from ..pretrain.config import BuildConfig, default_out
from ..pretrain.training import build_tiny_model, save_model_dir
from ..report import check_output_dir, write_table


def run(cfg: BuildConfig, dry_run: bool) -> None:
    out = Path(cfg.out) if cfg.out is not None else default_out()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder.")

    check_output_dir(out, "--out")
    if dry_run:
        console.print(f"would build enigma-tiny into {out}: {cfg.examples} examples, {cfg.steps} steps × "
                      f"{cfg.batch_size} examples ({cfg.steps * cfg.batch_size / cfg.examples:.2f} epochs), "
                      f"Llama {cfg.layers}×{cfg.hidden_size} (heads {cfg.heads}, MLP {cfg.intermediate_size}), "
                      f"vocab ≤ {cfg.vocab_size}; evaluation on {cfg.eval_prompts} held-out prompts × 2 decodings.",
                      highlight=False)
        return

    torch.set_num_threads(cfg.threads)

    def log(step: int, metrics: dict) -> None:
        console.print(f"step {step + 1}/{cfg.steps}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                      f"grad {metrics['grad_norm']:.3f}  {metrics['seconds']:.0f}s", highlight=False)

    model, tokenizer, info = build_tiny_model(
        examples=cfg.examples, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
        intermediate_size=cfg.intermediate_size, format_noise=cfg.format_noise, style_noise=cfg.style_noise,
        eval_prompts=cfg.eval_prompts, log=log,
    )
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "format")}
    info["config"] = recipe
    save_model_dir(model, tokenizer, out, extra_files={
        "build_info.json": json.dumps(info, indent=2, sort_keys=False) + "\n",
        "build_config.yaml": yaml.safe_dump(recipe, sort_keys=False),
        "README.md": model_card(info),
    })
    row = {"out": str(out), "parameters": info["parameters"], "vocab_size": info["vocab_size"],
           "seed": cfg.seed, "steps": cfg.steps, "examples": cfg.examples,
           "final_loss": info["train"]["final_loss"], "seconds": info["seconds"]}
    row.update({k: v for k, v in info.get("eval", {}).items()})
    _print_metrics(row)
    write_table(pd.DataFrame([row]), None, cfg.format)


def _print_metrics(row: dict) -> None:
    console.print(f"enigma-tiny written to {row['out']}: {row['parameters']:,} parameters, vocab "
                  f"{row['vocab_size']}, final loss {row['final_loss']:.4f}, {row['seconds']:.0f}s", highlight=False)
    if "n" in row:
        for label in ("sampled", "greedy"):
            console.print(
                f"  {label:7s} (n={row['n']}): format {row[f'{label}_format_rate']:.1%}  "
                f"soft format {row[f'{label}_soft_format_rate']:.1%}  accuracy {row[f'{label}_accuracy']:.1%}  "
                f"principle style recovered {row[f'{label}_distinguishability']:.1%} "
                f"(chance {row['chance_distinguishability']:.1%})", highlight=False)



build_default_model = command(
    BuildConfig, "build-default-model", run,
    help="Pre-train the built-in default model enigma-tiny (seeded, about 20 minutes on one CPU core) and write it "
         "to a folder.")
