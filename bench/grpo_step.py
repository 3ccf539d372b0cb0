"""Benchmark: enigma's GRPO step against TRL's `GRPOTrainer` step on the same model and batch.

Both sides train a fresh copy of the shipped enigma-tiny (``enigma_cli/data/enigma-tiny``) on the same rendered
prompts (``enigma_cli.prompts.render_prompt`` with a principle in the system prompt, as `enigma train` draws
them), with the same group size G, max completion length, sampling (temperature 1, top-k off, top-p 1), loss
type "grpo", beta 0, one update per generation, each side at its default importance level (TRL: token,
enigma: sequence) and the format reward (``enigma_cli.core.format_reward``). Each side runs 1 warm-up step and then K timed steps; the script prints
steps/s, generated tokens/s and the ratio enigma/TRL, then enigma with SAMI and OT switched on, as a ratio to
enigma's GRPO-only step.

Differences that remain: enigma gives each prompt's G completions to K=2 principles (G/K each), TRL samples G
completions from one rendered prompt; the generated lengths differ (sampling), which is why tokens/s is shown.

``--model-config PRESET|JSON`` replaces enigma-tiny by a randomly initialised Llama of that shape (see
``bench/random_models.py``) for GPU throughput; ``upd tok/s`` counts the prompt + completion tokens that go through the
update's forward and backward, and MFU = 6·N·(upd tok/s) / peak FLOP/s (``--peak-tflops``, or a known GPU's
dense bf16 peak). The ``+sami+ot`` row uses `enigma train`'s defaults (SAMI on 1 critic matrix per prompt);
``--sami-matrices M`` adds a full-ENIGMA row whose SAMI term scores M matrices per prompt (0: all G/K).
enigma samples with its lean sampler (`enigma_cli.models.decode`) where the model is Llama-shaped;
``--hf-sampler`` adds a GRPO-only row that samples with ``transformers``' ``generate``, as TRL does, to show what
the sampler contributes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo_step.py --repeats 3
    .venv/bin/python bench/grpo_step.py --device cuda --dtype bfloat16 --model-config llama-1b --skip-trl
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from random_models import model_folder, peak_tflops  # bench/random_models.py

from enigma_cli.core import format_reward
from enigma_cli.models.loading import load_model
from enigma_cli.prompts import render_prompt
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.objective import sami_matrices
from enigma_cli.train.run import plan

PHASES = ("generation", "scoring", "update")
split: dict[tuple, dict[str, list[float]]] = {}  # (sami, ot, matrices) -> phase -> seconds of each timed step


def update_tokens(ep, cfg) -> int:
    """Prompt + completion tokens of every sequence the update forwards (the diagonal, plus SAMI's off-diagonal)."""
    n = sum(len(ep.prompt_ids[ep.prompt_of(i)]) + len(c) for i, c in enumerate(ep.completion_ids))
    if cfg.use_sami:
        for p, s, i, j in ep.off_diagonal(range(ep.n_prompts), sami_matrices(cfg, ep.m)):
            n += len(ep.prompt_ids[p * ep.k + i]) + len(ep.completion_ids[ep.completion_index(p, j, s)])
    return n


def enigma_steps(args, model_dir: Path, out_dir: str, *, sami: bool, ot: bool, matrices: int | None = None,
                 sampler: str = "auto"):
    """(step seconds, generated tokens, update tokens) of each timed step."""
    from enigma_cli.train.trainer import Trainer

    cfg = TrainConfig(model=str(model_dir), steps=args.repeats + 1, prompts_per_step=args.prompts,
                      group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=1.0,
                      loss_type="grpo", beta=0.0, updates_per_generation=1, sami=sami, ot=ot,
                      ref_metrics=False, device=args.device, dtype=args.dtype, output_dir=out_dir, seed=args.seed,
                      sampler=sampler, **({} if matrices is None else {"sami_matrices": matrices}))
    pset, examples = plan(cfg)
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, for_training=True)
    trainer = Trainer(lm, examples, pset, cfg)
    times, tokens, updated = [], [], []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        row = trainer.step()
        dt = time.perf_counter() - t0
        if i:  # the first step is the warm-up
            times.append(dt)
            tokens.append(row["completion_len_mean"] * args.prompts * args.group_size)
            updated.append(update_tokens(trainer._last_episodes, cfg))
            for phase in PHASES:
                split.setdefault((sami, ot, matrices, sampler), {}).setdefault(phase, []).append(row[f"seconds_{phase}"])
    return times, tokens, updated


def trl_prompts(args, model_dir: Path) -> list[str]:
    """The rendered prompts of enigma's draw, one per prompt (its first principle)."""
    cfg = TrainConfig(model=str(model_dir), prompts_per_step=args.prompts, group_size=args.group_size,
                      seed=args.seed)
    pset, examples = plan(cfg)
    tok = load_model(str(model_dir), device="cpu").tokenizer
    n = args.prompts * (args.repeats + 1)
    return [render_prompt(tok, pset.principles[i % pset.k].text, examples[i % len(examples)].question)
            for i in range(n)]


