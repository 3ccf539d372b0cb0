"""Where the noise of a set's SI comes from: between prompts or between samples of one prompt (issue 27 item 2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/si_variance.py [--model M] [--prompts N] [--samples M] [SET ...]

For each set it scores N prompts × M samples once (the prompts in --until-decided's order) and splits the
per-matrix SI x[q, s] (the chosen critic's, `scoring._variant`) into one-way random-effects components

    σ_w² = mean_q var_s x[q, s]                  (within a prompt: sampling noise)
    σ_b² = var_q mean_s x[q, s] − σ_w² / M        (between prompts)

so that a per-prompt value averaged over m samples has variance σ_b² + σ_w² / m. Generating and reading cost is
proportional to the completions, n·m per principle, so the variance of SI per completion spent is
(m σ_b² + σ_w²) / (n m) · n m = m σ_b² + σ_w² up to the budget: printed for m = 1, 2, 4 as "var × cost", relative
to m = 4 (the fixed default). The smaller it is, the fewer completions an interval of a given width needs.
With --save FILE the per-matrix values go to FILE (torch.save: {set: tensor [N, M]}).
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def components(x: torch.Tensor) -> dict[str, float]:
    """σ_b², σ_w² of x [N, M] (one-way random effects, moment estimates; σ_b² may come out < 0 by chance)."""
    m = x.shape[1]
    within = float(x.var(dim=1).mean())
    between = float(x.mean(dim=1).var()) - within / m
    return {"between": between, "within": within, "mean": float(x.mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="*", default=["stepwise-vs-oneline", "verify-vs-verbal"])
    ap.add_argument("--model", default="enigma-tiny")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save")
    args = ap.parse_args()

    from enigma_cli.core import sufficiency_index
    from enigma_cli.datasets import load_examples
    from enigma_cli.models.loading import load_model
    from enigma_cli.principles import load_principle_set
    from enigma_cli.score import ScoreConfig, critic_matrices

    lm = load_model(args.model, device="cpu")
    examples = load_examples("synthetic", n=96, seed=args.seed)
    random.Random(args.seed).shuffle(examples)  # --until-decided's order
    examples = examples[: args.prompts]
    cfg = ScoreConfig(samples=args.samples, seed=args.seed)
    saved = {}
    for name in args.sets:
        t0 = time.perf_counter()
        with torch.no_grad():
            scores = critic_matrices(lm, load_principle_set(name), examples, cfg)
        x = sufficiency_index(scores.matrix(cfg.critic))["per_prompt"].view(args.prompts, args.samples)
        saved[name] = x
        c = components(x)
        cost = {m: m * max(c["between"], 0.0) + c["within"] for m in (1, 2, 4)}
        print(f"{name}: SI {c['mean']:.3f}, {args.prompts} prompts × {args.samples} samples, "
              f"{time.perf_counter() - t0:.0f} s; σ_b² {c['between']:.4f}, σ_w² {c['within']:.4f} "
              f"(σ_b²/σ_w² {c['between'] / c['within']:.2f}); var × cost relative to 4 samples: "
              + ", ".join(f"m={m} {cost[m] / cost[4]:.2f}" for m in (1, 2, 4)), flush=True)
    if args.save:
        torch.save(saved, args.save)


if __name__ == "__main__":
    main()
