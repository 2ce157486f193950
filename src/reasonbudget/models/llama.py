"""Compact Llama-family decoder (Llama / Llama-3, Qwen2, Qwen3) over the engine's KV cache.

GQA, SwiGLU, RMSNorm, RoPE (rotate-half layout, as in HF checkpoints), optional qkv bias (Qwen2), per-head
q/k RMSNorm (Qwen3) and tied embeddings. q, k, v and gate, up are fused into one matmul each: fewer, larger
matmuls read the weights more efficiently in the memory-bound decode regime.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reasonbudget.models import native
from reasonbudget.models.cache import KVCache, RowSelection
from reasonbudget.models.config import ModelConfig, rope_inv_freq


class Linear(nn.Module):
    """y = x W^T (+ b). On CPU, `pack()` reorders W once into the layout oneDNN's kernels stream fastest: bf16 (on
    AMX/AVX-512) and fp32 weights of at least `ONEDNN_MIN_FP32` entries; results match F.linear up to summation
    order. Smaller fp32 weights stay with plain F.linear: oneDNN adds ~35 us per call, more than such a matmul
    costs. fp32 went through MKL's packed GEMM before; on an AMD EPYC (AVX2, 2 threads) oneDNN was 1.3x faster at
    one row and 3.2x at five (a target's pass over four drafted tokens) on Qwen2.5-1.5B's gate/up (7.4 against
    9.2 ms; 16.4 against 52.7), and F.linear beat MKL on the testbed's small shapes. MKL stays the fallback."""

    ONEDNN_MIN_FP32 = 1 << 20
    NATIVE_MAX_ROWS = 8
    """Up to this many rows, a float32 weight goes through `native.f32_matmul` on AVX2-only CPUs: it streams the
    weight once for all rows, where oneDNN's cost doubled from one row to two (Qwen2.5-0.5B's gate/up, 2 threads:
    1.8 against 3.7 ms at two rows, 2.9 against 4.4 at eight; one row 1.5 against 1.9). At 16 rows they tie."""
    NATIVE_MAX_ROWS_AVX512 = 1
    """With AVX-512, oneDNN's few-row kernel is the faster one beyond one row (Qwen2.5-1.5B float32 forward on a
    Zen 4 EPYC, 2 threads: 5 tokens 287 ms with one native row against 393 with eight; 1 token 201 against 216 ms
    with none)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._packed: Tensor | None = None
        self._kind = ""
        self._native_rows = 0

    def pack(self) -> None:
        w = self.weight.data
        self._packed, self._kind = None, ""
        native_ok = (w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous()
                     and w.shape[1] % 8 == 0 and native.available())
        avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        self._native_rows = (self.NATIVE_MAX_ROWS_AVX512 if avx512 else self.NATIVE_MAX_ROWS) if native_ok else 0
        small_fp32 = w.dtype == torch.float32 and w.numel() < self.ONEDNN_MIN_FP32
        if w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float32) or small_fp32:
            return
        kernels = []
        if torch.backends.mkldnn.is_available():
            kernels.append(("mkldnn", torch.ops.mkldnn._reorder_linear_weight))
        if w.dtype == torch.float32 and torch.backends.mkl.is_available():
            kernels.append(("mkl", torch.ops.mkl._mkl_reorder_linear_weight))
        for kind, reorder in kernels:
            try:
                self._packed, self._kind = reorder(w, 1), kind
                return
            except RuntimeError:  # e.g. oneDNN's bf16 path needs AVX-512 or AVX-NE-CONVERT: the next, else F.linear
                continue

    def forward(self, x: Tensor) -> Tensor:
        if (x.numel() <= self._native_rows * x.shape[-1] and x.dtype == torch.float32
                and x.device.type == "cpu" and not torch.is_grad_enabled()):
            return native.f32_matmul(x.reshape(-1, x.shape[-1]), self.weight, self.bias).reshape(*x.shape[:-1], -1)
        if self._kind == "mkldnn":
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
        if self._kind == "mkl":
            y = torch.ops.mkl._mkl_linear(x.reshape(-1, x.shape[-1]), self._packed, self.weight, self.bias, 1)
            return y.reshape(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """One fused op (statistics in float32 inside the kernel) instead of seven small ones per call."""
    return F.rms_norm(x, weight.shape, weight, eps)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [R, H, T, D]; cos, sin: [R, 1, T, D]. Rotate-half layout (HF)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg, self.index = cfg, index
        d, hd = cfg.hidden_size, cfg.head_dim
        qkv_out = hd * (cfg.num_heads + 2 * cfg.num_kv_heads)
        self.attn_norm = nn.Parameter(torch.ones(d), requires_grad=False)
        self.wqkv = Linear(torch.zeros(qkv_out, d), torch.zeros(qkv_out) if cfg.qkv_bias else None)
        self.wo = Linear(torch.zeros(d, cfg.num_heads * hd))
        self.q_norm = nn.Parameter(torch.ones(hd), requires_grad=False) if cfg.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(hd), requires_grad=False) if cfg.qk_norm else None
        self.mlp_norm = nn.Parameter(torch.ones(d), requires_grad=False)
        self.w_gate_up = Linear(torch.zeros(2 * cfg.intermediate_size, d))
        self.w_down = Linear(torch.zeros(d, cfg.intermediate_size))

    def forward(self, x: Tensor, cache: KVCache, sel: RowSelection, cos: Tensor, sin: Tensor) -> Tensor:
        cfg = self.cfg
        R, T, _ = x.shape
        h = rms_norm(x, self.attn_norm, cfg.rms_norm_eps)
        H, Hkv = cfg.num_heads, cfg.num_kv_heads
        qkv = self.wqkv(h).view(R, T, H + 2 * Hkv, cfg.head_dim).transpose(1, 2)  # [R, H + 2 Hkv, T, D]
        qk, v = qkv[:, : H + Hkv], qkv[:, H + Hkv :]
        if self.q_norm is not None:
            qk = torch.cat([rms_norm(qk[:, :H], self.q_norm, cfg.rms_norm_eps),
                            rms_norm(qk[:, H:], self.k_norm, cfg.rms_norm_eps)], dim=1)
        qk = apply_rope(qk, cos, sin)  # q and k heads rotated in one go
        q, k = qk[:, :H], qk[:, H:]
        cache.write(self.index, sel, k, v)
        keys, values = cache.read(self.index, sel)  # [R, Hkv, S, D]
        if Hkv < H:
            # Grouped-query attention as plain attention: the query heads that share a KV head form one longer
            # query block, so K/V are read once per KV head. (SDPA's enable_gqa copies K/V per query head on CPU:
            # measured 8-15x slower at batch 64 and 500 positions, most of a batched decode step's time.)
            g = H // Hkv
            mask = sel.mask if T == 1 else sel.mask.repeat(1, 1, g, 1)
            o = F.scaled_dot_product_attention(q.reshape(R, Hkv, g * T, cfg.head_dim), keys, values,
                                               attn_mask=mask).reshape(R, H, T, cfg.head_dim)
        else:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=sel.mask)
        x = x + self.wo(o.transpose(1, 2).reshape(R, T, -1))
        gate, up = self.w_gate_up(rms_norm(x, self.mlp_norm, cfg.rms_norm_eps)).chunk(2, dim=-1)
        return x + self.w_down(F.silu(gate) * up)

    def decode_fused(self, x: Tensor, cache: KVCache, sel: RowSelection, cos: Tensor, sin: Tensor) -> Tensor:
        """`forward` for one new token per row, its small ops in `models.native` (norms, the attention with its
        RoPE and cache write, SwiGLU): ~10 calls instead of ~35 PyTorch ops. Where: `fused_decode_applies`."""
        cfg, R = self.cfg, x.shape[0]
        h = native.rms_norm(x, self.attn_norm, cfg.rms_norm_eps)
        o = native.attn_decode(self.wqkv(h).reshape(R, -1), heads=cfg.num_heads, kv_heads=cfg.num_kv_heads,
                               head_dim=cfg.head_dim, q_norm=self.q_norm, k_norm=self.k_norm, eps=cfg.rms_norm_eps,
                               cos=cos.reshape(R, -1), sin=sin.reshape(R, -1), k_cache=cache.k[self.index],
                               v_cache=cache.v[self.index], rows=sel.rows_dev, positions=sel.starts)
        x = x + self.wo(o.view(R, 1, -1))
        h = native.rms_norm(x, self.mlp_norm, cfg.rms_norm_eps)
        return x + self.w_down(native.silu_mul(self.w_gate_up(h)))


def fused_decode_applies(x: Tensor, cache: KVCache, head_dim: int) -> bool:
    """One new token per row, float32 CPU tensors, a real KV cache, no autograd (see `models.native`)."""
    return (x.shape[1] == 1 and not torch.is_grad_enabled()
            and fused_decode_supported(x.dtype, x.device, cache, head_dim))


def fused_decode_supported(dtype: torch.dtype, device: torch.device, cache: KVCache, head_dim: int) -> bool:
    """Whether one-token steps of a model in `dtype` on `device` over `cache` run on the fused kernels."""
    return (dtype == torch.float32 and device.type == "cpu" and type(cache) is KVCache
            and cache.k.dtype == torch.float32 and cache.k.is_contiguous() and head_dim % 8 == 0
            and native.available())


@dataclass(frozen=True)
class ForwardOutput:
    logits: Tensor | None  # [R, T, V], or [R, V] when logits_at was given; None for a hidden_only forward
    hidden: dict[int, Tensor]  # layer -> [R, T, d]; HF numbering: 0 = embeddings, num_layers = final norm


class Transformer(nn.Module):
    native_step = True
    """One-token steps of a float32 model whose block linears all run on our kernels go through every block in one
    C call (`native.decode_blocks`): the same ops as `Block.decode_fused`, equal bit for bit, without ~10 Python
    calls per block. False: block by block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        self.lm_head = Linear(torch.zeros(cfg.vocab_size, cfg.hidden_size))
        self.register_buffer("inv_freq", torch.tensor(rope_inv_freq(cfg), dtype=torch.float32), persistent=False)
        self.quant = "none"
        self._blocks: ctypes.Array | None | bool = False  # False: not built yet; None: not every linear is ours

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def tie_weights(self) -> None:
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed

    def quantize(self, quant: str) -> dict[str, int]:
        """Replace every linear (attention, MLP, LM head) by its weight-only quantized form (`models.quant`),
        quantized from the weights as loaded; the embedding table stays as it is (a lookup, not a matmul).
        Returns how many linears were quantized and how many kept their dtype (shapes no kernel takes)."""
        from reasonbudget.models.quant import check_quant, quantized_linear

        if check_quant(quant) == "none":
            return {"quantized": 0, "kept": 0}
        if self.device.type != "cpu":
            raise ValueError(f"quant={quant}: the quantized kernels used here run on CPU only (device {self.device})")
        done = kept = 0
        owners = [(blk, name) for blk in self.layers for name in ("wqkv", "wo", "w_gate_up", "w_down")]
        for owner, name in [*owners, (self, "lm_head")]:
            lin = getattr(owner, name)
            q = quantized_linear(lin.weight.data, None if lin.bias is None else lin.bias.data, quant, self.dtype)
            if q is None:
                kept += 1
                continue
            setattr(owner, name, q.to(self.device))
            done += 1
        self.quant = quant
        self._blocks = False
        return {"quantized": done, "kept": kept}

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ... may move the tensors the block specs point at
        self._blocks = False
        return super()._apply(fn, *args, **kwargs)

    def native_blocks(self) -> ctypes.Array | None:
        """Every block as `native.BlockSpec`, or None where a block linear does not run on our kernels."""
        if self._blocks is False:
            self._blocks = None
            specs = []
            for blk in self.layers:
                lins = [getattr(blk, n) for n in ("wqkv", "wo", "w_gate_up", "w_down")]
                lin_specs = [m.native_spec() if hasattr(m, "native_spec") else None for m in lins]
                norms = (blk.attn_norm, blk.mlp_norm, blk.q_norm, blk.k_norm)
                if any(sp is None for sp in lin_specs) or any(t is not None and t.dtype != torch.float32
                                                                 for t in norms):
                    return None
                specs.append(native.BlockSpec(*(None if t is None else t.data_ptr() for t in norms), *lin_specs))
            self._blocks = (native.BlockSpec * len(specs))(*specs)
        return self._blocks

    def pack_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, Linear):
                m.pack()

    def step_row_costs(self, cache: KVCache) -> tuple[int, int]:
        """What one more row costs a one-token step, in elements: (the weights its linears multiply, the keys and
        values per cached position it reads). The second is 0 where the step reads scattered rows in place (the
        fused kernels index cache rows; PyTorch's attention gathers them into a copy). The engine weighs the two
        to decide whether to feed a gappy range of rows whole (`Engine._step_forward`)."""
        c = self.cfg
        d, hd, heads = c.hidden_size, c.head_dim, c.num_heads + 2 * c.num_kv_heads
        block = d * hd * heads + c.num_heads * hd * d + 3 * c.intermediate_size * d  # wqkv, wo, gate/up, down
        weights = c.num_layers * block + c.vocab_size * d  # the lm_head too
        in_place = fused_decode_supported(self.dtype, self.device, cache, hd)
        return weights, 0 if in_place else c.num_layers * 2 * c.num_kv_heads * hd

    def new_cache(self, num_rows: int, capacity: int, *, blocks: int | None = None) -> KVCache:
        """`blocks`: K/V for the first this many blocks only, for hidden_only reads of layers up to it (a head on
        layer 21 of 28 keeps three quarters of the memory per row)."""
        c = self.cfg
        return KVCache(num_layers=c.num_layers if blocks is None else blocks, num_rows=num_rows, capacity=capacity,
                       num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, dtype=self.dtype, device=self.device)

    def rope(self, sel: RowSelection) -> tuple[Tensor, Tensor]:
        """cos, sin of the selected rows' new positions: [R, 1, T, D] each, in the model's dtype."""
        freqs = sel.positions_dev[:, None, :, None].float() * self.inv_freq  # [R, 1, T, D/2]
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos().to(self.dtype), freqs.sin().to(self.dtype)

    @torch.inference_mode()
    def forward(
        self,
        tokens: Tensor,  # [R, T]
        cache: KVCache,
        rows: Tensor,  # [R] host
        *,
        logits_at: Tensor | None = None,  # [R] index into T: only those positions get logits
        hidden_layers: Sequence[int] = (),
        hidden_only: bool = False,
    ) -> ForwardOutput:
        """Run `tokens` at positions cache.lengths[rows] + t. Writes K/V; does not advance the lengths.
        `hidden_only`: the caller reads hidden states only (a PRM head, a router, a probe): no logits, and the
        blocks above the highest layer asked for are skipped (a head on layer 21 of 28 saves a quarter of the
        forward), so those blocks' K/V in these rows are not written: such a cache serves hidden_only reads of
        the same layers only."""
        if hidden_only and not hidden_layers:
            raise ValueError("hidden_only needs hidden_layers")
        if any(not 0 <= i <= self.cfg.num_layers for i in hidden_layers):
            raise ValueError(f"hidden_layers {tuple(hidden_layers)}: each in 0..{self.cfg.num_layers} "
                             "(0 = embeddings, num_layers = the final norm)")
        depth = max(hidden_layers) if hidden_only else self.cfg.num_layers
        if cache.k.shape[0] < depth:
            raise ValueError(f"a cache of {cache.k.shape[0]} blocks' K/V serves hidden_only reads up to layer "
                             f"{cache.k.shape[0]}, not a forward through {depth} blocks")
        sel = RowSelection(cache, rows, tokens.shape[1], self.device)
        cos, sin = self.rope(sel)
        x = F.embedding(tokens.to(self.device), self.embed)
        hidden: dict[int, Tensor] = {}
        if 0 in hidden_layers:
            hidden[0] = x
        fused = fused_decode_applies(x, cache, self.cfg.head_dim)  # decided once per forward, not per layer
        inner = any(0 < i < self.cfg.num_layers for i in hidden_layers)
        blocks = self.native_blocks() if fused and self.native_step and not inner else None
        if blocks is not None:
            c, r = self.cfg, x.shape[0]
            x = native.decode_blocks(x.reshape(r, -1), blocks, heads=c.num_heads, kv_heads=c.num_kv_heads,
                                     head_dim=c.head_dim, intermediate=c.intermediate_size, eps=c.rms_norm_eps,
                                     cos=cos.reshape(r, -1), sin=sin.reshape(r, -1), k_cache=cache.k,
                                     v_cache=cache.v, rows=sel.rows_dev, positions=sel.starts).view(r, 1, -1)
        for i, layer in enumerate(self.layers[:depth] if blocks is None else ()):
            x = layer.decode_fused(x, cache, sel, cos, sin) if fused else layer(x, cache, sel, cos, sin)
            if i + 1 in hidden_layers and i + 1 < self.cfg.num_layers:
                hidden[i + 1] = x
        if depth < self.cfg.num_layers:
            return ForwardOutput(logits=None, hidden=hidden)
        x = rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        if self.cfg.num_layers in hidden_layers:
            hidden[self.cfg.num_layers] = x
        if hidden_only:
            return ForwardOutput(logits=None, hidden=hidden)
        if logits_at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logits_at.to(x.device)]  # [R, d]
        return ForwardOutput(logits=self.lm_head(x).float(), hidden=hidden)