def trl_steps(args, model_dir: Path, out_dir: str):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    lm = load_model(str(model_dir), device=args.device, dtype=args.dtype, for_training=True)
    prompts = trl_prompts(args, model_dir)
    dataset = Dataset.from_dict({"prompt": prompts})

    def reward(completions, **kwargs):
        return format_reward(list(completions))[0].tolist()

    conf = GRPOConfig(output_dir=out_dir, use_cpu=args.device == "cpu", report_to="none", save_strategy="no",
                      logging_strategy="no", max_steps=args.repeats + 1, learning_rate=3e-4,
                      per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
                      max_completion_length=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                      loss_type="grpo", beta=0.0, num_iterations=1, epsilon=0.2, scale_rewards="group",
                      max_grad_norm=1.0, seed=args.seed, dataloader_num_workers=0, disable_tqdm=True,
                      shuffle_dataset=False,
                      # TRL defaults to bf16=True, which on a CPU means bf16 autocast: keep both sides at --dtype
                      bf16=args.dtype == "bfloat16", fp16=args.dtype == "float16")
    trainer = GRPOTrainer(model=lm.model, reward_funcs=reward, args=conf, train_dataset=dataset,
                          processing_class=lm.tokenizer)
    marks: list[float] = []
    lengths: list[float] = []
    updated: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    orig = trainer._generate_and_score_completions

    def spy(inputs):
        out = orig(inputs)
        lengths.append(float(out["completion_mask"].sum()))
        updated.append(float(out["completion_mask"].sum() + out["prompt_mask"].sum()))
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()
    times = [marks[2 * i + 1] - marks[2 * i] for i in range(len(marks) // 2)][1:]
    return times, lengths[1:len(times) + 1], updated[1:len(times) + 1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed steps K (after 1 warm-up step)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--hf-sampler", action="store_true",
                   help="also time enigma's GRPO step sampling with transformers' generate (TRL's sampler)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (both sides)")
    p.add_argument("--model", default=None, help="an enigma model spec instead of enigma-tiny, e.g. smollm2")
    p.add_argument("--model-config", default=None,
                   help="a preset (smollm2-135m, llama-1b) or a JSON of LlamaConfig fields: random weights")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s for MFU (default: known GPUs)")
    p.add_argument("--sami-matrices", type=int, default=None,
                   help="also time full ENIGMA with SAMI on this many critic matrices per prompt (0: all G/K)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or model_folder(args.model_config, tmp, args.seed)
        n_params = load_model(str(model_dir), device="cpu").model.num_parameters()
        peak = peak_tflops(args.device, args.peak_tflops)
        print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
              f"model={args.model or args.model_config or 'enigma-tiny'} N={n_params:,} dtype={args.dtype} prompts={args.prompts} "
              f"G={args.group_size} max_new_tokens={args.max_new_tokens} steps={args.repeats} (+1 warm-up); "
              f"s/step = median")
        rows.append(("enigma grpo", *enigma_steps(args, model_dir, f"{tmp}/a", sami=False, ot=False)))
        if not args.skip_trl:
            rows.append(("trl GRPOTrainer", *trl_steps(args, model_dir, f"{tmp}/t")))
        if args.hf_sampler:
            rows.append(("enigma grpo, hf gen", *enigma_steps(args, model_dir, f"{tmp}/h", sami=False, ot=False,
                                                               sampler="hf")))
        rows.append(("enigma +sami+ot", *enigma_steps(args, model_dir, f"{tmp}/b", sami=True, ot=True)))
        if args.sami_matrices is not None:
            rows.append((f"enigma sami{args.sami_matrices or 'all'}+ot",
                         *enigma_steps(args, model_dir, f"{tmp}/c", sami=True, ot=True, matrices=args.sami_matrices)))
    base = statistics.median(rows[0][1])
    header = (f"{'impl':>18} {'s/step':>8} {'steps/s':>8} {'gen tok/s':>10} {'upd tok/s':>10} {'MFU':>7} "
              f"{'time / enigma grpo':>19}")
    print(header)
    print("-" * len(header))
    for name, times, toks, upd in rows:
        t = statistics.median(times)
        upd_rate = sum(upd) / sum(times)
        mfu = f"{6 * n_params * upd_rate / (peak * 1e12):.2%}" if peak else "-"
        print(f"{name:>18} {t:>8.3f} {1 / t:>8.3f} {sum(toks) / sum(times):>10.1f} {upd_rate:>10.1f} {mfu:>7} "
              f"{t / base:>19.2f}")
    print("enigma's step by phase (median seconds): " + "; ".join(
        f"sami={k[0]} ot={k[1]} matrices={'default' if k[2] is None else k[2] or 'all'} sampler={k[3]}: " + ", ".join(
            f"{ph} {statistics.median(v[ph]):.3f}" for ph in PHASES) for k, v in split.items()))
    print("gen tok/s = completion tokens generated / wall time of the whole step (generation + scoring + update); "
          "upd tok/s = tokens through the update's forward+backward / the same wall time; "
          "MFU = 6·N·upd tok/s / peak")


if __name__ == "__main__":
    main()
