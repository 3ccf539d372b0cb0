"""Write every pair of the shipped principle pool as its own set file, to time scoring them one set at a time.

    .venv/bin/python bench/pool_pairs.py /tmp/pairs     # 45 files for the 10 distinct shipped principles
    OMP_NUM_THREADS=1 .venv/bin/enigma score-principles /tmp/pairs --device cpu > separate.csv
    OMP_NUM_THREADS=1 .venv/bin/enigma score-principles --pool --choose 2 --device cpu > pool.csv

The two reports hold the same 45 rows with the same figures (up to float rounding): the pool reads each pair's
scores out of one N×N pass (`enigma_cli.score.pool`). BENCHMARKS.md has the timings.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from enigma_cli.principle_pool import as_set, pool_members, write_set
from enigma_cli.principles import shipped_set_paths


def main(folder: str) -> None:
    members = pool_members([str(p) for p in shipped_set_paths()])
    for pair in itertools.combinations(members, 2):
        pset = as_set(pair)
        write_set(pset, Path(folder) / f"{pset.name}.yaml")
    print(f"{len(members)} principles, {len(list(itertools.combinations(members, 2)))} pair files in {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pairs")
