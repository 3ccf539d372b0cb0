"""Benchmark: peak resident memory of enigma's training step against TRL's `GRPOTrainer`, each case in its own process.

Every case loads the model, builds its trainer and runs ``--steps`` steps (the first allocates the optimizer's
state, the second is the steady state), in a fresh Python process whose peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) it reports, beside the resident size once the model is loaded, and the
seconds of each step after the first (the whole step, and its update: forward and backward). Cases:

- ``enigma``: full ENIGMA (`enigma train`'s defaults: SAMI + OT, reference copy, KL/drift and MI logged);
- ``enigma-grpo``: the true GRPO-only ablation (``--no-sami --no-ot --no-ref-metrics --no-critic-metrics``);
- ``-gc`` suffix: the same with ``--gradient-checkpointing``; ``-bf16ref``: the reference copy in bfloat16;
  ``enigma-lora``: ENIGMA with LoRA r=16 (the reference is the adapter-disabled model: no copy);
- ``enigma-untiled`` (``-gc``): ENIGMA with every read of the objective (the update's forward, the reference pass,
  the critic's off-diagonal) through the untiled `models.reader.read`, which makes the ``[B, T, V]`` logits, in
  place of `models.tiled.read` (the LM head in tiles): the code before the tiled head, in the same bench;
- ``trl-gc``: TRL's ``GRPOTrainer`` with gradient checkpointing ON (its ``GRPOConfig`` default); ``trl``: OFF;
  ``trl-gc-ref``: ON, with β = 0.04, so that TRL too holds a reference model (a full copy) as ENIGMA does;
  ``trl-ref``: the same with checkpointing OFF;
  ``trl-gc-release``: ON, with enigma's releases of freed heap pages (`enigma_cli.train.memory`) added to TRL's
  step: the same hooks in its backward and a release after its generation, so that the allocator is out of the
  comparison.

Both sides: the same model, prompts rendered as `enigma train` renders them, G completions of at most
``--max-new-tokens`` per prompt, loss "grpo", β = 0 (but ``trl-gc-ref``), one update per generation, float32 on
the CPU.

    OMP_NUM_THREADS=1 .venv/bin/python bench/peak_memory.py --model smollm2 --prompts 1 -G 4 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

TRUE_GRPO = {"sami": False, "ot": False, "ref_metrics": False, "critic_metrics": False}
CASES = {
    "enigma": {},
    "enigma-gc": {"gradient_checkpointing": True},
    "enigma-bf16ref-gc": {"gradient_checkpointing": True, "ref_dtype": "bfloat16"},
    "enigma-grpo": TRUE_GRPO,
    "enigma-grpo-gc": {**TRUE_GRPO, "gradient_checkpointing": True},
    "enigma-lora": {"lora_r": 16},
    "enigma-untiled": {},
    "enigma-untiled-gc": {"gradient_checkpointing": True},
    "trl-gc": None,
    "trl": None,
    "trl-gc-ref": None,
    "trl-ref": None,
    "trl-gc-release": None,
}
#: TRL cases: (gradient checkpointing, β)
TRL_CASES = {"trl-gc": (True, 0.0), "trl": (False, 0.0), "trl-gc-ref": (True, 0.04), "trl-ref": (False, 0.04),
             "trl-gc-release": (True, 0.0)}
GIB = 2**30


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / GIB


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


def child(case: str, args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    from enigma_cli.models.loading import load_model

    with tempfile.TemporaryDirectory() as tmp:
        if CASES[case] is None:
            from grpo_step import trl_run  # bench/grpo_step.py

            loaded = []
            real = load_model

            def spy(*a, **k):  # note the resident size once the model is in memory
                out = real(*a, **k)
                loaded.append(_rss_gib())
                if case == "trl-gc-release":
                    release_during_backward(list(out.model.parameters()))
                return out

            import grpo_step
            from trl import GRPOTrainer

            from enigma_cli.train.memory import release_during_backward, release_freed_memory

            grpo_step.load_model = spy
            if case == "trl-gc-release":
                generate = GRPOTrainer._generate_and_score_completions

                def released(self, inputs):
                    out = generate(self, inputs)
                    release_freed_memory()
                    return out

                GRPOTrainer._generate_and_score_completions = released
            ns = SimpleNamespace(device="cpu", dtype="float32", repeats=args.steps - 1, prompts=args.prompts,
                                 group_size=args.group_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                 principles=args.principles, k=args.k)
            checkpointing, beta = TRL_CASES[case]
            rec = trl_run(ns, args.model, tmp, gradient_checkpointing=checkpointing, beta=beta)
            after_load, step_s, update_s = loaded[0], rec["step"], rec["update"]
        else:
            from enigma_cli.train.config import TrainConfig
            from enigma_cli.train.defaults import for_model
            from enigma_cli.train.run import plan
            from enigma_cli.train.trainer import Trainer

            if case.startswith("enigma-untiled"):  # the objective's reads as they were before the tiled head
                from enigma_cli.models import reader
                from enigma_cli.train import objective

                objective.read = reader.read

            # full fine-tuning unless the case says otherwise: TRL's side is full, and train's own default for a
            # model of SmolLM2's size is LoRA (which made these rows LoRA rows once that default came in)
            cfg = TrainConfig(model=args.model, principles=args.principles, principles_per_prompt=args.k,
                              steps=args.steps, prompts_per_step=args.prompts, group_size=args.group_size,
                              max_new_tokens=args.max_new_tokens, device="cpu", dtype="float32", output_dir=tmp,
                              seed=args.seed, **{"lora_r": 0, **CASES[case]})
            pset, examples = plan(cfg)
            lm = load_model(cfg.model, device="cpu", dtype="float32", for_training=True)
            after_load = _rss_gib()
            trainer = Trainer(lm, examples, pset, for_model(cfg, lm.model))
            del lm
            step_s, update_s = [], []
            for _ in range(args.steps):
                start = time.perf_counter()
                row, ep = trainer.step()
                step_s.append(time.perf_counter() - start)
                update_s.append(row["seconds_update"])
            step_s, update_s = step_s[1:], update_s[1:]
            if args.time_reads:
                peak = _peak_gib()  # before the alternation, which runs the other reader too
                return {"case": case, "after_load_gib": after_load, "peak_gib": peak, "step_s": step_s,
                        "update_s": update_s, "reads": time_reads(trainer, ep, args.time_reads)}
    return {"case": case, "after_load_gib": after_load, "peak_gib": _peak_gib(), "step_s": step_s,
            "update_s": update_s}


def time_reads(trainer, ep, repeats: int) -> dict[str, list[float]]:
    """Seconds of the last step's update (forward and backward of every micro-batch, no optimizer step) and of its
    reference pass, on the same episodes, with the objective's reads tiled (`models.tiled.read`) and untiled
    (`models.reader.read`) in alternation (ABBA order, ``repeats`` of each); and the largest resident size seen
    during each kind of update (`peak_phases.PhaseSampler`, the heap trimmed before each), which on the same
    episodes compares the two forwards and backwards without the sampling's differences between two runs (run
    under ``MALLOC_MMAP_THRESHOLD_=1048576`` for the resident size to follow the live tensors)."""
    from peak_phases import PhaseSampler  # bench/peak_phases.py

    from enigma_cli.models import reader, tiled
    from enigma_cli.train import objective
    from enigma_cli.train.memory import release_freed_memory
    from enigma_cli.train.trainer import MetricMean

    out: dict[str, list[float]] = {f"{what} {how}": [] for what in ("update", "reference") for how in ("tiled", "untiled")}
    ref, old = trainer._score(ep)
    sampler = PhaseSampler()
    for i in range(2 * repeats):
        how = "tiled" if i % 4 in (0, 3) else "untiled"
        objective.read = tiled.read if how == "tiled" else reader.read
        start = time.perf_counter()
        trainer._score(ep)
        out[f"reference {how}"].append(time.perf_counter() - start)
        trainer.model.train()
        release_freed_memory()
        sampler.label = f"update {how}"
        start = time.perf_counter()
        trainer._accumulate(ep, ref, old, MetricMean())
        out[f"update {how}"].append(time.perf_counter() - start)
        sampler.label = "other"
        trainer.optimizer.zero_grad(set_to_none=True)
    sampler.stop()
    objective.read = tiled.read
    out.update({f"rss {how}": [sampler.peaks[f"update {how}"]] for how in ("tiled", "untiled")})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--group-size", "-G", type=int, default=4)
    p.add_argument("-K", dest="k", type=int, default=2)
    p.add_argument("--principles", default="stepwise-vs-oneline")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--time-reads", type=int, default=0, metavar="N",
                   help="enigma cases: after the steps, time the update and the reference pass N times each with "
                        "the objective's reads tiled and untiled in alternation (the peak is taken before)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}.")
    print(f"model={args.model} prompts={args.prompts} G={args.group_size} K={args.k} "
          f"max_new_tokens={args.max_new_tokens} steps={args.steps} float32 cpu; one process per case")
    print(f"{'case':>20} {'after load GiB':>15} {'peak GiB':>9}  seconds per step after the 1st (update)")
    for case in cases:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", case]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{case:>20} failed: {tail}")
            continue
        out = json.loads(lines[-1])
        times = ", ".join(f"{s:.1f} ({u:.1f})" for s, u in zip(out["step_s"], out["update_s"]))
        print(f"{case:>20} {out['after_load_gib']:>15.2f} {out['peak_gib']:>9.2f}  {times}", flush=True)
        if out.get("reads"):
            reads = out["reads"]
            for what in ("update", "reference"):
                tiled, untiled = (statistics.median(reads[f"{what} {how}"]) for how in ("tiled", "untiled"))
                print(f"{'':>20} {what}: tiled {tiled:.2f} s, untiled {untiled:.2f} s (medians of "
                      f"{len(reads[f'{what} tiled'])}, alternated), ratio {tiled / untiled:.3f}", flush=True)
            print(f"{'':>20} largest resident size during the update: tiled {reads['rss tiled'][0]:.2f} GiB, "
                  f"untiled {reads['rss untiled'][0]:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
