import pytest

from tests.helpers import char_tokenizer, tiny_hf_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random Qwen3 thinking model with a character tokenizer: sweeps over it take seconds."""
    path = tmp_path_factory.mktemp("tiny-eval-model")
    hf = tiny_hf_model("qwen3", seed=21)
    hf.config.max_position_embeddings = 4096
    hf.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return str(path)
