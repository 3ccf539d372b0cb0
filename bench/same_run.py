"""Are two `enigma train` run folders the same run? For refactors that must not change behaviour (issue 26).

Compares what a run writes, leaving out what differs between any two launches: the metrics without their timing
columns, the completions, every checkpoint's tensors (model or adapter) and its ``trainer_state.json`` without
``step_time``, and ``config.yaml``'s keys and values without ``output_dir`` (their order may change). Exit 0
when everything matches, 1 otherwise, with one line per difference.

    # the same 4-step run from two trees (e.g. `git worktree add ../before HEAD~3`), on each backend
    (cd ../before && OMP_NUM_THREADS=1 python -m enigma_cli train --steps 4 --save-every 2 --output-dir /tmp/a)
    OMP_NUM_THREADS=1 python -m enigma_cli train --steps 4 --save-every 2 --output-dir /tmp/b
    python bench/same_run.py /tmp/a /tmp/b
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml
from safetensors.torch import load_file

TIMING = {"seconds_generation", "seconds_scoring", "seconds_update", "gen_tokens_per_s", "seconds_step",
          "step_time"}
WEIGHTS = ("model.safetensors", "adapter_model.safetensors")


def metrics(a: Path, b: Path) -> list[str]:
    ma, mb = (pd.read_csv(p / "metrics.csv") for p in (a, b))
    if list(ma.columns) != list(mb.columns):
        return [f"metrics.csv columns differ: {sorted(set(ma.columns) ^ set(mb.columns))}"]
    return [f"metrics.csv column {c} differs" for c in ma.columns if c not in TIMING and not ma[c].equals(mb[c])]


def config(path: Path) -> dict:
    values = yaml.safe_load(path.read_text())
    values.pop("output_dir", None)
    return values


def state(path: Path) -> dict:
    values = json.loads(path.read_text())
    for entry in values.get("log_history", []):
        for key in TIMING:
            entry.pop(key, None)
    return values


def checkpoints(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.glob("checkpoint-*"))
    found = [f"checkpoints differ: {names} against {sorted(p.name for p in b.glob('checkpoint-*'))}"] \
        if names != sorted(p.name for p in b.glob("checkpoint-*")) else []
    for name in names:
        for weights in WEIGHTS:
            if (a / name / weights).exists():
                ta, tb = load_file(str(a / name / weights)), load_file(str(b / name / weights))
                found += [f"{name}/{weights}: {k} differs" for k in ta if k not in tb or not ta[k].equal(tb[k])]
        if (a / name / "config.yaml").exists() and config(a / name / "config.yaml") != config(b / name / "config.yaml"):
            found.append(f"{name}/config.yaml differs")
        if (a / name / "trainer_state.json").exists() and \
                state(a / name / "trainer_state.json") != state(b / name / "trainer_state.json"):
            found.append(f"{name}/trainer_state.json differs")
    return found


def compare(a: Path, b: Path) -> list[str]:
    found = metrics(a, b) + checkpoints(a, b)
    if (a / "completions.jsonl").read_bytes() != (b / "completions.jsonl").read_bytes():
        found.append("completions.jsonl differs")
    if config(a / "config.yaml") != config(b / "config.yaml"):
        found.append("config.yaml differs")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    found = compare(args.before, args.after)
    for line in found:
        print(line)
    steps = len(pd.read_csv(args.before / "metrics.csv"))
    print(f"{args.before} and {args.after}: " + ("the same run" if not found else f"{len(found)} differences")
          + f" ({steps} steps, {len(list(args.before.glob('checkpoint-*')))} checkpoints)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
