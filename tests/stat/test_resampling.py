"""Statistical tests of the resamplers: expected copies proportional to the weights.

Multinomial: over many independent resamplings the copy counts are multinomial(n, p); a chi-square test with
k - 1 = 5 degrees of freedom at the 0.999 quantile (20.52). Systematic: every particle gets floor or ceil of
n * p copies on every draw (a deterministic property), and the mean over draws is n * p.
"""

import math

import pytest
import torch

from reasonbudget.search.resampling import (effective_sample_size, log_weights, normalized, resample, systematic)

CHI2_5DF_P999 = 20.52
PROBS = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.2, 0.3], dtype=torch.float64)


def test_multinomial_copies_are_proportional_to_weights():
    gen = torch.Generator().manual_seed(0)
    n, draws = 8, 4000
    counts = torch.zeros(len(PROBS), dtype=torch.float64)
    for _ in range(draws):
        counts += torch.bincount(resample(PROBS, n, gen, "multinomial"), minlength=len(PROBS))
    expected = PROBS * n * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_5DF_P999, chi2


def test_systematic_gives_floor_or_ceil_copies_with_the_right_mean():
    gen = torch.Generator().manual_seed(1)
    n, draws = 7, 3000
    total = torch.zeros(len(PROBS), dtype=torch.float64)
    for _ in range(draws):
        copies = torch.bincount(systematic(PROBS, n, gen), minlength=len(PROBS)).double()
        assert bool(((copies == torch.floor(PROBS * n)) | (copies == torch.ceil(PROBS * n))).all()), copies
        assert int(copies.sum()) == n
        total += copies
    # the fractional part decides floor vs ceil: a Bernoulli per particle, sd <= 0.5 / sqrt(draws) per draw mean
    assert torch.allclose(total / draws, PROBS * n, atol=4 * 0.5 / math.sqrt(draws))


def test_zero_weight_is_never_drawn_and_bad_counts_are_refused():
    probs = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    for scheme in ("multinomial", "systematic"):
        assert 0 not in resample(probs, 64, gen, scheme).tolist()
    with pytest.raises(ValueError, match="cannot resample 0"):
        resample(probs, 0, gen)
    with pytest.raises(ValueError, match="accepted are multinomial, systematic"):
        resample(probs, 2, gen, "stratified")  # type: ignore[arg-type]


def test_log_weights_odds_versus_probability():
    s = torch.tensor([0.5, 0.8, 0.2, float("nan")])
    odds = log_weights(s, weighting="odds")
    assert odds[:3].tolist() == pytest.approx([0.0, math.log(4), -math.log(4)])
    assert odds[3] == float("-inf")  # a failed PRM score: never drawn
    assert log_weights(s, weighting="probability")[:3].tolist() == pytest.approx([math.log(s) for s in (0.5, 0.8, 0.2)])
    # at tau = 1, softmax of logits is proportional to odds: 0.8 has 16x the mass of 0.2
    p = normalized(odds[1:3])
    assert float(p[0] / p[1]) == pytest.approx(16.0)
    assert float(log_weights(torch.tensor([1.0]))[0]) == pytest.approx(math.log((1 - 1e-7) / 1e-7))  # clipped


def test_normalized_tempering_and_failures():
    logw = torch.tensor([0.0, math.log(4)], dtype=torch.float64)
    assert normalized(logw, tau=2.0).tolist() == pytest.approx([1 / 3, 2 / 3])
    assert normalized(torch.full((4,), float("-inf"))).tolist() == [0.25] * 4  # every PRM call failed
    with pytest.raises(ValueError):
        normalized(logw, tau=0)
    assert effective_sample_size(torch.full((8,), 1 / 8)) == pytest.approx(8)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1)
