"""From the units' results to the study's tables: one row per run, one per set, the correlations, the paired test."""

from __future__ import annotations

import math

import pandas as pd

from .analysis import correlations, holm, noise_table, paired_test
from .outcomes import EXPECTED
from .power import RHOS, Noise, power

#: which evaluation column is "accuracy" in the analysis: the flexible answer where measured (lm-eval-harness'
#: flexible extraction, so a model is not scored on its format twice), without a principle in the prompt
ACCURACY = ("accuracy_at_1_flexible", "accuracy_at_1")
MAJORITY = ("majority_accuracy_flexible", "majority_accuracy")
#: the outcomes whose ENIGMA − GRPO-only difference is a claim's gain (downstream: with --outcome-tasks)
GAINS = ("accuracy", "majority_accuracy", "downstream")
PAIRED_OUTCOMES = ("accuracy", "majority_accuracy", "kl_final", "drift_final", "reward_change", "post_si")


def _first(df: pd.DataFrame, names: tuple[str, ...]) -> pd.Series:
    for name in names:
        if name in df and df[name].notna().any():
            return pd.to_numeric(df[name], errors="coerce")
    return pd.Series(math.nan, index=df.index)


def runs_table(run_results: list[dict]) -> pd.DataFrame:
    runs = pd.DataFrame(run_results)
    runs["accuracy"] = _first(runs, ACCURACY)
    runs["majority_accuracy"] = _first(runs, MAJORITY)
    lead = ["set", "variant", "seed", "k"]
    return runs[lead + [c for c in runs.columns if c not in lead]].sort_values(lead, kind="stable")


def sets_table(score_results: list[dict], runs: pd.DataFrame, main: str = "enigma") -> pd.DataFrame:
    """Per set: pre-training SI, the base model, the main variant's mean outcomes over seeds, and its mean paired
    gain over GRPO-only (when both variants ran)."""
    sets = pd.DataFrame(score_results).rename(columns={"pre_si": "si"})
    outcomes = [k for k in EXPECTED if not k.endswith("_gain") and k in runs]
    mine = runs[runs["variant"] == main].groupby("set")[outcomes].mean()
    spread = runs[runs["variant"] == main].groupby("set")[outcomes].std().add_suffix("_sd")
    sets = sets.join(mine, on="set").join(spread, on="set")
    if {"enigma", "grpo"} <= set(runs["variant"]):
        for name in GAINS:
            if name not in runs:  # downstream: only with --outcome-tasks
                continue
            a = runs[runs["variant"] == "enigma"].set_index(["set", "seed"])[name]
            b = runs[runs["variant"] == "grpo"].set_index(["set", "seed"])[name]
            gain = (a - b).dropna().groupby(level="set")
            sets = sets.join(gain.mean().rename(f"{name}_gain"), on="set")
            sets = sets.join(gain.std().rename(f"{name}_gain_sd"), on="set")
    return sets.sort_values("si", ascending=False, kind="stable").reset_index(drop=True)


def correlation_table(sets: pd.DataFrame, runs: pd.DataFrame, *, seed: int, main: str = "enigma") -> pd.DataFrame:
    """Spearman ρ of pre-training SI with each set-level outcome, beside that outcome's seed noise."""
    outcomes = [k for k in EXPECTED if k in sets]
    table = correlations(sets, outcomes, seed=seed)
    table["expected_sign"] = table["outcome"].map(EXPECTED)
    claim = table["expected_sign"].notna()  # the claim's outcomes are one family of tests
    table["p_holm"] = math.nan
    if claim.any():
        table.loc[claim, "p_holm"] = holm(table.loc[claim, "p_perm"])
    noise_runs = outcome_runs(runs, main)
    noise = noise_table(noise_runs, [o for o in outcomes if o in noise_runs])
    table = table.merge(noise.drop(columns=["sets"]), on="outcome", how="left")
    return add_power(table, n_sets=len(sets), seeds=seeds_per_set(noise_runs), si_error=si_error(sets))


def outcome_runs(runs: pd.DataFrame, main: str = "enigma") -> pd.DataFrame:
    """The main variant's runs, with each run's paired gain over GRPO-only (same set and seed) where both ran."""
    out = runs[runs["variant"] == main].copy()
    if {"enigma", "grpo"} <= set(runs["variant"]):
        for name in GAINS:
            if name not in runs:  # downstream: only with --outcome-tasks
                continue
            a = runs[runs["variant"] == "enigma"].set_index(["set", "seed"])[name]
            b = runs[runs["variant"] == "grpo"].set_index(["set", "seed"])[name]
            out = out.join((a - b).rename(f"{name}_gain"), on=["set", "seed"])
    return out


def seeds_per_set(runs: pd.DataFrame) -> int:
    """The typical number of runs per set (the median; 1 when there are none)."""
    counts = runs.groupby("set").size()
    return max(1, int(counts.median())) if len(counts) else 1


