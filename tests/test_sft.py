"""`enigma sft`: rows and masks, completion-only loss against our own cross-entropy, end to end on enigma-tiny
(checkpoint usable as --model), LoRA adapters, and bad input for every option (exit 3 before any weights load)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import torch
from conftest import ENIGMA_TINY_DIR

from enigma_cli.cli import main
from enigma_cli.models import loading
from enigma_cli.sft import SftConfig, default_lr, plan
from enigma_cli.sft.data import SftRow, encode_rows, load_rows

pytestmark = pytest.mark.skipif(not (ENIGMA_TINY_DIR / "model.safetensors").exists(),
                                reason="enigma-tiny is not built")
FAST = ["--rows", "16", "--eval-prompts", "4", "--eval-samples", "1", "--eval-max-new-tokens", "24",
        "--device", "cpu"]
COLUMNS = ["model", "mode", "rows", "steps", "lr", "loss_first", "loss_last", "format_rate_before",
           "format_rate_after", "eval_prompts", "eval_samples", "output_dir", "seconds"]


def run(argv, capsys):
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------- data


def test_synthetic_rows_are_neutral_layout_and_disjoint_from_heldout():
    rows, held = load_rows(SftConfig(rows=40, eval_prompts=8))
    assert len(rows) == 40 and len(held) == 8
    for r in rows:
        assert r.completion.startswith("<reasoning>\n") and r.completion.endswith("\n</answer>")
        assert "So the answer is" in r.completion  # the default style, which no principle singles out
    assert not {r.question for r in rows} & {e.question for e in held}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_and_cot_collection_rows(tmp_path):
    gsm = _jsonl(tmp_path / "gsm.jsonl", [{"question": f"Q{i}", "answer": f"2 * {i} = <<2*{i}={2 * i}>>{2 * i}\n"
                                                                            f"#### {2 * i}"} for i in range(5)])
    rows, held = load_rows(SftConfig(dataset=gsm, eval_prompts=2))
    assert len(rows) == 3 and len(held) == 2
    by_q = {r.question: r.completion for r in rows}
    q = next(iter(by_q))
    i = int(q[1:])
    assert by_q[q] == f"<reasoning>\n2 * {i} = {2 * i}\n</reasoning>\n<answer>\n{2 * i}\n</answer>"
    cot = _jsonl(tmp_path / "cot.jsonl", [{"source": "Is 4 even?", "rationale": "4 = 2 * 2.", "target": "yes"},
                                          {"source": "No rationale", "target": "x"}])
    rows, held = load_rows(SftConfig(dataset=cot, eval_prompts=0))
    assert rows == [SftRow("Is 4 even?", "<reasoning>\n4 = 2 * 2.\n</reasoning>\n<answer>\nyes\n</answer>")]


def test_encode_rows_masks_exactly_the_completion(enigma_tiny):
    from enigma_cli.models.rollout import encode_prompts
    from enigma_cli.prompts import render_prompt

    _, tok = enigma_tiny
    rows, _ = load_rows(SftConfig(rows=3, eval_prompts=0))
    enc = encode_rows(tok, rows, None, 512)
    for ids, mask, row in zip(enc.input_ids, enc.completion_mask, rows):
        prompt = encode_prompts(tok, [render_prompt(tok, None, row.question)])[0]
        n = len(prompt)
        assert ids[:n] == prompt and mask[:n] == [0] * n  # the prompt exactly as generation encodes it
        assert all(mask[n:]) and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[n:-1]) == row.completion
    cut = encode_rows(tok, rows, None, len(enc.input_ids[0]) - 5)
    assert cut.truncated >= 1 and max(len(x) for x in cut.input_ids) == len(enc.input_ids[0]) - 5
    assert encode_rows(tok, rows, None, 5).dropped == 3


def test_completion_only_loss_matches_our_cross_entropy(tmp_path):
    """TRL's first logged loss (before any update) = token-mean CE over completion tokens only, as we compute it."""
    from enigma_cli.models.loading import load_model
    from enigma_cli.models.rollout import encode_prompts
    from enigma_cli.prompts import render_prompt
    from enigma_cli.sft.run import _quiet, _trainer

    cfg = SftConfig(rows=4, batch_size=4, steps=1, eval_prompts=0, device="cpu", lr=1e-9,
                    output_dir=str(tmp_path / "o"))
    p = plan(cfg)
    lm = load_model("enigma-tiny", device="cpu")
    rows, _ = load_rows(cfg)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, row in zip(p.encoded.input_ids, rows):
            n_prompt = len(encode_prompts(lm.tokenizer, [render_prompt(lm.tokenizer, None, row.question)])[0])
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, :-1]
            keep = torch.arange(1, len(ids)) >= n_prompt  # targets that are completion tokens
            target = torch.tensor(ids[1:])
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
            total += nll[keep].sum().item()
            count += int(keep.sum())
    with _quiet():
        trainer = _trainer(p, lm.model, lm.tokenizer, tmp_path / "w")
        labels = trainer.train_dataset["labels"]
        trainer.train()
    for lab, mask in zip(labels, p.encoded.completion_mask):
        assert [x == -100 for x in lab] == [m == 0 for m in mask]
    first = trainer.state.log_history[0]["loss"]
    assert first == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("dtype, bf16", [("float32", False), ("bf16-mixed", True)])
