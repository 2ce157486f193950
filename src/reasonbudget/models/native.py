"""Our AVX2 kernels, compiled on first use and called through ctypes: the quantized matmuls of
`kernels/qmatmul_avx2.c`, the fused float32 decode-step ops of `kernels/decode_avx2.c`, and the whole decode step
of a model whose block linears all run on them (`kernels/decode_step.c`).

The sources are compiled once per source version and compiler into `<cache>/kernels/` (about a second) and loaded
from there afterwards. Where it cannot be used (no AVX2/FMA, no C compiler, a failed build, or
`REASONBUDGET_KERNELS=torch`), `available()` is False and the quantized linears use PyTorch's packed kernels, as
before; the reason is kept in `unavailable_reason()`. They were measured on AVX2 and AVX-512 CPUs (AMD Zen 3 and Zen
4: on Zen 4 a Qwen2.5-1.5B decode step took 34 against 51 ms in int4 and 51 against 105 ms in int8 with PyTorch's
kernels); a CPU with AMX tiles keeps PyTorch's kernels unless `REASONBUDGET_KERNELS=avx2`.

The wrappers check dtypes and layouts that a caller could get wrong cheaply (float32, contiguous); the callers
(`models.quant`, `models.llama`) guarantee the rest: shapes, row ids inside the cache, distinct rows.

ctypes releases the GIL during a call; a call costs a few microseconds, against the 0.1-10 ms of a matmul.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from reasonbudget.models.tokenizer import cache_root

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).parent / "kernels" / f for f in ("qmatmul_avx2.c", "decode_avx2.c", "decode_step.c"))
HEADERS = tuple(Path(__file__).parent / "kernels" / f for f in ("avx2_common.h", "qmatmul_tiles.h"))
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-std=c11")
ABI_VERSION = 7
BLOCK = 32
"""Input channels per activation block (one int8 scale each): K must be a multiple of it."""

_reason = ""


def _cpu_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _cpu_has_amx() -> bool:
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    text = b"".join(f.read_bytes() for f in (*SOURCES, *HEADERS))
    key = hashlib.sha256(text + " ".join((cc, *FLAGS, version)).encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"reasonbudget_avx2-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        done = subprocess.run([cc, *FLAGS, "-o", str(out), *map(str, SOURCES), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-500:]}")
        os.replace(out, target)  # atomic: a concurrent process sees the whole library or none
    return target


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    global _reason
    choice = os.environ.get("REASONBUDGET_KERNELS", "auto").lower()
    if choice == "torch":
        _reason = "REASONBUDGET_KERNELS=torch"
        return None
    if not _cpu_has_avx2():
        _reason = f"the CPU has no AVX2 ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()})"
        return None
    if choice != "avx2" and _cpu_has_amx():
        # measured on AVX2 and AVX-512 (AMD Zen 3, Zen 4) CPUs, not where PyTorch's kernels can use AMX tiles
        _reason = "an AMX CPU keeps PyTorch's kernels (REASONBUDGET_KERNELS=avx2 uses ours)"
        return None
    cc = _compiler()
    if cc is None:
        _reason = "no C compiler (set CC, or install gcc)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _reason = f"the AVX2 kernels did not build: {e}"
        log.warning("%s; the quantized linears use PyTorch's kernels", _reason)
        return None
    if lib.rb_abi_version() != ABI_VERSION:
        _reason = "a stale kernel library"
        return None
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.rb_q4_matmul.argtypes = [p, i64, i64, p, p, p, p, i64, i64, p, i32]
    lib.rb_q8_matmul.argtypes = [p, i64, i64, p, p, p, i64, p, i32]
    lib.rb_f32_matmul.argtypes = [p, i64, i64, p, p, i64, p, i32]
    lib.rb_bf16_matmul.argtypes = [p, i64, i64, p, p, i64, p, i32]
    lib.rb_q8_to_bf16.argtypes = [p, p, i64, i64, p, i32]
    lib.rb_q4_to_bf16.argtypes = [p, p, p, i64, i64, i64, p, i32]
    lib.rb_bf16_untile.argtypes = [p, i64, i64, p, i32]
    lib.rb_q8_to_bf16.restype = lib.rb_q4_to_bf16.restype = lib.rb_bf16_untile.restype = None
    lib.rb_rms_norm.argtypes = [p, i64, i64, p, f32, p]
    lib.rb_silu_mul.argtypes = [p, i64, i64, p]
    lib.rb_attn_decode.argtypes = [p, i64, i64, i64, i64, p, p, f32, p, p, p, p, i64, p, p, p, i32]
    lib.rb_vnni.argtypes = [i32]
    lib.rb_decode_blocks.argtypes = [p, i64, i64, p, i64, i64, i64, i64, i64, f32, p, p, p, p, i64, i64, p, p, p, i32]
    lib.rb_decode_blocks.restype = i32
    lib.rb_q4_matmul.restype = lib.rb_q8_matmul.restype = lib.rb_attn_decode.restype = lib.rb_vnni.restype = i32
    lib.rb_rms_norm.restype = lib.rb_silu_mul.restype = lib.rb_f32_matmul.restype = lib.rb_bf16_matmul.restype = None
    return lib


@lru_cache(maxsize=1)
def bf16_native() -> bool:
    """Whether the CPU has bf16 dot products (AVX512-BF16 or AMX), which oneDNN's bf16 GEMM uses."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def available() -> bool:
    return _library() is not None


