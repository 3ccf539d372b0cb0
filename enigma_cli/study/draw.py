"""`enigma study --pool … --draw spread`: the study's sets chosen to spread pre-training SI (issue 24, item 5).

A correlation across sets is best measured when the sets' SI covers its range: a random draw of pairs from a pool
tends to bunch in the middle. So the base model scores the whole pool once (`score.pool.score_pool`: every
principle generated once and read under every other, each K-subset's SI from the N × N critic, equal to scoring
the subset as a set), and the study takes the `--sets` subsets at evenly spaced ranks of SI, from the lowest to
the highest (`spread`). Principles the model cannot read are left out first. The whole pool's table is kept as
`pool.csv` in the study folder, and the draw is recorded in `study.yaml`, so shards and restarts reuse it.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..console import console
from ..errors import InputError
from ..report import write_table
from ..score import pool as pool_mod
from ..score.report import report_frame
from .stages import score_config

#: the largest C(N, K) a spread draw scores (every subset's row is built)
MAX_SUBSETS = 100_000


def spread(names_si: list[tuple[str, float]], n: int) -> list[str]:
    """`n` names at evenly spaced ranks of SI (lowest and highest included); NaN SI ranks last, and is taken only
    when there are fewer than `n` finite ones."""
    ordered = sorted(names_si, key=lambda t: (math.isnan(t[1]), t[1]))
    finite = [t for t in ordered if not math.isnan(t[1])]
    pool = finite if len(finite) >= n else ordered
    if n >= len(pool):
        return [name for name, _ in pool]
    picks = sorted({round(i * (len(pool) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [pool[i][0] for i in picks]


def check_spread(n_members: int, k: int, n_sets: int | None) -> None:
    if n_sets is None:
        raise InputError("--draw spread chooses --sets of the pool's subsets; give --sets.")
    if math.comb(n_members, k) > MAX_SUBSETS:
        raise InputError(f"--draw spread scores every {k}-subset of the pool, and {n_members} principles make "
                         f"{math.comb(n_members, k):,} of them (at most {MAX_SUBSETS:,}); use --draw random.")


def draw_spread(cfg, members, examples, lm, root: Path) -> list[str]:
    """The names of the `cfg.sets` subsets at evenly spaced SI, from one scoring pass over the pool with `lm`."""
    scfg = score_config(cfg, cfg.model)
    questions = [ex.prompt_text for ex in examples]
    members, checks, left_out = pool_mod.readable_members(lm, members, questions, cfg.choose)
    for text in left_out:
        console.print(f"[yellow]⚠ left out of the pool:[/] {text}.", highlight=False)
    console.print(f"scoring the pool once: {len(members)} principles, {math.comb(len(members), cfg.choose)} "
                  f"{cfg.choose}-subsets, to choose {cfg.sets} that spread SI.", highlight=False)
    pool = pool_mod.score_pool(lm, members, examples, scfg)
    _found, rows = pool_mod.choose_subsets(pool, cfg.choose, scfg, checks)
    write_table(report_frame(rows, scfg), root / "pool.csv")
    names = spread([(r.name, float(r.row["si"])) for r in rows], cfg.sets)
    console.print(f"drew {len(names)} sets spread over SI {min(r.row['si'] for r in rows):.3f} … "
                  f"{max(r.row['si'] for r in rows):.3f}; the pool's table is {root / 'pool.csv'}.", highlight=False)
    return names
