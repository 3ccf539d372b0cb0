"""Kill loop: `kill -9` an `enigma train` run at random moments until it has died N times, then let it finish, and
check that the result equals an uninterrupted run.

One reference run trains enigma-tiny for ``--steps`` steps with ``--save-every 1`` (small settings: a step is
well under a second). The victim runs the very same command with ``--resume latest`` (which also starts a run
that has no checkpoint yet), and is killed with SIGKILL, over and over:

- ``random``: after a random delay of up to half the reference run (start-up and loading included);
- ``save``: the moment a checkpoint's temporary folder appears (the kill lands inside `save_checkpoint`);
- ``append``: the moment metrics.csv grows (the kill lands among the step's appends, the completions dump and
  the checkpoint).

A kill that lands after the process has already exited is not counted. Every ``--tear-every``-th kill is
followed by appending half a line to metrics.csv and completions.jsonl, as a kill inside a write would leave
them (SIGKILL rarely lands inside one ``write`` call, so the script makes that case happen; such tears are
counted separately). Finally the victim runs to the end and the script compares: metrics.csv identical apart
from the timing columns, completions.jsonl identical, the final weights identical, no temporary files left.

    OMP_NUM_THREADS=1 .venv/bin/python bench/kill_loop.py --kills 24 --steps 10 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

SMALL = ["--max-new-tokens", "16", "--prompts-per-step", "2", "-G", "4", "-K", "2", "--device", "cpu"]
TIMING = {"seconds_generation", "seconds_scoring", "seconds_update", "gen_tokens_per_s"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def command(out: Path, steps: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "enigma_cli", "train", "--steps", str(steps), "--save-every", "1", *SMALL,
            "--output-dir", str(out), *(["--resume", "latest"] if resume else [])]


def phase(out: Path) -> str:
    """Where the run stood when the kill landed (read from the folder just before the signal)."""
    if not out.exists() or not (out / "config.yaml").exists():
        return "start-up"
    if any(p.name.startswith(".checkpoint-") for p in out.iterdir()):
        return "checkpoint write"
    return "training"


def metrics_size(out: Path) -> int:
    try:
        return (out / "metrics.csv").stat().st_size
    except FileNotFoundError:
        return -1


def wait_for(proc: subprocess.Popen, out: Path, mode: str, rng: random.Random, limit: float) -> bool:
    """Wait for the moment to kill; False if the process ended first."""
    deadline = time.monotonic() + (rng.uniform(0.2, limit / 2) if mode == "random" else limit)
    size = metrics_size(out)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if mode == "save" and out.exists() and any(p.name.startswith(".checkpoint-") for p in out.iterdir()):
            return True
        if mode == "append" and metrics_size(out) not in (size, -1):
            return True
        time.sleep(0.0005 if mode != "random" else 0.01)
    return mode == "random" and proc.poll() is None


def tear(out: Path) -> bool:
    torn = False
    for name in ("metrics.csv", "completions.jsonl"):
        path = out / name
        if path.exists() and path.stat().st_size:
            lines = path.read_text().splitlines(keepends=True)
            with open(path, "a") as fh:
                fh.write(lines[-1][: max(1, len(lines[-1]) // 2)])
            torn = True
    return torn


def compare(ref: Path, victim: Path, steps: int) -> list[str]:
    problems = []
    a, b = pd.read_csv(ref / "metrics.csv"), pd.read_csv(victim / "metrics.csv")
    cols = [c for c in a.columns if c not in TIMING]
    if list(a.columns) != list(b.columns) or not a[cols].equals(b[cols]):
        problems.append("metrics.csv differs outside the timing columns")
    if (ref / "completions.jsonl").read_text() != (victim / "completions.jsonl").read_text():
        problems.append("completions.jsonl differs")
    wa = load_file(str(ref / f"checkpoint-{steps}" / "model.safetensors"))
    wb = load_file(str(victim / f"checkpoint-{steps}" / "model.safetensors"))
    if set(wa) != set(wb) or any(not torch.equal(wa[k], wb[k]) for k in wa):
        problems.append("final weights differ")
    leftovers = [p.name for p in victim.iterdir() if p.name.startswith(".") and p.name != ".enigma.lock"]
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tear-every", type=int, default=4, help="tear the logs after every N-th kill (0: never)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the two runs (default: a temporary one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-loop-"))
    ref = work / "reference"

    t0 = time.monotonic()
    subprocess.run(command(ref, args.steps, resume=False), env=ENV, check=True, capture_output=True)
    reference_seconds = time.monotonic() - t0
    print(f"reference run: {reference_seconds:.1f}s for {args.steps} steps", flush=True)

    kills: dict[str, int] = {}
    tears = launches = rounds = 0
    problems: list[str] = []
    modes = ["random", "save", "append"]
    while sum(kills.values()) < args.kills:  # a round: one victim killed until it completes
        victim = work / f"victim-{rounds}"
        rounds += 1
        while True:
            mode = modes[launches % len(modes)]
            launches += 1
            proc = subprocess.Popen(command(victim, args.steps, resume=True), env=ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            if sum(kills.values()) < args.kills and wait_for(proc, victim, mode, rng, limit=reference_seconds):
                where = phase(victim)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                if proc.returncode == -signal.SIGKILL:
                    key = f"{mode} kill in {where}"
                    kills[key] = kills.get(key, 0) + 1
                    if args.tear_every and sum(kills.values()) % args.tear_every == 0 and tear(victim):
                        tears += 1
                    continue
            _, err = proc.communicate()
            if proc.returncode != 0:
                print(f"launch {launches} failed (exit {proc.returncode}): {err.strip()}", file=sys.stderr)
                return 1
            if (victim / f"checkpoint-{args.steps}").is_dir():
                break
        found = compare(ref, victim, args.steps)
        problems += [f"round {rounds}: {p}" for p in found]
        print(f"round {rounds}: {sum(kills.values())} kills so far; "
              + ("identical" if not found else "; ".join(found)), flush=True)
    total = sum(kills.values())
    print(f"kills: {total} ({', '.join(f'{k} {v}' for k, v in sorted(kills.items()))}); torn logs: {tears}; "
          f"rounds: {rounds}; launches: {launches}; seconds: {time.monotonic() - t0:.0f}")
    print("result: " + ("every round identical to the uninterrupted run (metrics apart from timing, completions, "
                        "final weights, no temporary files)" if not problems else "; ".join(problems)))
    print(f"runs kept in {work}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
