"""The PRM learning-curve benchmark's pure parts: the beta-binomial fit and the label-noise ceiling."""

import torch

from reasonbudget.training.head_prm import StepData
from tests.helpers import load_benchmark


def test_beta_binomial_fit_recovers_the_values_distribution():
    bench = load_benchmark("prm_curve")
    torch.manual_seed(0)
    v = torch.distributions.Beta(torch.full((4000,), 0.5), torch.full((4000,), 2.0)).sample()
    counts = (torch.rand(4000, 3) < v[:, None]).sum(1)
    a, b = bench.fit_beta_binomial(counts, 3)
    assert abs(a / (a + b) - 0.2) < 0.02 and 0.35 < a < 0.7 and 1.4 < b < 2.8


def data(y, last):
    n = len(y)
    return StepData(x=torch.zeros(n, 1), y=torch.tensor(y), solution=torch.arange(n), last=torch.tensor(last),
                    problem=[f"p{i}" for i in range(n)], correct=[v == 1.0 for v in y])


def test_ceiling_is_high_when_values_are_near_0_or_1_and_near_chance_when_all_alike():
    bench = load_benchmark("prm_curve")
    # U-shaped values (counts mostly 0 or 3): the true value nearly decides an any-of-3 label
    u = data([0.0] * 300 + [1 / 3] * 20 + [2 / 3] * 20 + [1.0] * 60 + [1.0, 0.0], [False] * 400 + [True, True])
    res = bench.label_noise_ceiling(u, 3, draws=20)
    assert res["beta"][0] < 0.2 and res["beta"][1] < 0.5 and res["step_auroc"] > 0.95
    # every step 1 of 3: values all about 1/3, the label is a coin flip the value cannot foresee
    flat = data([1 / 3] * 600 + [1.0, 0.0], [False] * 600 + [True, True])
    res = bench.label_noise_ceiling(flat, 3, draws=20)
    assert res["step_auroc"] < 0.75 and torch.allclose(flat.y[:600], torch.full((600,), 1 / 3))  # labels restored


def test_layer_subset_picks_each_wanted_layers_block_in_order():
    bench = load_benchmark("prm_curve")
    width = 3
    # features of layers (6, 12, 24): each column holds its layer number
    x = torch.tensor([[6.0] * width + [12.0] * width + [24.0] * width] * 2)
    d = StepData(x=x, y=torch.zeros(2), solution=torch.arange(2), last=torch.tensor([False, True]),
                 problem=["p", "q"], correct=[True, False])
    picked = bench.layer_subset(d, [6, 12, 24], [24, 6], width)
    assert picked.x.tolist() == [[24.0] * width + [6.0] * width] * 2
    assert d.x.shape == (2, 9)  # the caller's table is not changed
