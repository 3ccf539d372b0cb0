"""`enigma study`: the plan, resuming after an interruption, shards that merge to the single-run result, bad input.

The stages that train and evaluate are replaced by deterministic fakes (a function of the unit alone), so these
tests check the orchestration and the analysis in seconds; `test_study_end_to_end_on_a_random_model` runs the
real stages once on a tiny random model.
"""

from __future__ import annotations

import contextlib
import io
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from enigma_cli.cli import main
from enigma_cli.study import stages
from enigma_cli.study.config import StudyConfig
from enigma_cli.study.plan import my_share, units

SETS = ["stepwise-vs-oneline", "placebo", "near-duplicate", "answer-order", "verify-vs-verbal"]
ALL_SETS = [*SETS, "half-placebo", "reasoning-styles"]  # every shipped set: enough for a significant correlation


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["study", *map(str, argv)])
    return rc, out.getvalue(), " ".join(err.getvalue().split())


def _noise(*parts) -> float:
    return (zlib.crc32("/".join(map(str, parts)).encode()) % 1000) / 1000


class FakeStages:
    """Deterministic unit results: SI rises with the set's index, accuracy gain follows SI plus seed noise."""

    def __init__(self, monkeypatch, interrupt_after: int | None = None):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after
        monkeypatch.setattr(stages, "do_score", self.score)
        monkeypatch.setattr(stages, "do_run", self.run)

    def _tick(self, name):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(name)

    def score(self, unit, cfg, pset, *args):
        self._tick(unit.name)
        si = 0.05 * ALL_SETS.index(unit.set)
        return {"set": unit.set, "k": pset.k, "pre_si": si, "pre_si_low": si - 0.01, "pre_si_high": si + 0.01,
                "pre_format_rate": 0.9, "base_accuracy_at_1": 0.4}

    def run(self, unit, cfg, root, pset, *args):
        self._tick(unit.name)
        si = 0.05 * ALL_SETS.index(unit.set)
        bonus = 2 * si if unit.variant == "enigma" else 0.0
        return {"set": unit.set, "variant": unit.variant, "seed": unit.seed, "k": pset.k,
                "reward_std_late": 0.3 - si + 0.01 * _noise(unit.name), "reward_change": 0.1 - si / 2,
                "grad_norm_sd": 0.2 + 0.05 * _noise(unit.name, 1), "reward_final": 1.5, "kl_final": 0.05,
                "drift_final": 0.001, "mi_final": 0.01, "accuracy_at_1": 0.4 + bonus + 0.02 * _noise(unit.name, 2),
                "majority_accuracy": 0.5 + bonus, "format_rate": 0.95, "post_si": si + 0.01, "seconds": 1.0}


COMMON = ["--steps", "2", "--no-probe", "--eval-prompts", "8", "--score-prompts", "4"]


