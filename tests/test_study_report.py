"""REPORT.md of `enigma study` says only what the study's tables hold (fake stages: no model anywhere)."""

from __future__ import annotations

import contextlib
import io

import pandas as pd

from enigma_cli.cli import main
from enigma_cli.study import stages

COMMON = ["--steps", "2", "--no-probe", "--eval-prompts", "8", "--score-prompts", "4", "--seeds", "0,1"]


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["study", *map(str, argv)])
    return rc, out.getvalue(), " ".join(err.getvalue().split())


class Fake:
    """Unit results where SI rises with the set's place in `sets`; `extra` adds keys to every score result."""

    def __init__(self, monkeypatch, sets, extra=None):
        self.sets, self.extra = list(sets), extra or {}
        monkeypatch.setattr(stages, "do_score", self.score)
        monkeypatch.setattr(stages, "do_run", self.run)

    def score(self, unit, cfg, pset, *args):
        si = 0.1 * (1 + self.sets.index(unit.set))
        return {"set": unit.set, "k": pset.k, "pre_si": si, "pre_si_low": si - 0.01, "pre_si_high": si + 0.01,
                "pre_format_rate": 0.9, **self.extra.get(unit.set, {})}

    def run(self, unit, cfg, root, pset, *args):
        si = 0.1 * (1 + self.sets.index(unit.set))
        gain = si if unit.variant == "enigma" else 0.0
        return {"set": unit.set, "variant": unit.variant, "seed": unit.seed, "k": pset.k,
                "reward_std_late": 0.3 - si + 0.01 * unit.seed, "reward_change": 0.1, "grad_norm_sd": 0.2,
                "kl_final": 0.05, "drift_final": 0.001, "accuracy_at_1": 0.4 + gain + 0.01 * unit.seed,
                "majority_accuracy": 0.5 + gain, "post_si": si}


def test_the_equal_k_note_points_only_at_rows_that_exist(tmp_path, monkeypatch):
    # K = 2, 2, 4, 4: no K is shared by 3 sets, so correlations.csv has no equal-K rows
    sets = ["stepwise-vs-oneline", "placebo", "half-placebo", "reasoning-styles"]
    Fake(monkeypatch, sets)
    folder = tmp_path / "s"
    rc, _out, err = run(*sets, *COMMON, "--output-dir", folder)
    assert rc == 0, err
    assert set(pd.read_csv(folder / "correlations.csv")["k"].astype(str)) == {"all"}
    report = (folder / "REPORT.md").read_text()
    assert "different K (2, 4)" in report
    assert "rows `k =" not in report and "no K is shared by 3 sets" in report


def test_the_equal_k_note_names_the_equal_k_rows(tmp_path, monkeypatch):
    sets = ["stepwise-vs-oneline", "placebo", "near-duplicate", "half-placebo", "reasoning-styles"]
    Fake(monkeypatch, sets)
    folder = tmp_path / "s"
    rc, _out, err = run(*sets, *COMMON, "--output-dir", folder)
    assert rc == 0, err
    assert set(pd.read_csv(folder / "correlations.csv")["k"].astype(str)) == {"all", "2"}
    assert "the 3 sets with K = 2 alone give the same table in `correlations.csv` (rows `k = 2`)" in \
        (folder / "REPORT.md").read_text()


def test_a_caveat_is_not_reported_as_untrusted(tmp_path, monkeypatch):
    """Saturation is a caveat (`score.trust`: it does not block); only blocking findings make SI untrusted."""
    sets = ["stepwise-vs-oneline", "placebo", "near-duplicate", "verify-vs-verbal"]
    Fake(monkeypatch, sets, extra={
        "stepwise-vs-oneline": {"pre_trusted": True, "pre_reason": "mi_sym 0.68 is near log K = 0.69: saturated"},
        "placebo": {"pre_trusted": False, "pre_reason": "the 95% interval of SI reaches 0"},
    })
    folder = tmp_path / "s"
    rc, _out, err = run(*sets, *COMMON, "--output-dir", folder)
    assert rc == 0, err
    lines = (folder / "REPORT.md").read_text().splitlines()
    untrusted = [line for line in lines if line.startswith("SI could not be trusted for:")]
    caveats = [line for line in lines if line.startswith("SI is trusted, with a caveat, for:")]
    assert untrusted == ["SI could not be trusted for: placebo (the 95% interval of SI reaches 0)."]
    assert len(caveats) == 1 and "stepwise-vs-oneline (mi_sym 0.68" in caveats[0]


def test_the_score_unit_keeps_whether_si_is_trusted(monkeypatch):
    from types import SimpleNamespace

    from enigma_cli import score
    from enigma_cli.study.config import StudyConfig

    row = {"si": 0.4, "si_low": 0.3, "si_high": 0.5, "mi_sym": 0.68, "acc_row": 0.9, "format_rate": 1.0,
           "trusted": True, "reason": "saturated", "critic": "sum"}
    from enigma_cli.score import trust

    seen = {}
    monkeypatch.setattr(trust, "check_principles", lambda lm, pset, questions: ["readability findings"])
    monkeypatch.setattr(score, "score_set", lambda *args, checks=None: seen.update(checks=checks)
                        or SimpleNamespace(row=row))
    kept = stages.measure_si(None, None, [], StudyConfig(), "enigma-tiny")
    assert kept["trusted"] is True and kept["reason"] == "saturated" and "critic" not in kept
    assert seen["checks"] == ["readability findings"]  # the study's SI hears the readability check too


def test_a_run_trains_without_the_last_units_model_kept(tmp_path, monkeypatch):
    """The model a score (or the previous run's evaluation) loaded is dropped before the run loads its own."""
    import pytest

    from enigma_cli.study.config import StudyConfig
    from enigma_cli.study.plan import Unit

    seen = {}

    class Stop(Exception):
        pass

    def train(unit, cfg, root, principles):
        seen["kept"] = models.lm
        raise Stop

    monkeypatch.setattr(stages, "train", train)
    models = stages.Models(StudyConfig())
    models.lm, models.spec = object(), "enigma-tiny"
    with pytest.raises(Stop):
        stages.do_run(Unit("run", "placebo", "enigma", 0), StudyConfig(), tmp_path, None, "placebo", [], [], models)
    assert seen["kept"] is None and models.spec is None
