"""`enigma analyze-manifold` and `enigma_cli.manifold`: metrics, schema, completions reuse, bad input."""

from __future__ import annotations

import copy
import io
import json
import math

import pandas as pd
import pytest
import torch

from enigma_cli import manifold
from enigma_cli.cli import main
from enigma_cli.errors import InputError

FAST = ["--prompts", "3", "--samples", "2", "--max-new-tokens", "8", "--tokens", "64", "--folds", "2",
        "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(tiny_lm):
    # The matrices here are tiny: a second thread only adds synchronisation (badly so on a shared 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpts(tiny_lm, tmp_path_factory):
    """save_pretrained folders: base, identical copy, perturbed copy, shallower model, other tokenizer."""
    import transformers

    from enigma_cli.models.tiny import tiny_config, train_tokenizer

    model, tok = tiny_lm
    root = tmp_path_factory.mktemp("manifold")
    perturbed = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    shallow = transformers.LlamaForCausalLM(tiny_config(len(tok), num_layers=2)), tok
    tok2 = train_tokenizer(["zebra quartz jumps vex whelk " * 3, "1 2 3 4 5 + - = ?"])
    other_tok = transformers.LlamaForCausalLM(tiny_config(len(tok2))), tok2
    paths = {}
    for name, (m, t) in {"base": (model, tok), "same": (model, tok), "perturbed": (perturbed, tok),
                         "shallow": shallow, "other_tok": other_tok}.items():
        paths[name] = root / name
        m.save_pretrained(paths[name])
        t.save_pretrained(paths[name])
    return paths


def run(argv, capsys):
    rc = main(["analyze-manifold", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------ pure metrics


def test_reference_metrics_identical_perturbed_and_rotated():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 16, generator=gen)
    same = manifold.reference_metrics(X, X.clone(), pca_k=4)
    assert same["sinkhorn_drift"] == pytest.approx(0.0, abs=1e-8)
    assert same["cka"] == pytest.approx(1.0, abs=1e-12)
    assert same["angle_max"] == pytest.approx(0.0, abs=1e-7)
    assert same["pca_k"] == 4
    moved = manifold.reference_metrics(X + 0.1 * torch.randn(40, 16, generator=gen), X, pca_k=4)
    assert moved["sinkhorn_drift"] > 1e-3 and moved["cka"] < 0.999 and moved["angle_max"] > 0.05
    # CKA is rotation invariant while the drift (which compares the clouds in place) is not.
    Q = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64)).Q.float()
    rotated = manifold.reference_metrics(X @ Q, X, eps=0.5, pca_k=4)  # a far cloud: larger eps converges fast
    assert rotated["cka"] == pytest.approx(1.0, abs=1e-6) and rotated["sinkhorn_drift"] > 1e-3
    # k is capped at N - 1: a centred N-point cloud spans at most N - 1 directions.
    assert manifold.reference_metrics(X[:3], X[:3], pca_k=8)["pca_k"] == 2


def test_distribution_metrics_match_hand_formulas():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    q = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
    out = manifold.distribution_metrics(p.log(), q.log())
    pairs = list(zip(p.tolist(), q.tolist()))
    fr = [2 * math.acos(sum(math.sqrt(a * b) for a, b in zip(pr, qr))) for pr, qr in pairs]
    kl = [sum(a * math.log(a / b) for a, b in zip(pr, qr)) for pr, qr in pairs]
    assert out["fisher_rao"] == pytest.approx(sum(fr) / 2, rel=1e-5)
    assert out["kl"] == pytest.approx(sum(kl) / 2, rel=1e-5)  # KL(model || base), not the reverse
    same = manifold.distribution_metrics(p.log(), p.log())
    assert same == pytest.approx({"fisher_rao": 0.0, "kl": 0.0}, abs=1e-6)


