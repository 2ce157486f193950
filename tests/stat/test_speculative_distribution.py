"""Statistical test: tokens emitted under speculative decoding follow the target's distribution, whatever the
draft, for several gammas, temperatures and truncations (top-k, top-p)."""

import math

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.engine.sampling import probabilities
from reasonbudget.engine.speculation import Speculation
from tests.helpers import runtime_from_hf, tiny_hf_model


def _chi2_threshold(df: int, z: float = 3.09) -> float:
    """0.999 quantile of chi-square with df degrees of freedom (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: torch.Tensor, probs: torch.Tensor, n: int) -> tuple[float, int]:
    """Chi-square over cells expected >= 5, the rest pooled into one cell."""
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("gamma, cfg", [
    (3, SamplingConfig(temperature=1.0, top_k=8)),
    (1, SamplingConfig(temperature=0.7, top_k=8)),
    (5, SamplingConfig(temperature=1.0, top_p=0.6)),
])
def test_sampled_speculation_follows_the_target_distribution(gamma, cfg):
    """A tiny random target and a different random draft (same tokenizer): the first and second tokens
    emitted under speculation follow the target's exact distributions (3000 seeded rows; the second token's
    is the mixture over the first), although the draft's differ. Breaking the rule (always keeping the draft, or
    drawing a rejected position's token from p instead of the residual) fails this test."""
    target = runtime_from_hf(tiny_hf_model("llama", seed=0), name="t")
    draft = runtime_from_hf(tiny_hf_model("llama", seed=1), name="d")
    prompt = tuple(target.encode("ab"))
    n = 3000
    engine = Engine(target)
    engine.reserve(n, len(prompt) + 8)
    rows = engine.prefill([prompt] * n, max_new_tokens=6)
    gens = [torch.Generator().manual_seed(10_000 + i) for i in range(n)]
    spec = Speculation(Engine(draft), gamma=gamma)
    out = engine.decode(rows, max_new_tokens=2, sampling=cfg, generator=gens, stop_on_eos=False, speculation=spec)
    engine.release(rows)
    assert sum(d.speculation.accepted for d in out) > 0  # drafts were kept, so verification was exercised

    def dist(prefix):
        e = Engine(target)
        (r,) = e.prefill([prefix], max_new_tokens=2).tolist()
        return probabilities(e.peek(torch.tensor([r]), [()]), cfg)[0]

    p1 = dist(prompt)
    p2 = sum(p1[t] * dist(prompt + (t,)) for t in p1.nonzero().flatten().tolist())
    for pos, p in ((0, p1), (1, p2)):
        counts = torch.bincount(torch.tensor([d.tokens[pos] for d in out]), minlength=p.numel()).float()
        chi2, df = _chi2(counts, p, n)
        assert chi2 < _chi2_threshold(df), (pos, chi2, df)


