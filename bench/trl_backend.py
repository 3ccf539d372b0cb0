"""Benchmark: `enigma train`'s native loop against ``--backend trl`` (EnigmaGRPOTrainer) against plain TRL.

Five trainers on the same work, one after the other in this process: the same model and starting weights, the
same prompts × G completions of at most --max-new-tokens, temperature 1, loss "grpo", β = 0, one update per
generation, the format reward, gradient checkpointing off, the learning rate and LoRA rank `enigma train` picks for
the model (LoRA r 16 above 20M parameters, for every row, plain TRL included):

1. native, ENIGMA (`enigma train`'s defaults: SAMI + OT + the logged critic and reference metrics);
2. native, true GRPO only (``--no-sami --no-ot --no-ref-metrics --no-critic-metrics``);
3. ``--backend trl``, ENIGMA (the options of 1 through `enigma_cli.trl.mapping.grpo_args`);
4. ``--backend trl``, GRPO only (the options of 2);
5. plain TRL ``GRPOTrainer``: G completions of one rendered prompt (the question under its first principle), the
   same format reward, TRL's per-prompt advantages.

Per row: the median step time (generation + update; CPU time of this process on a CPU, ``--wall`` for wall time,
wall time on a GPU), generated tokens per step, and the step time over row 1 and over row 2. Sampling differs
between rows, so completions (and their lengths) differ: compare s/step together with tokens/step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trl_backend.py --repeats 4
    OMP_NUM_THREADS=1 .venv/bin/python bench/trl_backend.py --model smollm2 --prompts 2 -G 4 --max-new-tokens 32 \\
        --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from enigma_cli.core import format_reward
from enigma_cli.models.loading import load_model
from enigma_cli.prompts import render_prompt
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.defaults import parameter_count, resolve_for_model
from enigma_cli.train.run import plan

TRUE_GRPO = {"sami": False, "ot": False, "ref_metrics": False, "critic_metrics": False}
CLOCK = time.perf_counter


def _config(args, out: str, **options) -> TrainConfig:
    return TrainConfig(model=args.model, steps=args.repeats + 1, prompts_per_step=args.prompts,
                       group_size=args.group_size, principles_per_prompt=args.k, max_new_tokens=args.max_new_tokens,
                       temperature=1.0, loss_type="grpo", beta=0.0, device=args.device, dtype=args.dtype,
                       output_dir=out, seed=args.seed, **options)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def native(args, out: str, options: dict) -> list[tuple[float, float]]:
    """(seconds, generated tokens) of each timed step of enigma's own Trainer."""
    from enigma_cli.train.trainer import Trainer

    cfg = _config(args, out, **options)
    pset, examples = plan(cfg)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, for_training=True)
    trainer = Trainer(lm, examples, pset, resolve_for_model(cfg, parameter_count(lm.model)))
    steps = []
    for _ in range(args.repeats + 1):
        _sync(args.device)
        t0 = CLOCK()
        _, episodes = trainer.step()
        _sync(args.device)
        steps.append((CLOCK() - t0, float(sum(map(len, episodes.completion_ids)))))
    return steps[1:]


class Clock(TrainerCallback):
    def __init__(self, device: str):
        self.device, self.marks = device, []

    def on_step_begin(self, *a, **k):
        _sync(self.device)
        self.marks.append(CLOCK())

    def on_step_end(self, *a, **k):
        _sync(self.device)
        self.marks.append(CLOCK())


