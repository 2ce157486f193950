"""The step-level draft/target loop: appending tokens to a KV row, adopting another model's prefix, and the loop
itself against the two models run alone."""

from dataclasses import dataclass

import pytest
import torch

from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.models import load_model
from reasonbudget.models.registry import check_shared_tokenizer
from reasonbudget.steps import StepConfig, StepRunner
from reasonbudget.steps.draft_target import DRAFT, TARGET, Decision, draft_target_loop


@pytest.fixture(scope="module")
def pair():
    from reasonbudget.tasks import get_task

    draft, target = load_model("testbed-draft"), load_model("testbed-target")
    task = get_task("testbed:d=4")
    problems = task.problems(4)
    return draft, target, [p.question for p in problems], [task.prompt(target, p) for p in problems]


def test_appended_tokens_read_like_a_prefill(pair):
    _, target, _, prompts = pair
    eng = Engine(target)
    extra = target.encode("37 + 8 = 45\n")
    eng.reserve(2, 200)
    a, b = eng.prefill([prompts[0] + extra, prompts[0]], max_new_tokens=50).tolist()
    fed = eng.append(torch.tensor([b]), [extra])
    assert fed == 1 and eng.tokens(b) == eng.tokens(a)
    la, lb = eng.peek(torch.tensor([a, b]), [(), ()])
    torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    assert eng.append(torch.tensor([a]), [()]) == 0  # nothing to feed: no forward


@dataclass
class Fixed:
    """Takes the target's step in the rounds listed (per prompt: round index -> True)."""

    needs_target: bool
    target_rounds: set[int]
    seen: int = 0

    def decide(self, questions, proposals):
        out = []
        for p in proposals:
            r = len(p.history)
            assert self.needs_target == (p.target is not None)
            out.append(Decision(r in self.target_rounds, {"round": float(r)}))
        return out


def _run(pair, arbiter, cfg=StepConfig(max_steps=30, max_tokens=400)):
    draft, target, questions, prompts = pair
    greedy = SamplingConfig(temperature=0.0)
    runners = StepRunner(Engine(draft), greedy, cfg), StepRunner(Engine(target), greedy, cfg)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return draft_target_loop(*runners, prompts, questions, arbiter, gens)


def _alone(model, prompts):
    from reasonbudget.methods.base import make_method

    method = make_method("plain", SamplingConfig(temperature=0.0), max_thinking_tokens=400, max_answer_tokens=32)
    return [r.tokens for r in method.run(Engine(model), prompts, budget=None, generator=torch.Generator())]


@pytest.mark.parametrize("needs_target", [False, True])
def test_all_draft_or_all_target_reproduce_each_model_alone(pair, needs_target):
    draft, target, _, prompts = pair
    kept = _run(pair, Fixed(needs_target, set()))
    assert [o.final.tokens for o in kept] == _alone(draft, prompts)
    assert all(set(o.writers) == {DRAFT} and o.token_acceptance == 1.0 for o in kept)
    assert all(o.target_calls == (len(o.rounds) if needs_target else 0) for o in kept)
    taken = _run(pair, Fixed(needs_target, set(range(100))))
    assert [o.final.tokens for o in taken] == _alone(target, prompts)
    assert all(set(o.writers) == {TARGET} and o.acceptance == 0.0 and o.target_calls == len(o.rounds) for o in taken)


def test_mixed_rounds_continue_the_accepted_text(pair):
    """Target at rounds 1 and 3: the draft must continue from the target's steps (adopted into its row) and
    the target from the draft's; every accepted step is the chosen model's step from that prefix."""
    outs = _run(pair, Fixed(False, {1, 3}))
    for o in outs:
        steps = list(o.final.steps)
        for k, (prop, dec) in enumerate(o.rounds):
            chosen = prop.target if dec.take_target else prop.draft
            assert tuple(steps[len(prop.history) : len(prop.history) + len(chosen)]) == chosen
            assert [s for s, _ in prop.history] == steps[: len(prop.history)]
        assert o.writers[1] == TARGET and o.writers[0] == DRAFT and o.target_calls == 2
        assert 0 < o.token_acceptance < 1


def test_a_pair_that_does_not_share_a_tokenizer_is_refused(pair, smollm):
    draft = pair[0]
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        check_shared_tokenizer(draft, smollm)
    check_shared_tokenizer(draft, pair[1])
