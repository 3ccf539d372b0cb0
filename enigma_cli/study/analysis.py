"""The statistics of `enigma study`: does pre-training SI predict what training does? (docs/method.md §9)

Pure functions of tidy tables (pandas), no model anywhere, so that every number in a study report can be checked
on synthetic data with a known answer.

- `spearman_test`: Spearman's ρ between SI and an outcome across principle sets, a percentile bootstrap interval
  (resampling sets), and a two-sided permutation p-value (shuffling the outcome across sets, with the +1
  correction of Phipson & Smyth 2010 so that p is never 0).
- `noise_table`: for each outcome, the seed-to-seed noise (pooled within-set standard deviation) beside the spread
  between sets (standard deviation of the set means), the variance ratio between them, and a one-way ANOVA
  p-value. With n seeds per set, seed noise alone makes the set means vary with variance s_within² / n; a ratio
  near 1 says that the differences between sets are what noise would give (σ² · mean(1/n) with unequal n).
  It also gives the set effect itself, the between-set variance component of the one-way random-effects model
  y_sr = μ + a_s + ε_sr (a_s ~ N(0, σ_a²), ε ~ N(0, σ²)): the moment estimate σ̂_a² = (MSB − MSW) / n₀ (floored at
  0) and an upper 95% confidence bound from the exact interval for θ = σ_a² / σ² — MSB / MSW ~ (1 + n₀θ)·F(a−1,
  N−a), so θ ≤ (F_obs / F_{0.05}(a−1, N−a) − 1) / n₀ — times MSW (Searle, Casella & McCulloch 1992, §3.5; MSW
  stands in for σ², a choice). The bound says how large a set effect could still hide in the seed noise.
- `spearman_test` also gives the Fieller–Hartley–Pearson interval of ρ (atanh ρ ± z·√(1.06 / (n − 3))), which
  the verdict reads beside the bootstrap's when it decides whether an effect is ruled out.
- `holm`: Holm–Bonferroni adjusted p-values for the outcomes the claim is about, tested together.
- `paired_test`: full ENIGMA against the GRPO-only ablation, paired by (set, seed): the mean difference, how often
  ENIGMA wins, and the Wilcoxon signed-rank p-value.

Choices (ours): sets are the unit of every correlation (runs of one set are averaged first, so seeds cannot
inflate n); ties in ranks take their average rank (scipy's default); a bootstrap resample whose SI or outcome is
constant has no ρ and is dropped (the number kept is reported).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import f as f_dist
from scipy.stats import norm, rankdata, wilcoxon


def _rank_corr(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of rank arrays [..., n] (NaN where a row is constant)."""
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_test(x, y, *, n_boot: int = 2000, n_perm: int = 5000, seed: int = 0, level: float = 0.95) -> dict:
    """ρ(x, y) over sets, with a bootstrap CI and a two-sided permutation p-value; NaNs are dropped pairwise."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    out = {"n_sets": n, "rho": math.nan, "rho_low": math.nan, "rho_high": math.nan, "rho_low_z": math.nan,
           "rho_high_z": math.nan, "p_perm": math.nan, "boot_kept": 0}
    if n < 3:
        return out
    rx, ry = rankdata(x), rankdata(y)
    rho = float(_rank_corr(rx, ry))
    out["rho"] = rho
    if math.isnan(rho):
        return out
    out["rho_low_z"], out["rho_high_z"] = fieller_interval(rho, n, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))  # resample sets; ties in a resample take average ranks again
    boots = _rank_corr(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))
    boots = boots[np.isfinite(boots)]
    if len(boots):
        tail = (1 - level) / 2
        out["rho_low"], out["rho_high"] = (float(v) for v in np.quantile(boots, [tail, 1 - tail]))
    out["boot_kept"] = len(boots)
    perms = rng.permuted(np.broadcast_to(ry, (n_perm, n)), axis=1)
    hits = int((np.abs(_rank_corr(rx, perms)) >= abs(rho) - 1e-12).sum())
    out["p_perm"] = (hits + 1) / (n_perm + 1)
    return out


def fieller_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Spearman's ρ ± its Fisher-z interval with Fieller, Hartley & Pearson's (1957) variance 1.06 / (n − 3)."""
    if n <= 3 or not math.isfinite(rho):
        return -1.0, 1.0
    z, half = math.atanh(max(-0.999999, min(0.999999, rho))), norm.ppf(0.5 + level / 2) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def set_effect(groups: list[np.ndarray], level: float = 0.95, dof: int | None = None) -> tuple[float, float]:
    """(σ̂_a, upper bound) of the between-set SD in the random-effects model (module docstring); NaN when there are
    fewer than 2 sets or no replicate runs. `dof`: the error's degrees of freedom when the groups are residuals of a
    crossed design (default N − a, one-way)."""
    groups = [g for g in groups if len(g)]
    a, sizes = len(groups), np.array([len(g) for g in groups], dtype=float)
    total = sizes.sum()
    dof = int(total - a) if dof is None else dof
    if a < 2 or dof < 1:
        return math.nan, math.nan
    grand = np.concatenate(groups).mean()
    msb = float(sum(n * (g.mean() - grand) ** 2 for n, g in zip(sizes, groups)) / (a - 1))
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)
    n0 = float((total - (sizes ** 2).sum() / total) / (a - 1))
    estimate = math.sqrt(max(0.0, (msb - msw) / n0))
    if msw <= 0:
        return estimate, (math.inf if msb > 0 else 0.0)
    lower_quantile = f_dist.ppf(1 - level, a - 1, dof)
    theta_high = max(0.0, (msb / msw / lower_quantile - 1) / n0)
    return estimate, math.sqrt(theta_high * msw)


