"""Measurement: which critic should `enigma score-principles` use for its Sufficiency Index by default?

For each seed and each principle set, enigma-tiny (or ``--model``) writes the completions once and
`enigma_cli.score.scoring.critic_matrices` scores them; every critic variant is then computed from the same
scores, so the variants are compared on identical samples:

    mean, sum, pmi_mean, pmi_sum   (see enigma_cli.score.scoring)   ×   bound: sym (the SI), col (Î_col / log K)
    raw_sum   the summed log-likelihood without the centring that `sum` applies (same columns, other rows)
    mix_mean  the mean critic centred the same way

and judged on what an SI must do (method.md §4):

- controls near 0: the 95% bootstrap interval of placebo and near-duplicate contains 0 (``ctrl_ok``), and
  their mean SI (``ctrl_mean``, the bias) is near 0;
- real sets above: the intervals of stepwise-vs-oneline, answer-order, reasoning-styles and verify-vs-verbal lie
  above 0 (``real_ok``);
- the order the descriptions state: every real set above every control, and half-placebo below
  reasoning-styles (``order_ok``, out of 4·2 + 1 = 9 comparisons);
- separation: (lowest real SI − highest control SI) / mean interval width of those sets (``sep``);
- stability: Spearman ρ of the seven-set ranking between every pair of seeds (``rho``), and the mean interval
  width (``ci_w``).

Prints one line per (variant, bound) averaged over seeds, and writes every set's numbers with ``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/critic_choice.py --seeds 0 1 2 --out /tmp/critic_choice.csv
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import pandas as pd
import torch

from enigma_cli.core import bootstrap_si, sufficiency_index
from enigma_cli.core.infonce import posterior_critic, principle_posterior, sum_critic
from enigma_cli.datasets import load_examples
from enigma_cli.models.loading import load_model
from enigma_cli.principles import load_principle_set
from enigma_cli.score import ScoreConfig
from enigma_cli.score.scoring import CRITIC_VARIANTS, critic_matrices

REAL = ("stepwise-vs-oneline", "answer-order", "reasoning-styles", "verify-vs-verbal")
CONTROLS = ("placebo", "near-duplicate")
SETS = (*REAL, "half-placebo", *CONTROLS)


def per_prompt_si(S: torch.Tensor, bound: str, n: int, m: int) -> torch.Tensor:
    """Per-prompt SI [n] of critic S [n·m, K, K]: the symmetric bound (SI) or the column bound alone."""
    if bound == "sym":
        values = torch.as_tensor(sufficiency_index(S)["per_prompt"], dtype=torch.float64)
    else:
        k = S.shape[-1]
        ce_col = -torch.log(torch.diagonal(principle_posterior(S.double()), dim1=-2, dim2=-1))  # [n·m, K]
        values = (math.log(k) - ce_col.mean(dim=1)) / math.log(k)
    return values.view(n, m).mean(dim=1)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman ρ (average ranks for ties) as the Pearson correlation of the ranks."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))


def measure(lm, seeds, sets, prompts, samples, max_new_tokens, bootstrap) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        cfg = ScoreConfig(prompts=prompts, samples=samples, max_new_tokens=max_new_tokens, seed=seed,
                          bootstrap=bootstrap)
        examples = load_examples("synthetic", n=prompts, seed=seed)
        for name in sets:
            t0 = time.perf_counter()
            pset = load_principle_set(name)
            with torch.no_grad():
                scores = critic_matrices(lm, pset, examples, cfg)
            variants = scores.matrices()
            # For the record: the uncentred log-likelihood, and the mean critic centred like the sum one.
            variants["raw_sum"] = sum_critic(scores.mean, scores.lengths)
            variants["mix_mean"] = posterior_critic(scores.mean)
            for variant, S in variants.items():
                for bound in ("sym", "col"):
                    pp = per_prompt_si(S, bound, len(examples), samples)
                    low, high = bootstrap_si(pp, n_boot=bootstrap, seed=seed)
                    rows.append({"seed": seed, "set": name, "k": pset.k, "variant": variant, "bound": bound,
                                 "si": float(pp.mean()), "si_low": low, "si_high": high})
            print(f"seed {seed} {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (variant, bound), g in df.groupby(["variant", "bound"], sort=False):
        per_seed, si_by_seed = [], {}
        for seed, s in g.groupby("seed"):
            si = dict(zip(s["set"], s["si"]))
            low, high = dict(zip(s["set"], s["si_low"])), dict(zip(s["set"], s["si_high"]))
            width = {k: high[k] - low[k] for k in si}
            order = sum(si[r] > si[c] for r in REAL for c in CONTROLS) + (si["half-placebo"] < si["reasoning-styles"])
            edge = [*REAL, *CONTROLS]
            per_seed.append({
                "ctrl_ok": sum(low[c] <= 0 <= high[c] for c in CONTROLS) / len(CONTROLS),
                "ctrl_mean": statistics.mean(si[c] for c in CONTROLS),
                "ctrl_below": sum(high[c] < 0 for c in CONTROLS) / len(CONTROLS),
                "real_ok": sum(low[r] > 0 for r in REAL) / len(REAL),
                "real_mean": statistics.mean(si[r] for r in REAL),
                "order_ok": order / (len(REAL) * len(CONTROLS) + 1),
                "sep": (min(si[r] for r in REAL) - max(si[c] for c in CONTROLS))
                / statistics.mean(width[k] for k in edge),
                "ci_w": statistics.mean(width.values()),
                "hp_over_rs": si["half-placebo"] / si["reasoning-styles"] if si["reasoning-styles"] else math.nan,
            })
            si_by_seed[seed] = [si[k] for k in SETS if k in si]
        rhos = [spearman(si_by_seed[a], si_by_seed[b]) for a, b in itertools.combinations(sorted(si_by_seed), 2)]
        summary = {key: statistics.mean(d[key] for d in per_seed) for key in per_seed[0]}
        out.append({"variant": variant, "bound": bound, **summary,
                    "rho": statistics.mean(rhos) if rhos else math.nan, "rho_min": min(rhos) if rhos else math.nan})
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="enigma-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", help="write every set's numbers here (CSV)")
    parser.add_argument("--from-csv", help="summarise an earlier --out instead of measuring")
    args = parser.parse_args()
    if args.from_csv:
        df = pd.read_csv(args.from_csv)
    else:
        lm = load_model(args.model, device="cpu")
        df = measure(lm, args.seeds, args.sets, args.prompts, args.samples, args.max_new_tokens, args.bootstrap)
        if args.out:
            df.to_csv(args.out, index=False)
    assert set(CRITIC_VARIANTS) <= set(df["variant"])
    pd.set_option("display.width", 200)
    print(summarise(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    table = df[df.bound == "sym"].pivot_table(index="set", columns="variant", values="si", aggfunc="mean")
    print("\nmean SI over seeds (symmetric bound):")
    print(table.reindex(SETS).to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
