"""Test doubles: a character tokenizer, tiny random HF decoders, and a scripted backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from reasonbudget.models.cache import KVCache, RowSelection
from reasonbudget.models.config import ModelConfig
from reasonbudget.models.hf_fallback import TokenCache
from reasonbudget.models.llama import ForwardOutput
from reasonbudget.models.loading import build_transformer
from reasonbudget.models.profiles import THINKING, ReasoningProfile
from reasonbudget.models.registry import LoadedModel

SPECIAL = ["<eos>", "<think>", "</think>"]
CHARS = [chr(i) for i in range(32, 127)] + ["\n"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("<think>|</think>|<eos>|[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    return tok


VOCAB = len(SPECIAL) + len(CHARS)


def tiny_hf_model(arch: str, *, tie: bool = False, seed: int = 0, rope_scaling: dict | None = None) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tie, rms_norm_eps=1e-6, eos_token_id=0, pad_token_id=0)
    if rope_scaling:
        common["rope_parameters"] = {"rope_theta": 10000.0, **rope_scaling}
    cls, cfg_cls = {
        "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
        "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config),
        "qwen3": (transformers.Qwen3ForCausalLM, transformers.Qwen3Config),
    }[arch]
    if arch == "qwen3":
        common["head_dim"] = 16
    model = cls(cfg_cls(**common)).eval()
    with torch.no_grad():  # random norms/biases so that every weight matters in parity checks
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def runtime_from_hf(hf: nn.Module, *, profile: ReasoningProfile = THINKING, pack: bool = True,
                    name: str = "tiny") -> LoadedModel:
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    model = build_transformer(cfg, dict(hf.state_dict()), pack=pack)
    return LoadedModel(name, model, char_tokenizer(), profile, cfg.num_params, cfg.max_position_embeddings,
                       frozenset({0}))


class ScriptedBackend(nn.Module):
    """Logits that put (almost) all mass on policy(prefix): deterministic, readable engine tests."""

    def __init__(self, policy: Callable[[Sequence[int]], int], vocab: int = VOCAB) -> None:
        super().__init__()
        self.policy, self.vocab = policy, vocab
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def new_cache(self, num_rows: int, capacity: int) -> KVCache:
        return TokenCache(num_rows, capacity)

    def forward(self, tokens: Tensor, cache: KVCache, rows: Tensor, *, logits_at: Tensor | None = None,
                hidden_layers: Sequence[int] = ()) -> ForwardOutput:
        sel = RowSelection(cache, rows, tokens.shape[1], self.device)
        cache.write(0, sel, tokens[:, None, :, None], tokens[:, None, :, None])
        prefix, _ = cache.read(0, sel)
        logits = torch.zeros(len(rows), tokens.shape[1], self.vocab)
        for r in range(len(rows)):
            for t in range(tokens.shape[1]):
                end = int(sel.positions[r, t]) + 1
                logits[r, t, self.policy(prefix[r, 0, :end, 0].tolist())] = 20.0
        if logits_at is not None:
            logits = logits[torch.arange(len(rows)), logits_at]
        return ForwardOutput(logits=logits, hidden={})


def scripted_model(policy: Callable[[Sequence[int]], int], profile: ReasoningProfile = THINKING) -> LoadedModel:
    return LoadedModel("scripted", ScriptedBackend(policy), char_tokenizer(), profile, 1000, 4096, frozenset({0}))


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package; their own imports resolve beside
    them)."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
