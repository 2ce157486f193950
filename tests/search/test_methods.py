"""The search methods on the testbed target: they run through the common Method interface, count their cost,
are reproducible from the per-problem generators, and survive bad PRMs and bad budgets."""

import math
from collections import Counter, defaultdict

import pytest
import torch

from reasonbudget.engine import SamplingConfig
from reasonbudget.methods.base import make_method
from reasonbudget.rewards.base import StepSequence
from reasonbudget.rewards.oracle import OraclePRM
from reasonbudget.tasks import grade_many

ALL = ["best-of-n", "weighted-best-of-n", "majority-vote", "beam-search", "dvts", "particle-filter",
       "particle-gibbs", "parallel-tempering:iterations=1"]
OUTCOME_LEVEL = {"best-of-n", "weighted-best-of-n", "majority-vote"}


def _run(testbed, spec, budget, seed=0, prompts=None):
    engine, problems, all_prompts = testbed
    prompts = prompts if prompts is not None else all_prompts
    method = make_method(spec, SamplingConfig(temperature=0.8))
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return method.run(engine, prompts, budget=budget, generator=gens)


@pytest.mark.parametrize("spec", ALL)
def test_every_method_answers_and_counts_its_cost(testbed, spec):
    engine, problems, prompts = testbed
    results = _run(testbed, spec + (",prm=oracle" if ":" in spec else ":prm=oracle"), 4)
    assert len(results) == len(problems)
    for r in results:
        assert r.answer.startswith("The answer is") and r.finish_reason == "stop"
        u = r.usage
        assert u.completion_tokens >= len(r.tokens)  # every particle's tokens, not just the chosen one's
        assert (u.prm_calls > 0) == (spec != "majority-vote")
    assert not engine.cache.in_use.any()
    right = grade_many([(r.answer, p.gold, "testbed") for r, p in zip(results, problems)])
    if spec in OUTCOME_LEVEL:
        # these pick among N finished samples: with the exact checker as PRM they answer right exactly when one of
        # the samples is right (majority vote: when the right answer is among the most frequent ones)
        for r, p, ok in zip(results, problems, right):
            counts = Counter(a.strip() for a in r.trace["answers"])
            graded = dict(zip(counts, grade_many([(a, p.gold, "testbed") for a in counts])))
            if spec == "majority-vote":
                assert ok or not any(graded[a] for a, c in counts.items() if c == max(counts.values()))
            else:
                assert ok == any(graded.values())
    else:
        # step-level search with the exact checker finds the right answer on these problems
        assert sum(right) >= 2


def test_a_problem_gets_the_same_result_alone_or_in_a_batch(testbed):
    engine, problems, prompts = testbed
    batch = _run(testbed, "particle-filter:prm=oracle", 4, seed=7)
    alone = _run(testbed, "particle-filter:prm=oracle", 4, seed=8, prompts=prompts[1:2])
    assert alone[0].tokens == batch[1].tokens  # problem 1's generator is seed 7 + 1 in both runs


def test_budgets_are_checked(testbed):
    for spec, budget, match in [("particle-filter", 0, "budget N >= 1"), ("best-of-n", None, "budget N >= 1"),
                                ("particle-gibbs:iterations=2", 3, "multiple of iterations"),
                                ("particle-gibbs:iterations=2", 2, ">= 2 particles"),
                                ("parallel-tempering", 6, "multiple of iterations x chains")]:
        with pytest.raises(ValueError, match=match):
            _run(testbed, spec, budget)


def _has_check_line(item: StepSequence) -> bool:
    return any("check:" in step for step in item.steps)


class FlakyPRM:
    """The oracle, except that it fails on every prefix with a "check:" line (NaN in a batch, an exception when
    scored alone) and every third batch raises (the scorer then retries item by item). So a particle scores
    NaN exactly when its text has a "check:" line, and the tests can tell failed particles by their text."""

    def __init__(self):
        self.oracle, self.calls, self.items = OraclePRM(), 0, []

    def score_steps(self, items):
        self.calls += 1
        self.items.extend(items)
        if len(items) > 1 and self.calls % 3 == 0:
            raise RuntimeError("PRM server hiccup")
        if len(items) == 1 and _has_check_line(items[0]):
            raise RuntimeError("PRM choked on a check line")
        scores = self.oracle.score_steps(items)
        return [torch.full_like(s, float("nan")) if _has_check_line(it) else s for it, s in zip(items, scores)]


