"""The power of a study design, by simulating the whole test with a planted correlation (docs/method.md §9).

The model of one outcome, for a design of ``n_sets`` principle sets × ``seeds`` runs each:

    (u_s, v_s) ~ N(0, [[1, ρ], [ρ, 1]])                    latent SI and latent set effect of set s
    SI_s   = u_s + τ·η_s,          η ~ N(0, 1)               SI as measured (τ: its error over its spread)
    y_sr   = λ·v_s + ε_sr,         ε ~ N(0, 1)               run r's outcome, in units of the seed noise
    ȳ_s    = mean_r y_sr                                     the set's outcome (the analysis averages seeds first)

λ = σ_set / σ_seed is the set effect's standard deviation over the seed noise's, both measured by a pilot (an earlier
study: `noise_from_runs`). ρ is planted in the latent pair; seed noise and SI's own error attenuate what the
analysis sees. The test is the analysis' own: Spearman's ρ between SI and ȳ across sets, a two-sided permutation
p-value, and the claim's outcomes corrected together by Holm. A design *detects* the claim when ρ has the expected
sign and p < α / m, m the number of claim outcomes tested together (Holm's first step: the power for an outcome
that is the strongest of its family). The analysis also asks its bootstrap interval to exclude 0; the simulation
leaves that out, so its power is a slight overestimate for tiny designs (tests/test_study_power.py measures it).

Choices (ours): normal latent effects and noise; the permutation null of Spearman's ρ is simulated once per n (it
does not depend on the data when ranks have no ties); common random numbers across designs, so that power rises
smoothly with sets and seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ALPHA = 0.05
TARGET = 0.8
RHOS = (0.5, 0.8)
N_SIM = 4000
N_NULL = 20000


@dataclass(frozen=True)
class Noise:
    """One outcome's noise, in the outcome's own units: seed-to-seed SD, the set effect's SD (point estimate and
    upper 95% bound), and SI's measurement error over its between-set spread (τ; 0 when unknown)."""

    outcome: str
    seed_sd: float
    set_sd: float
    set_sd_high: float = math.nan
    si_error: float = 0.0

    @property
    def ratio(self) -> float:
        """λ = σ_set / σ_seed (0 when the sets show no spread at all)."""
        if not self.seed_sd > 0:
            return math.inf if self.set_sd > 0 else 0.0
        return max(self.set_sd, 0.0) / self.seed_sd

    @property
    def ratio_high(self) -> float:
        if not math.isfinite(self.set_sd_high) or not self.seed_sd > 0:
            return math.nan
        return self.set_sd_high / self.seed_sd


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (continuous draws: no ties)."""
    return a.argsort(axis=-1).argsort(axis=-1).astype(float)


def _corr(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    return (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))


@lru_cache(maxsize=64)
def _null(n: int, draws: int = N_NULL) -> np.ndarray:
    """Sorted |ρ| of Spearman's ρ under independence, for n sets."""
    rng = np.random.default_rng(12345 + n)
    base = np.arange(n, dtype=float)
    return np.sort(np.abs(_corr(base, _ranks(rng.random((draws, n))))))


def permutation_p(rho: np.ndarray, n: int) -> np.ndarray:
    """Two-sided permutation p of |ρ| against the simulated null (with the +1 correction the analysis uses)."""
    null = _null(n)
    hits = len(null) - np.searchsorted(null, np.abs(rho) - 1e-12, side="left")
    return (hits + 1) / (len(null) + 1)


def power(n_sets: int, seeds: int, rho: float, ratio: float, *, si_error: float = 0.0, n_tests: int = 1,
          alpha: float = ALPHA, n_sim: int = N_SIM, seed: int = 0) -> float:
    """Probability that the analysis detects a latent Spearman-scale correlation `rho` (see the module docstring).

    `ratio` is λ = σ_set / σ_seed; `n_tests` the number of claim outcomes corrected together.
    """
    if n_sets < 3 or seeds < 1:
        return 0.0
    rng = np.random.default_rng(seed)
    # Pearson r of the latent normals that gives Spearman ρ_s (r = 2 sin(π ρ_s / 6))
    r = 2 * math.sin(math.pi * rho / 6)
    u = rng.standard_normal((n_sim, n_sets))
    v = r * u + math.sqrt(max(0.0, 1 - r * r)) * rng.standard_normal((n_sim, n_sets))
    si = u + si_error * rng.standard_normal((n_sim, n_sets))
    y = ratio * v + rng.standard_normal((n_sim, n_sets)) / math.sqrt(seeds)
    rho_hat = _corr(_ranks(si), _ranks(y))
    p = permutation_p(rho_hat, n_sets)
    return float(((p < alpha / n_tests) & (np.sign(rho_hat) == np.sign(rho) if rho else True)).mean())


def design_needed(rho: float, ratio: float, *, si_error: float = 0.0, n_tests: int = 1, target: float = TARGET,
                  max_sets: int = 64, max_seeds: int = 5, seeds_only: int | None = None,
                  n_sim: int = 2000) -> tuple[int, int] | None:
    """The design with the fewest runs (sets × seeds) whose power reaches `target`, or None within the limits;
    `seeds_only` fixes the seeds and asks for the fewest sets. At least 2 seeds: with one, the seed noise (and with
    it the verdicts that rule an effect out) cannot be measured."""
    best = None
    for seeds in ([seeds_only] if seeds_only else range(2, max_seeds + 1)):
        lo, hi = 4, max_sets
        if power(hi, seeds, rho, ratio, si_error=si_error, n_tests=n_tests, n_sim=n_sim) < target:
            continue
        while lo < hi:  # power rises with the number of sets (common random numbers keep it monotone enough)
            mid = (lo + hi) // 2
            if power(mid, seeds, rho, ratio, si_error=si_error, n_tests=n_tests, n_sim=n_sim) >= target:
                hi = mid
            else:
                lo = mid + 1
        if best is None or lo * seeds < best[0] * best[1]:
            best = (lo, seeds)
    return best
