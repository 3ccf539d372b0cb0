"""Benchmark: critic-pair scoring throughput, batched vs one pair at a time, on enigma-tiny.

Builds the (principle prompt, completion) pairs exactly as `enigma_cli.scoring.critic_matrices` does: for N
synthetic questions and a shipped principle set with K principles, enigma-tiny writes M completions under each
principle (`generate`), and every sample index gives the K² pairs (principle i's prompt, principle j's
completion). Those pairs are then scored with `enigma_cli.models.rollout.score_pairs`: with shared prompts (the
default: each distinct prompt run once for its K pairs, `enigma_cli.models.reader.read`), per row
(``share_prompts=False``) at each of ``--batch-sizes`` (default 64), and per row at ``batch_size=1`` (the peer: no
batching); the script prints pairs/s of each, the ratio to one at a time, and the largest difference to it
(padding or prompt sharing must not change any score).

    OMP_NUM_THREADS=1 .venv/bin/python bench/score_pairs.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from enigma_cli.datasets import load_examples
from enigma_cli.models.loading import load_model
from enigma_cli.models.rollout import generate, score_pairs
from enigma_cli.principles import load_principle_set
from enigma_cli.prompts import render_prompt


def build_pairs(lm, set_name: str, n_prompts: int, samples: int, max_new_tokens: int, seed: int):
    tok, model = lm.tokenizer, lm.model
    pset = load_principle_set(set_name)
    examples = load_examples(None, n=n_prompts, seed=seed)
    k = pset.k
    prompts = [render_prompt(tok, p.text, ex.question) for ex in examples for p in pset.principles]
    gen = generate(model, tok, prompts, num_samples=samples, max_new_tokens=max_new_tokens, temperature=1.0,
                   seed=seed, batch_size=64)
    pair_prompts, pair_completions = [], []
    for q in range(len(examples)):
        for s in range(samples):
            for i in range(k):
                for j in range(k):
                    pair_prompts.append(prompts[q * k + i])
                    pair_completions.append(gen.completion_ids[(q * k + j) * samples + s])
    return pset, pair_prompts, pair_completions


def timed(fn, device: torch.device, repeats: int):
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", default="reasoning-styles", help="shipped principle set (name or path)")
    p.add_argument("--prompts", type=int, default=4, help="number of synthetic questions N")
    p.add_argument("--samples", type=int, default=2, help="completions per (question, principle) M")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64],
                   help="batched sizes to time against batch_size=1 (the peer)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)

    lm = load_model("enigma-tiny", device=device)
    tok, model = lm.tokenizer, lm.model
    pset, prompts, completions = build_pairs(lm, args.set, args.prompts, args.samples, args.max_new_tokens,
                                             args.seed)
    n = len(prompts)
    lengths = [len(c) for c in completions]
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} model=enigma-tiny "
          f"set={pset.name} (K={pset.k}) prompts={args.prompts} samples={args.samples} -> {n} pairs, "
          f"completion tokens mean {sum(lengths) / n:.1f} max {max(lengths)}; time = median of {args.repeats}")

    t_single, s_single = timed(lambda: score_pairs(model, tok, prompts, completions, batch_size=1,
                                                   share_prompts=False), device, args.repeats)
    header = f"{'impl':>14} {'seconds':>9} {'pairs/s':>9} {'ratio':>7} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    runs = [("shared", {})] + [(f"batch {bs}", {"share_prompts": False, "batch_size": bs})
                               for bs in args.batch_sizes]
    for name, kwargs in runs:
        t, s = timed(lambda kwargs=kwargs: score_pairs(model, tok, prompts, completions, **kwargs), device,
                     args.repeats)
        diff = float((s - s_single).abs().max())
        print(f"{name:>14} {t:>9.3f} {n / t:>9.1f} {t_single / t:>7.2f} {diff:>11.2e}")
    print(f"{'batch 1':>14} {t_single:>9.3f} {n / t_single:>9.1f} {1.0:>7.2f} {0.0:>11.2e}")
    print("ratio = pairs/s / (pairs/s one at a time); max |diff| = largest score difference to batch 1")


if __name__ == "__main__":
    main()