def test_the_warm_up_autocasts_exactly_when_the_loaded_model_does(dtype, bf16, tmp_path):
    """--dtype bf16-mixed (or auto on a bf16 CPU) marks the model; TRL's bf16 (accelerate's CPU autocast) follows
    it, so the warm-up trains in the precision it announced."""
    from enigma_cli.models.loading import load_model
    from enigma_cli.sft.run import _quiet, _trainer

    cfg = SftConfig(rows=4, batch_size=4, steps=1, eval_prompts=0, device="cpu", output_dir=str(tmp_path / "o"))
    lm = load_model("enigma-tiny", device="cpu", dtype=dtype)
    with _quiet():
        trainer = _trainer(plan(cfg), lm.model, lm.tokenizer, tmp_path / "w")
    assert trainer.args.bf16 is bf16


def test_default_lr_by_size():
    assert default_lr(700_000, False) == 1e-3 and default_lr(700_000, True) == 3e-3
    assert default_lr(135_000_000, False) == 2e-5 and default_lr(135_000_000, True) == 2e-4


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything loads model weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")
    monkeypatch.setattr(loading, "load_model", refuse)


def test_dry_run_prints_the_plan_and_loads_nothing(no_weights, tmp_path, capsys):
    rc, out, err = run(["sft", "--dry-run", "--output-dir", tmp_path / "o", "--steps", "3"], capsys)
    assert rc == 0 and out == ""
    assert "lr 0.001 (default for this size)" in " ".join(err.split()) and "3 steps" in err
    assert not (tmp_path / "o").exists()
    rc, _, err = run(["sft", "--dry-run", "--output-dir", tmp_path / "o", "--max-length", "90"], capsys)
    assert rc == 0 and "cut at --max-length 90" in " ".join(err.split())


