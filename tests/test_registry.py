"""Model names, paths and profiles."""

import pytest

from reasonbudget.models import INSTRUCT, THINKING, ModelNotFoundError
from reasonbudget.models.config import ModelConfig
from reasonbudget.models.registry import _profile_for, resolve
from tests.helpers import char_tokenizer


def test_unknown_name_lists_available_models():
    with pytest.raises(ModelNotFoundError, match="Available models: smollm2-135m"):
        resolve("gpt-17")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve(str(tmp_path))


def test_non_gguf_file_is_rejected(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=".gguf"):
        resolve(str(f))


def test_embedded_default_resolves():
    assert resolve("smollm2-135m").suffix == ".gguf"


def test_profile_detection_from_tokenizer():
    assert _profile_for(char_tokenizer(), None) is THINKING  # has a </think> token
    assert _profile_for(char_tokenizer(), "instruct") is INSTRUCT


def test_hf_config_parsing_transformers_4_and_5_rope_styles():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1)
    old = ModelConfig.from_hf({**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    new = ModelConfig.from_hf({**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert old == new and old.rope_theta == 5e5 and old.rope_scaling["rope_type"] == "llama3"
    with pytest.raises(ValueError, match="not a Llama-family"):
        ModelConfig.from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_scaling type"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
