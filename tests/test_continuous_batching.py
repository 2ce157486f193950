"""Continuous batching at the engine level: a request that arrives while a batch decodes joins it between steps,
its prompt prefilled a chunk per step (chunked prefill), and decodes as it does alone."""

import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.controllers import KEEP, Action, Observer
from reasonbudget.engine.generation import generate


class Collect(Observer):
    def __init__(self) -> None:
        self.results = []

    def on_result(self, result) -> None:
        self.results.append(result)


class LateJob:
    """An `Admission` that offers one job at its `after`-th poll."""

    spare_rows = 2

    def __init__(self, prompt, budget: BudgetConfig, chunk_tokens: int, after: int = 3) -> None:
        self.prompt, self.budget, self.chunk_tokens, self.after = prompt, budget, chunk_tokens, after
        self.polls, self.observer = 0, Collect()

    def poll(self, fits, free_rows):
        self.polls += 1
        if self.polls == self.after and free_rows and fits(self.prompt, self.budget):
            return [(self.prompt, self.budget, self.observer, torch.Generator().manual_seed(0))]
        return []


class StopAfter(Collect):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def on_token(self, token: int, forced: bool) -> Action:
        self.left -= 1
        return Action(stop=True) if self.left <= 0 else KEEP


def test_a_long_prompt_joins_over_several_steps_and_decodes_as_alone(monkeypatch):
    from reasonbudget.models import load_model
    from reasonbudget.tasks import get_task

    engine = Engine(load_model("testbed-target"))
    late_prompt = engine.prompt(get_task("testbed:d=6").problems(1)[0].question)
    running_prompt = engine.prompt(get_task("testbed:d=8").problems(1)[0].question)
    first = BudgetConfig(max_thinking_tokens=120, max_answer_tokens=16)
    late = BudgetConfig(max_thinking_tokens=40, max_answer_tokens=16)
    greedy = SamplingConfig()
    (alone,) = generate(engine, [late_prompt], [late], greedy, torch.Generator().manual_seed(0))
    feeds = []
    real_append = engine.append
    monkeypatch.setattr(engine, "append", lambda rows, s: feeds.append([len(x) for x in s]) or real_append(rows, s))
    admission = LateJob(late_prompt, late, chunk_tokens=8)
    engine.admission = admission
    running = Collect()
    try:
        # the running prompt is the longer one: a joining row must fit the batch's cache rows
        (long_result,) = generate(engine, [running_prompt], [first], greedy,
                                  torch.Generator().manual_seed(0), observers=[running])
    finally:
        engine.admission = None
    (joined,) = admission.observer.results
    assert len(running_prompt) > len(late_prompt) > 4 * 8  # so its prefill took several steps of at most 8 tokens
    assert len(feeds) >= len(late_prompt) // 8 - 1 and all(sum(f) <= 8 for f in feeds)
    assert joined.tokens == alone.tokens and joined.usage.thinking_tokens <= 40
    assert long_result.usage.thinking_tokens <= 120 and [r.tokens for r in running.results] == [long_result.tokens]


def test_a_joining_prompt_still_prefilling_when_the_batch_ends_is_finished_not_dropped():
    from reasonbudget.models import load_model
    from reasonbudget.tasks import get_task

    engine = Engine(load_model("testbed-target"))
    late_prompt = engine.prompt(get_task("testbed:d=6").problems(1)[0].question)
    running_prompt = engine.prompt(get_task("testbed:d=8").problems(1)[0].question)
    budget = BudgetConfig(max_thinking_tokens=20, max_answer_tokens=8)
    late = budget
    greedy = SamplingConfig()
    (alone,) = generate(engine, [late_prompt], [late], greedy, torch.Generator().manual_seed(0))
    admission = LateJob(late_prompt, late, chunk_tokens=2, after=1)  # 2 tokens a step: far longer than the batch
    engine.admission = admission
    try:
        (ended,) = generate(engine, [running_prompt], [budget], greedy, torch.Generator().manual_seed(0),
                            observers=[StopAfter(3)])  # the running row stops (a client went away, say)
    finally:
        engine.admission = None
    assert len(ended.tokens) < len(late_prompt) // 2  # the batch's own row ended long before the join was prefilled
    (joined,) = admission.observer.results
    assert joined.tokens == alone.tokens
