"""`enigma train`: the ENIGMA loop (GRPO + SAMI InfoNCE + Sinkhorn OT), ablations, checkpoints and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import config as cfgmod
from ..console import console, show_progress
from ..errors import InputError
from ..train.config import TrainConfig

_D = TrainConfig()


def _layers(text: str | None) -> tuple[int, ...]:
    if not text or text == "auto":
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--ot-layers must be 'auto' or comma-separated integers, not {text!r}.") from None


def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="enigma-tiny, smollm2, a local model folder or a hub id.")] = _D.model,
    principles: Annotated[str, typer.Option(help="Principle set: a shipped name or a YAML file.")] = _D.principles,
    dataset: Annotated[str | None, typer.Option(help="'synthetic', a JSONL/CSV/parquet file, or a hub id.")] = None,
    question_column: Annotated[str | None, typer.Option(help="Column holding the question.")] = None,
    answer_column: Annotated[str | None, typer.Option(help="Column holding the answer.")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps (generations).")] = _D.steps,
    prompts_per_step: Annotated[int, typer.Option(help="Prompts per step (per process).")] = _D.prompts_per_step,
    group_size: Annotated[int, typer.Option("--group-size", "-G", help="Completions per prompt (G).")] = _D.group_size,
    principles_per_prompt: Annotated[int, typer.Option("--principles-per-prompt", "-K",
                                                       help="Principles per prompt (K); G/K each.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion, in tokens.")] = _D.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = _D.temperature,
    sampler: Annotated[str, typer.Option(help="Rollout sampler: lean (Llama-architecture models, prompts cached once "
                                              "per group), hf (transformers' generate), or auto.")] = _D.sampler,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = _D.lr,
    loss_type: Annotated[str, typer.Option(help="Aggregation: grpo, bnpo, dr_grpo, dapo or luspo (TRL's "
                                                "definitions).")] = _D.loss_type,
    surrogate: Annotated[str, typer.Option(help="Policy surrogate: clip (PPO), cispo (cap = --epsilon-high; TRL's "
                                                "cispo is --surrogate cispo --loss-type dapo) or sapo.")] = _D.surrogate,
    importance_level: Annotated[str, typer.Option(help="token, or sequence (GSPO, the paper's).")] = "sequence",
    scale_rewards: Annotated[str, typer.Option(help="Advantage scaling: group, batch or none.")] = "group",
    epsilon: Annotated[float, typer.Option(help="Clip range below (and above, unless --epsilon-high).")] = 0.2,
    epsilon_high: Annotated[float | None, typer.Option(help="Clip range above.")] = None,
    beta: Annotated[float, typer.Option(help="KL-to-reference weight (k3 estimator).")] = _D.beta,
    lambda_sami: Annotated[float, typer.Option(help="Weight of the SAMI InfoNCE term.")] = _D.lambda_sami,
    sami_matrices: Annotated[int, typer.Option(help="Critic matrices per prompt that SAMI scores, of G/K "
                                                    "(0: all; fewer is cheaper, same expectation).")] = _D.sami_matrices,
    lambda_ot: Annotated[float, typer.Option(help="Weight of the Sinkhorn OT term.")] = _D.lambda_ot,
    ot_layers: Annotated[str | None, typer.Option(help="Hidden-state layers for OT, e.g. '2,4' (auto: middle "
                                                          "and last).")] = None,
    ot_eps: Annotated[float, typer.Option(help="Entropic regularisation of the OT term.")] = _D.ot_eps,
    sami: Annotated[bool, typer.Option("--sami/--no-sami", help="Ablation: switch the SAMI term.")] = True,
    ot: Annotated[bool, typer.Option("--ot/--no-ot", help="Ablation: switch the OT term.")] = True,
    ref_metrics: Annotated[bool, typer.Option(
        "--ref-metrics/--no-ref-metrics", help="Log KL and hidden-state drift to the reference (costs a reference "
                                               "copy and a reference pass per step unless OT or --beta needs them "
                                               "anyway).")] = _D.ref_metrics,
    critic_metrics: Annotated[bool, typer.Option(
        "--critic-metrics/--no-critic-metrics", help="Log the critic's MI bound without SAMI (costs a no-grad "
                                                     "forward of the critic pairs per step).")] = _D.critic_metrics,
    ref_dtype: Annotated[str, typer.Option(help="dtype of the reference copy: auto (the run's), float32, bfloat16 "
                                                "or float16.")] = _D.ref_dtype,
    gradient_checkpointing: Annotated[bool, typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in the backward: less memory, a slower update.")] = _D.gradient_checkpointing,
    keep_dropout: Annotated[bool, typer.Option(
        "--keep-dropout/--no-keep-dropout", help="Keep the model's dropout in the update (default: off, so on-policy "
                                                 "ratios are exactly 1).")] = _D.keep_dropout,
    reward: Annotated[str, typer.Option(help="Reward terms with weights, e.g. 'format' or "
                                             "'format=1,coherence=0.5'.")] = _D.reward,
    coherence_gamma: Annotated[float, typer.Option(
        help="γ of the coherence target q ∝ p̂^γ. It only scales the coherence reward, so with --scale-rewards "
             "group it matters only next to other reward terms.")] = 2.0,
    gibbs_beta: Annotated[float, typer.Option(help="β of the Gibbs target q ∝ p̂·exp(R/β).")] = 1.0,
    updates_per_generation: Annotated[int, typer.Option(help="Policy updates per generation (μ).")] = 1,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per update (splits the prompts).")] = 1,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = _D.max_grad_norm,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (0 = full fine-tuning).")] = 0,
    output_dir: Annotated[Path, typer.Option(help="Where metrics, completions and checkpoints go.")] = Path(
        _D.output_dir),
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 0,
    resume: Annotated[str | None, typer.Option(help="'latest' or a checkpoint folder to continue from.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for prompts, principles and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    fmt: Annotated[str | None, typer.Option("--format", help="Also stream metrics rows to stdout: csv or "
                                                                "jsonl.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options; typed flags win.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; load no weights.")] = False,
) -> None:
    """Train a model with ENIGMA: GRPO on format-only rewards + SAMI InfoNCE + Sinkhorn OT to the reference."""
    cfg = cfgmod.resolve(
        TrainConfig, ctx, config, model=model, principles=principles, dataset=dataset,
        question_column=question_column, answer_column=answer_column, steps=steps, prompts_per_step=prompts_per_step,
        group_size=group_size, principles_per_prompt=principles_per_prompt, max_new_tokens=max_new_tokens,
        temperature=temperature, sampler=sampler, lr=lr, loss_type=loss_type, importance_level=importance_level,
        scale_rewards=scale_rewards, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta, lambda_sami=lambda_sami,
        sami_matrices=sami_matrices, lambda_ot=lambda_ot, ot_layers=_layers(ot_layers), ot_eps=ot_eps, sami=sami, ot=ot,
        ref_metrics=ref_metrics, critic_metrics=critic_metrics, surrogate=surrogate, ref_dtype=ref_dtype,
        gradient_checkpointing=gradient_checkpointing, keep_dropout=keep_dropout, reward=reward,
        coherence_gamma=coherence_gamma, gibbs_beta=gibbs_beta, updates_per_generation=updates_per_generation,
        grad_accum=grad_accum, max_grad_norm=max_grad_norm, lora_r=lora_r, output_dir=str(output_dir),
        save_every=save_every, seed=seed, device=device, dtype=dtype,
    )
    if fmt not in (None, "csv", "jsonl"):
        raise InputError(f"--format for train must be csv or jsonl, not {fmt!r}.")
    from ..train.run import plan, run

    pset, examples = plan(cfg, resume)
    if dry_run:
        g, k = cfg.group_size, cfg.principles_per_prompt
        console.print(f"{cfg.ablation}: {cfg.steps} steps × {cfg.prompts_per_step} prompts × G={g} "
                      f"({k} principles × {g // k}) = {cfg.steps * cfg.prompts_per_step * g} completions of ≤"
                      f"{cfg.max_new_tokens} tokens; set {pset.name} (K={pset.k}); {len(examples)} prompts "
                      f"available; model {cfg.model}; output {cfg.output_dir}. Nothing loaded (--dry-run).")
        return
    run(cfg, pset, examples, resume=resume, stream=fmt, progress=show_progress())