def _run(trainer, args) -> list[tuple[float, float]]:
    clock = Clock(args.device)
    trainer.add_callback(clock)
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    tokens = []
    generate = trainer._generate_and_score_completions

    def counted(inputs):
        out = generate(inputs)
        tokens.append(float(out["completion_mask"].sum()))
        return out

    trainer._generate_and_score_completions = counted
    trainer.train()
    times = [clock.marks[2 * i + 1] - clock.marks[2 * i] for i in range(len(clock.marks) // 2)]
    return list(zip(times, tokens))[1:]


def trl_backend(args, out: str, options: dict) -> list[tuple[float, float]]:
    """EnigmaGRPOTrainer with `enigma train`'s options mapped as ``--backend trl`` maps them."""
    from datasets import Dataset

    from enigma_cli.trl import EnigmaGRPOTrainer
    from enigma_cli.trl.mapping import grpo_args, lora_config
    from enigma_cli.trl.options import trl_train_config
    from enigma_cli.trl.rewards import enigma_reward_funcs

    cfg = _config(args, out, backend="trl", **options)
    pset, examples = plan(cfg)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, for_training=True)
    cfg = resolve_for_model(cfg, parameter_count(lm.model))
    conf = grpo_args(trl_train_config(cfg), dtype=lm.dtype, device=lm.device)
    conf.completions_jsonl, conf.save_strategy = False, "no"
    funcs, conf.reward_weights = enigma_reward_funcs(cfg.reward, cfg.group_size)
    questions = Dataset.from_list([{"question": ex.question, "answer": ex.answer} for ex in examples])
    trainer = EnigmaGRPOTrainer(model=lm.model, reward_funcs=funcs, args=conf, train_dataset=questions,
                                processing_class=lm.tokenizer, peft_config=lora_config(cfg, lm.model),
                                principle_set=pset)
    return _run(trainer, args)


def plain_trl(args, out: str) -> list[tuple[float, float]]:
    """TRL's GRPOTrainer: G completions of one rendered prompt per question, the format reward."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from enigma_cli.trl.mapping import lora_config

    cfg = _config(args, out)
    pset, examples = plan(cfg)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, for_training=True)
    cfg = resolve_for_model(cfg, parameter_count(lm.model))
    prompts = [render_prompt(lm.tokenizer, pset.principles[0].text, ex.question) for ex in examples]

    def reward(completions, **kwargs):
        return format_reward(list(completions))[0].tolist()

    conf = GRPOConfig(output_dir=out, use_cpu=args.device == "cpu", report_to="none", save_strategy="no",
                      logging_strategy="no", max_steps=args.repeats + 1, learning_rate=cfg.lr,
                      per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
                      max_completion_length=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                      loss_type="grpo", beta=0.0, num_iterations=1, importance_sampling_level="sequence",
                      max_grad_norm=1.0, seed=args.seed, disable_tqdm=True, gradient_checkpointing=False,
                      disable_dropout=True, bf16=args.dtype == "bfloat16", lr_scheduler_type="constant")
    trainer = GRPOTrainer(model=lm.model, reward_funcs=reward, args=conf,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=lm.tokenizer,
                          peft_config=lora_config(cfg, lm.model))
    return _run(trainer, args)


def main(argv: list[str] | None = None) -> None:
    global CLOCK
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="enigma-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=4, help="timed steps (after 1 warm-up step)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", "-G", type=int, default=8)
    p.add_argument("-K", dest="k", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wall", action="store_true", help="wall-clock time on a CPU too (default: process CPU time)")
    args = p.parse_args(argv)
    CLOCK = time.perf_counter if (args.wall or args.device.startswith("cuda")) else time.process_time
    print(f"model={args.model} device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"prompts={args.prompts} G={args.group_size} K={args.k} max_new_tokens={args.max_new_tokens} "
          f"steps={args.repeats} (+1 warm-up); medians; {'wall' if CLOCK is time.perf_counter else 'CPU'} seconds")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("native, ENIGMA", lambda: native(args, f"{tmp}/n1", {})),
                ("native, GRPO only", lambda: native(args, f"{tmp}/n2", TRUE_GRPO)),
                ("--backend trl, ENIGMA", lambda: trl_backend(args, f"{tmp}/t1", {})),
                ("--backend trl, GRPO only", lambda: trl_backend(args, f"{tmp}/t2", TRUE_GRPO)),
                ("plain TRL GRPOTrainer", lambda: plain_trl(args, f"{tmp}/p"))]
        for label, fn in runs:
            steps = fn()
            rows.append((label, statistics.median(s for s, _ in steps), statistics.median(t for _, t in steps)))
    header = f"{'trainer':>26} {'s/step':>8} {'gen tok/step':>13} {'/ native ENIGMA':>16} {'/ native GRPO':>14}"
    print(header + "\n" + "-" * len(header))
    for label, seconds, tokens in rows:
        print(f"{label:>26} {seconds:>8.3f} {tokens:>13.0f} {seconds / rows[0][1]:>16.2f} "
              f"{seconds / rows[1][1]:>14.2f}")


if __name__ == "__main__":
    main()
