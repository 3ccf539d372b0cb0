"""Start-up time of `enigma train` on large JSONL files: many short rows, and rows too long for the model.

    .venv/bin/python bench/startup_rows.py write /tmp/rows          # short-200k, short-2m, long-12k .jsonl
    OMP_NUM_THREADS=1 .venv/bin/python bench/startup_rows.py time /tmp/rows/short-200k.jsonl
    git archive BASE enigma_cli | tar -x -C /tmp/base    # the code before, run the same way:
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/base .venv/bin/python bench/startup_rows.py time /tmp/rows/short-200k.jsonl

`write` makes the files (not committed: 200k short rows are 10 MB, 2M are 99 MB, the over-long file is 98 MB of
12,000 rows of about 6,100 enigma-tiny tokens each). `time` runs `enigma train --steps 1` on one file, with an
empty `datasets` cache and again with it filled, and prints the seconds until the first training step starts
(the run's banner line, after the model loaded) or until the refusal (exit code 3), and the whole run.
BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHORT = {"short-200k": 200_000, "short-2m": 2_000_000}
LONG_ROWS, LONG_TERMS = 12_000, 1_000  # "a + b + ..." of ~8 KB: ~6,000 enigma-tiny tokens a row


def write(folder: str) -> None:
    """The three files, seeded: short arithmetic questions, and sums far longer than enigma-tiny's 512 positions."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in SHORT.items():
        with open(out / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                a, b = rng.randrange(100), rng.randrange(100)
                f.write(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    with open(out / "long-12k.jsonl", "w") as f:
        for _ in range(LONG_ROWS):
            terms = [rng.randrange(1, 10) for _ in range(LONG_TERMS)]
            question = "What is " + " + ".join(map(str, terms)) + "? Add up every term, one at a time, carefully."
            f.write(json.dumps({"question": question * 2, "answer": str(sum(terms))}) + "\n")
    for p in sorted(out.glob("*.jsonl")):
        print(f"{p}: {p.stat().st_size / 1e6:.0f} MB")


def time_start(data: str) -> None:
    """Seconds to the first training step (the banner `enigma train ...` is printed just before it) or to exit 3,
    twice: with an empty `datasets` cache (the file is converted to Arrow first) and again with it filled."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_DATASETS_CACHE": f"{tmp}/cache"}
        for cache in ("cold", "warm"):
            argv = [sys.executable, "-m", "enigma_cli", "train", "--dataset", data, "--steps", "1",
                    "--output-dir", f"{tmp}/run-{cache}", "--device", "cpu"]
            t0 = time.perf_counter()
            # cwd: not the checkout, so that PYTHONPATH (the code before) is found before the editable install
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                    cwd=tmp)
            started, lines = None, []
            for line in proc.stderr:
                lines.append(line.rstrip())
                if started is None and line.startswith("enigma train"):
                    started = time.perf_counter() - t0
            rc = proc.wait()
            total = time.perf_counter() - t0
            first = f"{started:.1f} s to the first step" if started is not None else f"refused after {total:.1f} s"
            print(f"{Path(data).name} ({cache} cache): {first}; whole run {total:.1f} s (exit {rc})", flush=True)
            for line in lines:
                if "skipped" in line or "no row" in line or "do not fit" in line:
                    print("   ", line, flush=True)


if __name__ == "__main__":
    {"write": write, "time": time_start}[sys.argv[1]](sys.argv[2])
