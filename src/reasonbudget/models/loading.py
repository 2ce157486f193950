"""Weights into the compact runtime: HF safetensors directories and GGUF files (dequantized).

Both sources are first mapped to HF parameter names, then fused into the runtime's layout, so there is one
path from HF names to `Transformer` whatever the file format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reasonbudget.models.config import ModelConfig, rope_inv_freq
from reasonbudget.models.llama import Transformer

logger = logging.getLogger(__name__)

HFState = dict[str, Tensor]


def read_safetensors_dir(path: Path) -> tuple[dict[str, Any], HFState]:
    """config.json and every *.safetensors shard of an HF checkpoint directory."""
    from safetensors.torch import load_file

    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    state: HFState = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    return json.loads((path / "config.json").read_text()), state


# GGUF tensor names -> HF names ("{i}" is the layer index).
_GGUF_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp stores Llama q/k rows interleaved per head (GPT-J rope); back to HF's rotate-half order."""
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_heads, out // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: Path) -> tuple[dict[str, Any], HFState]:
    """An HF-style config dict and HF-named float32 tensors from a GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"{path.name}: GGUF architecture {arch!r} is not supported (llama, qwen2, qwen3)")
    g = lambda key, default=None: meta.get(f"{arch}.{key}", default)  # noqa: E731
    heads, kv_heads = g("attention.head_count"), g("attention.head_count_kv", g("attention.head_count"))
    hidden = g("embedding_length")
    state: HFState = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        parts = t.name.split(".")
        if parts[0] == "blk":
            i, kind, suffix = parts[1], parts[2], parts[3]
            if kind not in _GGUF_NAMES:
                continue
            if arch == "llama" and kind in ("attn_q", "attn_k"):
                w = _unpermute(w, heads if kind == "attn_q" else kv_heads)
            state[f"model.layers.{i}.{_GGUF_NAMES[kind]}.{suffix}"] = torch.from_numpy(np.ascontiguousarray(w))
        elif t.name in ("token_embd.weight", "output_norm.weight", "output.weight"):
            name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                    "output.weight": "lm_head.weight"}[t.name]
            state[name] = torch.from_numpy(np.ascontiguousarray(w))
    rope: dict[str, Any] = {}
    if g("rope.scaling.type") == "linear":
        rope = {"rope_type": "linear", "factor": g("rope.scaling.factor")}
    config = {
        "model_type": arch,
        "vocab_size": state["model.embed_tokens.weight"].shape[0],
        "hidden_size": hidden,
        "intermediate_size": g("feed_forward_length"),
        "num_hidden_layers": g("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": g("attention.key_length", hidden // heads),
        "rms_norm_eps": g("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": g("rope.freq_base", 10000.0),
        "rope_scaling": rope or None,
        "max_position_embeddings": g("context_length", 4096),
        "tie_word_embeddings": "lm_head.weight" not in state,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in state,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if arch == "llama" and "rope_freqs.weight" in {t.name for t in reader.tensors}:
        logger.warning("%s: llama3 rope_freqs tensor present but no scaling metadata is read; "
                       "long-context positions may differ from the original model", path.name)
    return config, state


def to_runtime_state(cfg: ModelConfig, hf: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF parameter names -> the fused runtime layout (qkv and gate/up concatenated)."""
    out: dict[str, Tensor] = {"embed": hf["model.embed_tokens.weight"], "norm": hf["model.norm.weight"]}
    out["lm_head.weight"] = hf["model.embed_tokens.weight"] if cfg.tie_word_embeddings else hf["lm_head.weight"]
    for i in range(cfg.num_layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        out[f"layers.{i}.attn_norm"] = hf[p + "input_layernorm.weight"]
        out[f"layers.{i}.mlp_norm"] = hf[p + "post_attention_layernorm.weight"]
        out[f"layers.{i}.wqkv.weight"] = torch.cat([hf[a + f"{x}_proj.weight"] for x in "qkv"])
        if cfg.qkv_bias:
            out[f"layers.{i}.wqkv.bias"] = torch.cat([hf[a + f"{x}_proj.bias"] for x in "qkv"])
        out[f"layers.{i}.wo.weight"] = hf[a + "o_proj.weight"]
        if cfg.qk_norm:
            out[f"layers.{i}.q_norm"] = hf[a + "q_norm.weight"]
            out[f"layers.{i}.k_norm"] = hf[a + "k_norm.weight"]
        out[f"layers.{i}.w_gate_up.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        out[f"layers.{i}.w_down.weight"] = hf[p + "mlp.down_proj.weight"]
    return out


def build_transformer(cfg: ModelConfig, hf: Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", pack: bool = True, quant: str = "none") -> Transformer:
    """Instantiate without allocating placeholder weights (meta device), then adopt the loaded tensors;
    `quant` (int8 | int4) replaces the linears by weight-only quantized ones (`models.quant`)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    state = {k: v.to(device=device, dtype=dtype) for k, v in to_runtime_state(cfg, hf).items()}
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["embed"]  # one tensor, not two converted copies
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    model.inv_freq = torch.tensor(rope_inv_freq(cfg), dtype=torch.float32, device=device)
    model.quant_report = model.quantize(quant)
    if pack:
        model.pack_weights()
    return model.eval()
