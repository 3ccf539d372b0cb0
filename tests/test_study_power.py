"""The study's verdicts and power: the positive control (the analysis detects a planted ρ as often as the stated
power says), the bound on the set effect, and the four verdicts. No model anywhere."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from enigma_cli.study.analysis import fieller_interval, set_effect
from enigma_cli.study.power import design_needed, power
from enigma_cli.study.report import overall, verdict
from enigma_cli.study.tables import correlation_table


def synthetic_study(rng, n_sets: int, seeds: int, rho: float, ratio: float, outcome: str = "reward_std_late"):
    """Sets and runs drawn from the model `study.power` simulates: latent (SI, set effect) with Spearman ρ, then
    seed noise of SD 1 around each set's effect (the outcome in units of its seed noise)."""
    r = 2 * math.sin(math.pi * rho / 6)
    u = rng.standard_normal(n_sets)
    v = r * u + math.sqrt(1 - r * r) * rng.standard_normal(n_sets)
    names = [f"set{i}" for i in range(n_sets)]
    runs = pd.DataFrame([{"set": names[s], "variant": "enigma", "seed": k, "k": 2,
                          outcome: ratio * v[s] + rng.standard_normal()} for s in range(n_sets) for k in range(seeds)])
    sets = pd.DataFrame({"set": names, "k": 2, "si": u})
    sets = sets.join(runs.groupby("set")[outcome].mean(), on="set")
    return sets, runs


def detection_rate(n_sets, seeds, rho, ratio, reps, outcome="reward_std_late"):
    rng = np.random.default_rng(7)
    hits = []
    for i in range(reps):
        sets, runs = synthetic_study(rng, n_sets, seeds, rho, ratio, outcome)
        table = correlation_table(sets, runs, seed=i)
        hits.append(verdict(table.iloc[0]))
    return hits


def test_the_analysis_detects_a_planted_correlation_as_often_as_the_stated_power():
    """The instrument's positive control: the real analysis (permutation test, Holm, bootstrap interval, verdict)
    on studies with a planted ρ and seed noise as large as the set effect. Ignoring the seed noise would state a
    power of 0.9 here; ignoring the attenuation by one seed's noise, 0.7."""
    n_sets, seeds, ratio, reps = 12, 2, 1.0, 240
    stated = power(n_sets, seeds, 0.8, ratio, n_tests=1)
    verdicts = detection_rate(n_sets, seeds, -0.8, ratio, reps)  # the claim expects ρ < 0 for this outcome
    observed = sum(v == "supports" for v in verdicts) / reps
    se = math.sqrt(stated * (1 - stated) / reps)
    assert 0.3 < stated < 0.8  # a design in the middle, where a wrong power shows most
    assert abs(observed - stated) < 3 * se + 0.03, (observed, stated)
    assert power(n_sets, seeds, 0.8, 1e6, n_tests=1) - observed > 0.15  # the noise matters: the test could fail


def test_without_an_effect_the_analysis_rarely_claims_one():
    verdicts = detection_rate(10, 2, 0.0, 1.0, 200)
    false = sum(v in ("supports", "contradicts") for v in verdicts) / len(verdicts)
    assert false < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
    assert power(10, 2, 0.0, 1.0) == pytest.approx(0.05, abs=0.02)  # the simulated test holds its level too


def test_power_matches_the_published_spearman_figures_and_falls_with_noise():
    """Spearman at α = 0.01 on a noiseless latent ρ = 0.8 (docs/method.md §9): about 53% at n = 10, 86% at 16,
    95% at 20 (a simulation of the bivariate normal; our permutation test is slightly stricter at small n)."""
    for n, expected in ((10, 0.53), (16, 0.86), (20, 0.95)):
        assert power(n, 1, 0.8, 1e6, alpha=0.01) == pytest.approx(expected, abs=0.05)
    assert power(16, 3, 0.8, 0.5) < power(16, 3, 0.8, 1.0) < power(16, 3, 0.8, 2.0)
    assert power(16, 1, 0.8, 1.0) < power(16, 3, 0.8, 1.0)
    assert power(16, 3, 0.8, 1.0, si_error=1.0) < power(16, 3, 0.8, 1.0)
    assert power(16, 3, 0.8, 1.0, n_tests=5) < power(16, 3, 0.8, 1.0, n_tests=1)


def test_the_design_search_finds_the_smallest_design_that_reaches_the_target():
    sets, seeds = design_needed(0.8, 1.0, n_tests=5)
    assert power(sets, seeds, 0.8, 1.0, n_tests=5, n_sim=2000) >= 0.8
    assert power(sets - 2, seeds, 0.8, 1.0, n_tests=5, n_sim=2000) < 0.8
    assert design_needed(0.8, 0.0, n_tests=5) is None  # no set effect: no design can detect it


