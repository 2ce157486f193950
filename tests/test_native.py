"""Our AVX2 kernels (`models.native`) against PyTorch references: the quantized matmuls reproduce x rounded to
int8 blocks times the dequantized weight; the float32 matvec, norm, SwiGLU and decode attention match PyTorch's;
every row's result is independent of the rows fed with it; a model decodes the same with and without them."""

import pytest
import torch
import torch.nn.functional as F

from reasonbudget.models import native
from reasonbudget.models.quant import (
    Bf16Linear,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    dequantize_int8,
    deinterleave_tiles,
    interleave_tiles,
    pack_bf16_tiles,
    pack_int4_blocks,
    pack_int8_tiles,
    quantize_int4,
    quantize_int8,
    round_activations_int8,
    unpack_bf16_tiles,
    unpack_int4_blocks,
)

needs_native = pytest.mark.skipif(not native.available(), reason=f"AVX2 kernels: {native.unavailable_reason()}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_int4_block_packing_round_trips_and_pairs_channel_j_with_j_plus_32():
    q = torch.randint(0, 16, (5, 128), generator=_gen(0), dtype=torch.int32)
    packed = pack_int4_blocks(q)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 2, 4, 32)  # 5 channels padded to 2 tiles of 4
    assert torch.equal(unpack_int4_blocks(packed, 5), q)
    assert int(packed[0, 0, 0, 0]) == int(q[0, 0]) | (int(q[0, 32]) << 4)
    assert int(packed[0, 1, 2, 3]) == int(q[2, 64 + 3]) | (int(q[2, 96 + 3]) << 4)  # channel 2, second run
    assert not bool(packed[1, :, 1:].any())  # the padding channels are zero


def test_tile_interleaving_puts_a_tiles_units_side_by_side_and_round_trips():
    units = torch.arange(6 * 64, dtype=torch.int32).remainder(251).to(torch.uint8).reshape(6, 64)
    tiles = interleave_tiles(units)
    flat = tiles.flatten()
    # unit u of channel n at byte ((n // 4) * U + u) * 128 + (n % 4) * 32, U = 2 units per channel
    for n, u in ((0, 0), (3, 1), (5, 0), (5, 1)):
        start = ((n // 4) * 2 + u) * 128 + (n % 4) * 32
        assert torch.equal(flat[start : start + 32], units[n, u * 32 : (u + 1) * 32])
    assert torch.equal(deinterleave_tiles(tiles, 6), units)
    q = torch.randint(-127, 128, (3, 64), generator=_gen(9), dtype=torch.int32).to(torch.int8)
    assert torch.equal(deinterleave_tiles(pack_int8_tiles(q), 3).view(torch.int8), q)


def test_activation_rounding_keeps_each_block_within_half_a_level():
    x = torch.randn(3, 96, generator=_gen(1)) * torch.linspace(0.01, 50, 96)
    r = round_activations_int8(x)
    step = x.reshape(3, 3, 32).abs().amax(-1, keepdim=True) / 127
    assert bool(((r - x).reshape(3, 3, 32).abs() <= step / 2 + 1e-6).all())
    assert torch.equal(round_activations_int8(torch.zeros(2, 32)), torch.zeros(2, 32))  # no division by zero


@needs_native
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 9])  # every tile shape: 1 -> 4 channels, 2 -> 2, more -> 4 rows
def test_quantized_kernels_match_rounded_x_times_dequantized_weight(rows):
    g = _gen(2)
    n, k = 70, 256  # 70: not a multiple of the 4-channel tile
    w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(rows, k, generator=g)
    xr = round_activations_int8(x).double()
    q, s = quantize_int8(w)
    ref8 = xr @ dequantize_int8(q, s).double().T + b.double()
    torch.testing.assert_close(native.q8_matmul(x, pack_int8_tiles(q), s, b).double(), ref8, atol=1e-3, rtol=1e-5)
    q, s, lo = quantize_int4(w, 128)
    ref4 = xr @ dequantize_int4(q, s, lo, 128).double().T + b.double()
    out4 = native.q4_matmul(x, pack_int4_blocks(q), s.contiguous(), lo.contiguous(), b, 128)
    torch.testing.assert_close(out4.double(), ref4, atol=1e-3, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 17])  # the 4 x 2 (AVX2) and 4 x 4 (AVX-512) tiles and their tails
@pytest.mark.parametrize("wide", [True, False])
def test_bf16_kernel_matches_x_times_the_bf16_weights(rows, wide):
    g = _gen(11)
    n, k = 70, 208  # 70: not a multiple of the 4-channel tile; 208: a multiple of 16, not of 32
    w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(rows, k, generator=g)
    tiles = pack_bf16_tiles(w)
    assert torch.equal(unpack_bf16_tiles(tiles, n), w.to(torch.bfloat16))
    ref = x.double() @ w.to(torch.bfloat16).double().T + b.double()
    if wide and not native.vnni():
        pytest.skip("the CPU has no AVX-512 variant")
    try:
        native.vnni(wide)
        out = native.bf16_matmul(x, tiles, n, b)
    finally:
        native.vnni(True)
    # float32 products and sums of exact bf16 weights: only the summation order differs from the reference
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        native.bf16_matmul(torch.randn(1, 200), tiles, n, None)


