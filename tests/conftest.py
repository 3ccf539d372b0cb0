"""Shared fixtures: a random-init tiny Llama built in-process, and the shipped enigma-tiny (skipped if not built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import enigma_cli

# One intra-op thread for the whole suite: the models are tiny, so threads buy little, and on a busy 2-core
# machine two OpenMP threads per process made a tiny training step 10-30x slower than one. It also makes
# results independent of the machine's core count.
torch.set_num_threads(1)

ENIGMA_TINY_DIR = Path(enigma_cli.__file__).parent / "data" / "enigma-tiny"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may touch the network: the hub is reachable neither here nor in CI."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_lm():
    """(model, tokenizer): a randomly initialised ~0.7M-parameter Llama and its BPE tokenizer, seed 0.

    Session-scoped: tests must not train it in place; deep-copy the model first (`copy.deepcopy`).
    """
    from enigma_cli.models.tiny import make_tiny_lm

    return make_tiny_lm(seed=0)


@pytest.fixture(scope="session")
def enigma_tiny():
    """(model, tokenizer): the shipped, pre-trained enigma-tiny, loaded offline; skip when it is not built."""
    if not (ENIGMA_TINY_DIR / "model.safetensors").exists():
        pytest.skip(f"enigma-tiny is not built at {ENIGMA_TINY_DIR} (run `enigma build-default-model`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ENIGMA_TINY_DIR, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(ENIGMA_TINY_DIR, local_files_only=True)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def model_dir(tiny_lm, tmp_path_factory) -> Path:
    """The random-init `tiny_lm` saved as a Hugging Face folder, for commands that take `--model PATH`."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