def si_error(sets: pd.DataFrame) -> float:
    """τ of `power`: SI's measurement error (its 95% interval's half-width / 1.96, averaged over sets) over the
    spread of the sets' true SI (their observed variance less that error's); 0 when unknown."""
    if not {"pre_si_low", "pre_si_high", "si"} <= set(sets) or len(sets) < 3:
        return 0.0
    se = ((sets["pre_si_high"] - sets["pre_si_low"]) / (2 * 1.96)).astype(float)
    true_var = float(sets["si"].astype(float).var(ddof=1) - (se ** 2).mean())
    if not math.isfinite(true_var) or se.isna().all():
        return 0.0
    return math.inf if true_var <= 0 else float(se.mean()) / math.sqrt(true_var)


def noises(table: pd.DataFrame, tau: float = 0.0) -> list[Noise]:
    """The claim outcomes' noise, read off a correlation (or noise) table."""
    rows = table[table["outcome"].map(EXPECTED).notna()] if "outcome" in table else table.iloc[:0]
    return [Noise(r["outcome"], float(r["seed_noise_sd"]), float(r["set_effect_sd"]),
                  float(r.get("set_effect_sd_high", math.nan)), tau)
            for _, r in rows.iterrows()
            if math.isfinite(r.get("seed_noise_sd", math.nan)) and (r["seed_noise_sd"] > 0 or r["set_effect_sd"] > 0)]


def add_power(table: pd.DataFrame, *, n_sets: int, seeds: int, si_error: float) -> pd.DataFrame:
    """`power_<ρ>` columns for the claim outcomes: the design's power at each of `power.RHOS`, from the outcome's
    own seed noise and set effect (`power.power`; NaN where the noise could not be measured)."""
    table = table.copy()
    n_tests = int(table["outcome"].map(EXPECTED).notna().sum())
    by_outcome = {n.outcome: n for n in noises(table, si_error)}
    for rho in RHOS:
        table[f"power_{rho}"] = [
            power(n_sets, seeds, rho * abs(EXPECTED[o]), by_outcome[o].ratio, si_error=min(si_error, 1e3),
                  n_tests=n_tests) if o in by_outcome and EXPECTED.get(o) is not None else math.nan
            for o in table["outcome"]]
    # the same at the largest set effect the data allow (its upper 95% bound): what the design could have done if
    # the sets differ as much as the noise still permits
    top = RHOS[-1]
    table[f"power_{top}_at_bound"] = [
        power(n_sets, seeds, top, by_outcome[o].ratio_high, si_error=min(si_error, 1e3), n_tests=n_tests)
        if o in by_outcome and EXPECTED.get(o) is not None and math.isfinite(by_outcome[o].ratio_high) else math.nan
        for o in table["outcome"]]
    return table


def paired_table(runs: pd.DataFrame) -> pd.DataFrame:
    if not {"enigma", "grpo"} <= set(runs["variant"]):
        return pd.DataFrame()
    return pd.DataFrame([paired_test(runs, o) for o in PAIRED_OUTCOMES if o in runs])


def equal_k_subset(sets: pd.DataFrame) -> tuple[int | None, pd.DataFrame]:
    """The most common K and its sets (the correlation at equal K, when the sets' K differ)."""
    if sets["k"].nunique() <= 1:
        return None, sets
    k = int(sets["k"].mode().iloc[0])
    return k, sets[sets["k"] == k]


def versus_base(sets: pd.DataFrame, runs: pd.DataFrame, questions: int) -> pd.DataFrame:
    """Held-out format rate and accuracy of the base model (no principle in the prompt, as the runs are read) beside
    each variant's mean over its runs: whether training helped the answers at all, not only one variant over
    another. ``se`` is the standard error of each row's accuracy: binomial over the `questions` for the base (the
    samples of one question are not independent, so they are not counted), the runs' spread / √runs for a variant.
    The base is read in the column the runs were read in (flexible where both have it); a column a result lacks
    (older results, other stages) comes out NaN."""
    def pick(names: tuple[str, ...]) -> tuple[str, str]:
        for name in names:
            if name in runs and runs[name].notna().any() and f"base_{name}" in sets:
                return f"base_{name}", name
        return f"base_{names[-1]}", names[-1]

    def mean(df: pd.DataFrame, name: str) -> float:
        return float(pd.to_numeric(df[name], errors="coerce").mean()) if name in df else math.nan

    (base_acc, acc), (base_maj, maj) = pick(ACCURACY), pick(MAJORITY)
    def spread(g: pd.DataFrame) -> float:
        values = pd.to_numeric(g[acc], errors="coerce").dropna() if acc in g else pd.Series(dtype=float)
        return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else math.nan

    p = mean(sets, base_acc)
    rows = [{"model": "base", "runs": 0, "format_rate": mean(sets, "base_format_rate"), "accuracy": p,
             "majority_accuracy": mean(sets, base_maj), "se": math.sqrt(p * (1 - p) / max(questions, 1))}]
    rows += [{"model": variant, "runs": len(g), "format_rate": mean(g, "format_rate"), "accuracy": mean(g, acc),
              "majority_accuracy": mean(g, maj), "se": spread(g)}
             for variant, g in runs.groupby("variant", sort=False)]
    return pd.DataFrame(rows)
