"""On a CUDA device: draws follow the per-row CPU generators (the same tokens as on CPU for the same seeds), the
models' logits match the CPU ones, and a sampled decode is reproducible. Skipped without CUDA."""

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.engine.sampling import child_generators, draw, probabilities, sample

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LOGITS_ATOL = 1e-3
"""float32 on both devices (TF32 matmuls are off by default); the kernels' summation order differs."""


def _gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_a_draw_on_cuda_equals_the_draw_on_cpu_for_the_same_generators():
    logits = torch.randn(6, 5000, generator=torch.Generator().manual_seed(0))  # [R, V]
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.9))
    for _ in range(3):  # and the generators advance alike
        on_cpu, on_cuda = draw(probs, _gens(1, 6)), draw(probs.cuda(), _gens(1, 6))
        assert on_cuda.device.type == "cuda"
        assert torch.equal(on_cuda.cpu(), on_cpu)
    cfg = SamplingConfig(temperature=0.7, top_k=50)
    assert torch.equal(sample(logits.cuda(), cfg, _gens(2, 6)).cpu(), sample(logits, cfg, _gens(2, 6)))


def test_child_generators_accept_a_cuda_parent():
    kids = child_generators(torch.Generator(device="cuda").manual_seed(0), 3)
    again = child_generators(torch.Generator(device="cuda").manual_seed(0), 3)
    assert [k.initial_seed() for k in kids] == [k.initial_seed() for k in again]


@pytest.fixture(scope="module", params=["testbed-target", "smollm2-135m"])
def models(request):
    from reasonbudget.models import load_model

    return load_model(request.param), load_model(request.param, device="cuda")


def _prompt(model) -> list[int]:
    return model.encode("Natalia sold clips to 48 of her friends in April.")


def test_logits_on_cuda_match_cpu(models):
    cpu, cuda = models
    ids = torch.tensor([_prompt(cpu)])
    want = cpu.backend(ids, cpu.backend.new_cache(1, 64), torch.tensor([0])).logits
    got = cuda.backend(ids.cuda(), cuda.backend.new_cache(1, 64), torch.tensor([0])).logits
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert (got.cpu() - want).abs().max().item() < LOGITS_ATOL


def _sampled(model, seed: int, num_rows: int = 3) -> list[tuple[int, ...]]:
    engine = Engine(model)
    rows = engine.prefill([tuple(_prompt(model))] * num_rows, max_new_tokens=24)
    out = engine.decode(rows, max_new_tokens=24, sampling=SamplingConfig(temperature=1.0),
                        generator=_gens(seed, num_rows), stop_on_eos=False)
    engine.release(rows)
    return [tuple(d.tokens) for d in out]


def test_a_sampled_decode_on_cuda_is_reproducible(models):
    _, cuda = models
    first = _sampled(cuda, seed=5)
    assert len(first) == 3 and all(len(t) == 24 for t in first)
    assert _sampled(cuda, seed=5) == first
