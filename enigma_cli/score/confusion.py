"""Which principles of a pool the model confuses, and which it does not follow at all (issue 24's confusion view).

From the pool's N×N scores (`pool.PoolScores`), over every prompt b and sample:

- **posterior confusion** ``C[j, i]``: the share of completions written under principle j whose posterior over the
  whole pool, the column softmax of the sum critic Σ_t log π(y_{j,t} | c_i, x, ·), is highest at principle i
  (ties split). Rows are the principle written under and sum to 1; the diagonal is each principle's
  **distinctiveness**, its column accuracy against the rest of the pool (chance: 1/N).
- **pairs**: each pair's SI as a two-principle set (`pool.PoolScores.per_prompt_si`), with its bootstrap interval;
  a pair whose interval reaches 0 is a **near-duplicate** (the model cannot tell the two apart, one should go).
  The most-confused pairs are those with the lowest pairwise SI.
- **not followed**: a principle's completions are as likely without it as with it. Per prompt, the mean over
  its own completions of the pmi_sum critic's diagonal, log π(y_j | c_j, x) − log π(y_j | x), estimates
  KL(π(·|c_j, x) ‖ π(·|x)) in nats (≥ 0, and 0 for a principle the model ignores); a principle whose bootstrap
  interval reaches 0 is flagged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd
import torch

from ..core import bootstrap_si
from ..core.infonce import sum_critic


def posterior_confusion(total: torch.Tensor) -> torch.Tensor:
    r"""Share of completions written under j whose posterior names principle i: ``C[j, i]``.

    .. math::

        C_{ji} = \frac1B \sum_b \frac{\mathbb 1[S_{bij} = \max_k S_{bkj}]}{\#\{k : S_{bkj} = \max_{k'} S_{bk'j}\}}

    Parameters
    ----------
    total : torch.Tensor
        Sum-token critic [B, N, N] (rows principles, columns completions); any column shift (e.g. the mixture
        centring) leaves C unchanged, since the posterior is the column softmax.

    Returns
    -------
    torch.Tensor
        [N, N] float64, rows summing to 1.
    """
    S = total.double()
    hits = (S == S.max(dim=-2, keepdim=True).values).double()
    hits = hits / hits.sum(dim=-2, keepdim=True)
    return hits.mean(dim=0).T


def own_pmi(pmi_sum: torch.Tensor, prompts: int, samples: int) -> torch.Tensor:
    """Per prompt and principle, the mean over samples of the pmi_sum diagonal: [prompts, N] (module docstring)."""
    diag = pmi_sum.diagonal(dim1=-2, dim2=-1).double()  # [B, N]
    return diag.view(prompts, samples, -1).mean(dim=1)


@dataclass(frozen=True)
class Confusion:
    """The confusion view of a pool: the matrix, per-principle figures and per-pair SI (module docstring)."""

    ids: tuple[str, ...]
    matrix: torch.Tensor              # [N, N], C[written, named]
    pmi: list[tuple[float, float, float]]      # per principle: (mean, low, high) of its own pmi_sum, nats
    pairs: list[tuple[int, int, float, float, float]]  # (i, j, si, low, high), lowest SI first

    @property
    def distinctiveness(self) -> list[float]:
        return [float(v) for v in self.matrix.diagonal()]

    def not_followed(self) -> list[str]:
        return [p for p, (_, low, _) in zip(self.ids, self.pmi) if low <= 0]

    def near_duplicates(self) -> list[tuple[str, str]]:
        return [(self.ids[i], self.ids[j]) for i, j, _, low, _ in self.pairs if low <= 0]

    def frame(self) -> pd.DataFrame:
        """One row per principle written under: the shares named as each principle (``named_ID``), its own
        figures, and its SI as a pair with each other principle (``si_with_ID``, NaN with itself)."""
        pair_si = torch.full((len(self.ids), len(self.ids)), float("nan"), dtype=torch.float64)
        for i, j, si, _, _ in self.pairs:
            pair_si[i, j] = pair_si[j, i] = si
        rows = []
        for j, pid in enumerate(self.ids):
            mean, low, high = self.pmi[j]
            rows.append({"principle": pid, **{f"named_{i}": float(self.matrix[j, n]) for n, i in enumerate(self.ids)},
                         "distinctiveness": float(self.matrix[j, j]), "pmi_sum": mean, "pmi_sum_low": low,
                         "pmi_sum_high": high, "followed": low > 0,
                         **{f"si_with_{i}": float(pair_si[j, n]) for n, i in enumerate(self.ids)}})
        return pd.DataFrame(rows)

    def summary(self, top: int = 3) -> list[str]:
        """One line for each of the `top` most-confused pairs (lowest pairwise SI)."""
        lines = []
        for i, j, si, low, high in self.pairs[:top]:
            lines.append(f"{self.ids[i]} / {self.ids[j]}: pairwise SI {si:.3f} ({low:.3f}..{high:.3f}); the posterior "
                         f"names {self.ids[j]} for {self.matrix[i, j]:.0%} of {self.ids[i]}'s completions and "
                         f"{self.ids[i]} for {self.matrix[j, i]:.0%} of {self.ids[j]}'s")
        return lines


def confusion(pool, cfg) -> Confusion:
    """The confusion view of `pool` (`pool.PoolScores`) with `cfg`'s critic, bootstrap and seed."""
    s = pool.scores
    matrix = posterior_confusion(sum_critic(s.mean, s.lengths))
    own = own_pmi(s.matrix("pmi_sum"), pool.prompts, pool.samples)
    pmi = [(float(own[:, j].mean()), *bootstrap_si(own[:, j], n_boot=cfg.bootstrap, seed=cfg.seed))
           for j in range(pool.size)]
    combos = list(itertools.combinations(range(pool.size), 2))
    per_prompt = pool.per_prompt_si(combos, cfg.critic)
    pairs = [(i, j, float(pp.mean()), *bootstrap_si(pp, n_boot=cfg.bootstrap, seed=cfg.seed))
             for (i, j), pp in zip(combos, per_prompt)]
    pairs.sort(key=lambda p: (p[2], p[0], p[1]))
    return Confusion(tuple(p.id for p in pool.principles), matrix, pmi, pairs)


def heatmap(conf: Confusion, path) -> None:
    """The confusion matrix as a PNG (rows: written under, columns: named by the posterior)."""
    from ..plots import panels, save

    n = len(conf.ids)
    fig, (ax,) = panels(1, width=max(4.0, 0.55 * n + 2.5), height=max(3.2, 0.5 * n + 1.8))
    image = ax.imshow(conf.matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), conf.ids, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), conf.ids, fontsize=7)
    ax.set_xlabel("named by the model's posterior", fontsize=8)
    ax.set_ylabel("written under", fontsize=8)
    for j in range(n if n <= 20 else 0):  # the numbers stay readable up to about 20 principles
        for i in range(n):
            value = float(conf.matrix[j, i])
            ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046)
    save(fig, path, "posterior confusion over the pool")
