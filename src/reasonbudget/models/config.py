"""Architecture hyper-parameters of the Llama-family decoders (Llama, Qwen2, Qwen3)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Architecture = Literal["llama", "qwen2", "qwen3"]
ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: Architecture
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    """None, or {"rope_type": "llama3" | "linear", ...} as in HF configs."""
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    """Qwen2 has a bias on the q/k/v projections."""
    qk_norm: bool = False
    """Qwen3 applies RMSNorm to each head of q and k before RoPE."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}: supported are {', '.join(ARCHITECTURES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ("default", "llama3", "linear"):
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported (default, llama3, linear)")

    @property
    def num_params(self) -> int:
        d, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        qkv = d * self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
        per_layer = qkv + self.num_heads * self.head_dim * d + 3 * d * i + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_layers * per_layer + d + head

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """From an HF `config.json` dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
        model_type = cfg.get("model_type", "llama")
        arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(model_type)
        if arch is None:
            raise ValueError(f"model_type {model_type!r} is not a Llama-family decoder")
        rope = dict(cfg.get("rope_parameters") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = rope or cfg.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
        if scaling and "rope_type" not in scaling:
            scaling = {**scaling, "rope_type": scaling["type"]}
        heads = cfg["num_attention_heads"]
        return cls(
            arch=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            qk_norm=arch == "qwen3",
        )


def rope_inv_freq(cfg: ModelConfig) -> list[float]:
    """Inverse RoPE frequencies, with Llama-3 or linear scaling applied."""
    d = cfg.head_dim
    inv = [1.0 / cfg.rope_theta ** (2 * i / d) for i in range(d // 2)]
    s = cfg.rope_scaling or {}
    kind = s.get("rope_type", "default")
    if kind == "linear":
        return [f / s["factor"] for f in inv]
    if kind != "llama3":
        return inv
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate smoothly in between.
    factor, lo, hi = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s.get("original_max_position_embeddings", 8192)
    lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < hi_wavelen:
            out.append(f)
        elif wavelen > lo_wavelen:
            out.append(f / factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out