@pytest.mark.slow
def test_sft_end_to_end_checkpoint_is_a_model(tmp_path, capsys):
    out = tmp_path / "warm"
    rc, stdout, err = run(["sft", "--steps", "2", "--batch-size", "4", "--output-dir", out, *FAST], capsys)
    assert rc == 0, err
    df = pd.read_csv(io.StringIO(stdout))
    assert list(df.columns) == COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert row["model"] == "enigma-tiny" and row["mode"] == "full" and row["steps"] == 2 and row["lr"] == 1e-3
    assert 0 <= row["format_rate_before"] <= 1 and 0 <= row["format_rate_after"] <= 1
    assert row["loss_first"] > 0 and row["output_dir"] == str(out)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "sft_config.yaml").is_file() and len(json.loads((out / "sft_losses.json").read_text())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # The checkpoint is a --model for evaluate and train.
    rc, ev, err = run(["evaluate", "--model", out, "--prompts", "2", "--samples", "1", "--max-new-tokens", "8",
                       "--device", "cpu"], capsys)
    assert rc == 0 and pd.read_csv(io.StringIO(ev)).iloc[0]["model"] == str(out), err
    rc, _, err = run(["train", "--model", out, "--dry-run", "--output-dir", tmp_path / "t"], capsys)
    assert rc == 0 and str(out) in " ".join(err.split()).replace(" ", ""), err
    # A finished run is not overwritten.
    rc, stdout, err = run(["sft", "--steps", "1", "--output-dir", out, *FAST], capsys)
    assert rc == 3 and stdout == "" and "finished" in err


@pytest.mark.slow
def test_sft_lora_adapter_and_merge(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    rc, stdout, err = run(["sft", "--steps", "1", "--batch-size", "2", "--lora-r", "2", "--output-dir", adapter,
                           *FAST], capsys)
    assert rc == 0, err
    row = pd.read_csv(io.StringIO(stdout)).iloc[0]
    assert row["mode"] == "lora-r2" and row["lr"] == 3e-3
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "enigma-tiny" and cfg["r"] == 2 and cfg["lora_alpha"] == 4
    assert not (adapter / "config.json").exists()
    assert loading.load_model(str(adapter), device="cpu").adapter == str(adapter.resolve())
    rc, _, err = run(["train", "--model", adapter, "--dry-run", "--output-dir", tmp_path / "t"], capsys)
    assert rc == 0, err
    # A second adapter on an adapter would not load on its base: refused unless merged.
    rc, stdout, err = run(["sft", "--model", adapter, "--lora-r", "2", "--output-dir", tmp_path / "x", *FAST],
                          capsys)
    assert rc == 3 and "--merge" in err
    merged = tmp_path / "merged"
    rc, stdout, err = run(["sft", "--steps", "1", "--batch-size", "2", "--lora-r", "2", "--merge", "--output-dir",
                           merged, *FAST], capsys)
    assert rc == 0 and (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists(), err


def test_config_file_and_typed_flags(no_weights, tmp_path, capsys):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("steps: 7\nbatch_size: 2\nlr: 0.0005\n")
    rc, _, err = run(["sft", "--config", cfg, "--batch-size", "3", "--dry-run", "--output-dir", tmp_path / "o"],
                     capsys)
    text = " ".join(err.split())
    assert rc == 0 and "7 steps × batch 3" in text and "lr 0.0005" in text and "default" not in text


# ------------------------------------------------------------------------------------------------ bad input


def _bad_cases_static():
    from pathlib import Path

    return _bad_cases(Path("/nonexistent-sft-test"), write=False)


def _bad_cases(tmp_path, write=True):
    finished, full, afile = tmp_path / "finished", tmp_path / "full", tmp_path / "afile"
    norat, unknown = tmp_path / "norat.jsonl", tmp_path / "bad.yaml"
    if write:
        finished.mkdir()
        (finished / "config.json").write_text("{}")
        full.mkdir()
        (full / "notes.txt").write_text("mine")
        afile.write_text("x")
        _jsonl(norat, [{"question": "Q", "answer": "1"}])
        unknown.write_text("stepz: 3\n")
    return {
        "steps": (["--steps", "-1"], "--steps"),
        "epochs": (["--epochs", "0"], "--epochs"),
        "batch-size": (["--batch-size", "0"], "--batch-size"),
        "grad-accum": (["--grad-accum", "0"], "--grad-accum"),
        "lr-zero": (["--lr", "0"], "--lr"),
        "lr-big": (["--lr", "2"], "--lr"),
        "lr-nan": (["--lr", "nan"], "--lr"),
        "warmup": (["--warmup-ratio", "1"], "--warmup-ratio"),
        "lora-r": (["--lora-r", "-1"], "--lora-r"),
        "lora-alpha": (["--lora-r", "2", "--lora-alpha", "0"], "--lora-alpha"),
        "alpha-no-lora": (["--lora-alpha", "4"], "--lora-alpha"),
        "merge-no-lora": (["--merge"], "--merge"),
        "max-length": (["--max-length", "0"], "--max-length"),
        "max-length-context": (["--max-length", "100000"], "context"),
        "max-length-prompt": (["--max-length", "8"], "--max-length"),
        "rows": (["--rows", "0"], "--rows"),
        "eval-prompts": (["--eval-prompts", "-1"], "--eval-prompts"),
        "eval-samples": (["--eval-samples", "0"], "--eval-samples"),
        "eval-tokens": (["--eval-max-new-tokens", "0"], "--eval-max-new-tokens"),
        "device": (["--device", "tpu"], "--device"),
        "dtype": (["--dtype", "int8"], "--dtype"),
        "principle": (["--principle", "  "], "--principle"),
        "model": (["--model", tmp_path / "nomodel"], "nomodel"),
        "dataset-missing": (["--dataset", tmp_path / "absent.jsonl"], "absent.jsonl"),
        "dataset-no-rationale": (["--dataset", norat], "rationale"),
        "question-col-synthetic": (["--question-column", "q"], "--question-column"),
        "choices-col": (["--dataset", norat, "--choices-column", "opts"], "--choices-column"),
        "answer-col": (["--dataset", norat, "--answer-column", "sol"], "--answer-column"),
        "rationale-col": (["--dataset", norat, "--rationale-column", "why"], "--rationale-column"),
        "out-finished": (["--output-dir", finished], "finished"),
        "out-not-empty": (["--output-dir", full], "not empty"),
        "out-file": (["--output-dir", afile], "file"),
        "config-key": (["--config", unknown], "stepz"),
        "config-missing": (["--config", tmp_path / "none.yaml"], "none.yaml"),
    }


CASES = ["steps", "epochs", "batch-size", "grad-accum", "lr-zero", "lr-big", "lr-nan", "warmup", "lora-r",
         "lora-alpha", "alpha-no-lora", "merge-no-lora", "max-length", "max-length-context", "max-length-prompt",
         "rows", "eval-prompts", "eval-samples", "eval-tokens", "device", "dtype", "principle", "model",
         "dataset-missing", "dataset-no-rationale", "question-col-synthetic", "choices-col", "answer-col",
         "rationale-col", "out-finished",
         "out-not-empty", "out-file", "config-key", "config-missing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_3_before_weights(case, no_weights, tmp_path, capsys):
    argv, culprit = _bad_cases(tmp_path)[case]
    if "--output-dir" not in argv:
        argv = [*argv, "--output-dir", tmp_path / "out"]
    rc, out, err = run(["sft", *argv], capsys)
    assert rc == 3, err
    assert out == ""
    assert culprit in " ".join(err.split()).replace(" ", "") or culprit in " ".join(err.split()), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_every_option_has_a_bad_input_case():
    import inspect

    from enigma_cli.commands.sft import sft

    options = {p.replace("_", "-") for p in inspect.signature(sft).parameters} - {"ctx", "dry-run"}
    covered = {a for argv, _ in _bad_cases_static().values() for a in argv if str(a).startswith("--")}
    assert {o for o in options if f"--{o}" not in covered} == {"seed"}  # any integer is a valid seed
