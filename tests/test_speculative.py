"""Speculative decoding on the engine: greedy output equals greedy decoding, budgets hold under speculation,
sampled output follows the target's distribution (statistical), usage counts both models, bad pairs refused."""

import math

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.engine.sampling import probabilities
from reasonbudget.engine.speculation import Speculation
from reasonbudget.methods import make_method
from reasonbudget.models import load_model
from tests.helpers import runtime_from_hf, tiny_hf_model


@pytest.fixture(scope="module")
def testbed():
    from reasonbudget.tasks import get_task

    target = load_model("testbed-target")
    task = get_task("testbed:d=6")
    return Engine(target), [task.prompt(target, p) for p in task.problems(5)]


def _run(engine, prompts, spec, budget=None, seed=0):
    return make_method(spec, SamplingConfig()).run(engine, prompts, budget=budget,
                                                   generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_speculation_equals_greedy_decoding(testbed, gamma):
    engine, prompts = testbed
    plain = _run(engine, prompts, "plain")
    spec = _run(engine, prompts, f"speculative:draft=testbed-draft,gamma={gamma}")
    assert [r.tokens for r in spec] == [r.tokens for r in plain]
    for r in spec:
        u = r.usage
        assert 0 < u.accepted_tokens <= u.drafted_tokens
        passes = u.forward_passes_by_model
        assert passes["testbed-target"] < len(r.tokens)  # fewer target passes than tokens: drafts were kept
        assert u.tokens_by_model["testbed-draft"] > 0 and u.energy_flops > plain[0].usage.energy_flops * 0


@pytest.mark.parametrize("method", ["budget-forcing", "budget-guidance:hard_cap=true"])
def test_budgets_hold_under_speculation(testbed, method):
    """The decode loop hands every kept draft token to the budget controller, which cuts the run at the budget:
    thinking never exceeds it, and greedy results equal the method without a draft."""
    engine, prompts = testbed
    sep = "," if ":" in method else ":"
    for budget in (5, 30):
        base = _run(engine, prompts, method, budget)
        spec = _run(engine, prompts, f"{method}{sep}draft=testbed-draft,gamma=4", budget)
        assert [r.tokens for r in spec] == [r.tokens for r in base]
        assert all(r.usage.thinking_tokens <= budget for r in spec)
        assert sum(r.usage.drafted_tokens for r in spec) > 0


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


def test_sampled_speculation_follows_the_target_distribution():
    """A tiny random target and a different random draft, top-k 8 at T=1: the first and second tokens emitted
    under speculation (gamma 3) follow the target's exact distributions, although the draft's differ."""
    target = runtime_from_hf(tiny_hf_model("llama", seed=0), name="t")
    draft = runtime_from_hf(tiny_hf_model("llama", seed=1), name="d")
    cfg = SamplingConfig(temperature=1.0, top_k=8)
    prompt = tuple(target.encode("ab"))
    n = 3000
    engine = Engine(target)
    engine.reserve(n, len(prompt) + 8)
    rows = engine.prefill([prompt] * n, max_new_tokens=6)
    gens = [torch.Generator().manual_seed(10_000 + i) for i in range(n)]
    spec = Speculation(Engine(draft), gamma=3)
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


def test_bad_pairs_and_settings_are_refused(testbed):
    engine, prompts = testbed
    with pytest.raises(ValueError, match="needs a draft model"):
        make_method("speculative", SamplingConfig())
    with pytest.raises(ValueError, match="gamma=0"):
        make_method("speculative:draft=testbed-draft,gamma=0", SamplingConfig())
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        _run(engine, prompts[:1], "speculative:draft=smollm2-135m")


def test_cli_run_with_a_draft_reports_drafted_and_accepted_tokens():
    import json

    from typer.testing import CliRunner

    from reasonbudget.cli import app

    r = CliRunner().invoke(app, ["run", "(12 + 5) * 3 mod 100", "-m", "testbed-target", "--method",
                                 "speculative:draft=testbed-draft,gamma=4", "--json"])
    assert r.exit_code == 0, r.output
    usage = json.loads(r.output)["usage"]
    assert usage["drafted_tokens"] >= usage["accepted_tokens"] > 0
    assert set(usage["forward_passes_by_model"]) == {"testbed-target", "testbed-draft"}
