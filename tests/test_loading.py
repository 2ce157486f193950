"""Loading HF safetensors directories through the registry, with our runtime and the transformers fallback."""

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.models import load_model
from tests.helpers import char_tokenizer, tiny_hf_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    hf = tiny_hf_model("qwen3", seed=9)
    hf.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path, hf


def _greedy(model, prompt, n=16):
    e = Engine(model)
    rows = e.prefill([prompt], max_new_tokens=n)
    return e.decode(rows, max_new_tokens=n, sampling=SamplingConfig(), stop_on_eos=False)[0].tokens


def test_safetensors_directory_loads_into_the_runtime(checkpoint):
    path, hf = checkpoint
    model = load_model(str(path))
    assert model.kind == "runtime" and model.profile.name == "thinking"
    ids = torch.tensor([model.encode("12+7=")])
    got = model.backend(ids, model.backend.new_cache(1, 16), torch.tensor([0])).logits
    assert (got - hf(ids).logits).abs().max() < 1e-4


def test_transformers_fallback_decodes_like_the_runtime(checkpoint):
    path, _ = checkpoint
    runtime, fallback = load_model(str(path)), load_model(str(path), backend="hf")
    assert fallback.kind == "hf"
    prompt = runtime.encode("3*4=")
    assert _greedy(runtime, prompt) == _greedy(fallback, prompt)


def test_bfloat16_runtime_stays_close(checkpoint):
    path, _ = checkpoint
    full, half = load_model(str(path)), load_model(str(path), dtype="bfloat16")
    ids = torch.tensor([full.encode("9-2=")])
    a = full.backend(ids, full.backend.new_cache(1, 16), torch.tensor([0])).logits
    b = half.backend(ids, half.backend.new_cache(1, 16), torch.tensor([0])).logits
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_unknown_dtype_is_rejected(checkpoint):
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(checkpoint[0]), dtype="float8")


def test_gguf_cache_key_survives_reinstall_but_not_other_content(tmp_path):
    """Each fresh virtualenv reinstalls the embedded GGUF with a new mtime; the dequantized cache must not
    grow a new copy every time, and a different file of the same name must not reuse it."""
    import os

    from reasonbudget.models.tokenizer import gguf_cache_key

    a = tmp_path / "a" / "m.gguf"
    b = tmp_path / "b" / "m.gguf"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(bytes(range(256)) * 9000)
    os.utime(b, (1, 1))
    assert gguf_cache_key(a) == gguf_cache_key(b)
    b.write_bytes(bytes(range(256)) * 8999 + bytes(255) + b"x")
    assert gguf_cache_key(a) != gguf_cache_key(b)


def test_a_cpu_without_the_packed_bf16_kernel_falls_back_to_plain_linear(monkeypatch):
    """oneDNN's bf16 weight reorder raises on CPUs without AVX-512 / AVX-NE-CONVERT: packing must not crash the
    load, and the layer must still compute x W^T."""
    from reasonbudget.models.llama import Linear

    def refuse(*_):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx512bw")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    w = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    lin = Linear(w)
    lin.pack()
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    assert lin._kind == "" and torch.equal(lin(x), torch.nn.functional.linear(x, w))


def test_float32_packs_large_weights_for_onednn_small_ones_stay_plain_and_mkl_is_the_fallback(monkeypatch):
    """Large float32 weights go to oneDNN's packed kernel (faster than MKL's on the AMD CPUs measured), small ones
    stay with F.linear (oneDNN's per-call cost exceeds their matmul); when oneDNN refuses, MKL's packed GEMM takes
    the large ones. Every choice computes x W^T."""
    from reasonbudget.models.llama import Linear

    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(1024, Linear.ONEDNN_MIN_FP32 // 1024, generator=g), torch.randn(16, 8, generator=g)
    for w, want in ((big, "mkldnn" if torch.backends.mkldnn.is_available() else "mkl"), (small, "")):
        x = torch.randn(3, w.shape[1], generator=g)
        lin = Linear(w)
        lin.pack()
        assert lin._kind == want
        torch.testing.assert_close(lin(x), x @ w.T, atol=1e-3, rtol=1e-4)

    def refuse(*_):
        raise RuntimeError("no oneDNN kernel here")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    lin = Linear(big)
    lin.pack()
    assert lin._kind == ("mkl" if torch.backends.mkl.is_available() else "")
    x = torch.randn(3, big.shape[1], generator=g)
    torch.testing.assert_close(lin(x), x @ big.T, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("capability,device,want", [("AVX2", "cpu", "float32"), ("AVX512", "cpu", "bfloat16"),
                                                    ("AVX2", "cuda", "bfloat16")])
def test_auto_dtype_is_bf16_only_where_its_matmuls_are_native(monkeypatch, capability, device, want):
    from reasonbudget.models.registry import resolve_dtype

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_dtype("auto", device) == want
    assert resolve_dtype("float32", device) == "float32"


@pytest.mark.parametrize("ours", [True, False])
def test_auto_dtype_of_a_quantized_cpu_model_is_float32_where_our_kernels_run(monkeypatch, ours):
    from reasonbudget.models import native
    from reasonbudget.models.registry import resolve_dtype

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(native, "available", lambda: ours)
    assert resolve_dtype("auto", "cpu", "int4") == ("float32" if ours else "bfloat16")
    assert resolve_dtype("auto", "cpu", "none") == "bfloat16"
    assert resolve_dtype("auto", "cuda", "int8") == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu", "int4") == "bfloat16"  # asked for, kept


def test_an_unknown_dtype_is_refused_naming_the_choices(checkpoint):
    with pytest.raises(ValueError, match="float16.*float32, bfloat16, auto"):
        load_model(str(checkpoint[0]), dtype="float16")
