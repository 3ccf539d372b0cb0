"""bench/random_models.py: the random-weight model shapes that the GPU benchmarks use for throughput and MFU."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from random_models import PRESETS, model_folder


def test_a_json_shape_gets_its_own_head_dim_and_the_tokenizer_vocabulary(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
             "num_key_value_heads": 2}
    spec = tmp_path / "shape.json"
    spec.write_text(json.dumps(shape))
    folder = model_folder(str(spec), str(tmp_path))
    config = AutoConfig.from_pretrained(folder)
    for key, value in shape.items():
        assert getattr(config, key) == value, key
    assert config.head_dim == 64 // 4  # not enigma-tiny's 32, which a copied config would keep
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(folder))


def test_presets_have_whole_heads():
    for name, shape in PRESETS.items():
        assert shape["hidden_size"] % shape["num_attention_heads"] == 0, name
        assert shape["num_attention_heads"] % shape["num_key_value_heads"] == 0, name


def test_a_model_type_picks_the_architecture(tmp_path):
    """The Qwen2 presets build Qwen2 models (biased q/k/v projections), with enigma-tiny's token ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_folder("qwen2-mini", str(tmp_path)))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert model.config.num_key_value_heads == PRESETS["qwen2-mini"]["num_key_value_heads"]
    assert model.config.eos_token_id == 2 and model.config.vocab_size == 512
