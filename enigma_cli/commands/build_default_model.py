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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from .. import config as cfgmod
from ..console import console
from ..errors import InputError
from ..report import check_format, write_table


def default_out() -> Path:
    """The shipped model's folder inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "enigma-tiny"


@dataclass(frozen=True)
class BuildConfig:
    steps: int = 2000
    examples: int = 64000
    batch_size: int = 32
    lr: float = 6e-3
    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 256
    format_noise: float = 0.2
    style_noise: float = 0.3
    eval_prompts: int = 500
    threads: int = 1

    def __post_init__(self):
        for name in ("steps", "examples", "batch_size", "layers", "heads", "hidden_size", "intermediate_size",
                     "threads"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.eval_prompts < 0:
            raise InputError(f"--eval-prompts must be >= 0, not {self.eval_prompts}.")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, not {self.lr}.")
        if self.vocab_size < 262:
            raise InputError(f"--vocab-size must be at least 262 (256 bytes + 6 special tokens), not {self.vocab_size}.")
        if self.hidden_size % self.heads:
            raise InputError(f"--hidden-size {self.hidden_size} must be a multiple of --heads {self.heads}.")
        for name in ("format_noise", "style_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must lie in [0, 1], not {getattr(self, name)}.")


def build_default_model(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        help="Folder to write (replaced atomically). Default: the package's enigma_cli/data/enigma-tiny.",
        show_default=False)] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    examples: Annotated[int, typer.Option(help="Synthetic training examples.")] = 64000,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, then cosine decay).")] = 6e-3,
    seed: Annotated[int, typer.Option(help="Seed for data, tokenizer, initialisation, order and evaluation.")] = 0,
    vocab_size: Annotated[int, typer.Option(help="Largest BPE vocabulary, special tokens included.")] = 512,
    hidden_size: Annotated[int, typer.Option(help="Model width.")] = 128,
    layers: Annotated[int, typer.Option(help="Transformer layers.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
    intermediate_size: Annotated[int, typer.Option(help="MLP width.")] = 256,
    format_noise: Annotated[float, typer.Option(help="Fraction of training completions with a format defect.")] = 0.2,
    style_noise: Annotated[float, typer.Option(
        help="Fraction of training completions written in another style than their principle asks for.")] = 0.3,
    eval_prompts: Annotated[int, typer.Option(help="Held-out prompts to measure the model on (0: skip).")] = 500,
    threads: Annotated[int, typer.Option(help="CPU threads (1 is reproducible bit for bit).")] = 1,
    fmt: Annotated[str, typer.Option("--format", help="Metrics as csv or jsonl on stdout.")] = "csv",
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options; typed flags win.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; train nothing.")] = False,
) -> None:
    """Pre-train the built-in default model enigma-tiny (seeded, about 20 minutes on one CPU core) and write it to a folder."""
    cfg = cfgmod.resolve(
        BuildConfig, ctx, config, steps=steps, examples=examples, batch_size=batch_size, lr=lr, seed=seed,
        vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, heads=heads,
        intermediate_size=intermediate_size, format_noise=format_noise, style_noise=style_noise,
        eval_prompts=eval_prompts, threads=threads,
    )
    if fmt not in ("csv", "jsonl"):
        raise InputError(f"--format must be csv or jsonl, not {fmt!r}.")
    check_format(fmt, None)
    out = Path(out) if out is not None else default_out()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder.")
    if dry_run:
        console.print(f"would build enigma-tiny into {out}: {cfg.examples} examples, {cfg.steps} steps × "
                      f"{cfg.batch_size} examples ({cfg.steps * cfg.batch_size / cfg.examples:.2f} epochs), "
                      f"Llama {cfg.layers}×{cfg.hidden_size} (heads {cfg.heads}, MLP {cfg.intermediate_size}), "
                      f"vocab ≤ {cfg.vocab_size}; evaluation on {cfg.eval_prompts} held-out prompts × 2 decodings.")
        return

    import pandas as pd
    import torch

    from ..models.pretrain import build_tiny_model, save_model_dir

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
    info["config"] = cfgmod.to_dict(cfg)
    import yaml

    save_model_dir(model, tokenizer, out, extra_files={
        "build_info.json": json.dumps(info, indent=2, sort_keys=False) + "\n",
        "build_config.yaml": yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False),
        "README.md": model_card(info),
    })
    row = {"out": str(out), "parameters": info["parameters"], "vocab_size": info["vocab_size"],
           "seed": cfg.seed, "steps": cfg.steps, "examples": cfg.examples,
           "final_loss": info["train"]["final_loss"], "seconds": info["seconds"]}
    row.update({k: v for k, v in info.get("eval", {}).items()})
    _print_metrics(row)
    write_table(pd.DataFrame([row]), None, fmt)


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


def model_card(info: dict) -> str:
    """A short README for the model folder, from its ``build_info.json`` contents."""
    cfg = info.get("config", {})
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.items())
    lines = [
        "# enigma-tiny",
        "",
        (f"A {info['parameters']:,}-parameter Llama-architecture causal LM (vocabulary {info['vocab_size']}, "
        "byte-level BPE trained by `enigma`), the built-in default model of `enigma`. It was pre-trained from "
        "random initialisation on the synthetic arithmetic tasks, with a principle in the system prompt, to write "
        "`<reasoning>…</reasoning><answer>…</answer>` completions in the style its principle asks for. A fraction "
        f"of its training completions ({info['format_noise']:.0%}) break the format and another "
        f"({info['style_noise']:.0%}) ignore the principle, so that it does both imperfectly: it is a test bed "
        "for GRPO and the principle term, not a capable model."),
        "",
        "Rebuild it (bit for bit with the same torch version, one thread):",
        "",
        f"    enigma build-default-model {flags}",
        "",
        (f"Training: {info['examples']} examples, {info['steps']} steps of {info['batch_size']}, "
        f"final completion loss {info['train']['final_loss']:.3f}, torch {info['torch']}."),
    ]
    ev = info.get("eval")
    if ev:
        lines += [
            "",
            f"Measured on {ev['n']} held-out problems, principle i mod P of the shipped sets:",
            "",
            "| decoding | strict format | soft format | answer accuracy | principle style recovered |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label in ("sampled", "greedy"):
            name = "sampled, T = 1" if label == "sampled" else "greedy"
            lines.append(f"| {name} | {ev[f'{label}_format_rate']:.1%} | {ev[f'{label}_soft_format_rate']:.1%} | "
                         f"{ev[f'{label}_accuracy']:.1%} | {ev[f'{label}_distinguishability']:.1%} |")
        lines += ["", (f"Chance for the principle style is {ev['chance_distinguishability']:.1%} "
                      f"({ev['styles']} styles).")]
    return "\n".join(lines) + "\n"
