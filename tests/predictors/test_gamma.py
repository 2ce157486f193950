"""The pure math of Budget Guidance's length model, each function in isolation."""

import math

import pytest
import torch

from reasonbudget.predictors.gamma import (gamma_cdf, gamma_nll, guided_probs, remaining_length_targets,
                                           trained_rows)

def test_targets_count_down_to_one_at_the_position_predicting_end_of_thinking():
    # tokens: 0-1 prompt, 2-5 thinking, 6 the end-of-thinking marker, 7 answer
    assert remaining_length_targets(8, first=2, thinking_len=4).tolist() == [-1, 5, 4, 3, 2, 1, -1, -1]


def test_targets_of_a_truncated_sequence_keep_the_full_trace_lengths():
    full = remaining_length_targets(60, first=3, thinking_len=50)
    cut = remaining_length_targets(20, first=3, thinking_len=50)
    assert full[2] == 51 and full[52] == 1 and full[53] == -1
    assert torch.equal(cut, full[:20])


def test_targets_of_empty_thinking():
    assert remaining_length_targets(4, first=2, thinking_len=0).tolist() == [-1, 1, -1, -1]


def test_nll_matches_torch_gamma_log_prob():
    shape = torch.tensor([0.5, 2.0, 7.5, 30.0], dtype=torch.float64)
    rate = torch.tensor([0.3, 1.0, 4.0, 12.0], dtype=torch.float64)
    length = torch.tensor([1, 9, 120, 3000], dtype=torch.float64)
    expected = -torch.distributions.Gamma(shape, rate).log_prob(torch.log1p(length))
    assert torch.allclose(gamma_nll(shape, rate, length), expected)


@pytest.mark.parametrize("shape,rate,remaining", [(2.0, 1.0, 10), (15.0, 3.0, 200), (40.0, 12.0, 20)])
def test_cdf_is_the_integral_of_the_density(shape, rate, remaining):
    upper = math.log1p(remaining)
    x = torch.linspace(1e-9, upper, 200_001, dtype=torch.float64)
    density = torch.distributions.Gamma(torch.tensor(shape, dtype=torch.float64),
                                        torch.tensor(rate, dtype=torch.float64)).log_prob(x).exp()
    integral = float(torch.trapezoid(density, x))
    cdf = float(gamma_cdf(torch.tensor(shape, dtype=torch.float64), torch.tensor(rate, dtype=torch.float64),
                          remaining))
    assert cdf == pytest.approx(integral, abs=1e-6)


def test_cdf_grows_with_the_remaining_budget():
    values = gamma_cdf(torch.tensor(20.0), torch.tensor(5.0), torch.tensor([1.0, 10, 50, 100, 1000]))
    assert torch.all(values[1:] >= values[:-1]) and 0 <= float(values[0]) and float(values[-1]) <= 1


def test_filter_keeps_only_trained_rows():
    shape = torch.tensor([0.69, 30.0, 0.9, 30.0, 5.0])
    rate = torch.tensor([0.69, 12.0, 20.0, 9.0, 12.0])
    # untrained softplus(0); good (mode e^(29/12)-1 = 10); shape <= 1; rate < 10; mode e^(4/12)-1 = 0.4 < 0.9
    assert trained_rows(shape, rate).tolist() == [False, True, False, False, False]
    assert trained_rows(shape, rate, min_rate=5.0).tolist() == [False, True, False, True, False]  # short traces


def test_guided_probs_reweight_by_the_cdf_and_renormalise():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    shape, rate = torch.tensor([30.0, 30.0, 30.0]), torch.tensor([10.0, 15.0, 20.0])
    out, fell_back = guided_probs(logits, shape, rate, remaining=30)
    assert not fell_back
    g = gamma_cdf(shape, rate, 30)
    expected = torch.tensor([0.5, 0.3, 0.2]) * g
    assert torch.allclose(out, expected / expected.sum(), atol=1e-6)
    assert out[2] > 0.2  # the token predicted to end soonest gains under a tight budget


def test_guided_probs_fall_back_to_the_argmax_when_nothing_is_trusted():
    logits = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.0]])
    shape, rate = torch.full((2, 3), 0.69), torch.full((2, 3), 0.69)
    out, fell_back = guided_probs(logits, shape, rate, remaining=torch.tensor([5.0, 9.0]))
    assert out.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]] and fell_back.tolist() == [True, True]


def test_guided_probs_per_row_budgets_and_strength():
    logits = torch.zeros(2, 2)
    shape, rate = torch.tensor([[30.0, 30.0]] * 2), torch.tensor([[10.0, 20.0]] * 2)
    out, _ = guided_probs(logits, shape, rate, remaining=torch.tensor([5.0, 5000.0]))
    assert out[0, 1] > 0.9 and abs(float(out[1, 0]) - 0.5) < 1e-3  # a loose budget changes nothing
    stronger, _ = guided_probs(logits[:1], shape[:1], rate[:1], remaining=torch.tensor([12.0]), strength=3.0)
    weaker, _ = guided_probs(logits[:1], shape[:1], rate[:1], remaining=torch.tensor([12.0]))
    assert stronger[0, 1] > weaker[0, 1]
