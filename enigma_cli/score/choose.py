"""Which K-subsets of a pool to report: exact enumeration, or greedy forward selection when there are too many.

Both maximise a subset's SI under the chosen critic, given as ``si_of(combos) -> tensor [S]`` (for a pool,
`pool.PoolScores.per_prompt_si(...).mean(1)`), so they run on any critic without a model.

- **exact** (C(N, K) ≤ `EXACT_LIMIT`): every subset, ordered by SI.
- **greedy** (above it): start from the best pair (all C(N, 2) ≤ 2,016 pairs of a pool of at most 64), add the
  principle that raises SI most until K are chosen. Greedy forward selection is not guaranteed to find the best
  subset, so it is checked against `RESTARTS` runs from random pairs (seeded): the report says how many of them
  found a better set, and every distinct set found is a candidate, best first.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

EXACT_LIMIT = 100_000
RESTARTS = 16

SiOf = Callable[[Sequence[tuple[int, ...]]], torch.Tensor]


@dataclass(frozen=True)
class Search:
    """Candidate subsets (pool indices, ascending), best SI first, and how they were found."""

    method: str                          # "exact" or "greedy"
    subsets: list[tuple[int, ...]]
    si: list[float]
    total: int                           # C(N, K)
    restarts: int = 0
    restarts_better: int = 0             # restarts that ended above the greedy set from the best pair

    def describe(self, n: int, k: int) -> str:
        """One sentence for stderr: which search ran, over how many subsets."""
        if self.method == "exact":
            return f"exact: all C({n}, {k}) = {self.total:,} subsets scored"
        verdict = ("none found a better set" if not self.restarts_better
                   else f"{self.restarts_better} found a better set, reported first")
        return (f"greedy: C({n}, {k}) = {self.total:,} subsets exceed {EXACT_LIMIT:,}, so forward selection from "
                f"the best pair, checked against {self.restarts} random restarts ({verdict})")


def _ordered(scored: dict[tuple[int, ...], float]) -> tuple[list[tuple[int, ...]], list[float]]:
    """Subsets by SI, best first (NaN last, ties in pool order)."""
    items = sorted(scored.items(), key=lambda kv: (math.isnan(kv[1]), -kv[1] if not math.isnan(kv[1]) else 0, kv[0]))
    return [c for c, _ in items], [v for _, v in items]


def exact(si_of: SiOf, n: int, k: int) -> Search:
    """Every K-subset of range(n), best SI first."""
    combos = list(itertools.combinations(range(n), k))
    values = si_of(combos).tolist() if combos else []
    subsets, si = _ordered(dict(zip(combos, values)))
    return Search("exact", subsets, si, len(combos))


def forward(si_of: SiOf, n: int, k: int, start: Sequence[int]) -> tuple[tuple[int, ...], float]:
    """Greedy forward selection from `start`: add the member whose subset has the highest SI until K are chosen."""
    chosen = tuple(sorted(start))
    value = float(si_of([chosen])[0])
    while len(chosen) < k:
        candidates = [tuple(sorted((*chosen, i))) for i in range(n) if i not in chosen]
        values = si_of(candidates)
        best = int(torch.nan_to_num(values, nan=-math.inf).argmax())
        chosen, value = candidates[best], float(values[best])
    return chosen, value


def greedy(si_of: SiOf, n: int, k: int, restarts: int = RESTARTS, seed: int = 0) -> Search:
    """Forward selection from the best pair, and from `restarts` random pairs as a check (module docstring)."""
    pairs = exact(si_of, n, 2)
    main, main_si = forward(si_of, n, k, pairs.subsets[0])
    found = {main: main_si}
    rng = random.Random(seed)
    better = 0
    for _ in range(restarts):
        subset, value = forward(si_of, n, k, rng.sample(range(n), 2))
        better += value > main_si + 1e-12
        found[subset] = value
    subsets, si = _ordered(found)
    return Search("greedy", subsets, si, math.comb(n, k), restarts, better)


def search(si_of: SiOf, n: int, k: int, seed: int = 0, limit: int = EXACT_LIMIT) -> Search:
    """Exact when C(n, k) ≤ `limit`, else greedy."""
    return exact(si_of, n, k) if math.comb(n, k) <= limit else greedy(si_of, n, k, seed=seed)