def _failed_prefixes_kept(items) -> list[StepSequence]:
    """Failed prefixes that were extended although a live prefix of the same problem and round had a score.
    Particles advance one step per round, so a round's live prefixes of a problem have the same step count."""
    rounds = defaultdict(list)
    for it in items:
        rounds[it.problem, len(it.steps)].append(it)
    kept = []
    for it in items:
        parent = StepSequence(it.problem, it.steps[:-1])
        live = [q for q in rounds[parent.problem, len(parent.steps)] if not q.steps[-1].lstrip().startswith("</think>")]
        if _has_check_line(parent) and not all(_has_check_line(q) for q in live):
            kept.append(parent)
    return kept


def test_a_failing_prm_drops_particles_and_the_run_goes_on(testbed, monkeypatch):
    import reasonbudget.rewards.factory as factory

    flaky = FlakyPRM()
    monkeypatch.setattr(factory, "load_prm", lambda *a, **k: flaky)
    num_failed = 0
    for spec in ("particle-filter", "beam-search", "best-of-n"):
        flaky.items.clear()
        results = _run(testbed, spec, 4)
        for r in results:
            assert r.answer.startswith("The answer is")
            scores = r.trace.get("scores", r.trace.get("final_scores"))
            if scores is not None and any(s is not None for s in scores):  # a scored candidate beats a failed one
                assert "check:" not in r.thinking, (spec, scores)
        # resampling (particle filter) and pruning (beam search) drop a failed particle
        assert _failed_prefixes_kept(flaky.items) == [], spec
        num_failed += sum(_has_check_line(it) for it in flaky.items)
    assert num_failed > 0 and flaky.calls > 3  # the PRM did fail, and the runs went on


def test_prm_names_are_checked(testbed, smollm):
    with pytest.raises(ValueError, match="accepted are auto, testbed, oracle, judge"):
        _run(testbed, "particle-filter:prm=nonsense", 2)
    with pytest.raises(ValueError, match="prm_noise is only for the oracle"):
        _run(testbed, "particle-filter:prm=testbed,prm_noise=0.1", 2)
    with pytest.raises(ValueError, match="prm_calibrated is only for a noisy oracle"):
        _run(testbed, "particle-filter:prm=oracle,prm_calibrated=true", 2)
    from reasonbudget.rewards.factory import load_prm

    with pytest.raises(ValueError, match="scores testbed problems only"):
        load_prm("oracle", smollm)


def test_parallel_tempering_swap_rule():
    from reasonbudget.methods.scaling.parallel_tempering import swap_probability

    # moving the better path (higher S) to the colder chain (tau 1) is always accepted
    assert swap_probability(1.0, 2.0, 3.0, 5.0) == 1.0
    assert swap_probability(1.0, 2.0, 5.0, 3.0) == pytest.approx(math.exp(-1.0))
    assert swap_probability(1.0, 2.0, float("-inf"), float("-inf")) == 0.0


def test_gibbs_reference_is_weighted_by_its_own_score_at_the_same_step():
    from reasonbudget.methods.scaling.particle_filter import REFERENCE, ParticleFilterConfig, resample_population
    from reasonbudget.steps.particles import Particle

    cfg = ParticleFilterConfig()
    free = [Particle(0, None, steps=("a",), scores=(0.5,)), Particle(0, None, steps=("b",), scores=(0.5,))]
    ref = Particle(0, None, steps=("x", "y", "z"), scores=(0.9, 0.1, 0.1), done=True, finish="answer")
    gen = torch.Generator().manual_seed(0)

    def share(step):
        draws = [p for _ in range(2000) for p in resample_population(free, cfg, gen, reference=ref, step=step)]
        return sum(p is REFERENCE for p in draws) / len(draws)

    # odds weights: step 1 -> 9 : 1 : 1 (reference 0.818); step 2 -> 1/9 : 1 : 1 (0.053)
    assert share(1) == pytest.approx(9 / 11, abs=0.02)
    assert share(2) == pytest.approx((1 / 9) / (2 + 1 / 9), abs=0.015)


