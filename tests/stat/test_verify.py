"""Draft/target verification rules, alone: greedy matching, exact rejection sampling (statistical: what it emits
is distributed as the target's p, whatever the draft), MTAD's longest joint-ratio prefix, and the analysis
formulas."""

import math

import pytest
import torch

from reasonbudget.engine.sampling import draw
from reasonbudget.engine.verify import (
    acceptance_rate,
    expected_speedup,
    expected_tokens_per_pass,
    greedy_verify,
    mtad_verify,
    rejection_verify,
)

CHI2_4DF_P999 = 18.47
CHI2_24DF_P999 = 51.18


def test_greedy_matching_keeps_the_agreeing_prefix_then_the_targets_token():
    assert greedy_verify([5, 6, 7, 8], [5, 6, 7]) == (3, 8)  # all kept: the bonus
    assert greedy_verify([5, 9, 7, 8], [5, 6, 7]) == (1, 9)  # a later match does not count
    assert greedy_verify([1], []) == (0, 1)
    with pytest.raises(ValueError):
        greedy_verify([1, 2], [1, 2])


def _dists(seed: int, rows: int, v: int = 5) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, v, generator=torch.Generator().manual_seed(seed)) * 1.5, -1)


def test_rejection_sampling_emits_the_targets_distribution_one_position():
    """gamma = 1: the first emitted token (the kept draft, or the correction) must follow p_1 exactly, even
    though q_1 differs from it a lot; acceptance matches sum min(p, q)."""
    p, q = _dists(1, 2), _dists(2, 1)
    g = torch.Generator().manual_seed(3)
    n_runs, counts, kept = 20000, torch.zeros(5), 0
    for _ in range(n_runs):
        x = int(draw(q, [g])[0])
        n, tok = rejection_verify(p, q, [x], g)
        first = x if n == 1 else tok
        counts[first] += 1
        kept += n
    expected = p[0] * n_runs
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_4DF_P999, chi2
    beta = float(acceptance_rate(p[:1], q)[0])
    assert abs(kept / n_runs - beta) < 4 * math.sqrt(beta * (1 - beta) / n_runs)


def test_rejection_sampling_emits_the_targets_joint_over_two_positions():
    """gamma = 2 with position-dependent p and q (as if p_2 did not depend on the first token): the pair of
    the first two emitted tokens follows p_1 x p_2 (25 cells)."""
    p, q = _dists(4, 3), _dists(5, 2)
    g = torch.Generator().manual_seed(6)
    n_runs, counts = 20000, torch.zeros(5, 5)
    for _ in range(n_runs):
        x = [int(draw(q[i : i + 1], [g])[0]) for i in range(2)]
        n, tok = rejection_verify(p, q, x, g)
        out = x[:n] + [tok]
        if len(out) < 2:  # rejected at the first position: the second token comes from p_2 itself
            out.append(int(draw(p[1:2], [g])[0]))
        counts[out[0], out[1]] += 1
    expected = (p[0][:, None] * p[1][None, :]) * n_runs
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_24DF_P999, chi2


def test_rejection_with_an_identical_draft_accepts_everything():
    p = _dists(7, 4)
    g = torch.Generator().manual_seed(8)
    for _ in range(50):
        x = [int(draw(p[i : i + 1], [g])[0]) for i in range(3)]
        assert rejection_verify(p, p[:3], x, g)[0] == 3


def test_mtad_takes_the_longest_passing_prefix_not_the_first_failure():
    lq = [math.log(0.5)] * 3
    # ratios 0.2, then 4: joint 0.2 fails tau 0.5, joint 0.8 passes: the later token makes up for the first
    assert mtad_verify([math.log(0.1), math.log(2.0), math.log(0.5)], lq, 0.5) == 3
    assert mtad_verify([math.log(0.1), math.log(0.5), math.log(0.5)], lq, 0.5) == 0
    assert mtad_verify([math.log(0.5)] * 3, lq, 1.0) == 0  # joint ratio 1 is not > 1
    assert mtad_verify([], [], 0.5) == 0
    with pytest.raises(ValueError):
        mtad_verify([0.0], [0.0], 0.0)


def test_analysis_formulas():
    assert expected_tokens_per_pass(0.0, 4) == 1.0 and expected_tokens_per_pass(1.0, 4) == 5.0
    assert expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)
    # i.i.d. acceptance 0.914 at gamma 4: (1 - 0.914^5) / 0.086 = 0.362132 / 0.086
    assert expected_tokens_per_pass(0.914, 4) == pytest.approx(4.2108, abs=1e-3)
    assert expected_speedup(0.914, 4, 0.51) == pytest.approx(4.2108 / 3.04, abs=1e-3)
    p = torch.tensor([[0.5, 0.5, 0.0]])
    assert float(acceptance_rate(p, torch.tensor([[0.0, 0.5, 0.5]]))[0]) == pytest.approx(0.5)


def test_beam_step_greedy_takes_the_most_likely_pairs():
    from reasonbudget.engine.verify import beam_step

    score = torch.tensor([math.log(0.5), math.log(0.1)])
    logq = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05]]))
    parent, tok, new = beam_step(score, logq, 2, greedy=True)
    assert list(zip(parent, tok)) == [(0, 0), (0, 1)]  # joint 0.30, 0.15 beat 0.09
    assert torch.allclose(new.exp(), torch.tensor([0.30, 0.15], dtype=torch.float64))


def test_beam_step_draws_pairs_in_proportion_to_their_joint_probability():
    """Frequencies of (beam, token) pairs follow exp(score + log q) normalised over all pairs (in log space;
    a log-softmax over probabilities, the reference's bug, would flatten them)."""
    from reasonbudget.engine.verify import beam_step

    score = torch.log(torch.tensor([0.7, 0.3]))
    logq = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    expected = (score[:, None] + logq).exp().flatten()
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    n = 5000
    for _ in range(n):
        parent, tok, _ = beam_step(score, logq, 1, greedy=False, generator=g)
        counts[parent[0] * 3 + tok[0]] += 1
    chi2 = float(((counts - expected * n) ** 2 / (expected * n)).sum())
    assert chi2 < 20.52, chi2  # 0.999 quantile, 5 degrees of freedom
