"""SI sampled until it is decided (`score-principles --until-decided`): prompts added in rounds, with intervals that
stay valid whatever look the stopping rule stops at (method.md §4).

Plan (our choice: fixed rounds, a Pocock-type level for all looks). Rounds of R prompts up to P, so at most
L = ⌈P / R⌉ looks, after R, 2R, … prompts. At every look each interval (a set's SI, and with ``--rank`` the
leader's paired lead over the runner-up) is a t interval at one level for every look,

    1 − α′,   α′ = `nominal_alpha`(R, 2R, …, P)   (α = 0.05; the default 3 looks of 32 up to 96: α′ = 0.0221,
                                                   97.79%; 12 looks of 8: 0.0092, 99.08%)

chosen so that, for iid normal per-prompt values, all L intervals cover the true value together with probability
1 − α (Pocock's equal nominal levels [1], found by simulation for the t statistic, whose joint law over the looks
is free of the mean and the spread). For any rule that picks the stopping look from the data, P(the interval at
the stopping look misses) ≤ P(some look's interval misses) = α: the reported interval keeps its 95% coverage. A 95%
interval re-checked at every look would not (with SI truly 0, stopping at the first look whose interval excludes
0 declares a difference far more often than 5% of the time; `tests/test_sequential.py` measures both).
Bonferroni (α / L per look, 99.58% for 12 looks; ``Plan(boundary="bonferroni")``), the earlier rule, needs no
model at all but ignores that the looks share their prompts: 0.0167 against 0.0221 for 3 looks, 0.0042 against
0.0092 for 12, wider intervals
for the same coverage. The Pocock level rests on the t statistic being pivotal, which skewed per-prompt SI only
approximates: measured on resampled real per-matrix SI (enigma-tiny, SmolLM2; `bench/until_design.py`) and on
synthetic matrices, coverage stays at 95% within Monte Carlo error; two-valued synthetic critics, the t
interval's worst case, give 93-95% (method.md §4), and values that are all equal give no interval at all
(`t_interval`). Stopping early because of
``--max-minutes`` only skips looks.

Samples (our choice, measured): 1 completion per principle and prompt by default with --until-decided, 4
without. Most of SI's spread is sampling noise within a prompt (σ_b² / σ_w² = 0.06-0.13 on enigma-tiny and the
warm SmolLM2, `bench/si_variance.py`), so one sample of each of n prompts buys a narrower interval per completion
spent than m samples of n / m prompts (variance × cost m σ_b² + σ_w²: 0.74-0.86 of 4 samples' at m = 1), each
round is a quarter of a 4-sample round, the t interval gets n − 1 degrees of freedom instead of n / m − 1, and
the default budget (96 prompts) spends at most the fixed default's 24 × 4 completions. Measured on resampled
real SI values (`bench/until_design.py`): coverage 95-99% for every design tried, and the fewest completions to
a decision with one sample.

.. [1] S. J. Pocock, "Group sequential methods in the design and analysis of clinical trials", Biometrika 64(2),
   1977.

A look is *decided* when every set's interval excludes 0 and, when ranking, the lead's interval excludes 0. Each
round scores only what is still open (undecided sets, and the leader and runner-up while their order is), so a
set decided early keeps the prompts it had; every set sees the same prompts in the same order, so a set's first
n prompts are the same whoever else is scored, and a lead is paired over the prompts both sets share.

The interval is Student's t over the per-prompt values (a set's per-prompt SI, or a pair's per-prompt difference),

    mean ± t_{n−1, 1 − α′/2} · sd / √n,

not the percentile bootstrap of the fixed-size report (measured, `tests/test_sequential.py`'s synthetic critics:
at 8 prompts the 99.4% percentile bootstrap missed SI 5.5% of the time against 0.6% nominal, since resampled
means cannot reach beyond the few values drawn; the t interval missed 0.75%).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

ALPHA = 0.05
ROUND_PROMPTS = 32   # default R: 32 prompts × 1 sample, 64 sequences a call for K = 2 like the fixed run (BENCHMARKS.md)
MAX_PROMPTS = 96     # default P: 96 prompts × 1 sample, the fixed default's 24 × 4 completions
SAMPLES = 1          # default --samples with --until-decided (bench/until_design.py, BENCHMARKS.md)
MAX_LOOKS = 50       # beyond this each look's level (99.9%) makes the intervals too wide to decide anything


@dataclass(frozen=True)
class Plan:
    """Rounds of `round` prompts up to `max_prompts`, within `max_seconds` (None: no time budget)."""

    round: int = ROUND_PROMPTS
    max_prompts: int = MAX_PROMPTS
    max_seconds: float | None = None
    alpha: float = ALPHA
    boundary: str = "pocock"  # or "bonferroni" (α / L per look: the earlier rule, kept for comparisons)

    @property
    def looks(self) -> int:
        """L = ⌈P / R⌉, the planned looks."""
        return math.ceil(self.max_prompts / self.round)

    @property
    def level(self) -> float:
        """1 − α′: each look's interval level, α′ = `nominal_alpha` of the planned looks (Pocock-type)."""
        if self.boundary == "bonferroni":
            return 1.0 - self.alpha / self.looks
        return 1.0 - nominal_alpha(tuple(self.sizes()), self.alpha)

    def sizes(self) -> list[int]:
        """Prompts per set after each look: R, 2R, …, P."""
        return [min((i + 1) * self.round, self.max_prompts) for i in range(self.looks)]

    def interval(self, values: torch.Tensor) -> tuple[float, float]:
        """`t_interval` at this plan's level."""
        return t_interval(values, self.level)

    def adjustment(self) -> str:
        """How each look's level was set, in words."""
        if self.boundary == "bonferroni":
            return f"{100 * (1 - self.alpha):g}% Bonferroni-adjusted over {self.looks} looks"
        return (f"{100 * (1 - self.alpha):g}% simultaneous over {self.looks} looks, Pocock-type level by "
                "simulation")

    def describe(self) -> str:
        budget = f", at most {self.max_seconds / 60:g} minutes" if self.max_seconds is not None else ""
        return (f"rounds of {self.round} prompts up to {self.max_prompts} ({self.looks} looks{budget}); each "
                f"interval at {100 * self.level:.2f}% ({self.adjustment()})")


