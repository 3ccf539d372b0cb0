"""`enigma sft --model` takes an adapter whose base is an adapter (a LoRA `train` checkpoint started from an `sft`
LoRA adapter), as `load_model` does: its plan read only one level and failed on the inner adapter's folder."""

from __future__ import annotations

import copy
from pathlib import Path

from enigma_cli.cli import main


def _adapter(model, base: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(model)
    model.name_or_path = model.config.name_or_path = str(base)  # what peft records as the adapter's base
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


def test_sft_plans_on_an_adapter_of_an_adapter(tiny_lm, model_dir, tmp_path, capsys):
    inner = _adapter(tiny_lm[0], model_dir, tmp_path / "sft-adapter")
    outer = _adapter(tiny_lm[0], inner, tmp_path / "train-checkpoint")
    argv = ["sft", "--model", str(outer), "--eval-prompts", "2", "--rows", "4", "--dry-run"]
    rc = main([*argv, "--output-dir", str(tmp_path / "full")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "full fine-tuning" in cap.err
    # a second LoRA on an adapter is refused for the same reason as on a one-level adapter, not for an unreadable config
    rc = main([*argv, "--lora-r", "4", "--output-dir", str(tmp_path / "lora")])
    assert rc == 3 and "is a LoRA adapter" in capsys.readouterr().err
