"""The noise a power estimate rests on, read from a pilot: an earlier (or this, partly done) study folder.

A pilot gives, per outcome of the claim, the seed noise, the set effect (with its upper bound) and SI's own
measurement error, exactly as the finished study's analysis computes them (`tables.outcome_runs`,
`analysis.noise_table`, `tables.si_error`). `plan_power` turns them into the lines `enigma study --dry-run` prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..console import counted
from ..errors import InputError
from .analysis import noise_table
from .outcomes import EXPECTED, LABELS
from .plan import read_json
from .power import RHOS, TARGET, Noise, design_needed, power
from .tables import noises, outcome_runs, runs_table, sets_table, si_error

#: λ = σ_set / σ_seed assumed when no pilot exists (said so in the output)
ASSUMED_RATIOS = (0.5, 1.0, 2.0)
#: pilots measured by this project and shipped with it, one JSON file per model alias (`write_shipped`)
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "pilots"


def _results(folder: Path, pattern: str) -> list[dict]:
    """The finished units' results under `folder` (torn files are units not done)."""
    return [data for path in sorted(folder.glob(pattern)) if (data := read_json(path)) is not None]


def pilot_noise(folder: Path, main: str = "enigma") -> list[Noise]:
    """The claim outcomes' noise measured by the study in `folder` ([] when it has too few finished runs: at
    least 2 sets with 2 runs each of the main variant)."""
    runs = _results(folder, "runs/*/*/result.json")
    if not runs:
        return []
    runs = runs_table(runs)
    mine = outcome_runs(runs, main)
    counts = mine.groupby("set").size()
    if (counts >= 2).sum() < 2:
        return []
    outcomes = [o for o in EXPECTED if EXPECTED[o] is not None and o in mine]
    table = noise_table(mine, outcomes)
    scores = _results(folder, "score/*.json")
    tau = si_error(sets_table(scores, runs, main)) if scores else 0.0
    return noises(table, tau)


def shipped_pilot(model: str) -> tuple[list[Noise], str] | None:
    """The noise a study of this project measured on `model` (an alias such as enigma-tiny), and where it comes
    from; None when none is shipped."""
    path = SHIPPED / f"{model}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return [Noise(**row) for row in data["outcomes"]], data["source"]


def write_shipped(folder: Path, model: str, source: str, main: str = "enigma") -> Path:
    """Ship the noise the study in `folder` measured as `model`'s pilot (a maintainer's step, after a study)."""
    found = pilot_noise(folder, main)
    if not found:
        raise InputError(f"{folder} has too few finished runs to measure noise.")
    SHIPPED.mkdir(parents=True, exist_ok=True)
    path = SHIPPED / f"{model}.json"
    rows = [{"outcome": n.outcome, "seed_sd": n.seed_sd, "set_sd": n.set_sd, "set_sd_high": n.set_sd_high,
             "si_error": n.si_error} for n in found]
    path.write_text(json.dumps({"source": source, "outcomes": rows}, indent=1) + "\n")
    return path


def check_pilot(folder: str) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"--noise-from {folder}: no such folder.")
    if not (path / "study.yaml").is_file():
        raise InputError(f"--noise-from {folder} is not a study folder (it has no study.yaml).")
    return path


def plan_power(n_sets: int, seeds: int, found: list[Noise], source: str, n_tests: int) -> list[str]:
    """Lines on the plan's power at ρ = 0.5 and 0.8 per claim outcome (`n_tests` of them, corrected together), and
    the design that reaches 80%."""
    lines = [(f"power of this plan ({n_sets} sets × {seeds} seeds; Spearman's test at α = 0.05, Holm over the "
             f"{n_tests} outcomes of the claim), simulated with the whole test and {source}:")]
    if not found:
        for ratio in ASSUMED_RATIOS:
            p = [power(n_sets, seeds, rho, ratio, n_tests=n_tests) for rho in RHOS]
            lines.append(f"  if the set effect's SD were {ratio:g} × the seed noise: "
                         + ", ".join(f"{v:.2f} at ρ = {rho}" for v, rho in zip(p, RHOS)) + _needed(ratio, 0.0, n_tests, seeds))
        return lines
    for n in found:
        label = LABELS.get(n.outcome, n.outcome)
        p = [power(n_sets, seeds, rho, n.ratio, si_error=n.si_error, n_tests=n_tests) for rho in RHOS]
        text = f"  {label}: " + ", ".join(f"{v:.2f} at ρ = {rho}" for v, rho in zip(p, RHOS))
        text += f" (set effect SD / seed noise = {n.ratio:.2f})" + _needed(n.ratio, n.si_error, n_tests, seeds)
        if n.ratio == 0 and math.isfinite(n.ratio_high):
            high = power(n_sets, seeds, RHOS[-1], n.ratio_high, si_error=n.si_error, n_tests=n_tests)
            text += (f"; the pilot shows no set effect at all, and at the largest one it allows ({n.ratio_high:.2f} × "
                     f"the seed noise) the power at ρ = {RHOS[-1]} would be {high:.2f}"
                     + _needed(n.ratio_high, n.si_error, n_tests, seeds).replace("; ", ", where ", 1))
        lines.append(text)
    return lines


def _needed(ratio: float, tau: float, n_tests: int, seeds: int) -> str:
    best = design_needed(RHOS[-1], ratio, si_error=tau, n_tests=n_tests)
    if best is None:
        return f"; no design up to 64 sets × 5 seeds reaches {TARGET:.0%} at ρ = {RHOS[-1]}"
    text = (f"; {TARGET:.0%} at ρ = {RHOS[-1]} needs {best[0]} sets × {counted(best[1], 'seed')} "
            f"({best[0] * best[1]} runs per variant)")
    if best[1] != seeds:
        mine = design_needed(RHOS[-1], ratio, si_error=tau, n_tests=n_tests, seeds_only=seeds)
        text += f", or {mine[0]} sets at {counted(seeds, 'seed')}" if mine else f", and no number of sets at {counted(seeds, 'seed')}"
    return text

