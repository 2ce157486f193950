"""Statistical test: the exponential-race draw samples the filtered distribution.

Chi-square goodness of fit with 9 degrees of freedom; the threshold 27.88 is the 0.999 quantile, so a
correct sampler fails this test with probability 1e-3 (fixed seeds make it deterministic in CI).
"""

import torch

from reasonbudget.engine.sampling import SamplingConfig, child_generators, probabilities, sample

CHI2_9DF_P999 = 27.88


def test_draws_match_probabilities():
    logits = torch.randn(1, 10, generator=torch.Generator().manual_seed(1)) * 1.5
    cfg = SamplingConfig(temperature=0.8)
    p = probabilities(logits, cfg)[0]
    n = 20000
    gens = child_generators(torch.Generator().manual_seed(2), 1)
    counts = torch.zeros(10)
    for _ in range(n // 500):
        draws = torch.stack([sample(logits, cfg, gens) for _ in range(500)]).flatten()
        counts += torch.bincount(draws, minlength=10)
    expected = p * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < CHI2_9DF_P999, chi2


def test_filtered_tokens_are_never_drawn():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0, -3.0]])
    cfg = SamplingConfig(temperature=1.0, top_k=2)
    gens = child_generators(torch.Generator().manual_seed(3), 1)
    draws = {int(sample(logits, cfg, gens)) for _ in range(2000)}
    assert draws == {0, 1}