def test_the_set_effect_bound_covers_the_true_set_effect():
    """The upper 95% bound of the between-set SD covers the truth in about 95% of studies, and the estimate is
    near it on average; a bound that used the F quantile on the wrong side would cover far less."""
    rng = np.random.default_rng(3)
    sigma_a, covered, estimates = 0.5, 0, []
    for _ in range(400):
        groups = [rng.normal(rng.normal(0, sigma_a), 1.0, 3) for _ in range(12)]
        est, high = set_effect(groups)
        covered += sigma_a <= high
        estimates.append(est)
    assert 0.92 <= covered / 400 <= 0.99
    assert np.mean(estimates) == pytest.approx(sigma_a, abs=0.12)
    est, high = set_effect([np.array([1.0, 1.0]), np.array([1.0, 1.0])])
    assert est == 0 and high == 0


def test_fieller_interval_contains_rho_and_narrows_with_n():
    low, high = fieller_interval(0.5, 10)
    assert low < 0.5 < high
    low2, high2 = fieller_interval(0.5, 40)
    assert high2 - low2 < high - low


def row(outcome="accuracy_gain", **values):
    base = {"outcome": outcome, "rho": 0.0, "rho_low": -0.5, "rho_high": 0.5, "rho_low_z": -0.5, "rho_high_z": 0.5,
            "p_perm": 0.9, "p_holm": 1.0, "seed_noise_sd": 0.05, "set_effect_sd_high": 0.04, "power_0.8": 0.4}
    return pd.Series({**base, **values})


@pytest.mark.parametrize("values, expected", [
    ({"rho": 0.8, "rho_low": 0.4, "rho_high": 0.95, "p_perm": 0.001, "p_holm": 0.004}, "supports"),
    ({"rho": -0.8, "rho_low": -0.95, "rho_high": -0.4, "p_perm": 0.001, "p_holm": 0.004}, "contradicts"),
    # significant alone but not after Holm: not a finding
    ({"rho": 0.6, "rho_low": 0.1, "rho_high": 0.9, "p_perm": 0.02, "p_holm": 0.1}, "inconclusive (power 0.40 at ρ = 0.8)"),
    # both intervals stay below the ρ = 0.3 the claim needs
    ({"rho": -0.2, "rho_low": -0.6, "rho_high": 0.1, "rho_high_z": 0.2}, "rules out (ρ < 0.20)"),
    # the bootstrap alone would rule it out, the more cautious Fieller interval does not
    ({"rho": -0.2, "rho_low": -0.6, "rho_high": 0.1, "rho_high_z": 0.35}, "inconclusive (power 0.40 at ρ = 0.8)"),
    # the sets do not differ: the set effect is bounded under a quarter of the seed noise
    ({"set_effect_sd_high": 0.01}, "rules out (no set effect: SD ≤ 0.01)"),
])
def test_the_four_verdicts(values, expected):
    assert verdict(row(**values)) == expected


def test_a_claim_that_expects_a_negative_rho_is_ruled_out_on_the_other_side():
    # reward_std_late: the claim needs ρ ≤ −0.3, so an interval whose lower end is above −0.3 rules it out
    assert verdict(row("reward_std_late", rho=0.3, rho_low=-0.1, rho_high=0.7, rho_low_z=-0.2)) == \
        "rules out (ρ > -0.20)"
    assert verdict(row("reward_std_late", rho=0.3, rho_low=-0.1, rho_high=0.7, rho_low_z=-0.4)).startswith(
        "inconclusive")


CLAIM = ("reward_std_late", "reward_change", "grad_norm_sd", "accuracy_gain", "majority_accuracy_gain")


def test_does_not_hold_only_when_every_outcome_of_the_claim_is_ruled_out():
    ruled = [row(o, set_effect_sd_high=0.001) for o in CLAIM]
    assert overall(pd.DataFrame(ruled)).startswith("**The claim does not hold here**")
    mixed = pd.DataFrame(ruled[:-1] + [row(CLAIM[-1])])
    text = overall(mixed)
    assert text.startswith("**We cannot tell whether the claim holds here**")
    assert "Ruled out: reward std after burn-in" in text and "power of 0.40 to detect" in text
    assert "differ no more than reruns" not in text  # no variance ratios in these rows: nothing said about them
    assert "does not hold" not in text


def test_a_supported_half_is_named_with_the_state_of_the_other():
    steady = [row(o, rho=-0.9, rho_low=-0.99, rho_high=-0.6, p_perm=0.001, p_holm=0.004) for o in CLAIM[:3]]
    gains = [row(o, set_effect_sd_high=0.001) for o in CLAIM[3:]]
    assert overall(pd.DataFrame(steady + gains)) == ("**The claim holds only in part here**: higher SI went with "
                                                    "steadier training; the other half is ruled out.")
