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

    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo_step.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import enigma_cli
from enigma_cli.core import format_reward
from enigma_cli.models.loading import load_model
from enigma_cli.prompts import render_prompt
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.run import plan

MODEL_DIR = Path(enigma_cli.__file__).parent / "data" / "enigma-tiny"


def enigma_steps(args, out_dir: str, *, sami: bool, ot: bool) -> tuple[list[float], list[float]]:
    from enigma_cli.train.trainer import Trainer

    cfg = TrainConfig(model=str(MODEL_DIR), steps=args.repeats + 1, prompts_per_step=args.prompts,
                      group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=1.0,
                      loss_type="grpo", beta=0.0, updates_per_generation=1, sami=sami, ot=ot,
                      ref_metrics=False, device=args.device, dtype="float32", output_dir=out_dir, seed=args.seed)
    pset, examples = plan(cfg)
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, for_training=True)
    trainer = Trainer(lm, examples, pset, cfg)
    times, tokens = [], []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        row = trainer.step()
        dt = time.perf_counter() - t0
        if i:  # the first step is the warm-up
            times.append(dt)
            tokens.append(row["completion_len_mean"] * args.prompts * args.group_size)
    return times, tokens


def trl_prompts(args) -> list[str]:
    """The rendered prompts of enigma's draw, one per prompt (its first principle)."""
    cfg = TrainConfig(model=str(MODEL_DIR), prompts_per_step=args.prompts, group_size=args.group_size,
                      seed=args.seed)
    pset, examples = plan(cfg)
    tok = load_model(str(MODEL_DIR), device="cpu").tokenizer
    n = args.prompts * (args.repeats + 1)
    return [render_prompt(tok, pset.principles[i % pset.k].text, examples[i % len(examples)].question)
            for i in range(n)]


def trl_steps(args, out_dir: str) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    lm = load_model(str(MODEL_DIR), device=args.device, dtype="float32", for_training=True)
    prompts = trl_prompts(args)
    dataset = Dataset.from_dict({"prompt": prompts})

    def reward(completions, **kwargs):
        return format_reward(list(completions))[0].tolist()

    conf = GRPOConfig(output_dir=out_dir, use_cpu=args.device == "cpu", report_to="none", save_strategy="no",
                      logging_strategy="no", max_steps=args.repeats + 1, learning_rate=3e-4,
                      per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
                      max_completion_length=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                      loss_type="grpo", beta=0.0, num_iterations=1, epsilon=0.2, scale_rewards="group",
                      max_grad_norm=1.0, seed=args.seed, dataloader_num_workers=0, disable_tqdm=True,
                      shuffle_dataset=False)
    trainer = GRPOTrainer(model=lm.model, reward_funcs=reward, args=conf, train_dataset=dataset,
                          processing_class=lm.tokenizer)
    marks: list[float] = []
    lengths: list[float] = []

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
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()
    times = [marks[2 * i + 1] - marks[2 * i] for i in range(len(marks) // 2)][1:]
    return times, lengths[1:len(times) + 1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed steps K (after 1 warm-up step)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-trl", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} model=enigma-tiny "
          f"prompts={args.prompts} G={args.group_size} max_new_tokens={args.max_new_tokens} steps={args.repeats} "
          f"(+1 warm-up); s/step = median")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("enigma grpo", *enigma_steps(args, f"{tmp}/a", sami=False, ot=False)))
        if not args.skip_trl:
            rows.append(("trl GRPOTrainer", *trl_steps(args, f"{tmp}/t")))
        rows.append(("enigma +sami+ot", *enigma_steps(args, f"{tmp}/b", sami=True, ot=True)))
    base = statistics.median(rows[0][1])
    header = f"{'impl':>16} {'s/step':>8} {'steps/s':>8} {'gen tok/s':>10} {'time / enigma grpo':>19}"
    print(header)
    print("-" * len(header))
    for name, times, toks in rows:
        t = statistics.median(times)
        print(f"{name:>16} {t:>8.3f} {1 / t:>8.3f} {sum(toks) / sum(times):>10.1f} {t / base:>19.2f}")
    print("gen tok/s = completion tokens generated / wall time of the whole step (generation + scoring + update)")


if __name__ == "__main__":
    main()
