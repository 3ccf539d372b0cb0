"""`enigma study --pool`: sets drawn from a pool of principles, a study that grows by sets, and the power that
`--dry-run` prints from a pilot's noise. The training stages are fakes (a function of the unit alone)."""

from __future__ import annotations

import math
import zlib

import pandas as pd
import pytest
from clirun import invoke

from enigma_cli.errors import InputError
from enigma_cli.principle_pool import pool_members, subsets
from enigma_cli.principles import load_principle_set
from enigma_cli.study import pilot, stages
from enigma_cli.study.draw import spread

COMMON = ["--steps", "2", "--no-probe", "--eval-prompts", "8", "--score-prompts", "4", "--seeds", "0,1"]
SHIPPED_IDS = {"show-steps", "one-line", "say-operation", "check-inverse", "answer-first", "answer-last",
               "respect-privacy", "no-brands", "steps-own-line", "steps-separate-line"}


def run(*argv) -> tuple[int, str, str]:
    return invoke("study", *argv)


def _u(*parts) -> float:
    return (zlib.crc32("/".join(map(str, parts)).encode()) % 1000) / 1000


class Fake:
    """SI is a function of the set's name; outcomes follow it loosely, with seed noise."""

    def __init__(self, monkeypatch):
        self.principles: dict[str, str] = {}
        monkeypatch.setattr(stages, "do_score", self.score)
        monkeypatch.setattr(stages, "do_run", self.run)

    def score(self, unit, cfg, pset, *args):
        si = _u(unit.set)
        return {"set": unit.set, "k": pset.k, "pre_si": si, "pre_si_low": si - 0.05, "pre_si_high": si + 0.05,
                "pre_format_rate": 0.9, "base_accuracy_at_1": 0.4}

    def run(self, unit, cfg, root, pset, principles, *args):
        self.principles[unit.set] = principles
        si = _u(unit.set)
        return {"set": unit.set, "variant": unit.variant, "seed": unit.seed, "k": pset.k,
                "reward_std_late": 0.3 - 0.1 * si + 0.05 * _u(unit.name), "reward_change": 0.1 + 0.02 * _u(unit.name, 1),
                "grad_norm_sd": 0.2 + 0.05 * _u(unit.name, 2), "kl_final": 0.01, "drift_final": 0.001,
                "accuracy_at_1": 0.4 + (0.1 * si if unit.variant == "enigma" else 0) + 0.05 * _u(unit.name, 3),
                "majority_accuracy": 0.5, "format_rate": 0.9, "post_si": si}


def test_the_pool_of_the_shipped_sets_is_their_ten_distinct_principles():
    members = pool_members(["principles"])
    assert {p.id for p in members} == SHIPPED_IDS and len(members) == 10
    pairs = subsets(members, 2)
    assert len(pairs) == math.comb(10, 2) and len({s.name for s in pairs}) == 45
    drawn = subsets(members, 2, 16, seed=0)
    assert len(drawn) == 16 and {s.name for s in drawn} <= {s.name for s in pairs}
    assert [s.name for s in drawn] == [s.name for s in subsets(members, 2, 16, seed=0)]
    # more sets from the same seed keep the ones drawn before, so a study can grow
    assert {s.name for s in drawn} <= {s.name for s in subsets(members, 2, 24, seed=0)}


def test_a_principle_id_with_two_texts_is_refused(tmp_path):
    clash = tmp_path / "clash.yaml"
    clash.write_text("name: clash\ndescription: x\nprinciples:\n  - id: show-steps\n    text: Something else.\n"
                     "  - id: other\n    text: Another thing.\n")
    with pytest.raises(InputError, match="principle id 'show-steps' has two different texts"):
        pool_members(["stepwise-vs-oneline", str(clash)])
    same_text = tmp_path / "same.yaml"
    same_text.write_text("name: same\ndescription: x\nprinciples:\n  - id: steps\n"
                         "    text: Show every intermediate result on its own line.\n  - id: b\n    text: B.\n")
    with pytest.raises(InputError, match="'show-steps' and 'steps' of the pool have the same text"):
        pool_members(["stepwise-vs-oneline", str(same_text)])


def test_a_study_draws_its_sets_from_a_pool_and_keeps_them_in_its_folder(tmp_path, monkeypatch):
    fake = Fake(monkeypatch)
    folder = tmp_path / "s"
    rc, _out, err = run("--pool", "principles", "--sets", "6", *COMMON, "--output-dir", folder)
    assert rc == 0, err
    study = pd.read_csv(folder / "study.csv")
    assert len(study) == 6 and all("+" in name for name in study["set"])
    for name in study["set"]:
        path = folder / "sets" / f"{name}.yaml"
        assert fake.principles[name] == str(path)  # the runs train on the set the study folder keeps
        assert load_principle_set(str(path)).name == name
    report = (folder / "REPORT.md").read_text()
    assert "| set effect SD ≤ | power at ρ 0.5 / 0.8 |" in report
    assert "does not hold" not in report or "rule out" in report


def test_a_study_may_gain_sets_but_not_lose_any(tmp_path, monkeypatch):
    Fake(monkeypatch)
    folder = tmp_path / "s"
    assert run("--pool", "principles", "--sets", "5", *COMMON, "--output-dir", folder)[0] == 0
    rc, _out, err = run("--pool", "principles", "--sets", "7", *COMMON, "--output-dir", folder)
    assert rc == 0 and "grows from 5 to 7 sets" in err, err
    assert len(pd.read_csv(folder / "study.csv")) == 7
    rc, out, err = run("--pool", "principles", "--sets", "5", *COMMON, "--output-dir", folder)
    assert rc == 3 and out == "" and "a study may gain sets but not lose any" in err


