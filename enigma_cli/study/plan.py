"""The work of a study as independent units, laid out in one folder so that it resumes and shards.

Units (each writes one JSON result file, atomically, when it is done; a unit with its result file is never redone):

- ``score/<set>``: SI of the set under the base model, and the base model's accuracy with and without the set's
  principles (the starting point of every run of that set);
- ``run/<set>/<variant>/seed<seed>``: train (the run folder holds `enigma train`'s usual outputs and checkpoints, so
  an interrupted run resumes from its newest checkpoint), then evaluate with and without the principles, then
  measure SI again with the trained model.

Folder::

    <output_dir>/study.yaml                      the options that determine the results (checked on every start)
    <output_dir>/score/<set>.json
    <output_dir>/runs/<set>/<variant>-seed<seed>/  metrics.csv, checkpoint-N/, ..., result.json
    <output_dir>/runs.csv, study.csv, correlations.csv, paired.csv, REPORT.md, *.png   (the analysis)

Shards: units are ordered (scores first, then runs by set, variant, seed) and shard I of N takes every N-th unit
starting at I − 1, so shards are balanced and disjoint, and together cover every unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..console import console
from ..errors import InputError
from ..options import to_dict
from ..report import atomic_path
from .config import StudyConfig, shard_of

RESULT = "result.json"
STUDY_FILE = "study.yaml"
#: options that do not change any result: they may differ between the shards and restarts of one study
NOT_RESULT = ("principles", "pool", "choose", "sets", "draw", "output_dir", "shard", "merge", "device", "probe", "min_rho",
              "noise_from")


@dataclass(frozen=True)
class Unit:
    kind: str             # "score" or "run"
    set: str
    variant: str = ""
    seed: int = -1

    @property
    def name(self) -> str:
        return f"score/{self.set}" if self.kind == "score" else f"run/{self.set}/{self.variant}/seed{self.seed}"

    def folder(self, root: Path) -> Path:
        return root / "runs" / self.set / f"{self.variant}-seed{self.seed}"

    def result_path(self, root: Path) -> Path:
        return root / "score" / f"{self.set}.json" if self.kind == "score" else self.folder(root) / RESULT


def units(cfg: StudyConfig, set_names: list[str]) -> list[Unit]:
    out = [Unit("score", s) for s in set_names]
    out += [Unit("run", s, v, seed) for s in set_names for v in cfg.variants for seed in cfg.seeds]
    return out


def my_share(cfg: StudyConfig, all_units: list[Unit]) -> list[Unit]:
    if cfg.shard is None:
        return all_units
    i, n = shard_of(cfg.shard)
    return all_units[i - 1::n]


def read_json(path: Path) -> dict | None:
    """A result file's object, or None when it is missing, torn or not an object (a unit not done)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_result(unit: Unit, root: Path) -> dict | None:
    """The unit's result, or None when it is not done (a torn or unreadable file counts as not done)."""
    return read_json(unit.result_path(root))


def write_result(unit: Unit, root: Path, result: dict) -> None:
    with atomic_path(unit.result_path(root)) as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")


def result_options(cfg: StudyConfig, set_names: list[str]) -> dict:
    data = {k: v for k, v in to_dict(cfg).items() if k not in NOT_RESULT}
    data["sets"] = list(set_names)
    return data


def recorded_sets(root: Path) -> list[str] | None:
    """The set names a study folder was started with (None when it has no readable study file)."""
    try:
        data = yaml.safe_load((root / STUDY_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return list(data["sets"]) if isinstance(data, dict) and isinstance(data.get("sets"), list) else None


def check_or_write_study_file(cfg: StudyConfig, set_names: list[str], root: Path, *, write: bool) -> None:
    """A study folder holds one study: its result-determining options must match the ones it was started with. It
    may grow by sets (every unit's result depends on its own set only), so that a study short of power can be
    extended with more sets drawn from the same pool; it may not lose any."""
    path = root / STUDY_FILE
    mine = result_options(cfg, set_names)
    if path.is_file():
        try:
            theirs = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            theirs = None
        if not isinstance(theirs, dict):
            raise InputError(f"{path} is unreadable; is {root} a study folder?")
        # an option added since the folder was started holds its default there: what the study ran with
        defaults = result_options(StudyConfig(), set_names)
        theirs = {**{k: v for k, v in defaults.items() if k not in theirs}, **theirs}
        diff = sorted(k for k in set(mine) | set(theirs) if k != "sets" and mine.get(k) != theirs.get(k))
        if diff:
            key = diff[0]
            raise InputError(f"{root} holds a study made with {key} = {theirs.get(key)!r}, not {mine.get(key)!r}; "
                             "use the same options to continue it, or choose another --output-dir.")
        old = list(theirs.get("sets") or [])
        lost = [s for s in old if s not in mine["sets"]]
        if lost:
            raise InputError(f"{root} holds a study of {len(old)} sets, and this command leaves out {lost[0]}; a "
                             "study may gain sets but not lose any (use the same sets, or another --output-dir).")
        if len(mine["sets"]) == len(old) or not write:
            return

        console.print(f"the study in {root} grows from {len(old)} to {len(mine['sets'])} sets.", highlight=False)
    if write:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(mine, sort_keys=False))