@needs_native
@pytest.mark.skipif(not native.vnni(), reason="the CPU has no AVX512-VNNI")
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_vnni_tiles_equal_the_avx2_tiles_bit_for_bit(rows):
    g = _gen(10)
    w, b, x = torch.randn(70, 256, generator=g), torch.randn(70, generator=g), torch.randn(rows, 256, generator=g)
    q8, s8 = quantize_int8(w)
    q4, s4, lo = quantize_int4(w, 128)
    p8, p4 = pack_int8_tiles(q8), pack_int4_blocks(q4)
    both = []
    try:
        for on in (True, False):
            assert native.vnni(on) is on
            both.append((native.q8_matmul(x, p8, s8, b), native.q4_matmul(x, p4, s4, lo, b, 128)))
    finally:
        native.vnni(True)
    assert torch.equal(both[0][0], both[1][0]) and torch.equal(both[0][1], both[1][1])


@needs_native
@pytest.mark.parametrize("kind", ["int8", "int4", "f32", "bf16"])
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(kind):
    g = _gen(3)
    w, x = torch.randn(37, 192, generator=g), torch.randn(11, 192, generator=g)
    if kind == "int8":
        q, s = quantize_int8(w)
        p = pack_int8_tiles(q)
        f = lambda t: native.q8_matmul(t, p, s, None)  # noqa: E731
    elif kind == "int4":
        q, s, lo = quantize_int4(w, 64)
        p = pack_int4_blocks(q)
        f = lambda t: native.q4_matmul(t, p, s, lo, None, 64)  # noqa: E731
    elif kind == "bf16":
        p = pack_bf16_tiles(w)
        f = lambda t: native.bf16_matmul(t, p, 37, None)  # noqa: E731
    else:
        f = lambda t: native.f32_matmul(t, w, None)  # noqa: E731
    together = f(x)
    for i in range(x.shape[0]):
        assert torch.equal(f(x[i : i + 1]), together[i : i + 1])
    assert torch.equal(f(x[3:5]), together[3:5])


@needs_native
def test_weights_written_back_as_bf16_equal_the_dequantized_weights_rounded():
    g = _gen(12)
    w = torch.randn(37, 256, generator=g)
    q8, s8 = quantize_int8(w)
    assert torch.equal(native.q8_to_bf16(pack_int8_tiles(q8), s8, 256), dequantize_int8(q8, s8).to(torch.bfloat16))
    q4, s4, lo = quantize_int4(w, 128)
    out = native.q4_to_bf16(pack_int4_blocks(q4), s4.contiguous(), lo.contiguous(), 256, 128)
    assert torch.equal(out, dequantize_int4(q4, s4, lo, 128).to(torch.bfloat16))
    assert torch.equal(native.bf16_untile(pack_bf16_tiles(w), 37, 256), w.to(torch.bfloat16))


@needs_native
@pytest.mark.parametrize("module", ["int8", "int4", "bf16"])
def test_a_prefill_chunk_runs_a_dense_bf16_matmul_and_a_few_tokens_per_row_keep_the_kernel(module, monkeypatch):
    from reasonbudget.models import quant

    monkeypatch.setattr(native, "bf16_native", lambda: True)  # on a CPU without bf16 dot products: slow, same result
    g = _gen(13)
    w, b = torch.randn(40, 128, generator=g), torch.randn(40, generator=g)
    lin = {"int8": lambda: Int8Linear(w, b, torch.float32), "int4": lambda: Int4Linear(w, b, torch.float32, 64),
           "bf16": lambda: Bf16Linear(w, b, torch.float32)}[module]()
    if module == "int8":
        dense_w = dequantize_int8(*quantize_int8(w))
    elif module == "int4":
        dense_w = dequantize_int4(*quantize_int4(w, 64), 64)
    else:
        dense_w = w
    chunk = torch.randn(2, quant.DENSE_MIN_TOKENS, 128, generator=g)
    expect = (F.linear(chunk.to(torch.bfloat16), dense_w.to(torch.bfloat16)).float() + b)
    assert torch.equal(lin(chunk), expect)
    few = chunk[:, : quant.DENSE_MIN_TOKENS - 1]
    assert torch.equal(lin(few).reshape(-1, 40), lin(few.reshape(-1, 1, 128)).reshape(-1, 40))  # kernel, row by row
    assert not torch.equal(lin(few), expect[:, : quant.DENSE_MIN_TOKENS - 1])


