"""`enigma study` end to end: check everything, do this process's units, and analyse a finished study folder."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from ..console import console, counted
from ..context import ContextCheck, principles_of
from ..datasets import load_examples
from ..errors import InputError
from ..models.loading import model_path_for, resolve_device, resolve_dtype
from ..principle_pool import as_set, pool_members, subsets, write_set
from ..principles import resolve_sets
from ..report import check_output_dir
from ..train.run import plan, run
from . import stages
from .config import MIN_SETS, StudyConfig
from .downstream import outcome_specs
from .draw import check_spread, draw_spread
from .merge import analyze
from .outcomes import claim_outcomes
from .pilot import check_pilot, pilot_noise, plan_power, shipped_pilot
from .plan import Unit, check_or_write_study_file, my_share, read_result, recorded_sets, units, write_result


class Inputs:
    """Everything a study needs that can be checked before any model loads."""

    def __init__(self, cfg: StudyConfig):
        self.root = Path(cfg.output_dir)
        check_output_dir(self.root)
        #: the pool's principles (None without --pool); with --draw spread, every subset by name, and whether the
        #: sets are still to be drawn (then `sets` holds placeholders of the same K, for the plan's counts)
        self.members, self.candidates, self.pending = None, {}, False
        if cfg.pool:
            self.members = pool_members([*cfg.pool, *cfg.principles])
            if cfg.draw == "spread":
                sets = self._spread_sets(cfg, subsets(self.members, cfg.choose))
            else:
                sets = subsets(self.members, cfg.choose, cfg.sets, cfg.seed)
        else:
            sets = resolve_sets(list(cfg.principles) or None)
        model_path_for(cfg.model)

        outcome_specs(cfg)  # --outcome-tasks: every task and its data load now, before any model
        resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # a misspelt --device: now, not at the first load
        self.use_sets(cfg, sets)
        self.score_examples = load_examples(cfg.dataset, n=cfg.score_prompts, seed=cfg.seed,
                                            question_column=cfg.question_column, answer_column=cfg.answer_column)
        self.eval_examples = load_examples(cfg.dataset, n=cfg.eval_prompts, seed=cfg.seed + 1,
                                           question_column=cfg.question_column, answer_column=cfg.answer_column)
        if not any(ex.answer is not None for ex in self.eval_examples):
            raise InputError(f"dataset {cfg.dataset} has no answers, so a study cannot measure accuracy; give "
                             "--answer-column or a labelled dataset.")
        self._fit_context(cfg)
        if cfg.noise_from is not None:
            check_pilot(cfg.noise_from)

    def _spread_sets(self, cfg: StudyConfig, candidates: list) -> list:
        """The recorded spread draw of this folder, or placeholders until the pool is scored (`study.draw`)."""
        check_spread(len(self.members), cfg.choose, cfg.sets)
        self.candidates = {s.name: s for s in candidates}
        recorded = recorded_sets(self.root)
        if recorded is None:
            self.pending = True
            return candidates[:cfg.sets]
        unknown = [name for name in recorded if name not in self.candidates]
        if unknown:
            raise InputError(f"{self.root} studies the set {unknown[0]}, which is not a {cfg.choose}-subset of this "
                             "pool; use the pool it was started with, or another --output-dir.")
        if len(recorded) != cfg.sets:
            raise InputError(f"{self.root} holds a spread draw of {len(recorded)} sets, not {cfg.sets}; a spread "
                             "draw cannot grow (use --draw random to extend a study).")
        return [self.candidates[name] for name in recorded]

    def use_sets(self, cfg: StudyConfig, sets: list) -> None:
        """Adopt `sets`: their names, the YAML file or name each run trains on, the units, and every run's options
        checked."""
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise InputError("two principle sets share a name; a study tells sets apart by name.")
        if len(sets) < MIN_SETS:
            raise InputError(f"a study needs at least {MIN_SETS} principle sets to correlate SI with outcomes, and "
                             f"{len(sets)} were found.")
        self.sets, self.by_name = sets, {s.name: s for s in sets}
        #: what `enigma train --principles` is given for each set: its name, or the YAML file a pool set is kept in
        self.specs = {s.name: (str(self.root / "sets" / f"{s.name}.yaml") if cfg.pool else s.name) for s in sets}
        self.units = units(cfg, names)
        for unit in self.units:  # every run's options are valid
            if unit.kind == "run":
                stages.train_config(unit, cfg, unit.folder(self.root), self.specs[unit.set])

    def _fit_context(self, cfg: StudyConfig) -> None:
        """Every principle's prompt, with --max-new-tokens after it, fits the model (else exit 3 now, before any
        unit); dataset rows that do not fit are skipped, as score-principles and evaluate skip them."""
        self._checks = {}
        for name in ("score_examples", "eval_examples"):
            every = [as_set(tuple(self.members))] if self.members else self.sets  # a pool: all of its principles
            check = ContextCheck(principles_of(*every), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}")
            rows = getattr(self, name)
            setattr(self, name, [rows[i] for i in check.before_load(cfg.model, [ex.prompt_text for ex in rows])])
            self._checks[name] = check

    def fit_loaded(self, lm) -> None:
        """The context check that needed the loaded model (its window could not be read from disk); a no-op
        otherwise."""
        for name, check in self._checks.items():
            rows = getattr(self, name)
            setattr(self, name, [rows[i] for i in check.loaded(lm, [ex.prompt_text for ex in rows])])

    @property
    def context_deferred(self) -> bool:
        return any(check.deferred for check in self._checks.values())


def run_study(cfg: StudyConfig, dry_run: bool) -> pd.DataFrame | None:
    inputs = Inputs(cfg)
    if inputs.pending and not dry_run:
        if cfg.merge:
            raise InputError(f"the study in {inputs.root} has not drawn its sets yet; run it without --merge first.")
        draw(cfg, inputs)
    names = list(inputs.by_name)
    mine = my_share(cfg, inputs.units)
    check_or_write_study_file(cfg, names, inputs.root, write=not dry_run and not cfg.merge)
    if dry_run:
        plan_text(cfg, inputs, mine)
        return None
    start = time.perf_counter()
    if not cfg.merge:
        do_units(cfg, inputs, mine)
    if cfg.shard is not None:
        missing = [u for u in inputs.units if read_result(u, inputs.root) is None]
        console.print(f"shard {cfg.shard} done; {len(missing)} unit(s) of the study are still to do. When every "
                      f"shard is done, run the same command with --merge instead of --shard.", highlight=False)
        return None

    return analyze(cfg, inputs, seconds=time.perf_counter() - start if not cfg.merge else None)


def draw(cfg: StudyConfig, inputs: Inputs) -> None:
    """--draw spread: score the pool once with the base model and adopt the sets that spread SI."""
    models = stages.Models(cfg)
    lm = models.get(cfg.model)
    if inputs.context_deferred:
        inputs.fit_loaded(lm)
    inputs.root.mkdir(parents=True, exist_ok=True)
    names = draw_spread(cfg, inputs.members, inputs.score_examples, lm, inputs.root)
    models.release()
    inputs.use_sets(cfg, [inputs.candidates[name] for name in names])
    inputs.pending = False


def do_units(cfg: StudyConfig, inputs: Inputs, mine: list[Unit]) -> None:
    todo = [u for u in mine if read_result(u, inputs.root) is None]
    if len(todo) < len(mine):
        console.print(f"{len(mine) - len(todo)} of {len(mine)} unit(s) already done; continuing with the rest.",
                      highlight=False)
    if cfg.pool:  # the runs read their set from the study folder, which keeps what was studied
        for name, spec in inputs.specs.items():
            if not Path(spec).is_file():
                write_set(inputs.by_name[name], Path(spec))
    models = stages.Models(cfg)
    if todo and inputs.context_deferred:
        inputs.fit_loaded(models.get(cfg.model))
    for i, unit in enumerate(todo, 1):
        t0 = time.perf_counter()
        pset = inputs.by_name[unit.set]
        if unit.kind == "score":
            result = stages.do_score(unit, cfg, pset, inputs.score_examples, inputs.eval_examples, models)
        else:
            result = stages.do_run(unit, cfg, inputs.root, pset, inputs.specs[unit.set],
                                   inputs.score_examples, inputs.eval_examples, models)
        result["unit_seconds"] = time.perf_counter() - t0  # summed over shards and resumptions in REPORT.md
        write_result(unit, inputs.root, result)
        stages.say(i, len(todo), unit, result, result["unit_seconds"])


def plan_text(cfg: StudyConfig, inputs: Inputs, mine: list[Unit]) -> None:
    runs = [u for u in inputs.units if u.kind == "run"]
    done = sum(read_result(u, inputs.root) is not None for u in mine)
    ks = sorted({s.k for s in inputs.sets})
    completions = (len(runs) * cfg.steps * cfg.prompts_per_step * cfg.group_size
                   + (len(runs) + len(inputs.sets)) * 2 * cfg.eval_prompts * cfg.eval_samples
                   + sum((len(cfg.seeds) * len(cfg.variants) + 1) * s.k for s in inputs.sets) * cfg.score_prompts
                   * cfg.score_samples)
    console.print(f"{counted(len(inputs.sets), 'set')} (K {', '.join(map(str, ks))}) × "
                  f"{counted(len(cfg.variants), 'variant')} × {counted(len(cfg.seeds), 'seed')} = "
                  f"{counted(len(runs), 'run')} of {counted(cfg.steps, 'step')} on {cfg.model}; about "
                  f"{completions:,} completions in all; folder {inputs.root}.", highlight=False)
    if inputs.pending:
        console.print(f"the {len(inputs.sets)} sets are drawn when the study starts: the base model scores the pool "
                      f"once ({len(inputs.members)} principles, {len(inputs.candidates)} {cfg.choose}-subsets) and the "
                      "sets at evenly spaced ranks of SI are studied.", highlight=False)
    scope = f"shard {cfg.shard}: " if cfg.shard else ""
    console.print(f"{scope}{len(mine)} unit(s), {done} already done.", highlight=False)
    if len(ks) > 1:
        console.print(f"note: the sets have different K ({', '.join(map(str, ks))}); each is scored at its own K "
                      "(SI is normalised by log K), every run trains with 2 principles per prompt, and the report "
                      "repeats the correlations over the sets of the most common K.", highlight=False)
    power_lines(cfg, inputs)
    if cfg.probe and len(mine) > done:
        per_unit = probe(cfg, inputs)
        todo = [u for u in mine if read_result(u, inputs.root) is None]
        total = sum(per_unit[u.kind] for u in todo)
        console.print(f"estimated wall time for the {len(todo)} unit(s) left: {total / 60:.0f} min (from a probe: "
                      f"{per_unit['step']:.2f} s per training step, {per_unit['score']:.0f} s per set score, "
                      f"{per_unit['run']:.0f} s per run).", highlight=False)
    console.print("nothing trained (--dry-run).")


def power_lines(cfg: StudyConfig, inputs: Inputs) -> None:
    """The plan's power, from --noise-from, else this folder's finished runs, else assumed set effects."""
    found, source = [], ("no pilot (give --noise-from DIR, a finished study on this model, for power from measured "
                         "noise), so for assumed set effects")
    for folder, what in ((cfg.noise_from, "--noise-from"), (str(inputs.root), "this folder")):
        if folder is not None and (found := pilot_noise(Path(folder), cfg.variants[0])):
            source = f"the seed noise and set spread measured in {folder} ({what})"
            break
    else:
        shipped = shipped_pilot(cfg.model)
        if shipped is not None:
            found, source = shipped[0], f"the seed noise and set spread {shipped[1]} (shipped; --noise-from for yours)"
    n_tests = len(claim_outcomes(downstream=bool(cfg.outcome_tasks)))
    for line in plan_power(len(inputs.sets), len(cfg.seeds), found, source, n_tests):
        console.print(line, highlight=False)


def probe(cfg: StudyConfig, inputs: Inputs) -> dict[str, float]:
    """Seconds per unit, from timing 2 training steps, 4 evaluation questions and 2 scoring prompts."""
    pset = inputs.sets[0]
    unit = Unit("run", pset.name, cfg.variants[0], cfg.seeds[0])
    with tempfile.TemporaryDirectory(prefix="enigma-study-probe-") as tmp:
        spec = inputs.specs[pset.name]
        if cfg.pool:
            spec = str(write_set(pset, Path(tmp) / "set.yaml"))
        tcfg = stages.train_config(unit, cfg, Path(tmp) / "run", spec)
        tcfg = dataclasses.replace(tcfg, steps=2, save_every=0)

        run(tcfg, *plan(tcfg))
        timing = pd.read_csv(Path(tmp) / "run" / "metrics.csv")
        step = float(timing[["seconds_generation", "seconds_scoring", "seconds_update"]].sum(axis=1).mean())
    models = stages.Models(cfg)
    lm = models.get(cfg.model)
    t0 = time.perf_counter()
    stages.evaluate_both(lm, pset, inputs.eval_examples[:4], cfg)
    per_question = (time.perf_counter() - t0) / 4
    small = dataclasses.replace(cfg, score_prompts=2)
    t0 = time.perf_counter()
    stages.measure_si(lm, pset, inputs.score_examples[:2], small, cfg.model)
    per_prompt = (time.perf_counter() - t0) / 2
    score = per_prompt * cfg.score_prompts + per_question * cfg.eval_prompts
    run_s = step * cfg.steps + score
    return {"step": step, "score": score, "run": run_s if math.isfinite(run_s) else 0.0}