def without_seed_effects(runs: pd.DataFrame, outcome: str, by: str = "set", seed: str = "seed"
                         ) -> tuple[list[np.ndarray], int | None]:
    """Each set's runs of `outcome`, and the error's degrees of freedom.

    When every set ran the same seeds (a crossed design, as `enigma study` runs it), runs that share a seed share
    more than their seed number — the training prompts and the sampling streams are a function of it — so part of
    the seed-to-seed noise is common to every set and cancels from the comparison between sets. Then each run is
    taken less its seed's main effect (ȳ_·r − ȳ_··), the set means stay what they were, and the error is the
    set × seed interaction with (a − 1)(b − 1) degrees of freedom (two-way ANOVA without replication). Otherwise the
    plain groups and None (one-way: N − a)."""
    d = runs[[by, seed, outcome]].dropna() if seed in runs else runs[[by, outcome]].dropna()
    plain = [g[outcome].to_numpy(float) for _, g in d.groupby(by, sort=False)]
    if seed not in d or d.empty:
        return plain, None
    seeds = d.groupby(by, sort=False)[seed].apply(lambda s: tuple(sorted(s)))
    b = len(seeds.iloc[0])
    if seeds.nunique() != 1 or b < 2 or len(set(seeds.iloc[0])) != b or len(seeds) < 2:
        return plain, None
    shifted = d[outcome] - d.groupby(seed)[outcome].transform("mean") + d[outcome].mean()
    groups = [shifted[g.index].to_numpy(float) for _, g in d.groupby(by, sort=False)]
    return groups, (len(groups) - 1) * (b - 1)


def noise_table(runs: pd.DataFrame, outcomes: list[str], *, by: str = "set") -> pd.DataFrame:
    """Per outcome: seed noise (the SD of a run around its set's mean, seed effects shared by every set removed —
    `without_seed_effects`), between-set SD of the set means, their variance ratio (between-set variance over the
    variance seed noise alone gives the means), the ANOVA p-value of the set effect, and the set effect's SD with
    its upper bound (`set_effect`)."""
    rows = []
    for outcome in outcomes:
        groups, crossed_dof = without_seed_effects(runs, outcome, by)
        groups = [g for g in groups if len(g)]
        sizes = np.array([len(g) for g in groups])
        row = {"outcome": outcome, "sets": len(groups), "seed_noise_sd": math.nan, "between_set_sd": math.nan,
               "variance_ratio": math.nan, "anova_p": math.nan, "set_effect_sd": math.nan,
               "set_effect_sd_high": math.nan, "seed_effects_removed": crossed_dof is not None}
        if len(groups) >= 2:
            means = np.array([g.mean() for g in groups])
            row["between_set_sd"] = float(means.std(ddof=1))
            dof = int((sizes - 1).sum()) if crossed_dof is None else crossed_dof
            if dof > 0:
                within = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)
                row["seed_noise_sd"] = math.sqrt(within)
                expected = within * float(np.mean(1.0 / sizes))  # Var of a set mean: σ²/n, averaged over sets
                row["variance_ratio"] = float(means.var(ddof=1) / expected) if expected > 0 else math.inf
                if all(len(g) >= 2 for g in groups) and within > 0:
                    msb = float(sum(len(g) * (g.mean() - np.concatenate(groups).mean()) ** 2 for g in groups)
                                / (len(groups) - 1))
                    row["anova_p"] = float(f_dist.sf(msb / within, len(groups) - 1, dof))
                row["set_effect_sd"], row["set_effect_sd_high"] = set_effect(groups, dof=dof)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_test(runs: pd.DataFrame, outcome: str, *, treatment: str = "enigma", control: str = "grpo",
                variant: str = "variant", keys: tuple[str, ...] = ("set", "seed")) -> dict:
    """ENIGMA minus GRPO-only on `outcome`, paired by `keys`: mean difference, wins, Wilcoxon signed-rank p."""
    a = runs[runs[variant] == treatment].set_index(list(keys))[outcome]
    b = runs[runs[variant] == control].set_index(list(keys))[outcome]
    joined = pd.concat([a.rename("t"), b.rename("c")], axis=1).dropna()
    diff = (joined["t"] - joined["c"]).to_numpy(float)
    out = {"outcome": outcome, "pairs": len(diff), "mean_diff": math.nan, "wins": int((diff > 0).sum()),
           "losses": int((diff < 0).sum()), "p_wilcoxon": math.nan}
    if len(diff):
        out["mean_diff"] = float(diff.mean())
    if (diff != 0).sum() >= 1:
        out["p_wilcoxon"] = float(wilcoxon(diff, zero_method="wilcox").pvalue) if (diff != 0).sum() >= 2 else 1.0
    return out


def holm(p_values) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order; NaN stays NaN): the family-wise error of testing several
    outcomes at once stays at α when each adjusted p is compared with α."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def correlations(sets: pd.DataFrame, outcomes: list[str], *, si: str = "si", seed: int = 0, n_boot: int = 2000,
                 n_perm: int = 5000) -> pd.DataFrame:
    """One row per outcome: Spearman ρ of pre-training SI against the set-level outcome, CI and p-value."""
    rows = []
    for outcome in outcomes:
        if outcome not in sets:
            continue
        test = spearman_test(sets[si], sets[outcome], n_boot=n_boot, n_perm=n_perm, seed=seed)
        rows.append({"outcome": outcome, **test})
    return pd.DataFrame(rows)
