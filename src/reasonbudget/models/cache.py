"""Preallocated, batched KV cache with a length per row.

Row r is valid on positions [0, lengths[r]). Rollback only moves that length (stale entries beyond it are
masked, then overwritten); fork and reorder copy rows. Lengths live on the host: they drive the control
flow, and keeping them there means no device sync per step.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_rows: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, num_rows, num_kv_heads, capacity, head_dim)
        with torch.inference_mode(False):  # normal tensors: row bookkeeping happens outside inference mode too
            self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, R, H, S, D]
            self.v = torch.zeros(shape, dtype=dtype, device=device)
            self.lengths = torch.zeros(num_rows, dtype=torch.long)  # [R] host
            self.in_use = torch.zeros(num_rows, dtype=torch.bool)  # [R] host
        self.capacity = capacity

    @property
    def num_rows(self) -> int:
        return self.lengths.numel()

    def allocate(self, n: int) -> Tensor:
        """Claim n free rows (length 0), lowest ids first so that batches stay contiguous."""
        free = (~self.in_use).nonzero().flatten()
        if free.numel() < n:
            raise RuntimeError(f"KV cache has {free.numel()} free rows, {n} requested")
        rows = free[:n]
        self.in_use[rows] = True
        self.lengths[rows] = 0
        return rows

    def free(self, rows: Tensor) -> None:
        self.in_use[rows] = False
        self.lengths[rows] = 0

    def truncate(self, rows: Tensor, lengths: Tensor) -> None:
        """Rollback: row rows[i] keeps its first lengths[i] positions."""
        if bool((lengths > self.lengths[rows]).any()) or bool((lengths < 0).any()):
            raise ValueError("truncate can only shorten rows")
        self.lengths[rows] = lengths

    def fork(self, rows: Tensor) -> Tensor:
        """New rows that continue exactly like `rows` (same prefix), e.g. samples or particles."""
        new = self.allocate(rows.numel())
        self._copy(src=rows, dst=new)
        return new

    def reorder(self, rows: Tensor, src_rows: Tensor) -> None:
        """rows[i] := src_rows[i] (resampling, beam selection). A source may be used several times."""
        self._copy(src=src_rows, dst=rows)

    def _copy(self, *, src: Tensor, dst: Tensor) -> None:
        n = int(self.lengths[src].max()) if src.numel() else 0
        idx_src, idx_dst = src.to(self.k.device), dst.to(self.k.device)
        self.k[:, idx_dst, :, :n] = self.k[:, idx_src, :, :n]  # gather first, so overlapping src/dst is safe
        self.v[:, idx_dst, :, :n] = self.v[:, idx_src, :, :n]
        self.lengths[dst] = self.lengths[src].clone()

    def write(self, layer: int, sel: RowSelection, k: Tensor, v: Tensor) -> None:
        """k, v: [R, H, T, D] written at each row's positions sel.positions."""
        if sel.span is not None and sel.same_start:
            a, b = sel.span
            p = sel.start0
            self.k[layer, a:b, :, p : p + k.shape[2]] = k
            self.v[layer, a:b, :, p : p + k.shape[2]] = v
            return
        r = sel.rows_dev[:, None]  # [R, 1]
        pos = sel.positions_dev  # [R, T]
        self.k[layer, r, :, pos] = k.transpose(1, 2)  # advanced indices first: [R, T, H, D]
        self.v[layer, r, :, pos] = v.transpose(1, 2)

    def read(self, layer: int, sel: RowSelection) -> tuple[Tensor, Tensor]:
        """Keys and values of the selected rows up to the longest: [R, H, S, D] each."""
        s = sel.kv_len
        if sel.span is not None:
            a, b = sel.span
            return self.k[layer, a:b, :, :s], self.v[layer, a:b, :, :s]
        return self.k[layer, sel.rows_dev, :, :s], self.v[layer, sel.rows_dev, :, :s]


class RowSelection:
    """The rows of one forward call and where their new tokens go; computed once, used by every layer."""

    def __init__(self, cache: KVCache, rows: Tensor, num_new: int, device: torch.device) -> None:
        start = cache.lengths[rows]  # [R]
        if int(start.max()) + num_new > cache.capacity:
            raise RuntimeError(f"KV cache capacity {cache.capacity} exceeded")
        self.positions = start[:, None] + torch.arange(num_new)  # [R, T] host
        self.starts = start.contiguous()  # [R] int64 host: each row's first new position
        self.kv_len = int(start.max()) + num_new
        lo, hi = int(rows[0]), int(rows[-1])
        contiguous = hi - lo + 1 == rows.numel() and bool((rows.diff() == 1).all()) if rows.numel() > 1 else True
        self.span = (lo, hi + 1) if contiguous else None
        self.start0 = int(start[0])
        self.same_start = bool((start == self.start0).all())
        self.rows_dev = rows.to(device, non_blocking=True)
        self.positions_dev = self.positions.to(device, non_blocking=True)
        key_pos = torch.arange(self.kv_len)
        # Each query sees its own row's keys at positions <= its own: ragged rows and stale entries masked.
        mask = key_pos[None, None, :] <= self.positions[:, :, None]  # [R, T, S]
        self.mask = mask[:, None].to(device, non_blocking=True)  # [R, 1, T, S]
