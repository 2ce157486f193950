"""Weight-only quantization: the pure quantize/dequantize math, the packed kernels against it, and whole models
against their unquantized selves."""

import pytest
import torch

from reasonbudget.models.quant import (
    KERNEL_DTYPE,
    Int4Linear,
    Int8Linear,
    check_quant,
    dequantize_int4,
    dequantize_int8,
    int4_group,
    quantize_int4,
    quantize_int8,
)


def test_int8_round_trip_is_within_half_a_step_per_channel():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 48)[:, None]
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127  # each row's largest weight maps to +-127
    err = (dequantize_int8(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())


def test_int4_round_trip_is_within_half_a_step_per_group():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
    q, scale, low = quantize_int4(w, 64)
    assert int(q.min()) == 0 and int(q.max()) == 15 and scale.shape == (32, 4)
    err = (dequantize_int4(q, scale, low, 64) - w).abs().reshape(32, 4, 64)
    assert bool((err <= scale[..., None] / 2 + 1e-6).all())
    with pytest.raises(ValueError, match="multiple of the group"):
        quantize_int4(w[:, :100], 64)
    assert int4_group(576) == 64 and int4_group(896) == 128 and int4_group(224) == 32 and int4_group(100) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [101, 128])  # 101: padded to the kernel's multiple of 16, then cut back
def test_torch_kernels_compute_x_times_the_dequantized_weight(dtype, n):
    g = torch.Generator().manual_seed(2)
    w, b, x = torch.randn(n, 192, generator=g), torch.randn(n, generator=g), torch.randn(2, 3, 192, generator=g)
    xr = x.to(KERNEL_DTYPE).float()  # the kernels read x and the scales in bfloat16, whatever the model's dtype
    r = lambda t: t.to(KERNEL_DTYPE).float()  # noqa: E731
    bias = lambda t: t.to(dtype).float()  # noqa: E731  (the bias is added in the model's dtype)
    # the accumulation order and the kernels' bfloat16 output (8 bits of mantissa)
    tol = dict(atol=0.15, rtol=1e-2)
    q, s = quantize_int8(w)
    ref8 = xr @ (q.float() * r(s)[:, None]).T + bias(b)
    out8 = Int8Linear(w, b, dtype, kernel="torch")(x.to(dtype))
    assert out8.dtype == dtype
    torch.testing.assert_close(out8.float(), ref8, **tol)
    q, s, lo = quantize_int4(w, 64)
    off = lo + 8 * s  # the kernel's offset, rounded to bfloat16 like the scale
    ref4 = xr @ (((q.float() - 8).reshape(n, 3, 64) * r(s)[..., None] + r(off)[..., None]).reshape(n, 192)).T + bias(b)
    out4 = Int4Linear(w, b, dtype, 64, kernel="torch")(x.to(dtype))
    assert out4.shape == (2, 3, n) and out4.dtype == dtype
    torch.testing.assert_close(out4.float(), ref4, **tol)
    # and both stay near the unquantized product: relative RMS error (int8: 255 levels per row, int4: 16 per group
    # of 64 gaussian weights, a step of ~0.3 sigma)
    exact = x @ w.T + b
    rel = lambda y: float((y - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())  # noqa: E731
    assert rel(ref8) < 0.01 and rel(ref4) < 0.12


def test_unknown_quant_is_refused():
    with pytest.raises(ValueError, match="accepted are none, int8, int4, bf16"):
        check_quant("int3")


@pytest.mark.parametrize("quant", ["int8", "int4", "bf16"])
def test_quantized_model_logits_stay_close_and_greedy_text_mostly_agrees(quant):
    """The testbed target quantized on load: every linear replaced; next-token distributions close to bf16's
    (int8: KL < 0.01 nats; int4, 16 levels per group: KL < 0.1), argmax agreement on the prompt positions."""
    from reasonbudget.engine import Engine
    from reasonbudget.models import load_model
    from reasonbudget.tasks import get_task

    base, quantized = load_model("testbed-target", dtype="bfloat16"), load_model("testbed-target", dtype="bfloat16",
                                                                             quant=quant)
    assert quantized.backend.quant_report == {"quantized": 4 * 4 + 1, "kept": 0}
    task = get_task("testbed:d=5")
    prompts = [task.prompt(base, p) for p in task.problems(4)]
    logits = []
    for m in (base, quantized):
        eng = Engine(m)
        rows = eng.prefill(prompts, max_new_tokens=8)
        logits.append(torch.log_softmax(eng.peek(rows, [()] * len(prompts)).float(), -1))
    kl = (logits[0].exp() * (logits[0] - logits[1])).sum(-1)
    assert float(kl.max()) < (0.1 if quant == "int4" else 0.01)
    assert bool((logits[0].argmax(-1) == logits[1].argmax(-1)).all())


def test_bf16_weights_under_float32_activations_equal_a_float32_model_with_bf16_rounded_weights():
    """quant=bf16 changes the weights' storage, not the arithmetic: the same logits as the float32 model whose
    linear weights were rounded to bf16, up to float32 summation order."""
    from reasonbudget.models import load_model
    from reasonbudget.models.llama import Linear

    model = load_model("testbed-target", dtype="float32", quant="bf16")
    rounded = load_model("testbed-target", dtype="float32")
    for m in rounded.backend.modules():
        if isinstance(m, Linear):
            m.weight.data = m.weight.data.to(torch.bfloat16).float()
            m.pack()
    assert model.backend.quant_report == {"quantized": 4 * 4 + 1, "kept": 0}
    tokens = torch.tensor([[1, 5, 9, 13, 2, 7, 11, 3]])
    logits = []
    for m in (model, rounded):
        cache = m.backend.new_cache(1, 16)
        logits.append(m.backend(tokens, cache, torch.tensor([0])).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=2e-4, rtol=1e-4)


def test_quant_on_the_transformers_fallback_is_refused(tmp_path):
    from reasonbudget.models import load_model

    with pytest.raises(ValueError, match="no quantized linears"):
        load_model("testbed-target", backend="hf", quant="int8")


def test_quant_flags_in_run_and_eval(tmp_path):
    """`--quant` reaches the model in `run`; a bad value is one clear line; eval records it in the identity
    and refuses to mix quantized and unquantized results in one directory."""
    from typer.testing import CliRunner

    from reasonbudget.cli import app

    r = CliRunner().invoke(app, ["run", "1 + 2 mod 100", "-m", "testbed-target", "--method", "plain", "--quant", "int8",
                                 "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["run", "1 + 2 mod 100", "-m", "testbed-target", "--quant", "int3"])
    assert r.exit_code != 0 and "accepted are none, int8, int4" in r.output and "Traceback" not in r.output
    args = ["eval", "--task", "testbed:d=1", "--method", "plain", "--limit", "2", "-m", "testbed-target",
            "--out", str(tmp_path), "--quiet"]
    assert CliRunner().invoke(app, [*args, "--quant", "int4"]).exit_code == 0
    import json

    assert json.loads((tmp_path / "run.json").read_text())["identity"]["quant"] == "int4"
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "quant='int4' there vs None now" in r.output
