"""Weight-only quantized linears (as gpt-fast does on GPU), through our kernels or PyTorch's packed CPU kernels.

- bf16: the weights stored in bf16 under float32 activations (`Bf16Linear`): half of float32's bytes, exact
  products; for a float32 model (the fused decode step), where a bfloat16 model would run PyTorch's op by op.
- int8: symmetric, one scale per output channel; `torch._weight_int8pack_mm`.
- int4: asymmetric, one scale and one offset per group of `group` input channels; the weight packed once by
  `_convert_weight_to_int4pack_for_cpu`, multiplied by `_weight_int4pack_mm_for_cpu`. The kernel needs the
  output dimension to be a multiple of 16 (padded here with zero rows, sliced off after) and the input dimension
  to be a multiple of the group (the largest of 128, 64, 32 that divides it); a layer that fits none stays in
  the model's dtype (counted in the load report).

Two kernels for each format, chosen per layer on load (`choose_kernel`):
- `avx2`: ours (`models.native`, C through ctypes), where it builds and the input dimension is a multiple of 64:
  x rounded to int8 per block of 32 (`round_activations_int8`), byte dot products, float32 out, the weights
  interleaved by tiles of 4 output channels (`interleave_tiles`). On a 2-core AVX2 EPYC it made Qwen2.5-0.5B int4
  decoding 1.5x faster than PyTorch's kernels; on a Zen 4 EPYC a Qwen2.5-1.5B int4 step took 34 against 51 ms.
- `torch`: PyTorch's packed kernels. They read x and the scales in bfloat16 (`KERNEL_DTYPE`), whatever the
  model's dtype: a float32 model's quantized linears cast x in and their output back.

The quantize / dequantize functions are pure and tested alone: the kernels must reproduce
x @ dequantize(...)^T up to the rounding of their accumulation.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reasonbudget.models import native

Quant = Literal["none", "int8", "int4", "bf16"]
QUANTS: tuple[str, ...] = get_args(Quant)
INT4_GROUPS = (128, 64, 32)
_N_MULTIPLE = 16
KERNEL_DTYPE = torch.bfloat16
"""Fed float32, both kernels ran 9-20x slower than fed bfloat16 on an AVX2 CPU (Qwen2.5-0.5B's gate/up shape, two
threads: int4 11.0 against 0.86 ms for one row, 174 against 6.9 ms for 16), and slower than the dense float32
matmul they replace; cast in and out, a float32 model's int4 layers are as fast as a bfloat16 model's."""


def check_quant(quant: str) -> Quant:
    if quant not in QUANTS:
        raise ValueError(f"quant={quant!r}: accepted are {', '.join(QUANTS)}")
    return quant  # type: ignore[return-value]


# ---- pure math -------------------------------------------------------------------------------------------
def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """w [N, K] -> (q int8 [N, K], scale float32 [N]) with w ~= q * scale[:, None]."""
    scale = (w.float().abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale[:, None]


def int4_group(k: int) -> int | None:
    """The group size for an input dimension k (None: no group fits)."""
    return next((g for g in INT4_GROUPS if k % g == 0), None)


def quantize_int4(w: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """w [N, K] -> (q int32 in 0..15 [N, K], scale [N, K/group], low [N, K/group]) with
    w ~= q * scale + low per group (the group's minimum maps to 0, its maximum to 15)."""
    n, k = w.shape
    if k % group:
        raise ValueError(f"input dimension {k} is not a multiple of the group size {group}")
    g = w.float().reshape(n, k // group, group)
    low, high = g.amin(-1), g.amax(-1)
    scale = ((high - low) / 15.0).clamp_min(1e-12)
    q = torch.round((g - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), scale, low


def dequantize_int4(q: Tensor, scale: Tensor, low: Tensor, group: int) -> Tensor:
    n, k = q.shape
    return (q.reshape(n, k // group, group).float() * scale[..., None] + low[..., None]).reshape(n, k)


def round_activations_int8(x: Tensor, block: int = 32) -> Tensor:
    """What the AVX2 kernels multiply instead of x: each row's blocks of `block` values rounded to int8 levels of
    their own scale max|x| / 127 (as llama.cpp's Q8_0). Relative error ~0.5% on gaussian rows."""
    v = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = v.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(v * inv) * (amax / 127.0)).reshape(x.shape)


TILE_N = 4
"""Output channels whose 32-byte weight units the AVX2 kernels store side by side (`interleave_tiles`)."""


def interleave_tiles(units: Tensor) -> Tensor:
    """Bytes [N, B] (B a multiple of 32) -> [ceil(N/4), B/32, 4, 32]: unit u of channels 4t..4t+3 side by side,
    N padded with zero channels. The AVX2 kernels read a 4-channel tile as one contiguous stream (row-major, a
    tile read 4 short rows at once and streamed from DRAM at 0.6x the speed)."""
    n, b = units.shape
    pad = (-n) % TILE_N
    u = torch.cat([units, units.new_zeros(pad, b)]) if pad else units
    return u.reshape(-1, TILE_N, b // 32, 32).transpose(1, 2).contiguous()


def deinterleave_tiles(tiles: Tensor, n: int) -> Tensor:
    t, units, _, _ = tiles.shape
    return tiles.transpose(1, 2).reshape(t * TILE_N, units * 32)[:n]


def pack_int8_tiles(q: Tensor) -> Tensor:
    """q int8 [N, K] -> the AVX2 kernel's layout (`interleave_tiles`, as bytes)."""
    return interleave_tiles(q.contiguous().view(torch.uint8))


def pack_int4_blocks(q: Tensor) -> Tensor:
    """q in 0..15 [N, K] -> the AVX2 kernel's layout: in each run of 64 input channels, byte j holds channel j in its
    low nibble and channel j + 32 in its high one (one 32-byte load, a shift and two masks give two blocks of 32);
    those 32-byte runs interleaved by tiles of 4 channels (`interleave_tiles`)."""
    n, k = q.shape
    b = q.to(torch.uint8).reshape(n, k // 64, 2, 32)
    return interleave_tiles((b[:, :, 0] | (b[:, :, 1] << 4)).reshape(n, k // 2))


def pack_bf16_tiles(w: Tensor) -> Tensor:
    """w [N, K] -> bf16 weights in the kernels' layout (`interleave_tiles`, as bytes: 16 weights a unit)."""
    return interleave_tiles(w.to(torch.bfloat16).contiguous().view(torch.uint8))


def unpack_bf16_tiles(tiles: Tensor, n: int) -> Tensor:
    return deinterleave_tiles(tiles, n).contiguous().view(torch.bfloat16)


def unpack_int4_blocks(packed: Tensor, n: int) -> Tensor:
    rows = deinterleave_tiles(packed, n)
    b = rows.reshape(n, rows.shape[1] // 32, 1, 32)
    return torch.cat([b & 0x0F, b >> 4], dim=2).reshape(n, 2 * rows.shape[1]).to(torch.int32)


# ---- modules ---------------------------------------------------------------------------------------------
Kernel = Literal["avx2", "torch"]

DENSE_MIN_TOKENS = 16
"""A call that feeds at least this many tokens per row (a prefill chunk) writes the weights out as row-major bf16
(`native.q4_to_bf16` and co.) and runs oneDNN's dense bf16 GEMM, where the CPU has bf16 dot products. Our tiles
are compute-bound in int8/float32 arithmetic past a few rows: Qwen2.5-1.5B's gate/up (17920 x 1536, Zen 4 EPYC,
2 threads) at 128 rows took 36.9 ms in the int4 kernel against 3.6 ms to write the weights out plus 17.7 for the
GEMM; at 32 rows they tie. Per row of tokens, not per call, so that decode steps and a speculative target's
verification (a few tokens per row) keep the kernels, whose rows do not depend on each other."""


def dense_path_applies(x: Tensor) -> bool:
    return x.dim() >= 3 and x.shape[-2] >= DENSE_MIN_TOKENS and native.bf16_native()


def _dense_bf16(x: Tensor, weight_bf16: Tensor, bias32: Tensor | None) -> Tensor:
    """x [..., K] -> float32 [..., N] = bf16(x) W^T (+ b), W row-major bf16 (the scratch buffer: used at once)."""
    y = F.linear(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), weight_bf16).float()
    return (y if bias32 is None else y + bias32).reshape(*x.shape[:-1], -1)


def choose_kernel(k: int, group: int = 64) -> Kernel:
    """Our AVX2 kernels (`models.native`) where they built and the shape fits them, else PyTorch's."""
    return "avx2" if native.available() and k % 64 == 0 and group % 64 == 0 else "torch"


class Int8Linear(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, kernel: Kernel | None = None) -> None:
        super().__init__()
        self.kernel = kernel or choose_kernel(weight.shape[1])
        q, scale = quantize_int8(weight)
        self.register_buffer("q", pack_int8_tiles(q) if self.kernel == "avx2" else q)
        self.register_buffer("scale", scale if self.kernel == "avx2" else scale.to(KERNEL_DTYPE))
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        # the AVX2 kernel adds the bias itself, in float32
        self._bias32 = None if bias is None or self.kernel != "avx2" else bias.float()

    def native_spec(self) -> native.LinearSpec | None:
        if self.kernel != "avx2":
            return None
        return native.linear_spec("int8", self.scale.shape[0], self.q.shape[1] * 32, self.q, self.scale,
                                  bias=self._bias32)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.kernel == "avx2":
            if dense_path_applies(x):
                return _dense_bf16(x, native.q8_to_bf16(self.q, self.scale, x.shape[-1]), self._bias32).to(x.dtype)
            return native.q8_matmul(x2.float(), self.q, self.scale, self._bias32).reshape(*x.shape[:-1], -1).to(x.dtype)
        y = torch._weight_int8pack_mm(x2.to(KERNEL_DTYPE), self.q, self.scale)
        y = y.reshape(*x.shape[:-1], -1).to(x.dtype)
        return y + self.bias if self.bias is not None else y


class Int4Linear(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, group: int,
                 kernel: Kernel | None = None) -> None:
        super().__init__()
        n, k = weight.shape
        self.kernel = kernel or choose_kernel(k, group)
        self.out_features, self.group = n, group
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        # the AVX2 kernel adds the bias itself, in float32
        self._bias32 = None if bias is None or self.kernel != "avx2" else bias.float()
        if self.kernel == "avx2":
            q, scale, low = quantize_int4(weight.float(), group)
            self.register_buffer("packed", pack_int4_blocks(q))
            self.register_buffer("scale", scale.contiguous())
            self.register_buffer("low", low.contiguous())
            return
        pad = (-n) % _N_MULTIPLE
        w = F.pad(weight.float(), (0, 0, 0, pad)) if pad else weight.float()
        q, scale, low = quantize_int4(w, group)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # the kernel's per-group (scale, offset) with w = (q - 8) * scale + offset, laid out [K/group, N, 2]
        offset = low + 8 * scale
        self.register_buffer("scales_and_zeros", torch.stack([scale, offset], -1).transpose(0, 1).contiguous()
                             .to(KERNEL_DTYPE))

    def native_spec(self) -> native.LinearSpec | None:
        if self.kernel != "avx2":
            return None
        return native.linear_spec("int4", self.out_features, self.packed.shape[1] * 64, self.packed, self.scale,
                                  self.low, self._bias32, self.group)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.kernel == "avx2":
            if dense_path_applies(x):
                w = native.q4_to_bf16(self.packed, self.scale, self.low, x.shape[-1], self.group)
                return _dense_bf16(x, w, self._bias32).to(x.dtype)
            y = native.q4_matmul(x2.float(), self.packed, self.scale, self.low, self._bias32, self.group)
            return y.reshape(*x.shape[:-1], -1).to(x.dtype)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(KERNEL_DTYPE), self.packed, self.group,
                                                       self.scales_and_zeros)
        y = y[:, : self.out_features].reshape(*x.shape[:-1], -1).to(x.dtype)
        return y + self.bias if self.bias is not None else y


class Bf16Linear(nn.Module):
    """bf16 weights under float32 activations: a float32 model reads half the weight bytes and keeps its float32
    decode step (fused ops, float32 KV cache). Our kernel (`native.bf16_matmul`) where it runs, else the weights
    widened per call."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.kernel: Kernel = "avx2" if native.available() and weight.shape[1] % 16 == 0 else "torch"
        self.register_buffer("weight_bf16", pack_bf16_tiles(weight) if self.kernel == "avx2"
                             else weight.to(torch.bfloat16).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    def native_spec(self) -> native.LinearSpec | None:
        if self.kernel != "avx2":
            return None
        return native.linear_spec("bf16", self.out_features, self.weight_bf16.shape[1] * 16, self.weight_bf16,
                                  bias=self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1]).float()
        if self.kernel == "avx2" and dense_path_applies(x):
            w = native.bf16_untile(self.weight_bf16, self.out_features, x.shape[-1])
            return _dense_bf16(x, w, self.bias).to(x.dtype)
        if self.kernel == "avx2":
            y = native.bf16_matmul(x2, self.weight_bf16, self.out_features, self.bias)
        else:
            y = F.linear(x2, self.weight_bf16.float(), self.bias)
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)


def quantized_linear(weight: Tensor, bias: Tensor | None, quant: Quant, dtype: torch.dtype) -> nn.Module | None:
    """The quantized module for one linear, or None when its shape fits no kernel (int4 only)."""
    if quant == "int8":
        return Int8Linear(weight, bias, dtype)
    if quant == "int4":
        group = int4_group(weight.shape[1])
        return None if group is None else Int4Linear(weight, bias, dtype, group)
    if quant == "bf16":
        return Bf16Linear(weight, bias, dtype)
    raise ValueError(f"quant={quant!r}: nothing to quantize")
