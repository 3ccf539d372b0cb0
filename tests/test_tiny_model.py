"""The tiny Llama, its tokenizer and chat template, pre-training, the build command and the shipped enigma-tiny."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from enigma_cli.core.format_rewards import parse_completion
from enigma_cli.models.tiny import (
    ASSISTANT_TOKEN,
    END_TOKEN,
    ROLE_TOKENS,
    init_tiny_lm,
    make_tiny_lm,
    param_count,
    train_tokenizer,
)
from enigma_cli.pretrain import training as P
from enigma_cli.prompts import FORMAT_INSTRUCTION, render_prompt

SMALL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64",
         "--vocab-size", "300", "--examples", "64", "--steps", "3", "--batch-size", "8"]


# ------------------------------------------------------------------------------------ tokenizer and template


@pytest.mark.parametrize("text", [
    "What is (27 - 14) * 4?",
    "<reasoning>\nStep 1: 7 + 5 = 12\n</reasoning>\n<answer>\n12\n</answer>",
    "  leading spaces, tabs\tand unicode: héllo, 東京, 🙂\n\n",
    "",
])
def test_tokenizer_round_trips(tiny_lm, text):
    _, tok = tiny_lm
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_special_tokens_are_single_ids_and_digits_are_split(tiny_lm):
    _, tok = tiny_lm
    for token in [*ROLE_TOKENS, END_TOKEN, tok.pad_token, tok.bos_token]:
        assert tok(token, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(token)]
    assert tok.eos_token == END_TOKEN
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    assert tok.padding_side == "left"
    pieces = tok.convert_ids_to_tokens(tok("1234", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4"]


def test_chat_template_renders_the_prompt(tiny_lm):
    _, tok = tiny_lm
    prompt = render_prompt(tok, "Be brief.", "What is 2 + 3?")
    assert prompt == (f"<|system|>\nBe brief.\n{FORMAT_INSTRUCTION}{END_TOKEN}\n"
                      f"<|user|>\nWhat is 2 + 3?{END_TOKEN}\n{ASSISTANT_TOKEN}\n")
    ids = tok(prompt)["input_ids"]  # default add_special_tokens: no BOS is added
    assert ids[0] == tok.convert_tokens_to_ids("<|system|>")
    assert tok.decode(ids) == prompt
    # A finished assistant turn ends with EOS, so generation stops where training ended the completion.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert tok.apply_chat_template(chat, tokenize=False).endswith(f"{ASSISTANT_TOKEN}\nok{END_TOKEN}\n")
    assert render_prompt(tok, None, "q").startswith(f"<|system|>\n{FORMAT_INSTRUCTION}")


def test_tokenizer_training_is_deterministic_and_respects_vocab_size():
    texts = [f"Step {i}: {i} + {i * 3} = {i * 4}" for i in range(200)]
    a, b = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    assert 262 < len(a) <= 300
    with pytest.raises(ValueError):
        train_tokenizer(texts, vocab_size=100)


# ------------------------------------------------------------------------------------------------- the model


def test_make_tiny_lm_size_and_seed(tiny_lm):
    model, tok = tiny_lm
    n = param_count(model)
    assert 300_000 <= n <= 3_000_000
    assert model.config.tie_word_embeddings and model.config.model_type == "llama"
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    same = init_tiny_lm(tok, seed=0)
    other = init_tiny_lm(tok, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), same.parameters()))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_make_tiny_lm_takes_texts_and_config():
    texts = [f"<answer>\n{i * 7}\n</answer> apples and pencils" for i in range(100)]
    model, tok = make_tiny_lm(seed=1, texts=texts, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                              intermediate_size=64)
    assert len(tok) <= 300 and model.config.vocab_size == len(tok)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert "answer" in tok.get_vocab()  # merges come from the texts given
    assert not model.training


def test_init_leaves_global_rng_alone(tiny_lm):
    _, tok = tiny_lm
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    init_tiny_lm(tok, seed=0, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------------ pre-training


def test_loss_is_on_completion_tokens_only(tiny_lm):
    _, tok = tiny_lm
    a = P.encode_example(tok, "Be brief.", "What is 2 + 3?", "<reasoning>\n2 + 3 = 5\n</reasoning>")
    b = P.encode_example(tok, None, "Hi?", "<answer>\n5\n</answer>")
    batch = P.collate([a, b], tok.pad_token_id)
    for row, (ids, n_prompt) in enumerate([a, b]):
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == -100).all() and (labels[len(ids):] == -100).all()
        assert labels[n_prompt: len(ids)].tolist() == ids[n_prompt:]
        assert ids[-1] == tok.eos_token_id
        assert batch["attention_mask"][row].sum() == len(ids)
    prompt = render_prompt(tok, "Be brief.", "What is 2 + 3?")
    assert a[0][: a[1]] == tok(prompt, add_special_tokens=False)["input_ids"]


def test_pretraining_lowers_the_loss_on_a_fixed_batch(tiny_lm):
    _, tok = tiny_lm
    model = init_tiny_lm(tok, seed=0, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    rows = P.noisy_training_examples(16, seed=3)
    batch = P.collate([P.encode_example(tok, r["principle_text"], r["question"], r["completion"]) for r in rows],
                      tok.pad_token_id)
    with torch.no_grad():
        before = P.completion_loss(model, batch).item()
    logged = []
    metrics = P.pretrain(model, tok, rows, steps=12, batch_size=8, lr=3e-3, seed=0,
                         log=lambda step, m: logged.append(step), log_every=5)
    with torch.no_grad():
        after = P.completion_loss(model, batch).item()
    assert after < before - 1.0, (before, after)
    assert metrics["steps"] == 12 and metrics["final_loss"] < metrics["first_loss"]
    assert logged == [0, 5, 10, 11]
    assert not model.training


def test_pretraining_is_deterministic(tiny_lm):
    _, tok = tiny_lm
    rows = P.noisy_training_examples(8, seed=0)
    weights = []
    for _ in range(2):
        model = init_tiny_lm(tok, seed=0, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        P.pretrain(model, tok, rows, steps=3, batch_size=4, seed=5)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*weights))


@pytest.mark.parametrize("defect", P.FORMAT_DEFECTS)
def test_format_defects_fail_the_strict_gate(defect):
    good = "<reasoning>\nStep 1: 2 + 3 = 5\nStep 2: 5 * 2 = 10\n</reasoning>\n<answer>\n10\n</answer>"
    assert parse_completion(good).strict
    bad = P.corrupt_format(good, defect)
    assert not parse_completion(bad).strict
    assert "10" in bad  # the answer is still there, only the layout is wrong


def test_noise_rates_and_styles():
    from enigma_cli.tasks import synthetic

    clean = P.noisy_training_examples(400, seed=1)
    assert all(parse_completion(r["completion"]).strict for r in clean)
    assert all(synthetic.detect_style(parse_completion(r["completion"]).reasoning)
               == synthetic.style_of(r["principle_id"]) for r in clean)
    noisy = P.noisy_training_examples(400, seed=1, format_noise=0.25, style_noise=0.5)
    assert [r["question"] for r in noisy] == [r["question"] for r in clean]
    bad_format = sum(not parse_completion(r["completion"]).strict for r in noisy) / len(noisy)
    off_style = sum(r["style"] != synthetic.style_of(r["principle_id"]) for r in noisy) / len(noisy)
    assert 0.15 < bad_format < 0.35 and 0.4 < off_style < 0.6
    for r in noisy:
        reasoning = parse_completion(r["completion"]).reasoning
        if r["format_defect"] is None:
            assert synthetic.detect_style(reasoning) == r["style"]


def test_evaluate_reports_every_metric(tiny_lm):
    model, tok = tiny_lm
    result = P.evaluate_default_model(model, tok, n=4, seed=0, max_new_tokens=4)
    for label in ("sampled", "greedy"):
        for key in ("format_rate", "soft_format_rate", "accuracy", "distinguishability"):
            assert 0.0 <= result[f"{label}_{key}"] <= 1.0
    assert result["n"] == 4 and result["chance_distinguishability"] == pytest.approx(1 / result["styles"])


# ---------------------------------------------------------------------------------------------- the build


def test_build_saves_a_folder_that_reloads_to_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, info = P.build_tiny_model(
        examples=32, steps=2, batch_size=8, lr=3e-3, seed=0, vocab_size=300, hidden_size=32, layers=1, heads=2,
        intermediate_size=64, format_noise=0.2, style_noise=0.3, eval_prompts=0)
    out = tmp_path / "m"
    P.save_model_dir(model, tok, out, extra_files={"build_info.json": json.dumps(info)})
    model2 = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok2 = AutoTokenizer.from_pretrained(out, local_files_only=True)
    prompt = render_prompt(tok2, "Show every step.", "What is 2 + 3?")
    assert tok2(prompt)["input_ids"] == tok(prompt)["input_ids"]
    assert tok2.padding_side == "left" and tok2.eos_token == END_TOKEN
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_save_is_atomic_on_failure(tiny_lm, tmp_path):
    model, tok = tiny_lm
    out = tmp_path / "m"
    out.mkdir()
    (out / "marker").write_text("old")

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError):
        P.save_model_dir(model, Broken(), out)
    assert (out / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    P.save_model_dir(model, tok, out)  # a successful save replaces the old folder as a whole
    assert not (out / "marker").exists() and (out / "model.safetensors").exists()


def test_build_command_reproduces_a_working_model(tmp_path, capsys):
    from enigma_cli.cli import main

    outs = [tmp_path / "a", tmp_path / "b"]
    for out, eval_prompts in zip(outs, ("2", "0")):
        assert main(["build-default-model", "--out", str(out), *SMALL, "--eval-prompts", eval_prompts]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()  # one CSV (header + one row) per run
    assert len(stdout) == 4 and "sampled_format_rate" in stdout[0].split(",")
    assert len(stdout[1].split(",")) == len(stdout[0].split(",")) and stdout[1].startswith(str(outs[0]))
    for out in outs:
        assert {"config.json", "model.safetensors", "tokenizer.json", "build_info.json"} <= {
            p.name for p in out.iterdir()}
    a, b = (load_file(out / "model.safetensors") for out in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((outs[0] / "build_info.json").read_text())
    assert info["seed"] == 0 and info["steps"] == 3 and info["examples"] == 64
    assert "sampled_format_rate" in info["eval"] and info["config"]["hidden_size"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_build_command_rejects_bad_options(tmp_path, capsys):
    from enigma_cli.cli import main

    assert main(["build-default-model", "--out", str(tmp_path / "x"), "--format-noise", "1.5"]) == 3
    assert main(["build-default-model", "--out", str(tmp_path / "x"), "--hidden-size", "30", "--heads", "4"]) == 3
    assert main(["build-default-model", "--out", str(tmp_path / "x"), "--dry-run"]) == 0
    assert not (tmp_path / "x").exists()
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------ the shipped enigma-tiny


def test_shipped_model_writes_the_format_greedily(enigma_tiny):
    from enigma_cli.tasks import synthetic

    model, tok = enigma_tiny
    assert model.config.model_type == "llama" and 300_000 <= param_count(model) <= 3_000_000
    problems = synthetic.generate_problems(4, seed=99, split="heldout")
    prompts = [render_prompt(tok, "Show every intermediate result on its own line.", p.question) for p in problems]
    texts = P.generate_completions(model, tok, prompts, temperature=0.0)
    assert sum(parse_completion(t).strict for t in texts) >= 3, texts


def test_shipped_model_leaves_room_for_training():
    from enigma_cli.pretrain.config import default_out

    path = default_out() / "build_info.json"
    if not path.exists():
        pytest.skip("enigma-tiny is not built")
    metrics = json.loads(path.read_text())["eval"]
    assert 0.5 <= metrics["sampled_format_rate"] < 0.95
    assert metrics["sampled_accuracy"] < 0.9
    assert metrics["chance_distinguishability"] < metrics["sampled_distinguishability"] < 0.95
