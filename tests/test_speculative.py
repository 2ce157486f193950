"""Speculative decoding on the engine: greedy output equals greedy decoding, budgets hold under speculation
(property test), usage counts both models, bad pairs refused. The distribution test is in tests/stat."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.methods import make_method
from reasonbudget.models import load_model


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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(1, 90), gamma=st.integers(1, 6), problem=st.integers(0, 4),
       method=st.sampled_from(["budget-forcing", "budget-guidance:hard_cap=true", "budget-guidance"]),
       temperature=st.sampled_from([0.0, 1.0]))
def test_thinking_never_exceeds_the_budget_and_an_answer_follows(testbed, budget, gamma, problem, method,
                                                                  temperature):
    engine, prompts = testbed
    sep = "," if ":" in method else ":"
    m = make_method(f"{method}{sep}draft=testbed-draft,gamma={gamma}", SamplingConfig(temperature=temperature))
    (r,) = m.run(engine, [prompts[problem]], budget=budget, generator=torch.Generator().manual_seed(budget))
    if "hard_cap" in method or method == "budget-forcing":
        assert r.usage.thinking_tokens <= budget
    assert r.answer.strip() and r.trace["answer_has_text"]


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


def test_serve_refuses_a_draft_with_another_tokenizer():
    from typer.testing import CliRunner

    from reasonbudget.cli import app

    r = CliRunner().invoke(app, ["serve", "-m", "testbed-target", "--draft-model", "smollm2-135m"])
    assert r.exit_code != 0 and "do not share a tokenizer" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["serve", "-m", "testbed-target", "--draft-quant", "int4"])
    assert r.exit_code != 0 and "name one" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["serve", "-m", "testbed-target", "--draft-model", "testbed-draft",
                                 "--draft-quant", "int3"])
    assert r.exit_code != 0 and "accepted are" in r.output and "Traceback" not in r.output


def test_mtad_greedy_equals_greedy_decoding_and_tau_trades_acceptance(testbed):
    engine, prompts = testbed
    plain = _run(engine, prompts, "plain")
    mtad = _run(engine, prompts, "mtad:draft=testbed-draft,gamma=4,width=3")
    assert [r.tokens for r in mtad] == [r.tokens for r in plain]  # a greedy target keeps its argmax prefix
    sampled = SamplingConfig(temperature=1.0)

    def acceptance(tau):
        rs = make_method(f"mtad:draft=testbed-draft,tau={tau}", sampled).run(
            engine, prompts, budget=None, generator=torch.Generator().manual_seed(1))
        assert all(r.answer for r in rs)
        return sum(r.usage.accepted_tokens for r in rs) / sum(r.usage.drafted_tokens for r in rs)

    assert acceptance(0.01) > acceptance(1.0)
    for bad, match in (("tau=0", "tau=0"), ("tau=1.5", "tau=1.5"), ("width=0", "width=0")):
        with pytest.raises(ValueError, match=match):
            make_method(f"mtad:draft=testbed-draft,{bad}", sampled)


def test_mtad_rows_take_over_their_best_beam(testbed):
    """After a round of beam drafting, each draft row holds its proposed block with that block's K/V (the best
    beam's cache, copied): its next-token logits equal those of the same text prefilled afresh, so the next round
    feeds the draft only the target's own tokens."""
    from reasonbudget.engine.speculation import MTADSettings

    engine, prompts = testbed
    spec = engine.speculation("testbed-draft", 4, mtad=MTADSettings(width=3))
    d = spec.draft
    spec.start([0, 1], [prompts[0], prompts[1]], room=32)
    try:
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        proposed = spec.propose([0, 1], [prompts[0], prompts[1]], SamplingConfig(temperature=1.0), gens)
        for row, prompt, (block, logq) in zip((0, 1), prompts[:2], proposed):
            assert len(block) == 4 and len(logq) == 4
            draft_row = spec.rows[row]
            assert d.tokens(draft_row) == list(prompt) + block
            fresh = Engine(d.model)
            fresh_row = fresh.prefill([tuple(prompt) + tuple(block)], max_new_tokens=2)
            expected = fresh.forward_last(fresh_row)
            got = d.forward_last(torch.tensor([draft_row]))
            d.rewind_last(torch.tensor([draft_row]))
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    finally:
        spec.close()


def test_adaptive_gamma_keeps_greedy_output_and_moves_with_acceptance(testbed):
    from reasonbudget.engine.speculation import adapt_gamma

    assert [adapt_gamma(4, 4, 4, 16), adapt_gamma(4, 4, 2, 16), adapt_gamma(1, 1, 0, 16), adapt_gamma(16, 16, 16, 16)] \
        == [6, 3, 1, 16]
    engine, prompts = testbed
    plain = _run(engine, prompts, "plain")
    adaptive = _run(engine, prompts, "speculative:draft=testbed-draft,gamma=2,adaptive_gamma=true")
    assert [r.tokens for r in adaptive] == [r.tokens for r in plain]
    blocks = [len(r.trace["speculation"]["position_drafted"]) for r in adaptive]
    assert max(blocks) > 2  # some row's gamma grew past its start
