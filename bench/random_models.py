"""Models for the benchmarks: the shipped enigma-tiny, or a randomly initialised model of a given shape.

``--model-config`` takes a preset name (:data:`PRESETS`) or a JSON file of config fields; a ``model_type``
field picks the architecture (default ``llama``; e.g. ``qwen2``: biased q/k/v projections). The model is
built from random weights (seeded) and saved once to a temporary folder with enigma-tiny's tokenizer, so that
enigma and the peer load the very same weights, and throughput and MFU can be measured on a GPU without
downloading anything. The vocabulary is the tokenizer's (512 entries): the parameter count N printed (and used
for MFU) is that of the built model, so it leaves out the large embedding a real checkpoint of that shape has.
"""

from __future__ import annotations

import json
from pathlib import Path

import enigma_cli

TINY_DIR = Path(enigma_cli.__file__).parent / "data" / "enigma-tiny"

#: Presets: enigma-tiny's, SmolLM2-135M's and Llama-3.2-1B's transformer shapes (Llama), Qwen2-0.5B's (Qwen2),
#: and a small Qwen2 that a CPU samples from in seconds. A random enigma-tiny-shaped model almost never samples
#: EOS, so its completions run to the length cap.
PRESETS: dict[str, dict] = {
    "enigma-tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "num_key_value_heads": 4},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8},
    "qwen2-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2},
    "qwen2-mini": {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8,
                   "num_attention_heads": 8, "num_key_value_heads": 2},
}

#: Dense bf16 peak TFLOP/s used for MFU when --peak-tflops is not given (vendor figures, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def add_model_arguments(parser) -> None:
    """``--model``/``--model-config``/``--device``/``--dtype`` as the sampler and reader benches take them."""
    parser.add_argument("--model", default="enigma-tiny", help="an enigma model spec (enigma-tiny, smollm2, a folder)")
    parser.add_argument("--model-config", default=None, help="a random-weight preset of bench/random_models.py instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")


def model_folder(spec: str | None, tmp: str, seed: int = 0) -> Path:
    """enigma-tiny's folder when `spec` is None, else a folder holding a random model of that shape."""
    if spec is None:
        return TINY_DIR
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    fields = PRESETS.get(spec)
    if fields is None:
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"--model-config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file.")
        fields = json.loads(path.read_text())
    fields = dict(fields)
    model_type = fields.pop("model_type", "llama")
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    tiny = LlamaConfig.from_pretrained(TINY_DIR).to_dict()
    # enigma-tiny's token ids, norms and rotary settings; its head_dim is its own (a shape's is hidden / heads)
    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps", "tie_word_embeddings",
            "max_position_embeddings", "rope_parameters", "hidden_act")
    base = {key: tiny[key] for key in keep if key in tiny}
    base.update(fields)
    base["vocab_size"] = len(tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **base))
    out = Path(tmp) / f"random-{Path(spec).stem}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def peak_tflops(device: str, given: float | None) -> float | None:
    """--peak-tflops, else a known GPU's dense bf16 peak, else None (no MFU on CPU)."""
    if given is not None:
        return given
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