def _cells(n_questions: int, k: int, samples: int):
    idx = range(n_questions * k * samples)
    labels = [(i // samples) % k for i in idx]
    groups = [i // (samples * k) for i in idx]
    sample = [i % samples for i in idx]
    n = len(idx)
    comps = manifold.Completions("x", tuple("abc"[:k]), ("q",) * n_questions, [[1]] * n, [[2]] * n, [""] * n,
                                 labels, groups, sample)
    return comps, labels, groups


def test_matrix_index_lists_each_principle_once_per_cell():
    comps, labels, groups = _cells(4, 3, 2)
    M = comps.matrix_index()
    assert M.shape == (8, 3)
    for row in M.tolist():
        assert [labels[i] for i in row] == [0, 1, 2] and len({groups[i] for i in row}) == 1


def test_decodability_separable_vs_random():
    comps, labels, groups = _cells(12, 3, 2)
    gen = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.eye(3, 10)
    X = centres[labels] + 0.3 * torch.randn(len(labels), 10, generator=gen)
    good = manifold.decodability(X, labels, groups, comps.matrix_index(), 3, folds=4, seed=0)
    assert good["probe_acc"] == 1.0
    assert 0.5 * math.log(3) < good["infonce_mi"] <= math.log(3)
    assert good["log_k"] == pytest.approx(math.log(3))
    noise = torch.randn(len(labels), 10, generator=gen)
    bad = manifold.decodability(noise, labels, groups, comps.matrix_index(), 3, folds=4, seed=0)
    assert bad["probe_acc"] < 0.7 and bad["infonce_mi"] < 0.3 * math.log(3)
    again = manifold.decodability(noise, labels, groups, comps.matrix_index(), 3, folds=4, seed=0)
    assert again == bad  # fixed solver and folds: deterministic


def test_sample_tokens_stays_in_completions_and_is_seeded():
    prompt_lens, comp_lens = [5, 3, 7], [4, 0, 6]
    rows, pos = manifold.sample_tokens(prompt_lens, comp_lens, 6, seed=1)
    assert len(rows) == 6
    for r, p in zip(rows.tolist(), pos.tolist()):
        assert prompt_lens[r] <= p < prompt_lens[r] + comp_lens[r]
    assert torch.equal(manifold.sample_tokens(prompt_lens, comp_lens, 6, seed=1)[1], pos)
    rows_all, _ = manifold.sample_tokens(prompt_lens, comp_lens, 100, seed=1)
    assert rows_all.tolist() == [0] * 4 + [2] * 6


def test_analysed_layers():
    assert manifold.analysed_layers("all", 4) == [0, 1, 2, 3, 4]
    assert manifold.analysed_layers("4,0,-1", 4) == [0, 4]
    with pytest.raises(InputError, match="--layers"):
        manifold.analysed_layers("0,5", 4)
    with pytest.raises(InputError, match="--layers"):
        manifold.parse_layers("first,last")


# --------------------------------------------------------------------------------------------- the CLI


def test_cli_identical_zero_perturbed_positive_schema_and_reuse(ckpts, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = ["--base", ckpts["base"], "--trained", ckpts["same"], "--trained", ckpts["perturbed"], *FAST,
            "--out-dir", out_dir]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert out == ""  # with --out-dir nothing goes to stdout
    written = {p.name for p in out_dir.iterdir()}
    assert written >= {"manifold.csv", "manifold.png", "config.yaml", "completions.jsonl"}
    df = pd.read_csv(out_dir / "manifold.csv")
    assert list(df.columns) == list(manifold.COLUMNS)
    assert len(df) == 3 * 5 and not df.duplicated(["model", "layer"]).any()  # 3 models × hidden states 0..4
    assert df["role"].tolist() == ["base"] * 5 + ["trained"] * 10
    assert set(df["n_points"]) == {3 * 2 * 2} and set(df["pca_k"]) == {8}
    final = df["layer"] == 4
    assert df.loc[~final, ["fisher_rao", "kl"]].isna().all().all()
    assert df.loc[final, ["fisher_rao", "kl"]].notna().all().all()

    for name in ("base", "same"):
        rows = df[df["model"] == str(ckpts[name])]
        assert rows["sinkhorn_drift"].abs().max() < 1e-7
        assert (rows["cka"] - 1).abs().max() < 1e-9
        assert rows["angle_max"].max() < 1e-6
        assert rows.loc[rows["layer"] == 4, ["fisher_rao", "kl"]].abs().max().max() < 1e-6
    pert = df[df["model"] == str(ckpts["perturbed"])]
    assert (pert["sinkhorn_drift"] > 1e-4).all() and (pert["cka"] < 1 - 1e-6).all()
    assert (pert["angle_max"] > 1e-3).all() and pert.loc[pert["layer"] == 4, "fisher_rao"].item() > 1e-3
    # the per-model metrics of the identical copy are those of the base
    base_rows, same_rows = (df[df["model"] == str(ckpts[n])].reset_index(drop=True) for n in ("base", "same"))
    for col in ("effective_rank", "participation_ratio", "anisotropy", "twonn_dim", "probe_acc",
                "infonce_mi"):
        pd.testing.assert_series_equal(base_rows[col], same_rows[col], atol=1e-6)
    assert ((df["probe_acc"] >= 0) & (df["probe_acc"] <= 1)).all()
    assert (df["infonce_mi"] <= df["log_k"] + 1e-9).all()
    assert "perturbed" in err and "generating 12 completions" in " ".join(err.split())

    completions = (out_dir / "completions.jsonl").read_bytes()
    assert len(completions.splitlines()) == 12
    rc, out, err = run([*argv, "--format", "jsonl", "--layers", "-1"], capsys)
    assert rc == 0, err
    assert "reusing 12 completions" in " ".join(err.split())
    assert (out_dir / "completions.jsonl").read_bytes() == completions
    again = pd.read_json(out_dir / "manifold.jsonl", lines=True)
    last = df[final].reset_index(drop=True)
    assert again["model"].tolist() == last["model"].tolist() and set(again["layer"]) == {4}
    assert again["cka"].to_numpy() == pytest.approx(last["cka"].to_numpy(), abs=1e-5)
    assert again["probe_acc"].to_numpy() == pytest.approx(last["probe_acc"].to_numpy())

    # another seed means other completions: the plan says the saved ones will be replaced
    rc, out, err = run([*argv, "--seed", "1", "--dry-run"], capsys)
    assert rc == 0 and "does not match" in err
    rc, out, err = run([*argv, "--dry-run"], capsys)
    assert rc == 0 and "will be reused" in " ".join(err.split())


def test_cli_stdout_is_only_csv(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["--base", ckpts["base"], "--trained", ckpts["perturbed"], "--layers", "0,-1", *FAST],
                       capsys)
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(out))
    assert list(df.columns) == list(manifold.COLUMNS)
    assert df[["role", "layer"]].values.tolist() == [["base", 0], ["base", 4], ["trained", 0], ["trained", 4]]
    assert "against the base" in err  # the rich summary goes to stderr
    assert list(tmp_path.iterdir()) == []  # no --out-dir: no files


def test_cli_dry_run_loads_nothing(ckpts, capsys):
    rc, out, err = run(["--base", ckpts["base"], "--trained", ckpts["same"], *FAST, "--dry-run"], capsys)
    assert rc == 0 and out == ""
    text = " ".join(err.split())
    assert "12 completions" in text and "depth 4" in text and "nothing loaded" in text


@pytest.mark.parametrize("case", ["missing", "no_trained", "empty_dataset", "depth", "tokenizer", "layers",
                                  "parquet"])
def test_cli_bad_input_is_one_sentence_exit_3(case, ckpts, tmp_path, capsys):
    base, trained = ckpts["base"], [ckpts["same"]]
    extra = []
    if case == "missing":
        trained = [tmp_path / "no-such-checkpoint"]
    elif case == "no_trained":
        trained = []
    elif case == "empty_dataset":
        (tmp_path / "empty.jsonl").write_text("")
        extra = ["--dataset", tmp_path / "empty.jsonl"]
    elif case == "depth":
        trained = [ckpts["shallow"]]
    elif case == "tokenizer":
        trained = [ckpts["other_tok"]]
    elif case == "layers":
        extra = ["--layers", "0,9"]
    elif case == "parquet":
        extra = ["--format", "parquet"]
    argv = ["--base", base, *[a for t in trained for a in ("--trained", t)], *FAST, *extra]
    rc, out, err = run(argv, capsys)
    assert rc == 3, err
    assert out == ""
    text = " ".join(err.split())
    assert text.startswith("error:") and "Traceback" not in err and text.endswith(".")
    expected = {"missing": "no-such-checkpoint", "no_trained": "--trained", "empty_dataset": "empty.jsonl",
                "depth": "2 layers", "tokenizer": "different tokenizer", "layers": "--layers 9",
                "parquet": "--out-dir"}[case]
    assert expected.replace(" ", "") in text.replace(" ", "")  # rich may wrap inside a long path


def test_completions_roundtrip_and_key_mismatch(tmp_path):
    comps, _, _ = _cells(2, 2, 1)
    path = tmp_path / "c.jsonl"
    manifold.save_completions(comps, path)
    back = manifold.load_completions(path, "x", ("a", "b"))
    assert back is not None and back.completion_ids == comps.completion_ids and back.labels == comps.labels
    assert manifold.load_completions(path, "other-key", ("a", "b")) is None
    assert json.loads(path.read_text().splitlines()[0])["principle_id"] == "a"


def test_decodability_critic_has_principles_in_rows_and_completions_in_columns(monkeypatch):
    """With a probe whose posterior is known, infonce_mi_col must be log K minus the mean of −log p(own principle |
    completion) over the completions of complete cells: the column softmax of S[i, j] = log p(i | completion j) is
    that posterior. A transposed S (completions in rows) gives another number."""
    import numpy as np

    from enigma_cli.manifold import metrics

    comps, labels, groups = _cells(6, 3, 2)
    n, k = len(labels), 3
    gen = np.random.default_rng(0)
    logits = gen.normal(size=(n, k)) * 2.0
    post = np.exp(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))  # the fake probe's posterior
    X = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # the row index travels as the only feature

    class Scaler:
        def transform(self, A):
            return A

    class Probe:
        classes_ = np.arange(k)

        def predict_log_proba(self, A):
            return np.log(post[A[:, 0].astype(int)])

    monkeypatch.setattr(metrics, "_fit_probe", lambda *args, **kwargs: (Scaler(), Probe()))
    out = metrics.decodability(X, labels, groups, comps.matrix_index(), k, folds=3, seed=0)
    rows = comps.matrix_index().reshape(-1).tolist()
    expected_col = math.log(k) + float(np.mean([np.log(post[i, labels[i]]) for i in rows]))
    assert out["infonce_mi_col"] == pytest.approx(expected_col, abs=1e-9)