def test_the_trained_prm_is_the_default_for_testbed_models_and_its_reading_is_counted(testbed):
    results = _run(testbed, "particle-filter", 2)
    for r in results:
        assert r.usage.prm_calls >= 2 and r.usage.prm_tokens >= r.usage.prm_calls * 3  # at least a step each


def test_the_self_judge_scores_particles_on_their_rows_at_a_fixed_cost_per_call(smollm):
    """prm=judge on a chat model: each call reads only the judge's question (not the prefix, as judge-text
    does), every particle gets a finite score, and no KV row is left behind."""
    from reasonbudget.engine import Engine
    from reasonbudget.rewards.judge import SelfJudge
    from reasonbudget.tasks import get_task

    task = get_task("gsm8k")
    prompt = task.prompt(smollm, task.problems(1)[0])
    engine = Engine(smollm)
    used = {}
    for prm in ("judge", "judge-text"):
        method = make_method(f"particle-filter:prm={prm},max_tokens=64,max_steps=3,max_step_tokens=24",
                             SamplingConfig(temperature=0.8))
        (r,) = method.run(engine, [prompt], budget=2, generator=[torch.Generator().manual_seed(0)])
        assert r.usage.prm_calls >= 2 and all(s is not None for s in r.trace["final_scores"])
        used[prm] = r.usage.prm_tokens / r.usage.prm_calls
        assert not engine.cache.in_use.any()
    assert used["judge"] <= len(SelfJudge(smollm).open_suffix) + 1
    assert used["judge-text"] > 3 * used["judge"]


def test_particle_filter_trace_reports_what_argmax_and_vote_select(testbed):
    """One run answers for both deterministic selection rules: the argmax pick is the returned answer, and a
    run with selection=vote returns the vote pick."""
    argmax = _run(testbed, "particle-filter:prm=oracle,prm_noise=0.2", 4)
    voted = _run(testbed, "particle-filter:prm=oracle,prm_noise=0.2,selection=vote", 4)
    for a, v in zip(argmax, voted):
        assert a.trace["answers"] == v.trace["answers"] and a.trace["picks"] == v.trace["picks"]
        assert a.answer == a.trace["answers"][a.trace["picks"]["argmax"]]
        assert v.answer == v.trace["answers"][v.trace["picks"]["vote"]]


def test_particle_gibbs_copies_the_reference_prefix_by_forking(testbed, monkeypatch):
    """Copies of the reference's prefix are KV-row forks: prefills are the prompts' (once) plus at most one
    per reference and iteration (a finished reference gets its row back once), however often it is drawn."""
    engine = testbed[0]
    calls = []
    real = engine.prefill
    monkeypatch.setattr(engine, "prefill", lambda prompts, **kw: calls.append(len(prompts)) or real(prompts, **kw))
    results = _run(testbed, "particle-gibbs:prm=oracle,prm_noise=0.2,iterations=3", 12)
    assert len(results) == 3 and not engine.cache.in_use.any()
    assert calls[0] == 3 and len(calls) <= 1 + 2 * 3


def test_judge_text_can_use_another_model_as_judge(testbed):
    """judge_model names the judging model (e.g. a bigger one): it is loaded once, in the policy's dtype, and
    scores the particles; judge_model with another PRM, or an unknown model, is refused up front."""
    from reasonbudget.rewards.factory import load_prm

    engine = testbed[0]
    judge = load_prm("judge-text", engine.model, judge_model="smollm2-135m")  # another tokenizer, too
    assert judge.model.name == "smollm2-135m" and judge.model.backend is not engine.model.backend
    assert load_prm("judge-text", engine.model, judge_model="smollm2-135m") is judge
    results = _run(testbed, "particle-filter:prm=judge-text,judge_model=smollm2-135m,max_steps=3", 2,
                   prompts=testbed[2][:1])
    assert all(r.usage.prm_calls >= 2 and None not in r.trace["final_scores"] for r in results)
    with pytest.raises(ValueError, match="judge_model is only for prm=judge-text"):
        _run(testbed, "particle-filter:prm=judge,judge_model=smollm2-135m", 2)
    with pytest.raises(ValueError, match="unknown model"):
        _run(testbed, "particle-filter:prm=judge-text,judge_model=no-such-judge", 2)
