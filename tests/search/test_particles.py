"""The step generator on the engine: steps end at the delimiter, rows fork instead of re-prefilling,
rebinding keeps the KV cache consistent with each particle's tokens."""

import pytest
import torch

from reasonbudget.engine import SamplingConfig
from reasonbudget.steps.particles import StepConfig, StepRunner


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_steps_are_lines_and_the_closing_step_holds_the_answer(testbed):
    engine, problems, prompts = testbed
    runner = StepRunner(engine, SamplingConfig(temperature=0.8), StepConfig())
    (pop,) = runner.start(prompts[:1], [3])
    prefill_rows = set(runner.roots)
    assert len({p.row for p in pop} | prefill_rows) == 4  # three forks of one prefilled root
    try:
        while not all(p.done for p in pop):
            before = [len(p.steps) for p in pop]
            pop = runner.extend(pop, _gens(1))
            for p, b in zip(pop, before):
                assert len(p.steps) == b + 1 or p.done
                assert engine.tokens(p.row)[len(prompts[0]) :] == list(p.tokens)  # row history = particle
        for p in pop:
            assert p.finish == "answer" and p.steps[-1].startswith("</think>")
            assert all("\n" not in s for s in p.steps[:-1]) and p.step_ends[-1] == len(p.tokens)
    finally:
        runner.close()
    assert not engine.cache.in_use.any()  # every row handed back


def test_rebind_forks_duplicates_and_the_copies_continue_from_the_same_prefix(testbed):
    engine, problems, prompts = testbed
    runner = StepRunner(engine, SamplingConfig(temperature=1.0), StepConfig())
    (pop,) = runner.start(prompts[:1], [2], spare_rows=2)
    try:
        pop = runner.extend(pop, _gens(1, 5))
        new = runner.rebind(pop, [pop[1], pop[1], pop[1]])
        assert len({p.row for p in new}) == 3 and new[0].row == pop[1].row
        for p in new:
            assert engine.tokens(p.row) == list(prompts[0]) + list(pop[1].tokens)
            assert int(engine.cache.lengths[p.row]) == len(prompts[0]) + len(pop[1].tokens) - 1
        cut = runner.fork_prefix(runner.extend(new, _gens(1, 9))[0], 1)
        assert engine.tokens(cut.row) == list(prompts[0]) + list(pop[1].tokens) and cut.steps == pop[1].steps
    finally:
        runner.close()


def test_a_step_that_never_ends_is_capped(testbed):
    engine, problems, prompts = testbed
    runner = StepRunner(engine, SamplingConfig(temperature=1.0), StepConfig(max_step_tokens=3, max_steps=4))
    (pop,) = runner.start(prompts[:1], [4])
    try:
        pop = runner.extend(pop, _gens(1))
        assert all(len(p.tokens) <= 3 for p in pop)  # cut at 3 tokens, mid-line
        rounds = 1
        while not all(p.done for p in pop):
            pop = runner.extend(pop, _gens(1))
            rounds += 1
        assert rounds <= 4  # the last allowed round runs on to the end of the answer
        assert all(p.finish == "answer" for p in pop)
    finally:
        runner.close()


def test_bad_step_settings_are_refused():
    with pytest.raises(ValueError, match="max_step_tokens=0"):
        StepConfig(max_step_tokens=0)
    with pytest.raises(ValueError, match="delimiter"):
        StepConfig(delimiter="")
