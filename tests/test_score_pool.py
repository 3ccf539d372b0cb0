"""`enigma score-principles --pool`: every subset's row from one pool pass equals the subset scored as a set; the
paired bootstrap; greedy against exact selection; the confusion maths; bad input refused before any model loads.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from enigma_cli.cli import main
from enigma_cli.core import bootstrap_si
from enigma_cli.datasets import load_examples
from enigma_cli.principle_pool import as_set, pool_members
from enigma_cli.principles import Principle
from enigma_cli.score import ScoreConfig, scoring
from enigma_cli.score.choose import exact, greedy, search
from enigma_cli.score.confusion import Confusion, confusion, own_pmi, posterior_confusion
from enigma_cli.score.pool import PoolScores, choose_subsets, lead, score_pool
from enigma_cli.score.scoring import CriticScores

SMALL = {"prompts": 3, "samples": 2, "max_new_tokens": 24, "bootstrap": 200, "device": "cpu", "batch_size": 16}
FAST = [x for k, v in SMALL.items() for x in (f"--{k.replace('_', '-')}", str(v))]
NUMERIC = ("mi_row", "mi_col", "mi_sym", "si", "si_low", "si_high", "acc_row", "acc_col", "pmi_mi_row", "pmi_mi_sym",
           "pmi_si", "si_mean", "si_sum", "pmi_si_mean", "pmi_si_sum", "format_rate")


@pytest.fixture(scope="module")
def lm():
    from enigma_cli.models.loading import load_model

    return load_model("enigma-tiny", device="cpu")


@pytest.fixture(scope="module")
def setup(lm):
    """Five members of the shipped pool, three prompts, two samples: the pool scored once."""
    cfg = ScoreConfig(**{k: v for k, v in SMALL.items() if k != "prompts"}, prompts=3)
    members = pool_members(["reasoning-styles", "answer-order"])[:5]
    examples = load_examples("synthetic", n=cfg.prompts, seed=cfg.seed)
    return cfg, members, examples, score_pool(lm, members, examples, cfg)


def run(argv, capsys):
    rc = main(["score-principles", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- pool rows = sets scored alone


@pytest.mark.parametrize("ids", [(0, 1), (1, 3), (4, 2), (0, 2, 4), (3, 1, 0, 4)])
def test_every_subset_equals_the_subset_scored_as_a_set(lm, setup, ids):
    """The key property: a subset cut out of the pool (rows and columns, any order) and the same principles
    scored with `score_set` (their own generation and reading) give the same completions and the same row."""
    cfg, members, examples, pool = setup
    pset = as_set(tuple(members[i] for i in ids))
    alone = scoring.critic_matrices(lm, pset, examples, cfg)
    cut = pool.subset(ids)
    assert cut.texts == alone.texts  # the same completions: sampling ignores the other principles
    assert torch.equal(cut.lengths, alone.lengths)
    assert torch.allclose(cut.mean, alone.mean, atol=1e-5) and torch.allclose(cut.marginal, alone.marginal, atol=1e-5)
    a, b = pool.set_score(ids, cfg).row, scoring.score_set(lm, pset, examples, cfg).row
    assert a["set"] == b["set"] == "+".join(p.id for p in pset.principles)
    for key in NUMERIC:
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert (a["trusted"], a["reason"]) == (b["trusted"], b["reason"])


def test_every_pair_through_choose_subsets(lm, setup):
    """All C(5, 2) rows of `choose_subsets` against each pair scored alone (SI, interval, trust)."""
    cfg, members, examples, pool = setup
    found, ranked = choose_subsets(pool, 2, cfg)
    assert found.method == "exact" and found.total == 10 and len(ranked) == 10
    for r in ranked:
        alone = scoring.score_set(lm, r_set(members, r.name), examples, cfg).row
        for key in ("si", "si_low", "si_high", "mi_sym", "acc_col", "format_rate"):
            assert r.row[key] == pytest.approx(alone[key], abs=1e-5), (r.name, key)
    trusted = [r.trusted for r in ranked]
    assert trusted == sorted(trusted, reverse=True)  # every trusted row first
    assert math.isnan(ranked[-1].row["lead"]) and all(r.row["search"] == "exact" for r in ranked)
    assert ranked[0].row["lead"] == pytest.approx(ranked[0].row["si"] - ranked[1].row["si"], abs=1e-9)


def r_set(members, name):
    by_id = {p.id: p for p in members}
    return as_set(tuple(by_id[i] for i in name.split("+")))


# ----------------------------------------------------------------------------------------- paired bootstrap


def test_lead_is_the_paired_bootstrap_over_shared_resamples(setup):
    """The lead's interval is the percentile interval of mean(a) − mean(b) over the same resampled prompts, which is
    narrower than the unpaired difference when the two subsets move together across prompts."""
    cfg, _, _, pool = setup
    first, second = pool.set_score((0, 1), cfg), pool.set_score((0, 2), cfg)
    gap, low, high = lead(first, second, cfg)
    a, b = first.variants[cfg.critic]["per_prompt"], second.variants[cfg.critic]["per_prompt"]
    idx = torch.randint(0, len(a), (cfg.bootstrap, len(a)), generator=torch.Generator().manual_seed(cfg.seed))
    diff = a[idx].mean(1) - b[idx].mean(1)
    q = torch.quantile(diff, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (low, high) == pytest.approx((float(q[0]), float(q[1])), abs=1e-12)
    assert gap == pytest.approx(float(a.mean() - b.mean()), abs=1e-6)
    # bootstrap_si's resamples do not depend on the values: a shifted series moves its interval by the shift
    assert bootstrap_si(a + 1.0, n_boot=cfg.bootstrap, seed=cfg.seed) == pytest.approx(
        tuple(v + 1.0 for v in bootstrap_si(a, n_boot=cfg.bootstrap, seed=cfg.seed)), abs=1e-12)


# ------------------------------------------------------------------------------------- greedy against exact


def synthetic_pool(size: int, prompts: int = 4, samples: int = 2, seed: int = 0) -> PoolScores:
    """A pool whose principle i is recognised with strength w_i (w spread over [0, 2]) plus noise: no model."""
    g = torch.Generator().manual_seed(seed)
    b = prompts * samples
    w = torch.linspace(0.0, 2.0, size)[torch.randperm(size, generator=g)]
    mean = -2.0 + torch.diag_embed(w.expand(b, size)) * 0.05 + 0.01 * torch.randn(b, size, size, generator=g)
    lengths = torch.full((b, size), 20.0)
    principles = tuple(Principle(f"p{i}", f"Principle number {i}.") for i in range(size))
    texts = ["x"] * (prompts * size * samples)
    return PoolScores(principles, CriticScores(mean, torch.full((b, size), -2.1), lengths, texts), samples)


def test_greedy_agrees_with_exact_where_both_run():
    pool = synthetic_pool(14)

    def si_of(combos):
        return pool.per_prompt_si(combos, "sum").mean(1)

    for k in (3, 4, 5):
        full = exact(si_of, 14, k)
        quick = greedy(si_of, 14, k, restarts=8, seed=1)
        assert quick.subsets[0] == full.subsets[0] and quick.si[0] == pytest.approx(full.si[0], abs=1e-12)
        assert quick.restarts_better == 0 and quick.method == "greedy" and quick.total == math.comb(14, k)
        assert full.si == sorted(full.si, reverse=True) and len(full.subsets) == math.comb(14, k)
    # the stacked SI is the SI of each subset scored on its own
    combos = list(itertools.combinations(range(14), 3))[:50]
    stacked = si_of(combos)
    for c, v in zip(combos, stacked):
        assert float(v) == pytest.approx(float(scoring.sufficiency_index(pool.subset(c).matrix("sum"))["si"]),
                                         abs=1e-9)


def test_large_pool_takes_the_greedy_path_and_says_so():
    pool = synthetic_pool(40, prompts=3, samples=1)  # C(40, 5) = 658,008 subsets
    cfg = ScoreConfig(samples=1, bootstrap=50)
    found, ranked = choose_subsets(pool, 5, cfg, top=3)
    assert found.method == "greedy" and found.total == math.comb(40, 5)
    assert "greedy" in found.describe(40, 5) and "658,008" in found.describe(40, 5)
    assert len(ranked) <= 3 and all(r.row["search"] == "greedy" and r.k == 5 for r in ranked)
    assert search(lambda c: pool.per_prompt_si(c, "sum").mean(1), 6, 3).method == "exact"


def test_a_planted_bug_in_the_greedy_search_is_caught():
    """A forward step that adds the worst member instead of the best ends below exact: the comparison can fail."""
    pool = synthetic_pool(10)

    def si_of(combos):
        return pool.per_prompt_si(combos, "sum").mean(1)

    best = exact(si_of, 10, 4).si[0]

    def inverted(combos):
        return -si_of(combos)

    worst = greedy(inverted, 10, 4, restarts=0)
    assert float(si_of([worst.subsets[0]])[0]) < best - 1e-6


# --------------------------------------------------------------------------------------------- confusion


def test_posterior_confusion_by_hand():
    # two matrices [B = 2, N = 3]; columns are completions written under 0, 1, 2
    S = torch.tensor([[[5.0, 0.0, 1.0], [1.0, 4.0, 1.0], [0.0, 4.0, 1.0]],
                      [[3.0, 1.0, 0.0], [3.0, 2.0, 0.0], [0.0, 1.0, 2.0]]])
    C = posterior_confusion(S)
    # written under 0: named 0, then a 0/1 tie -> [0.75, 0.25, 0]; under 1: 1/2 tie, then 1 -> [0, 0.75, 0.25];
    # under 2: a three-way tie, then 2 -> [1/6, 1/6, 2/3]
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.75, 0.25], [1 / 6, 1 / 6, 2 / 3]], dtype=torch.float64)
    assert torch.allclose(C, expected)
    assert torch.allclose(C.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(posterior_confusion(S + torch.tensor([7.0, -3.0, 1.0])), C)  # column shifts: no change
    pmi = torch.arange(2 * 2 * 9, dtype=torch.float32).view(4, 3, 3)  # 2 prompts × 2 samples
    own = own_pmi(pmi, prompts=2, samples=2)
    assert torch.allclose(own, torch.tensor([[(0 + 9) / 2, (4 + 13) / 2, (8 + 17) / 2],
                                             [(18 + 27) / 2, (22 + 31) / 2, (26 + 35) / 2]], dtype=torch.float64))


def test_confusion_view_on_a_planted_pool():
    """Principles 0 and 1 write the same completions (a near-duplicate pair); principle 2 changes nothing against
    the bare prompt (not followed); principle 3 is recognised perfectly."""
    n, m, size = 6, 2, 4
    b = n * m
    g = torch.Generator().manual_seed(0)
    mean = -2.0 + 0.002 * torch.randn(b, size, size, generator=g)
    mean[:, 3, 3] += 0.5                      # completions of 3 are far likelier under 3
    mean[:, 0:2, 0:2] += 0.3                  # 0 and 1 each explain both their completions equally
    mean[:, 2, 2] += 0.3                      # principle 2 is recognised against the others ...
    marginal = mean.diagonal(dim1=-2, dim2=-1).clone()
    marginal[:, [0, 1, 3]] -= 0.2             # ... but its completions are as likely without it
    principles = tuple(Principle(f"p{i}", f"Principle {i}.") for i in range(size))
    pool = PoolScores(principles, CriticScores(mean, marginal, torch.full((b, size), 10.0), ["x"] * (n * size * m)),
                      m)
    conf = confusion(pool, ScoreConfig(samples=m, bootstrap=200))
    assert isinstance(conf, Confusion)
    assert conf.distinctiveness[3] == 1.0 and conf.distinctiveness[2] == 1.0
    assert 0 < conf.matrix[0, 0] < 1 and conf.matrix[0, 0] + conf.matrix[0, 1] == pytest.approx(1.0)
    assert conf.pairs[0][:2] == (0, 1) and conf.near_duplicates() == [("p0", "p1")]
    assert conf.not_followed() == ["p2"]
    frame = conf.frame()
    assert list(frame["principle"]) == ["p0", "p1", "p2", "p3"] and list(frame["followed"]) == [True, True, False, True]
    assert "p0 / p1: pairwise SI" in conf.summary()[0]
    assert frame["si_with_p1"][0] == pytest.approx(conf.pairs[0][2]) and math.isnan(frame["si_with_p0"][0])


# ------------------------------------------------------------------------------------------------- the CLI


def test_cli_ranks_every_pair_writes_the_confusion_and_leaves_out_unreadable_members(tmp_path, capsys):
    org = Path(__file__).parent / "fixtures" / "organisational.yaml"
    out = tmp_path / "pool.csv"
    rc, stdout, err = run([org, "stepwise-vs-oneline", "answer-order", "--pool", "--choose", "2", *FAST,
                           "--out", out], capsys)
    assert rc == 0, err
    assert stdout == ""
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 6 and set(df["k"]) == {2}  # C(4, 2): the two unreadable members are left out
    assert not df["set"].str.contains("impartial|take-side").any()
    assert {"si", "si_low", "si_high", "mi_sym", "acc_col", "format_rate", "trusted", "reason", "search", "lead",
            "lead_low", "lead_high"} <= set(df.columns)
    trusted = list(df["trusted"])
    assert trusted == sorted(trusted, reverse=True)
    text = " ".join(err.split())
    assert "left out of the pool: principle impartial: enigma-tiny cannot read it" in text
    assert "exact: all C(4, 2) = 6 subsets scored" in text and f"best: {df['set'][0]}" in text
    assert "most-confused pairs" in text and "paired 95% CI" in text
    conf = pd.read_csv(f"{out}.confusion.csv")
    assert list(conf["principle"]) == ["show-steps", "one-line", "answer-first", "answer-last"]
    assert conf[[c for c in conf.columns if c.startswith("named_")]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert Path(f"{out}.confusion.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ bad input


def _bad(tmp_path, kind):
    """argv for one kind of bad input, and the text the error must name."""
    if kind == "duplicate-id":
        a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
        a.write_text("name: a\ndescription: d\nprinciples:\n  - id: x\n    text: Be brief.\n  - id: y\n    text: Be kind.\n")
        b.write_text("name: b\ndescription: d\nprinciples:\n  - id: x\n    text: Be long.\n  - id: z\n    text: Be fun.\n")
        return [a, b, "--pool", "--choose", "2"], "'x'"
    if kind == "k-at-least-n":
        return ["stepwise-vs-oneline", "placebo", "--pool", "--choose", "4"], "--choose 4"
    if kind == "k-below-2":
        return ["--pool", "--choose", "1"], "--choose"
    if kind == "empty-pool":
        (tmp_path / "empty").mkdir()
        return [tmp_path / "empty", "--pool", "--choose", "2"], "empty"
    if kind == "pool-too-large":
        big = tmp_path / "big.yaml"
        big.write_text("name: big\ndescription: d\nprinciples:\n" + "".join(
            f"  - id: p{i}\n    text: Principle number {i}.\n" for i in range(65)))
        return [big, "--pool", "--choose", "2"], "64"
    if kind == "choose-without-pool":
        return ["placebo", "--choose", "2"], "--pool"
    if kind == "pool-without-choose":
        return ["--pool"], "--choose"
    if kind == "top-0":
        return ["--pool", "--choose", "2", "--top", "0"], "--top"
    if kind == "top-without-pool":
        return ["placebo", "--top", "3"], "--top"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["duplicate-id", "k-at-least-n", "k-below-2", "empty-pool", "pool-too-large",
                                  "choose-without-pool", "pool-without-choose", "top-0", "top-without-pool"])
def test_bad_input_exits_3_before_any_model_loads(kind, tmp_path, capsys, monkeypatch):
    from enigma_cli.models import loading

    def boom(*args, **kwargs):
        raise AssertionError("bad input must be refused before any weights load")

    monkeypatch.setattr(loading, "load_model", boom)
    argv, culprit = _bad(tmp_path, kind)
    out_file = tmp_path / "report.csv"
    rc, out, err = run([*argv, *FAST, "--out", out_file], capsys)
    assert rc == 3, err
    assert out == "" and not out_file.exists()
    text = "".join(err.split())
    assert "".join(culprit.split()) in text, err
    assert err.count("error:") == 1 and "Traceback" not in err and text.endswith(".")


def test_dry_run_plans_the_pool(capsys, monkeypatch):
    from enigma_cli.models import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    rc, out, err = run(["--pool", "--choose", "2", "--prompts", "4", "--samples", "2", "--dry-run"], capsys)
    assert rc == 0 and out == ""
    text = " ".join(err.split())
    assert "pool of 10 principles" in text and "4 prompts × 10 principles × 2 samples = 80 completions" in text
    assert "C(10, 2) = 45 subsets, exact search" in text
