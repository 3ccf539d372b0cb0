"""Choosing --until-decided's samples per prompt and rounds from measured SI values (issue 27 item 2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/until_design.py VALUES.pt [--runs 2000]

VALUES.pt is `bench/si_variance.py --save`'s per-matrix SI of each set, x[q, s] over N prompts × M samples. Each
design (m samples per prompt, rounds of R prompts up to P) is run `--runs` times on a world resampled from those
values: a prompt is drawn at random from the N, then m of its M samples (with replacement), so both the
between-prompt and the within-prompt spread and the values' real shape (skew, a long tail of confidently wrong
completions) are kept. The truth is the values' mean. Printed per design: the share of runs whose interval at
stopping covers the truth (the stopping rule's validity on this model's values), the share decided, the mean
completions per principle spent (the cost; the fixed default spends 24 × 4 = 96) and the share decided within
40 completions (under half the fixed default's, loading aside). The last two designs are one planned look at 40
completions with a plain 95% interval: no sequential rule can decide within 40 completions more often than the best
fixed-size test at 40 does, so their "decided" is the ceiling for the target.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

DESIGNS = [(4, 8, 96, "bonferroni"), (4, 8, 96, "pocock"), (2, 8, 96, "pocock"), (2, 16, 96, "pocock"),
           (1, 8, 96, "pocock"), (1, 16, 96, "pocock"), (1, 24, 96, "pocock"), (1, 32, 96, "pocock"),
           (2, 20, 20, "pocock"), (1, 40, 40, "pocock")]  # one look at 40 completions, plain 95%: the ceiling


def run(x: np.ndarray, m: int, rnd: int, top: int, boundary: str, runs: int, seed: int = 0) -> dict[str, float]:
    from enigma_cli.score.sequential import Plan, _t_quantile

    plan = Plan(rnd, top, boundary=boundary)
    level, sizes = plan.level, plan.sizes()
    truth = float(x.mean())
    rng = np.random.default_rng(seed)
    n_prompts, n_samples = x.shape
    q = rng.integers(n_prompts, size=(runs, top))
    s = rng.integers(n_samples, size=(runs, top, m))
    values = x[q[..., None], s].mean(axis=-1)  # [runs, top]: per-prompt SI over m samples
    covered = np.zeros(runs, bool)
    decided = np.zeros(runs, bool)
    spent = np.full(runs, top * m, float)
    open_ = np.ones(runs, bool)
    for n in sizes:
        v = values[:, :n]
        mean, sd = v.mean(1), v.std(1, ddof=1)
        half = _t_quantile(n - 1, level) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
        stop = open_ & ((low > 0) | (high < 0) | (n == sizes[-1]))
        covered[stop] = (low[stop] <= truth) & (truth <= high[stop])
        decided[stop] = ((low > 0) | (high < 0))[stop]
        spent[stop] = n * m
        open_ &= ~stop
    return {"truth": truth, "cover": covered.mean(), "decided": decided.mean(), "spent": spent.mean(),
            "within40": ((spent <= 40) & decided).mean(), "level": level}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("values")
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    for name, x in torch.load(args.values).items():
        x = x.double().numpy()
        print(f"{name}: SI {x.mean():.3f} over {x.shape[0]} prompts × {x.shape[1]} samples", flush=True)
        for m, rnd, top, boundary in DESIGNS:
            r = run(x, m, rnd, top, boundary, args.runs)
            se = math.sqrt(r["cover"] * (1 - r["cover"]) / args.runs)
            print(f"    m={m} rounds of {rnd} up to {top} ({boundary} {100 * r['level']:.2f}%): cover {r['cover']:.3f} "
                  f"(±{se:.3f}), decided {r['decided']:.2f}, completions {r['spent']:.0f}, decided within 40: "
                  f"{r['within40']:.2f}", flush=True)


if __name__ == "__main__":
    main()
