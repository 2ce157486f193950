"""Generic `transformers` backend for architectures the compact runtime does not implement.

Fewer features and slower: it keeps token ids instead of keys/values and recomputes each row's whole prefix
on every forward. In exchange every cache operation (rollback, fork, reorder) works unchanged, because the
token cache is the same row table as the KV cache with one int64 "channel" holding the token id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reasonbudget.models.cache import KVCache, RowSelection
from reasonbudget.models.llama import ForwardOutput


class TokenCache(KVCache):
    def __init__(self, num_rows: int, capacity: int) -> None:
        super().__init__(num_layers=1, num_rows=num_rows, capacity=capacity, num_kv_heads=1, head_dim=1,
                         dtype=torch.long)


class HFBackend(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_params = sum(p.numel() for p in model.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_cache(self, num_rows: int, capacity: int) -> TokenCache:
        return TokenCache(num_rows, capacity)

    @torch.inference_mode()
    def forward(self, tokens: Tensor, cache: KVCache, rows: Tensor, *, logits_at: Tensor | None = None,
                hidden_layers: Sequence[int] = (), hidden_only: bool = False) -> ForwardOutput:
        # hidden_only: transformers runs every layer anyway; the logits come along
        sel = RowSelection(cache, rows, tokens.shape[1], torch.device("cpu"))
        cache.write(0, sel, tokens[:, None, :, None], tokens[:, None, :, None])
        prefix, _ = cache.read(0, sel)  # [R, 1, S, 1]; right-padded rows are fine under causal attention
        out = self.model(prefix[:, 0, :, 0].to(self.device), output_hidden_states=bool(hidden_layers))
        idx = sel.positions.to(self.device)  # [R, T]
        r = torch.arange(len(rows), device=self.device)[:, None]
        logits = out.logits[r, idx].float()  # [R, T, V]
        hidden = {i: out.hidden_states[i][r, idx] for i in hidden_layers}
        if logits_at is not None:
            logits = logits[r[:, 0], logits_at.to(self.device)]
        return ForwardOutput(logits=logits, hidden=hidden)


def load_hf_backend(path: Path, dtype: torch.dtype, device: str) -> tuple[HFBackend, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        config = json.loads((path / "config.json").read_text())
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        config = model.config.to_dict()
    return HFBackend(model.to(device).eval()), config
