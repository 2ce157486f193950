"""Freed CPU memory stays in the process (glibc's allocator), so a decode step does not fault its tensors in again.

glibc hands every block of 32 MB or more straight back to the kernel when it is freed. A batched decode step on a
150k vocabulary makes several such blocks (160 rows: 48 MB of bf16 logits, then 97 MB for each float32 copy the
sampler makes), and the next step gets fresh pages from the kernel, each faulted in and zeroed on first touch:
214k page faults a second and a fifth to a quarter of both cores in the kernel during a sampled Qwen2.5-0.5B
sweep here. With the thresholds raised, freed blocks are reused, as PyTorch's CUDA caching allocator reuses GPU
memory. The cost: the process keeps up to `RETAINED_BYTES` of free heap instead of returning it.

`REASONBUDGET_RETAIN_MEMORY=0` leaves the allocator as it is; other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

RETAINED_BYTES = 1 << 30
"""Blocks below this come from the reused heap, and this much free heap top is kept."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to `RETAINED_BYTES` (once a process); True when they are."""
    global _applied
    if _applied is None:
        _applied = _raise_thresholds()
    return _applied


def _raise_thresholds() -> bool:
    if os.environ.get("REASONBUDGET_RETAIN_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, RETAINED_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, RETAINED_BYTES) == 1
    if not ok:
        logging.getLogger(__name__).warning("glibc refused the raised malloc thresholds; freed memory goes back "
                                            "to the kernel")
    return ok