def test_units_and_shards_partition_the_work():
    cfg = StudyConfig(seeds=(0, 1), variants=("enigma", "grpo"))
    every = units(cfg, SETS)
    assert len(every) == len(SETS) * (1 + 4)
    shards = [my_share(StudyConfig(shard=f"{i}/3"), every) for i in (1, 2, 3)]
    names = [u.name for share in shards for u in share]
    assert sorted(names) == sorted(u.name for u in every) and len(set(names)) == len(names)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_interrupted_study_continues_where_it_stopped(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    FakeStages(monkeypatch, interrupt_after=7)
    rc, out, err = run(*SETS, *COMMON, "--output-dir", folder)
    assert rc == 130 and out == ""
    again = FakeStages(monkeypatch)
    rc, out, err = run(*SETS, *COMMON, "--output-dir", folder)
    assert rc == 0, err
    assert len(again.calls) == len(SETS) * 5 - 7  # nothing done twice
    assert "7 of 25 unit(s) already done" in err
    study = pd.read_csv(io.StringIO(out))
    assert list(study["set"]) == SETS[::-1]  # ranked by SI, best first
    assert (folder / "REPORT.md").is_file() and (folder / "correlations.csv").is_file()


def test_shards_merge_to_the_single_run_result(tmp_path, monkeypatch):
    FakeStages(monkeypatch)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run(*SETS, *COMMON, "--output-dir", single)[0] == 0
    for i in (1, 2, 3):
        rc, out, err = run(*SETS, *COMMON, "--output-dir", sharded, "--shard", f"{i}/3")
        assert rc == 0 and out == "" and f"shard {i}/3 done" in err
    rc, out, err = run(*SETS, *COMMON, "--output-dir", sharded, "--merge")
    assert rc == 0, err
    for name in ("study.csv", "correlations.csv", "paired.csv", "runs.csv"):
        a = pd.read_csv(single / name)
        b = pd.read_csv(sharded / name)
        timing = ["seconds", "unit_seconds"]  # the only columns that may differ
        pd.testing.assert_frame_equal(a.drop(columns=timing, errors="ignore"), b.drop(columns=timing, errors="ignore"))


def test_merge_refuses_an_unfinished_study(tmp_path, monkeypatch):
    FakeStages(monkeypatch)
    folder = tmp_path / "s"
    assert run(*SETS, *COMMON, "--output-dir", folder, "--shard", "1/2")[0] == 0
    rc, out, err = run(*SETS, *COMMON, "--output-dir", folder, "--merge")
    assert rc == 3 and out == "" and "are not done" in err


def test_the_report_reads_the_known_correlation(tmp_path, monkeypatch):
    FakeStages(monkeypatch)
    folder = tmp_path / "s"
    assert run(*ALL_SETS, *COMMON, "--output-dir", folder)[0] == 0
    corr = pd.read_csv(folder / "correlations.csv", dtype={"k": str})
    corr = corr[corr["k"] == "all"].set_index("outcome")
    assert corr.loc["accuracy_gain", "rho"] == pytest.approx(1.0)
    assert corr.loc["reward_change", "rho"] == pytest.approx(-1.0)
    assert corr.loc["accuracy_gain", "p_holm"] > corr.loc["accuracy_gain", "p_perm"]  # several outcomes at once
    paired = pd.read_csv(folder / "paired.csv").set_index("outcome")
    wins = sum(2 * 0.05 * ALL_SETS.index(s) + 0.02 * _noise(f"run/{s}/enigma/seed{seed}", 2)
               > 0.02 * _noise(f"run/{s}/grpo/seed{seed}", 2) for s in ALL_SETS for seed in (0, 1))
    assert paired.loc["accuracy", "wins"] == wins and paired.loc["accuracy", "pairs"] == 14
    report = (folder / "REPORT.md").read_text()
    assert "The claim holds here" in report and "no correlation can reach" not in report


def test_five_sets_cannot_support_the_claim_and_the_report_says_so(tmp_path, monkeypatch):
    """A perfect ρ over 5 sets has p ≥ 2/120; after Holm over the claim's outcomes it cannot pass 0.05."""
    FakeStages(monkeypatch)
    folder = tmp_path / "s"
    assert run(*SETS, *COMMON, "--output-dir", folder)[0] == 0
    report = " ".join((folder / "REPORT.md").read_text().split())
    assert "The claim holds" not in report
    assert "With 5 sets no correlation can reach p < 0.05" in report and "6 sets or more can" in report


def test_a_study_folder_holds_one_study(tmp_path, monkeypatch):
    FakeStages(monkeypatch)
    folder = tmp_path / "s"
    assert run(*SETS, *COMMON, "--output-dir", folder, "--shard", "1/5")[0] == 0
    rc, _out, err = run(*SETS, "--steps", "3", "--no-probe", "--eval-prompts", "8", "--score-prompts", "4",
                       "--output-dir", folder)
    assert rc == 3 and "made with steps = 2, not 3" in err


@pytest.mark.parametrize("argv, needle", [
    (["stepwise-vs-oneline", "placebo", "near-duplicate"], "at least 4 principle sets"),
    ([*SETS[:3], "no-such-set"], "no-such-set"),
    ([*SETS, "--shard", "3/2"], "--shard 3/2: I must lie in 1..N"),
    ([*SETS, "--shard", "x"], "--shard must look like I/N"),
    ([*SETS, "--shard", "1/2", "--merge"], "give one of them"),
    ([*SETS, "--variants", "enigma,ppo"], "--variants must be one of"),
    ([*SETS, "--seeds", "0,0"], "--seeds repeats a seed"),
    ([*SETS, "-G", "3"], "--group-size (3) must be divisible"),
    ([*SETS, "--max-new-tokens", "600"], "--max-new-tokens 600 leaves no room for a prompt"),
    ([*SETS[:3], str(Path(__file__).parent / "fixtures" / "long-principle.yaml")], "it cannot fit in the 512 positions"),
])
def test_bad_input_stops_before_any_work(tmp_path, argv, needle):
    folder = tmp_path / "s"
    rc, out, err = run(*argv, "--output-dir", folder, "--no-probe", "--dry-run")
    assert rc == 3 and out == "" and needle in err
    assert not folder.exists()


def _planned_completions(*argv) -> int:
    rc, _out, err = run(*argv, "--dry-run", "--no-probe")
    assert rc == 0, err
    return int(re.search(r"about ([\d,]+) completions", err).group(1).replace(",", ""))  # the plan goes to stderr


def test_the_plan_counts_each_sets_own_k(tmp_path):
    """Scoring a set of K principles samples K completions per prompt and sample: a K = 4 set costs twice a K = 2
    set's scoring (pre-training SI, then SI again after each of its runs), and nothing else differs."""
    common = ["--seeds", "0", "--variants", "enigma", "--score-prompts", "4", "--score-samples", "3",
              "--output-dir", tmp_path / "s"]
    k2 = _planned_completions(*SETS[:4], *common)
    k4 = _planned_completions(*SETS[:3], "reasoning-styles", *common)  # answer-order (K = 2) → K = 4
    assert k4 - k2 == (1 + 1) * (4 - 2) * 4 * 3


def test_unwritable_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _out, err = run(*SETS, "--output-dir", blocker / "study", "--dry-run", "--no-probe")
    assert rc == 3 and "is a file" in err


@pytest.mark.slow
def test_study_end_to_end_on_a_random_model(tmp_path, model_dir):
    """The real stages, tiny: 4 sets × 2 variants × 2 seeds × 2 steps on a random model."""
    folder = tmp_path / "s"
    rc, _out, err = run(*SETS[:4], "--model", model_dir, "--steps", "2", "--prompts-per-step", "1", "-G", "2",
                       "--max-new-tokens", "8", "--eval-prompts", "4", "--eval-samples", "1", "--score-prompts", "2",
                       "--score-samples", "1", "--output-dir", folder, "--device", "cpu")
    assert rc == 0, err
    runs = pd.read_csv(folder / "runs.csv")
    assert len(runs) == 16 and runs["accuracy"].notna().all()
    assert (folder / "si_vs_outcomes.png").is_file() and (folder / "training_curves.png").is_file()
    kept = [p.relative_to(folder / "runs") for p in (folder / "runs").glob("*/*/checkpoint-*")]
    assert {p.name for p in kept} == {"checkpoint-2"} and len(kept) == 16  # only each run's final one


def test_a_resumed_study_reports_the_units_time_not_only_the_last_invocation():
    from enigma_cli.study.report import _timing_text

    text = _timing_text(35 * 60, 15 * 60)
    assert "The units took 35 min in all" in text and "this invocation took 15 min" in text
    assert _timing_text(600, 610) == (" The units took 10 min in all (each unit's own time, summed over shards and "
                                      "resumptions; a unit's time before an interruption is not counted).")
    assert _timing_text(0.0, 120) == " This invocation took 2 min."
    assert "; 7 units written without a time not counted)" in _timing_text(1980, None, 7)


def test_the_report_sums_the_time_of_units_written_by_earlier_invocations(tmp_path, monkeypatch):
    """A study resumed over three shards reports every unit's own time, not only the last invocation's."""
    import json

    FakeStages(monkeypatch)
    folder = tmp_path / "s"
    for i in (1, 2, 3):
        assert run(*SETS, *COMMON, "--output-dir", folder, "--shard", f"{i}/3")[0] == 0
    files = sorted(folder.rglob("*.json"))
    for f in files:  # pretend each unit took a minute; one older result has no time at all
        data = json.loads(f.read_text())
        data["unit_seconds"] = 60.0
        f.write_text(json.dumps(data))
    data = json.loads(files[0].read_text())
    del data["unit_seconds"]
    data.pop("seconds", None)
    files[0].write_text(json.dumps(data))
    assert run(*SETS, *COMMON, "--output-dir", folder, "--merge")[0] == 0
    report = " ".join((folder / "REPORT.md").read_text().split())
    assert f"The units took {len(files) - 1} min in all" in report and "1 unit written without a time" in report


def test_the_report_compares_every_variant_with_the_base_model():
    """A drop below the base model is called a cost of training only beyond twice its standard error (binomial over
    the questions for the base, the runs' spread for a variant); the base is read in the runs' own column."""
    from enigma_cli.study.report import _base_lines
    from enigma_cli.study.tables import versus_base

    sets = pd.DataFrame({"set": ["a", "b"], "base_format_rate": [0.8, 0.8], "base_accuracy_at_1": [0.1, 0.1],
                         "base_accuracy_at_1_flexible": [0.56, 0.56], "base_majority_accuracy": [0.6, 0.7],
                         "base_majority_accuracy_flexible": [0.6, 0.7]})
    runs = pd.DataFrame({"variant": ["enigma", "enigma", "grpo", "grpo"], "format_rate": [1.0, 0.9, 1.0, 1.0],
                         "accuracy_at_1_flexible": [0.4, 0.38, 0.25, 0.27],
                         "majority_accuracy_flexible": [0.5, 0.4, 0.3, 0.3]})
    table = versus_base(sets, runs, questions=128).set_index("model")
    assert table.loc["base", "accuracy"] == pytest.approx(0.56)
    assert table.loc["base", "se"] == pytest.approx((0.56 * 0.44 / 128) ** 0.5)
    assert table.loc["enigma", "se"] == pytest.approx(0.01)  # sd 0.01414 / √2
    assert table.loc["base", "majority_accuracy"] == pytest.approx(0.65)
    assert table.loc["enigma", "accuracy"] == pytest.approx(0.39) and table.loc["grpo", "runs"] == 2
    text = " ".join(_base_lines(versus_base(sets, runs, questions=128)))
    assert "Every variant ends below the base model's accuracy (0.56) by more than twice" in text
    assert "enigma −0.17 ± 0.04" in text and "grpo −0.30 ± 0.04" in text  # √(0.0439² + 0.01²)
    few = " ".join(_base_lines(versus_base(sets, runs, questions=4)))  # the same drop, from 4 questions: noise
    assert "Every variant ends below" not in few and "too small to say whether training cost accuracy" in few
    one_above = runs.assign(accuracy_at_1_flexible=[0.6, 0.58, 0.25, 0.27])
    assert "below the base" not in " ".join(_base_lines(versus_base(sets, one_above, questions=128)))
    strict = runs.rename(columns={"accuracy_at_1_flexible": "accuracy_at_1"})
    assert versus_base(sets, strict, questions=128).set_index("model").loc["base", "accuracy"] == pytest.approx(0.1)


def test_rows_a_loaded_model_cannot_fit_are_dropped_from_scoring_and_evaluation():
    """When the window could only be read after loading, the deferred check filters both question lists."""
    from enigma_cli.study.pipeline import Inputs

    class Deferred:
        def __init__(self):
            self.deferred = {"m"}

        def loaded(self, lm, questions):
            self.deferred = set()
            return [i for i, q in enumerate(questions) if len(q) < 10]

    inputs = Inputs.__new__(Inputs)
    short, long = SimpleNamespace(prompt_text="2+2?"), SimpleNamespace(prompt_text="x" * 50)
    inputs.score_examples, inputs.eval_examples = [short, long], [long, short, short]
    inputs._checks = {"score_examples": Deferred(), "eval_examples": Deferred()}
    assert inputs.context_deferred
    inputs.fit_loaded(lm=None)
    assert inputs.score_examples == [short] and inputs.eval_examples == [short, short]
    assert not inputs.context_deferred