@needs_native
def test_modules_pick_the_avx2_kernel_where_the_shape_fits_and_keep_the_models_dtype():
    w = torch.randn(40, 192, generator=_gen(4))
    assert Int4Linear(w, None, torch.float32, 64).kernel == "avx2"
    assert Int8Linear(w, None, torch.float32).kernel == "avx2"
    assert Int4Linear(w[:, :96], None, torch.float32, 32).kernel == "torch"  # 96: no group of 64 fits
    assert Bf16Linear(w, None, torch.float32).kernel == "avx2"
    assert Bf16Linear(w[:, :40], None, torch.float32).kernel == "torch"  # 40: not a multiple of 16
    y = Int4Linear(w, torch.ones(40), torch.bfloat16, 64)(torch.randn(2, 3, 192).to(torch.bfloat16))
    assert y.shape == (2, 3, 40) and y.dtype == torch.bfloat16


@needs_native
def test_float32_ops_match_pytorch():
    g = _gen(5)
    w, b, x = torch.randn(50, 136, generator=g), torch.randn(50, generator=g), torch.randn(6, 136, generator=g)
    torch.testing.assert_close(native.f32_matmul(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)
    h, nw = torch.randn(2, 3, 100, generator=g), torch.randn(100, generator=g)  # 100: a scalar tail after 96
    torch.testing.assert_close(native.rms_norm(h, nw, 1e-6), F.rms_norm(h, (100,), nw, 1e-6), atol=1e-5, rtol=1e-5)
    gu = torch.randn(4, 1, 2 * 24, generator=g) * 4
    gate, up = gu.chunk(2, dim=-1)
    torch.testing.assert_close(native.silu_mul(gu), F.silu(gate) * up, atol=1e-5, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("head_dim", [64, 24])  # 64: the 8-register value loop; 24: its 8-wide tail
def test_decode_attention_matches_sdpa_on_ragged_rows(qk_norm, head_dim):
    g = _gen(6)
    H, Hkv, D, S = 6, 2, head_dim, 40
    k_cache, v_cache = torch.randn(5, Hkv, S, D, generator=g), torch.randn(5, Hkv, S, D, generator=g)
    rows, pos = torch.tensor([4, 1, 2]), torch.tensor([0, 7, 31])  # ragged: each row attends to 0..pos
    qkv = torch.randn(3, (H + 2 * Hkv) * D, generator=g)
    angle = pos[:, None].float() * torch.rand(D // 2, generator=g)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    qn, kn = (torch.rand(D, generator=g) + 0.5, torch.rand(D, generator=g) + 0.5) if qk_norm else (None, None)
    kc, vc = k_cache.clone(), v_cache.clone()
    out = native.attn_decode(qkv, heads=H, kv_heads=Hkv, head_dim=D, q_norm=qn, k_norm=kn, eps=1e-6, cos=cos, sin=sin,
                             k_cache=kc, v_cache=vc, rows=rows, positions=pos)

    def rope(t):  # t: [heads, D]
        rotated = torch.cat([-t[:, D // 2 :], t[:, : D // 2]], -1)
        return t * cos[i] + rotated * sin[i]

    for i, (r, p) in enumerate(zip(rows.tolist(), pos.tolist())):
        heads = qkv[i].view(H + 2 * Hkv, D)
        q, k, v = heads[:H], heads[H : H + Hkv], heads[H + Hkv :]
        if qk_norm:
            q, k = F.rms_norm(q, (D,), qn, 1e-6), F.rms_norm(k, (D,), kn, 1e-6)
        q, k = rope(q), rope(k)
        torch.testing.assert_close(kc[r, :, p], k, atol=1e-5, rtol=1e-5)  # the new k, v written at p
        torch.testing.assert_close(vc[r, :, p], v)
        keys, values = kc[r, :, : p + 1], vc[r, :, : p + 1]
        ref = F.scaled_dot_product_attention(q.view(Hkv, H // Hkv, D), keys, values)  # [Hkv, g, D]
        torch.testing.assert_close(out[i].view(Hkv, H // Hkv, D), ref, atol=1e-5, rtol=1e-4)
    untouched = torch.ones(5, S, dtype=torch.bool)
    untouched[rows, pos] = False
    assert torch.equal(kc.transpose(1, 2)[untouched], k_cache.transpose(1, 2)[untouched])


@needs_native
def test_a_model_decodes_the_same_tokens_with_and_without_the_fused_step(monkeypatch):
    """The testbed target (float32): greedy continuations of a ragged batch equal the unfused ones."""
    from reasonbudget.engine import Engine, SamplingConfig
    from reasonbudget.models import llama, load_model

    model = load_model("testbed-target", dtype="float32")
    engine = Engine(model)
    prompts = [model.tokenizer.encode(t) for t in ("Q: 3 + 4 * 2 = ?", "Q: a long question about 12 and 30 = ?")]

    def run():
        rows = engine.prefill(prompts, max_new_tokens=12)
        out = engine.decode(rows, max_new_tokens=12, sampling=SamplingConfig(), stop_on_eos=False)
        engine.release(rows)
        return [list(o.tokens) for o in out]

    calls = []
    attn = native.attn_decode
    monkeypatch.setattr(native, "attn_decode", lambda *a, **k: calls.append(1) or attn(*a, **k))
    fused = run()
    assert len(calls) >= 11 * model.backend.cfg.num_layers  # every decode step, every layer
    monkeypatch.setattr(llama, "fused_decode_applies", lambda *a: False)
    assert run() == fused


@needs_native
def test_nan_activations_propagate_and_wrong_inputs_are_refused():
    g = _gen(7)
    w, x = torch.randn(8, 64, generator=g), torch.randn(2, 64, generator=g)
    x[0, 5] = float("nan")
    q, s = quantize_int8(w)
    q4, s4, lo = quantize_int4(w, 64)
    for y in (native.q8_matmul(x, pack_int8_tiles(q), s, None), native.q4_matmul(x, pack_int4_blocks(q4), s4, lo, None, 64)):
        assert bool(y[0].isnan().all()) and not bool(y[1].isnan().any())
    with pytest.raises(TypeError, match="float32"):
        native.f32_matmul(x.double(), w, None)
    with pytest.raises(ValueError, match="multiples of 64"):
        native.q4_matmul(x[:, :32], pack_int4_blocks(q4), s4, lo, None, 32)
    with pytest.raises(ValueError, match="tiles"):
        native.q8_matmul(x, q, s, None)  # row-major int8, not the kernel's layout


def _steps_both_ways(backend, monkeypatch, hidden_layers=()):
    """Greedy logits of 4 one-token steps on rows 0 and 2 of 3 (ragged), with the whole step in one C call and
    block by block; and how many C calls the first way made."""
    from reasonbudget.models import llama

    calls = []
    whole = native.decode_blocks
    monkeypatch.setattr(native, "decode_blocks", lambda *a, **k: calls.append(1) or whole(*a, **k))
    outs = []
    for flag in (True, False):
        monkeypatch.setattr(llama.Transformer, "native_step", flag)
        cache = backend.new_cache(3, 48)
        rows = torch.tensor([0, 2])
        for r, n in ((0, 11), (2, 7)):
            backend(torch.randint(3, 30, (1, n), generator=_gen(r)), cache, torch.tensor([r]))
            cache.lengths[r] = n
        tok, logits = torch.tensor([[5], [8]]), []
        for _ in range(4):
            out = backend(tok, cache, rows, hidden_layers=hidden_layers)
            logits.append(out.logits)
            cache.lengths[rows] += 1
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        outs.append(torch.stack(logits))
    return outs, len(calls)


@needs_native
@pytest.mark.parametrize("quant", ["int8", "int4", "bf16"])
def test_the_whole_decode_step_in_one_call_equals_block_by_block(quant, monkeypatch):
    from reasonbudget.models import load_model

    backend = load_model("testbed-target", dtype="float32", quant=quant).backend
    assert backend.native_blocks() is not None
    (whole, blockwise), calls = _steps_both_ways(backend, monkeypatch)
    assert calls == 4 and torch.equal(whole, blockwise)
    # an inner layer's hidden state asked for: block by block, same logits
    (inner, _), calls = _steps_both_ways(backend, monkeypatch, hidden_layers=(1,))
    assert calls == 0 and torch.equal(inner, whole)
    # moving the tensors (here a dtype round trip) rebuilds the specs instead of keeping stale pointers
    specs = backend.native_blocks()
    backend.to(torch.float64).to(torch.float32)
    assert backend.native_blocks() is not specs
    (moved, _), calls = _steps_both_ways(backend, monkeypatch)
    assert calls == 4 and torch.equal(moved, whole)


@needs_native
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])  # qkv bias; per-head q/k norms
def test_the_whole_decode_step_handles_biases_and_head_norms(arch, monkeypatch):
    from tests.helpers import runtime_from_hf, tiny_hf_model

    backend = runtime_from_hf(tiny_hf_model(arch)).backend
    assert backend.quantize("bf16")["quantized"] == 2 * 4 + 1
    (whole, blockwise), calls = _steps_both_ways(backend, monkeypatch)
    assert calls == 4 and torch.equal(whole, blockwise)
    backend = runtime_from_hf(tiny_hf_model(arch)).backend
    backend.quantize("int8")  # an int8 tile needs K % 64: the 96-wide MLP keeps PyTorch's kernel, so no C step
    assert backend.native_blocks() is None