def unavailable_reason() -> str:
    _library()
    return _reason


def vnni(on: bool | None = None) -> bool:
    """Whether the quantized matmuls use their AVX512-VNNI tiles (chosen where the CPU has AVX512-VNNI and VL; the
    same results bit for bit, one instruction fewer per 32 weights and row). `on` turns them off or back on."""
    lib = _library()
    return bool(lib is not None and lib.rb_vnni(-1 if on is None else int(on)))


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _float32(*tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()):
            raise TypeError(f"native kernels take contiguous float32 CPU tensors (got {t.dtype}, {t.device})")


def _check(rc: int) -> None:
    if rc:
        raise MemoryError("a native kernel could not allocate its scratch memory")


def _check_tiles(packed: Tensor, n: int, unit_bytes: int, what: str) -> None:
    """`packed` must be the kernels' tile layout (`quant.interleave_tiles`) of n channels of unit_bytes each."""
    shape = ((n + 3) // 4, unit_bytes // 32, 4, 32)
    if packed.dtype != torch.uint8 or tuple(packed.shape) != shape or not packed.is_contiguous():
        raise ValueError(f"{what} kernel: weight must be uint8 tiles of shape {shape} (quant.interleave_tiles); "
                         f"got {packed.dtype} {tuple(packed.shape)}")


def q4_matmul(x: Tensor, packed: Tensor, scale: Tensor, low: Tensor, bias: Tensor | None, group: int) -> Tensor:
    """x float32 [M, K] -> [M, N], N = scale.shape[0]; `packed` as `quant.pack_int4_blocks` builds it."""
    lib = _library()
    assert lib is not None
    x = x.contiguous()
    _float32(x, scale, low, bias)
    (m, k), n = x.shape, scale.shape[0]
    if k % 64 or group % 64:
        raise ValueError(f"int4 kernel: input dimension {k} and group {group} must be multiples of 64")
    _check_tiles(packed, n, k // 2, "int4")
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    _check(lib.rb_q4_matmul(x.data_ptr(), m, k, packed.data_ptr(), scale.data_ptr(), low.data_ptr(), _ptr(bias), n,
                            group, y.data_ptr(), torch.get_num_threads()))
    return y


def q8_matmul(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """x float32 [M, K] -> [M, N]; q as `quant.pack_int8_tiles` builds it, scale float32 [N]."""
    lib = _library()
    assert lib is not None
    x = x.contiguous()
    _float32(x, scale, bias)
    (m, k), n = x.shape, scale.shape[0]
    if k % 32:
        raise ValueError(f"int8 kernel: input dimension {k} must be a multiple of 32")
    _check_tiles(q, n, k, "int8")
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    _check(lib.rb_q8_matmul(x.data_ptr(), m, k, q.data_ptr(), scale.data_ptr(), _ptr(bias), n, y.data_ptr(),
                            torch.get_num_threads()))
    return y


def bf16_matmul(x: Tensor, tiles: Tensor, n: int, bias: Tensor | None) -> Tensor:
    """x float32 [M, K] -> [M, n] = x W^T (+ b), W bf16 [n, K] as `quant.pack_bf16_tiles` builds it."""
    lib = _library()
    assert lib is not None
    x = x.contiguous()
    _float32(x, bias)
    m, k = x.shape
    if k % 16:
        raise ValueError(f"bf16 kernel: input dimension {k} must be a multiple of 16")
    _check_tiles(tiles, n, 2 * k, "bf16")
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    lib.rb_bf16_matmul(x.data_ptr(), m, k, tiles.data_ptr(), _ptr(bias), n, y.data_ptr(), torch.get_num_threads())
    return y


# ---- the many-row path: weights back to row-major bf16 [N, K] (`quant.DENSE_MIN_TOKENS`) ------------------------
_scratch = threading.local()


def _bf16_scratch(n: int, k: int) -> Tensor:
    """A reused [n, k] bf16 buffer (one per thread, grown as needed, valid until the next call): a fresh tensor
    of a layer's size faulted its pages in on every call, 3-4x the cost of writing the weights out."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n * k:
        buf = _scratch.buf = torch.empty(n * k, dtype=torch.bfloat16)
    return buf[: n * k].view(n, k)


def q8_to_bf16(q: Tensor, scale: Tensor, k: int) -> Tensor:
    lib = _library()
    assert lib is not None
    _float32(scale)
    n = scale.shape[0]
    _check_tiles(q, n, k, "int8")
    out = _bf16_scratch(n, k)
    lib.rb_q8_to_bf16(q.data_ptr(), scale.data_ptr(), n, k, out.data_ptr(), torch.get_num_threads())
    return out


def q4_to_bf16(packed: Tensor, scale: Tensor, low: Tensor, k: int, group: int) -> Tensor:
    lib = _library()
    assert lib is not None
    _float32(scale, low)
    n = scale.shape[0]
    _check_tiles(packed, n, k // 2, "int4")
    out = _bf16_scratch(n, k)
    lib.rb_q4_to_bf16(packed.data_ptr(), scale.data_ptr(), low.data_ptr(), n, k, group, out.data_ptr(),
                      torch.get_num_threads())
    return out


def bf16_untile(tiles: Tensor, n: int, k: int) -> Tensor:
    lib = _library()
    assert lib is not None
    _check_tiles(tiles, n, 2 * k, "bf16")
    out = _bf16_scratch(n, k)
    lib.rb_bf16_untile(tiles.data_ptr(), n, k, out.data_ptr(), torch.get_num_threads())
    return out


def f32_matmul(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x float32 [M, K] (a few rows) -> [M, N] = x W^T (+ b), weight float32 [N, K] contiguous."""
    lib = _library()
    assert lib is not None
    x = x.contiguous()
    _float32(x, weight, bias)
    (m, k), n = x.shape, weight.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    lib.rb_f32_matmul(x.data_ptr(), m, k, weight.data_ptr(), _ptr(bias), n, y.data_ptr(), torch.get_num_threads())
    return y


# ---- the fused decode-step ops (float32, contiguous) --------------------------------------------------------
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    lib = _library()
    assert lib is not None
    x = x.contiguous()
    _float32(x, weight)
    y = torch.empty_like(x)
    d = x.shape[-1]
    lib.rb_rms_norm(x.data_ptr(), x.numel() // d, d, weight.data_ptr(), eps, y.data_ptr())
    return y


def silu_mul(gate_up: Tensor) -> Tensor:
    """[..., 2 I] (gate first) -> [..., I] = silu(gate) * up."""
    lib = _library()
    assert lib is not None
    gate_up = gate_up.contiguous()
    _float32(gate_up)
    i = gate_up.shape[-1] // 2
    y = gate_up.new_empty(*gate_up.shape[:-1], i)
    lib.rb_silu_mul(gate_up.data_ptr(), gate_up.numel() // (2 * i), i, y.data_ptr())
    return y


def attn_decode(qkv: Tensor, *, heads: int, kv_heads: int, head_dim: int, q_norm: Tensor | None,
                k_norm: Tensor | None, eps: float, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                rows: Tensor, positions: Tensor) -> Tensor:
    """One new token per row: qkv [R, (H + 2 Hkv) D]; cos, sin [R, D]; one layer's caches [rows, Hkv, S, D]
    (contiguous; the new k, v are written at `positions`); rows, positions: int64 [R]. Returns [R, H D]."""
    lib = _library()
    assert lib is not None
    r = qkv.shape[0]
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    rows, positions = rows.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous()
    _float32(qkv, cos, sin, k_cache, v_cache, q_norm, k_norm)
    out = torch.empty(r, heads * head_dim, dtype=torch.float32)
    rc = lib.rb_attn_decode(qkv.data_ptr(), r, heads, kv_heads, head_dim, _ptr(q_norm), _ptr(k_norm), eps,
                            cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[2],
                            rows.data_ptr(), positions.data_ptr(), out.data_ptr(), torch.get_num_threads())
    _check(rc)
    return out


# ---- the whole decode step through every block (`kernels/decode_step.c`) ------------------------------------
class LinearSpec(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int64), ("n", ctypes.c_int64), ("k", ctypes.c_int64), ("group", ctypes.c_int64),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("low", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class BlockSpec(ctypes.Structure):
    _fields_ = [("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("qkv", LinearSpec), ("o", LinearSpec), ("gate_up", LinearSpec),
                ("down", LinearSpec)]


LINEAR_KINDS = {"bf16": 1, "int8": 2, "int4": 3}


def linear_spec(kind: str, n: int, k: int, w: Tensor, scale: Tensor | None = None, low: Tensor | None = None,
                bias: Tensor | None = None, group: int = 0) -> LinearSpec:
    """One linear for `decode_blocks`: the tensors must outlive the spec (the modules' own buffers)."""
    _float32(scale, low, bias)
    return LinearSpec(LINEAR_KINDS[kind], n, k, group, w.data_ptr(), _ptr(scale), _ptr(low), _ptr(bias))


def decode_blocks(x: Tensor, blocks: ctypes.Array, *, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                  eps: float, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, rows: Tensor,
                  positions: Tensor) -> Tensor:
    """x [R, d] float32 through every block of `blocks` (BlockSpec array), one new token per row; the caches are
    the whole [L, rows_total, Hkv, S, D] tensors. Returns the new x (the input is not modified)."""
    lib = _library()
    assert lib is not None
    x = x.contiguous().clone()
    cos, sin = cos.contiguous(), sin.contiguous()
    rows, positions = rows.to(torch.int64).contiguous(), positions.to(torch.int64).contiguous()
    _float32(x, cos, sin, k_cache, v_cache)
    r, d = x.shape
    scratch = torch.empty(r * (3 * d + (2 * heads + 2 * kv_heads) * head_dim + 3 * intermediate))
    rc = lib.rb_decode_blocks(x.data_ptr(), r, d, blocks, len(blocks), heads, kv_heads, head_dim, intermediate, eps,
                              cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1],
                              k_cache.shape[3], rows.data_ptr(), positions.data_ptr(), scratch.data_ptr(),
                              torch.get_num_threads())
    if rc == -2:
        raise ValueError("decode_blocks: a linear of an unknown kind")
    _check(rc)
    return x
