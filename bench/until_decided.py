"""Time to a decided SI: `score-principles --until-decided` against the fixed 24 prompts × 4 samples, per set.

    OMP_NUM_THREADS=1 .venv/bin/python bench/until_decided.py [--model M] [SET ...] [-- EXTRA FLAGS]

For each set (default: stepwise-vs-oneline, verify-vs-verbal, placebo) it runs, one after the other in this
process's machine, the fixed default (24 prompts × 4 samples) and --until-decided with its defaults (rounds of 32
prompts × 1 sample up to 96, one Pocock-type level for the 3 looks), and prints the CPU seconds (user + system
of the child, the primary figure on a shared machine) and wall seconds of each (model loading included), the
prompts the rounds used, why they stopped, and both intervals. Flags after `--` go to both runs (e.g.
`-- --round-prompts 8`). BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import csv
import io
import resource
import subprocess
import sys
import time
from pathlib import Path

SETS = ("stepwise-vs-oneline", "verify-vs-verbal", "placebo")


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def score(args: list[str]) -> tuple[float, float, dict, str]:
    """Wall seconds, CPU seconds, the report's set row, and the --until-decided sentence (if any) of one run."""
    argv = [str(Path(sys.executable).parent / "enigma"), "score-principles", *args, "--device", "cpu"]
    t0, c0 = time.perf_counter(), cpu_seconds()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    row = next(csv.DictReader(io.StringIO(done.stdout)))
    said = " ".join(line for line in done.stderr.splitlines() if "until-decided" in line or line.startswith(" "))
    return seconds, cpu, row, " ".join(said.split())


def main(argv: list[str]) -> None:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    model = []
    if "--model" in argv:
        i = argv.index("--model")
        model, argv = argv[i: i + 2], argv[:i] + argv[i + 2:]
    for name in argv or SETS:
        fixed_s, fixed_cpu, fixed, _ = score([name, *model, *extra])
        seq_s, seq_cpu, seq, said = score([name, *model, "--until-decided", *extra])
        print(f"{name}: fixed {fixed['prompts']} × {fixed['samples']}: {fixed_cpu:.0f} s CPU, {fixed_s:.0f} s wall, "
              f"SI {float(fixed['si']):.3f} ({float(fixed['si_low']):.3f}..{float(fixed['si_high']):.3f}, 95%); "
              f"until-decided {seq['prompts']} × {seq['samples']}: {seq_cpu:.0f} s CPU ({seq_cpu / fixed_cpu:.2f}x), "
              f"{seq_s:.0f} s wall ({seq_s / fixed_s:.2f}x), {seq['stopped']}, SI "
              f"{float(seq['si']):.3f} ({float(seq['si_low']):.3f}..{float(seq['si_high']):.3f}, "
              f"{100 * float(seq['confidence']):.2f}%)", flush=True)
        print(f"    {said}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
