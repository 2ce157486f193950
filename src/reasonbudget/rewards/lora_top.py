"""Low-rank adapters (LoRA, Hu et al. 2021) on the top blocks of a compact-runtime model, for a PRM head that
needs states the frozen model does not give: a head over frozen Qwen2.5-Coder features levelled off at step
AUROC 0.62-0.66 however many labels it saw (`benchmarks/prm_curve.py`).

The base model runs as usual; the hidden state entering block L - k is read, and the top k blocks run again
on it without the KV cache, through the runtime's own `Block.forward`, with every linear adapted:
y = x W^T + (alpha / r) (x A^T) B^T. B starts at zero, so an untrained adapter gives the base model's own final
(normed) state. Only A and B train; the base weights stay frozen and shared with the base model, and the adapted
blocks are twins of the base's that share everything but their four linears.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reasonbudget.models.cache import RowSelection
from reasonbudget.models.llama import Transformer, rms_norm

ADAPTED = ("wqkv", "wo", "w_gate_up", "w_down")


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        if not hasattr(base, "weight") or base.weight is None:
            raise ValueError("LoRA adapters need dense base weights: load the base model without --quant")
        out_features, in_features = base.weight.shape
        self._base = (base,)  # a tuple: the frozen base is not a submodule, so state_dict holds the adapter only
        self.a = nn.Parameter(torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        base = self._base[0]
        y = F.linear(x, base.weight, base.bias)  # unpacked: the packed CPU kernels have no backward
        return y + (F.linear(F.linear(x.to(self.a.dtype), self.a), self.b) * self.scale).to(y.dtype)


class _UncachedKV:
    """What `Block.forward` needs of a KV cache for one forward from position 0: the keys and values it wrote.
    Kept per layer as computed, so autograd sees no in-place writes."""

    def __init__(self, rows: int, length: int) -> None:
        self.lengths = torch.zeros(rows, dtype=torch.long)
        self.capacity = length
        self._kv: dict[int, tuple[Tensor, Tensor]] = {}

    def write(self, layer: int, sel: RowSelection, k: Tensor, v: Tensor) -> None:
        self._kv[layer] = (k, v)

    def read(self, layer: int, sel: RowSelection) -> tuple[Tensor, Tensor]:
        return self._kv[layer]


class LoraTop(nn.Module):
    """Adapters on the top `k` blocks of `backend`; `forward` maps the states entering block L - k to adapted final
    states."""

    def __init__(self, backend: Transformer, k: int, rank: int, alpha: float, *, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(backend, Transformer):
            raise ValueError("LoRA-tuned PRM heads need the compact runtime (Llama, Mistral, Qwen2, Qwen3 models)")
        num_layers = backend.cfg.num_layers
        if not 1 <= k <= num_layers or rank < 1:
            raise ValueError(f"tuned layers {k} must be in [1, {num_layers}] and the LoRA rank >= 1 (got {rank})")
        self.k, self.start = k, num_layers - k
        self._backend = (backend,)
        g = torch.Generator().manual_seed(seed)
        self.adapters = nn.ModuleDict()
        self._blocks = []
        for block in backend.layers[self.start :]:
            twin = copy.copy(block)
            twin._modules = dict(block._modules)  # its own module table: the base block keeps its linears
            for name in ADAPTED:
                twin._modules[name] = self.adapters[f"{block.index}_{name}"] = LoraLinear(
                    block._modules[name], rank, alpha, g)
            self._blocks.append(twin)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, d], the states entering block L - k at positions 0..T-1 (rows padded on the right: attention
        is causal, so padding never reaches a real position) -> [B, T, d] final normed states."""
        backend = self._backend[0]
        kv = _UncachedKV(x.shape[0], x.shape[1])
        sel = RowSelection(kv, torch.arange(x.shape[0]), x.shape[1], x.device)
        cos, sin = backend.rope(sel)
        for block in self._blocks:
            x = block(x, kv, sel, cos, sin)
        return rms_norm(x, backend.norm, backend.cfg.rms_norm_eps)
