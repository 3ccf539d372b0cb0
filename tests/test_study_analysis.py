"""`enigma study`'s statistics on synthetic run tables with a known correlation and a known noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from enigma_cli.study.analysis import correlations, noise_table, paired_test, spearman_test


def test_spearman_matches_scipy_and_ties_average():
    x = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7]
    y = [1.0, 2.0, 0.5, 3.0, 2.5, 2.5]
    assert spearman_test(x, y, n_boot=10, n_perm=10)["rho"] == pytest.approx(stats.spearmanr(x, y)[0])


def test_a_perfect_monotone_relation_is_significant_and_its_ci_is_tight():
    si = np.linspace(0.0, 0.5, 8)
    out = spearman_test(si, np.exp(si), n_boot=500, n_perm=2000, seed=1)
    assert out["rho"] == pytest.approx(1.0)
    assert out["rho_low"] == pytest.approx(1.0) and out["p_perm"] < 0.001
    # the permutation p-value of ρ = 1 with n = 8 is 2/8! exactly in the limit; never below 1/(n_perm + 1)
    assert out["p_perm"] >= 1 / 2001


def test_known_correlation_is_recovered_and_noise_is_not_mistaken_for_it():
    rng = np.random.default_rng(0)
    si = rng.uniform(0, 1, 12)
    strong = spearman_test(si, si + rng.normal(0, 0.1, 12), n_boot=500, n_perm=2000)
    assert strong["rho"] > 0.8 and strong["rho_low"] > 0.3 and strong["p_perm"] < 0.01
    p_values = [spearman_test(si, rng.normal(size=12), n_boot=50, n_perm=500, seed=s)["p_perm"] for s in range(40)]
    # under the null the permutation p-value is uniform: about 5% fall below 0.05
    assert np.mean(np.array(p_values) < 0.05) <= 0.15 and 0.3 < np.mean(p_values) < 0.7


def test_too_few_sets_or_a_constant_give_nan_not_a_number_that_looks_real():
    assert math.isnan(spearman_test([1, 2], [1, 2])["rho"])
    assert math.isnan(spearman_test([1, 2, 3, 4], [5, 5, 5, 5])["rho"])
    assert spearman_test([1, 2, float("nan"), 4], [1, 2, 3, 4])["n_sets"] == 3


def test_noise_table_separates_seed_noise_from_set_differences():
    # 6 sets × 2 seeds: seed noise of ±0.05 that differs between sets (half the sets +, half −, so the seeds' own
    # effects are 0), around one mean, and a real set effect on top of it
    rows = []
    for s in range(6):
        for seed, sign in ((0, 1), (1, -1)):
            sign *= 1 if s % 2 else -1
            rows.append({"set": f"s{s}", "seed": seed, "noise_only": 0.5 + sign * 0.05,
                         "with_effect": 0.1 * s + sign * 0.05})
    table = noise_table(pd.DataFrame(rows), ["noise_only", "with_effect"]).set_index("outcome")
    # each set contributes 2·0.05² to the error, which has (6 − 1)(2 − 1) = 5 degrees of freedom once the seeds'
    # main effects (here 0) are taken out
    within = math.sqrt(6 * 2 * 0.05 ** 2 / 5)
    assert table.loc["noise_only", "seed_noise_sd"] == pytest.approx(within)
    assert table.loc["noise_only", "between_set_sd"] == pytest.approx(0.0)
    assert table.loc["with_effect", "between_set_sd"] == pytest.approx(np.std(0.1 * np.arange(6), ddof=1))
    assert table.loc["with_effect", "variance_ratio"] > 10
    msb = 2 * np.var(0.1 * np.arange(6), ddof=1)
    assert table.loc["with_effect", "anova_p"] == pytest.approx(stats.f.sf(msb / within ** 2, 5, 5))


def test_a_seed_effect_every_set_shares_is_not_noise_between_sets():
    """Runs with the same seed see the same prompts and sampling streams: a shift that seed gives every set cancels
    between the set means, so it must not count as noise (a one-way analysis would call it 0.05 of noise and make
    the sets look no more different than reruns)."""
    rows = [{"set": f"s{s}", "seed": seed, "y": 0.01 * s + (0.05 if seed else -0.05) + 0.001 * ((s * 7 + seed) % 3)}
            for s in range(8) for seed in (0, 1, 2)]
    row = noise_table(pd.DataFrame(rows), ["y"]).iloc[0]
    assert row["seed_effects_removed"]
    assert row["seed_noise_sd"] < 0.002
    assert row["variance_ratio"] > 10 and row["anova_p"] < 1e-6
    # sets that did not all run the same seeds: no seed effect can be taken out
    uneven = pd.DataFrame(rows[:-1])
    assert not noise_table(uneven, ["y"]).iloc[0]["seed_effects_removed"]


def test_paired_test_pairs_by_set_and_seed():
    rows = []
    diffs = [0.08, 0.05, -0.02, 0.10, 0.03, 0.07]
    for i, d in enumerate(diffs):
        rows.append({"set": f"s{i // 2}", "seed": i % 2, "variant": "grpo", "accuracy": 0.4})
        rows.append({"set": f"s{i // 2}", "seed": i % 2, "variant": "enigma", "accuracy": 0.4 + d})
    rows.append({"set": "lonely", "seed": 0, "variant": "enigma", "accuracy": 0.9})  # no partner: left out
    out = paired_test(pd.DataFrame(rows), "accuracy")
    assert out["pairs"] == 6 and out["wins"] == 5 and out["losses"] == 1
    assert out["mean_diff"] == pytest.approx(np.mean(diffs))
    assert out["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diffs).pvalue)


def test_correlations_table_has_one_row_per_outcome_present():
    sets = pd.DataFrame({"si": [0.0, 0.1, 0.2, 0.3], "accuracy": [0.1, 0.2, 0.3, 0.4], "kl": [4, 3, 2, 1]})
    table = correlations(sets, ["accuracy", "kl", "absent"], n_boot=50, n_perm=50)
    assert table["outcome"].tolist() == ["accuracy", "kl"]
    assert table["rho"].tolist() == pytest.approx([1.0, -1.0])


def test_holm_adjusts_like_statsmodels_would():
    """Holm–Bonferroni by hand: sorted p (0.01, 0.02, 0.04) × (3, 2, 1) → 0.03, 0.04, 0.04 (monotone)."""
    from enigma_cli.study.analysis import holm

    assert holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx([0.04, 0.03, math.nan, 0.04], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_noise_ratio_with_unequal_seeds_uses_the_mean_of_one_over_n():
    """Set means of 1 and 4 seeds have variances σ²/1 and σ²/4: noise alone gives σ² · mean(1/n)."""
    rows = [{"set": "a", "x": v} for v in (1.0,)] + [{"set": "b", "x": v} for v in (1.0, -1.0, 1.0, -1.0)]
    rows += [{"set": "c", "x": v} for v in (2.5, 1.5)]
    table = noise_table(pd.DataFrame(rows), ["x"]).set_index("outcome")
    within = (4 * 1.0 + 2 * 0.25) / (0 + 3 + 1)
    means = np.array([1.0, 0.0, 2.0])
    assert table.loc["x", "seed_noise_sd"] == pytest.approx(math.sqrt(within))
    assert table.loc["x", "variance_ratio"] == pytest.approx(means.var(ddof=1) / (within * np.mean([1, 1 / 4, 1 / 2])))
