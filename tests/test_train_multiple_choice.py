"""Training prompts carry a multiple-choice row's options, as every other command's prompts do.

`load_examples` finds a `choices`/`options` column by itself, so `enigma train --dataset mcq.jsonl` reads
options and a letter answer; the prompt must then show the options (`Example.prompt_text`), not the bare question.
"""

from __future__ import annotations

import pytest

from enigma_cli.datasets import Example
from enigma_cli.principles import load_principle_set
from enigma_cli.train.config import TrainConfig

QUESTION = "Which number is larger?"
EXAMPLE = Example(QUESTION, "B", None, ("three", "seventeen"))


def test_native_rollout_prompts_show_the_options(tiny_lm, tmp_path):
    from enigma_cli.train.episodes import collect
    from enigma_cli.train.params import rollout_from_train_config

    model, tokenizer = tiny_lm
    cfg = TrainConfig(prompts_per_step=1, group_size=2, max_new_tokens=2, device="cpu",
                      output_dir=str(tmp_path / "run"))
    ep = collect(model, tokenizer, [EXAMPLE], load_principle_set(cfg.principles), rollout_from_train_config(cfg),
                 step=1)
    text = tokenizer.decode(ep.prompt_ids[0])
    assert QUESTION in text and "A) three" in text and "B) seventeen" in text


def test_trl_backend_questions_show_the_options(tiny_lm, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    import torch

    from enigma_cli.models.loading import LoadedModel
    from enigma_cli.train.folder import RunFolder, Start
    from enigma_cli.trl import backend

    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, train_dataset=None, **kwargs):
        seen["questions"] = list(train_dataset["question"])
        raise Stop

    monkeypatch.setattr(backend, "EnigmaGRPOTrainer", capture)
    model, tokenizer = tiny_lm
    lm = LoadedModel(model, tokenizer, "tiny", "tiny", torch.device("cpu"), torch.float32)
    cfg = TrainConfig(backend="trl", prompts_per_step=1, group_size=4, max_new_tokens=2, device="cpu",
                      lora_r=0, lr=1e-4, output_dir=str(tmp_path / "run"))
    with pytest.raises(Stop):
        backend.train_trl(cfg, load_principle_set(cfg.principles), [EXAMPLE], lm, Start(None, 0), RunFolder(cfg))
    assert seen["questions"] == [EXAMPLE.prompt_text]


def test_the_trl_backend_autocasts_when_the_loaded_model_does(tiny_lm, tmp_path, monkeypatch):
    """--dtype auto chose bf16-mixed for the loaded model (LoadedModel.autocast): TRL's bf16 (accelerate's CPU
    autocast) is on, though the option itself says auto."""
    pytest.importorskip("trl")
    import torch

    from enigma_cli.models.loading import LoadedModel
    from enigma_cli.train.folder import RunFolder, Start
    from enigma_cli.trl import backend

    class Stop(Exception):
        pass

    def capture(*args, args_=None, **kwargs):
        seen.append(kwargs["args"].bf16)
        raise Stop

    seen = []
    monkeypatch.setattr(backend, "EnigmaGRPOTrainer", capture)
    model, tokenizer = tiny_lm
    cfg = TrainConfig(backend="trl", prompts_per_step=1, group_size=4, max_new_tokens=2, device="cpu",
                      lora_r=0, lr=1e-4, output_dir=str(tmp_path / "run"))
    for autocast in (None, torch.bfloat16):
        lm = LoadedModel(model, tokenizer, "tiny", "tiny", torch.device("cpu"), torch.float32, autocast=autocast)
        with pytest.raises(Stop):
            backend.train_trl(cfg, load_principle_set(cfg.principles), [EXAMPLE], lm, Start(None, 0), RunFolder(cfg))
    assert seen == [False, True]