@dataclass(frozen=True)
class Interval:
    """A value and its interval at the plan's level; `prompts` it rests on."""

    name: str
    value: float
    low: float
    high: float
    prompts: int

    @property
    def decided(self) -> bool:
        """The interval excludes 0 (either side)."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Look:
    """Every set's SI interval after one round, and the leader's lead over the runner-up when ranking."""

    sets: tuple[Interval, ...]
    lead: Interval | None = None
    rank: bool = False

    @property
    def decided(self) -> bool:
        """Every set's interval excludes 0 and, when ranking, so does the lead's."""
        sets = all(s.decided for s in self.sets)
        return sets and (not self.rank or (self.lead is not None and self.lead.decided))

    def open(self) -> list[str]:
        """What is still undecided, in words."""
        out = [f"{s.name} ({s.low:.3f}..{s.high:.3f})" for s in self.sets if not s.decided]
        if self.rank and (self.lead is None or not self.lead.decided):
            out.append(f"the lead {self.lead.name} ({self.lead.low:.3f}..{self.lead.high:.3f})" if self.lead
                       else "the lead")
        return out


@dataclass(frozen=True)
class Stopped:
    """The last look, how many looks ran, why the rounds stopped and the seconds they took.

    `reason`: "decided", "max-prompts" (the planned prompts ran out first) or "max-minutes" (the next round would
    have passed the time budget)."""

    look: Look
    looks: int
    reason: str
    seconds: float

    def sentence(self, plan: Plan) -> str:
        used = ", ".join(f"{s.name} {s.prompts}" for s in self.look.sets)
        head = (f"decided after {self.looks} of {plan.looks} looks in {self.seconds:.0f} s"
                if self.reason == "decided" else
                f"not decided: the budget ran out first (--{self.reason} "
                f"{plan.max_prompts if self.reason == 'max-prompts' else f'{plan.max_seconds / 60:g}'}, "
                f"{self.looks} of {plan.looks} looks, {self.seconds:.0f} s); still open: "
                f"{'; '.join(self.look.open())}")
        return f"{head}. Prompts per set: {used}; intervals at {100 * plan.level:.2f}% ({plan.adjustment()})."


SIMULATIONS = 200_000  # runs behind `nominal_alpha`: its α′ misses α by ±0.05 percentage points (one s.e.)


@functools.lru_cache(maxsize=64)
def nominal_alpha(sizes: tuple[int, ...], alpha: float = ALPHA, sims: int = SIMULATIONS, seed: int = 0) -> float:
    """α′ such that t intervals at level 1 − α′ after each of `sizes` prompts all cover the mean with probability
    1 − α, for iid normal per-prompt values (Pocock's equal nominal level [1], for the t statistic).

    Under that model the t statistics of the looks, T_ℓ = √n_ℓ (x̄_ℓ − μ) / s_ℓ, have a joint law free of μ and
    σ, so α′ is the α-quantile of min_ℓ p_ℓ (p_ℓ the two-sided t_{n_ℓ−1} p-value of T_ℓ) over `sims` simulated
    runs, seeded: the same plan gets the same level. Bonferroni's α / L is a lower bound (the looks are
    correlated); one look gives α. Well under a second for 12 looks.

    .. [1] S. J. Pocock, "Group sequential methods in the design and analysis of clinical trials", Biometrika
       64(2), 1977.
    """
    if len(sizes) == 1:
        return alpha
    # Each round's b new values enter only through their sum ~ N(0, b) and their sum of squares about their own
    # mean ~ χ²_{b−1} (independent): exact, and 2 draws per round instead of b.
    rng = np.random.default_rng(seed)
    total, squares, t = np.zeros(sims), np.zeros(sims), []
    for before, n in zip((0, *sizes), sizes):
        b = n - before
        block = rng.standard_normal(sims) * math.sqrt(b)
        squares += block * block / b + (rng.chisquare(b - 1, sims) if b > 1 else 0.0)
        total += block
        mean = total / n
        t.append(np.abs(mean) * math.sqrt(n) / np.sqrt(np.maximum(squares - n * mean * mean, 1e-300) / (n - 1)))
    t = np.stack(t, axis=1)  # [sims, looks]
    low, high = alpha / len(sizes), alpha  # Bonferroni's α / L is a valid lower end, one look's α the upper
    for _ in range(40):  # bisection: the share of runs with some |T_ℓ| beyond its t quantile at 1 − α′ is α
        mid = 0.5 * (low + high)
        quantiles = np.array([_t_quantile(n - 1, 1.0 - mid) for n in sizes])
        low, high = (mid, high) if (t > quantiles).any(axis=1).mean() <= alpha else (low, mid)
    return low


@functools.lru_cache(maxsize=4096)
def _t_quantile(df: int, level: float) -> float:
    from scipy import stats  # here, not at the top: scipy.stats adds ~0.5 s to every `enigma --help`

    return float(stats.t.ppf((1.0 + level) / 2.0, df))


def t_interval(values: torch.Tensor, level: float) -> tuple[float, float]:
    """Student's t interval of the mean of `values` [n]: mean ± t_{n−1, (1+level)/2} · sd / √n (sd with n − 1);
    a single value gives the point itself, and n ≥ 2 equal values (sd 0) the whole line: a zero-width interval
    would be "decided" by chance (measured: 8 prompts whose two-valued SI all came out alike stopped 17% of the
    synthetic runs at SI 0.40 on the wrong value; with this rule coverage is back at 98.7%)."""
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    mean = float(x.mean())
    if x.numel() < 2:
        return mean, mean
    if float(x.std()) == 0.0:  # values all equal say nothing of their spread: no interval, nothing decided
        return -math.inf, math.inf
    half = _t_quantile(x.numel() - 1, level) * float(x.std()) / math.sqrt(x.numel())
    return mean - half, mean + half


def paired(name: str, a: torch.Tensor, b: torch.Tensor, level: float) -> Interval:
    """The lead mean(a − b) over the prompts both hold (their common first n: every set sees the prompts in the
    same order) with its `t_interval`."""
    n = min(len(a), len(b))
    diff = torch.as_tensor(a[:n], dtype=torch.float64) - torch.as_tensor(b[:n], dtype=torch.float64)
    low, high = t_interval(diff, level)
    return Interval(name, float(diff.mean()), low, high, n)


def run_rounds(plan: Plan, score: Callable[[int], Look], clock: Callable[[], float] = time.monotonic) -> Stopped:
    """Call ``score(n)`` for n in `Plan.sizes` until its look is decided, the sizes run out, or the next round would
    pass ``plan.max_seconds`` (predicted from the longest round so far). At least one round always runs."""
    start = clock()
    slowest = 0.0
    sizes = plan.sizes()
    for i, n in enumerate(sizes):
        before = clock()
        look = score(n)
        slowest = max(slowest, clock() - before)
        elapsed = clock() - start
        if look.decided:
            return Stopped(look, i + 1, "decided", elapsed)
        if i + 1 < len(sizes) and plan.max_seconds is not None and elapsed + slowest > plan.max_seconds:
            return Stopped(look, i + 1, "max-minutes", elapsed)
    return Stopped(look, len(sizes), "max-prompts", clock() - start)


def active(look: Look | None, names: Sequence[str], ranked: Sequence[str]) -> list[str]:
    """The sets the next round scores: every set before the first look; then the undecided ones, plus the first
    two of `ranked` while the lead between them is undecided."""
    if look is None:
        return list(names)
    open_ = {s.name for s in look.sets if not s.decided}
    if look.rank and (look.lead is None or not look.lead.decided):
        open_.update(ranked[:2])
    return [name for name in names if name in open_]
