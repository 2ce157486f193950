"""Pure sampling functions: filters keep what they must, and configs validate."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reasonbudget.engine.sampling import SamplingConfig, apply_top_k, apply_top_p, probabilities, sample

logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
@example([0.0] * 17, 0.5)  # all tied: the first-index argmax must survive (found by hypothesis in CI)
def test_top_p_keeps_at_least_p_and_the_argmax(row, p):
    logits = torch.tensor([row])
    kept = torch.isfinite(apply_top_p(logits, p))
    probs = logits.softmax(-1)
    assert kept[0, logits.argmax()].item()
    assert probs[kept].sum().item() >= p - 1e-5
    # minimal: dropping the least likely kept token would fall below p
    if kept.sum() > 1:
        smallest = probs[kept].min().item()
        assert probs[kept].sum().item() - smallest < p + 1e-5


@settings(max_examples=100, deadline=None)
@given(logit_rows, st.integers(1, 50))
def test_top_k_keeps_k_largest(row, k):
    logits = torch.tensor([row])
    kept = torch.isfinite(apply_top_k(logits, k))
    assert kept.sum().item() >= min(k, len(row))  # ties may keep more
    assert kept[0, logits.argmax()].item()


def test_greedy_is_argmax_and_needs_no_generator():
    logits = torch.randn(4, 30)
    assert torch.equal(sample(logits, SamplingConfig(), None), logits.argmax(-1))


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    cold = probabilities(logits, SamplingConfig(temperature=0.1))
    hot = probabilities(logits, SamplingConfig(temperature=10.0))
    assert cold[0, 2] > 0.99 and hot[0].max() < 0.4


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2)])
def test_config_validation(kw):
    with pytest.raises(ValueError):
        SamplingConfig(**kw)


def _top_p_full_sort(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The reference: rank the whole row."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = sorted_logits.softmax(-1)
    drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, probs.cumsum(-1) - probs >= p)
    return logits.masked_fill(drop, float("-inf"))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 12), st.floats(0.05, 0.99), st.integers(0, 2**31 - 1))
def test_top_p_after_top_k_ranks_only_the_survivors_and_keeps_the_same_tokens(rows, k, p, seed):
    g = torch.Generator().manual_seed(seed)
    # coarse logits (bf16-like) so that ties are common, including at the top-k boundary
    logits = (torch.randn(rows, 200, generator=g) * 4).round() / 2
    filtered = apply_top_k(logits, k)
    assert torch.equal(torch.isfinite(apply_top_p(filtered, p)), torch.isfinite(_top_p_full_sort(filtered, p)))


@pytest.mark.parametrize("vocab", [5, 64, 100, 1000])
@pytest.mark.parametrize("block", [1, 7, 64, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # numpy's block sums; torch's (as on a GPU)
def test_inverse_cdf_picks_the_token_a_whole_row_cumsum_picks(vocab, block, dtype):
    from reasonbudget.engine.sampling import inverse_cdf

    g = torch.Generator().manual_seed(vocab * 31 + block)
    probs = (torch.randn(48, vocab, generator=g) * 3).softmax(-1)
    probs[::3, vocab // 2 :] = 0  # mass in the first half only
    probs[1::3, : vocab - 1] = 0  # all of it on the last token (the last, maybe short, block)
    probs[2, :] = 0
    probs[2, 0] = 2.0  # unnormalised weights
    probs = probs.to(dtype)
    u = torch.rand(48, dtype=torch.float64, generator=g)
    u[:4] = torch.tensor([0.0, 1 - 2**-53, 0.5, 1 - 2**-53], dtype=torch.float64)  # the ends of [0, 1)
    cdf = probs.double().cumsum(-1)
    reference = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    reference = torch.where(reference < vocab, reference, (probs > 0).int().cumsum(-1).argmax(-1))  # u at the end
    tokens = inverse_cdf(probs, u, block)
    assert torch.equal(tokens, reference)
    assert bool((probs.gather(1, tokens[:, None]) > 0).all())  # zero-weight tokens are never picked


def test_inverse_cdf_of_no_rows_is_no_tokens():
    from reasonbudget.engine.sampling import inverse_cdf

    for dtype in (torch.float32, torch.bfloat16):
        assert inverse_cdf(torch.zeros(0, 3000, dtype=dtype), torch.zeros(0, dtype=torch.float64)).shape == (0,)