def pilot_dir(tmp_path):
    return tmp_path / "pilot"


def test_the_dry_run_prints_the_power_from_a_pilot_folder(tmp_path, monkeypatch):
    Fake(monkeypatch)
    folder = pilot_dir(tmp_path)
    assert run("--pool", "principles", "--sets", "6", *COMMON, "--output-dir", folder)[0] == 0
    rc, out, err = run("--pool", "principles", "--sets", "12", *COMMON, "--dry-run", "--noise-from", folder,
                       "--output-dir", tmp_path / "next")
    assert rc == 0 and out == "", err
    assert f"measured in {folder} (--noise-from)" in err
    assert "accuracy gain over GRPO-only:" in err and "at ρ = 0.8" in err
    assert not (tmp_path / "next").exists()
    monkeypatch.setattr(pilot, "SHIPPED", tmp_path / "nothing-shipped")
    rc, _out, err = run("--pool", "principles", "--sets", "12", *COMMON, "--dry-run", "--output-dir", tmp_path / "n")
    assert rc == 0 and "no pilot" in err and "if the set effect's SD were 1 × the seed noise" in err
    # a pilot the project measured and ships for the model is the next best thing to your own
    monkeypatch.setattr(pilot, "SHIPPED", tmp_path / "shipped")
    pilot.write_shipped(pilot_folder := pilot_dir(tmp_path), "enigma-tiny", "of a test study")
    rc, _out, err = run("--pool", "principles", "--sets", "12", *COMMON, "--dry-run", "--output-dir", tmp_path / "n")
    assert rc == 0 and "spread of a test study (shipped; --noise-from for yours)" in err, err
    assert pilot.shipped_pilot("enigma-tiny")[0] == pilot.pilot_noise(pilot_folder)


def test_spread_takes_evenly_spaced_ranks_of_si():
    names_si = [(f"s{i}", v) for i, v in enumerate([0.5, 0.1, float("nan"), 0.9, 0.3, 0.7, 0.2])]
    assert spread(names_si, 3) == ["s1", "s4", "s3"]  # ranks 0, 2.5 → 2 (banker's round), 5 of the 6 finite
    assert spread(names_si, 2) == ["s1", "s3"]        # the lowest and the highest
    assert spread(names_si, 6) == ["s1", "s6", "s4", "s0", "s5", "s3"]
    assert spread(names_si, 7)[-1] == "s2"            # NaN only when the finite ones run out


def test_a_spread_draw_scores_the_pool_once_and_is_reused(tmp_path, monkeypatch):
    """The real pool pass on enigma-tiny (few prompts), fake training: the sets studied are the pool's subsets at
    evenly spaced SI, pool.csv keeps the whole pool, and a second invocation reuses the recorded draw."""
    Fake(monkeypatch)
    folder = tmp_path / "s"
    small = ["--score-prompts", "4", "--score-samples", "1"]
    argv = ["--pool", "principles", "--draw", "spread", "--sets", "5", *COMMON, *small, "--output-dir", folder]
    rc, _out, err = run(*argv[:-2], "--shard", "1/2", "--output-dir", folder)
    assert rc == 0, err
    pool = pd.read_csv(folder / "pool.csv")
    assert len(pool) == 45
    chosen = pd.read_csv(folder / "pool.csv").set_index("set")["si"]
    import yaml

    names = yaml.safe_load((folder / "study.yaml").read_text())["sets"]
    assert names == spread(list(chosen.items()), 5)
    assert chosen[names[0]] == chosen.min() and chosen[names[-1]] == chosen.max()

    from enigma_cli.score import pool as pool_module

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the pool was scored again")

    monkeypatch.setattr(pool_module, "score_pool", no_second_pass)
    rc, _out, err = run(*argv)
    assert rc == 0, err
    assert sorted(pd.read_csv(folder / "study.csv")["set"]) == sorted(names)
    rc, out, err = run(*[a if a != "5" else "6" for a in argv])
    assert rc == 3 and out == "" and "a spread draw cannot grow" in err


@pytest.mark.parametrize("argv, needle", [
    (["--sets", "6"], "--sets draws sets from a pool; give --pool too"),
    (["--draw", "spread"], "--draw chooses how sets are drawn from a pool; give --pool too"),
    (["--pool", "principles", "--draw", "spread"], "--draw spread chooses --sets of the pool's subsets; give --sets"),
    (["--pool", "stepwise-vs-oneline,placebo", "--choose", "4"], "--choose 4 needs a pool of more than 4"),
    (["--pool", "principles", "--sets", "3"], "--sets"),
    (["--pool", "principles", "--min-rho", "1.5"], "--min-rho"),
    (["--pool", "principles", "--noise-from", "/no/such/folder"], "--noise-from /no/such/folder: no such folder"),
    (["--pool", "principles", "--noise-from", "."], "is not a study folder"),
    (["--pool", "no-such-set"], "no-such-set"),
])
def test_bad_pool_input_stops_before_any_work(tmp_path, argv, needle):
    folder = tmp_path / "s"
    rc, out, err = run(*argv, *COMMON, "--output-dir", folder, "--dry-run")
    assert rc == 3 and out == "" and needle in err, err
    assert not folder.exists()


def test_a_drawn_rank_decodes_to_the_subset_combinations_lists_at_that_rank():
    import itertools

    from enigma_cli.principle_pool import _combination

    for n, k in ((10, 2), (7, 3), (12, 5)):
        assert [_combination(i, n, k) for i in range(math.comb(n, k))] == list(itertools.combinations(range(n), k))
