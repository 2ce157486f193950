"""The remote step runner against a scripted server (one character = one token): steps end at the delimiter,
the answer is requested only when it was cut short, blank steps are asked again, and no request asks for more
tokens than the particle's cap or the server's context leave."""

from dataclasses import dataclass, field, replace

import torch

from reasonbudget.engine import SamplingConfig
from reasonbudget.models.profiles import TESTBED
from reasonbudget.remote.client import Completion
from reasonbudget.remote.model import RemoteModel
from reasonbudget.remote.steps import RemoteStepRunner
from reasonbudget.steps import StepConfig

PROMPT = "Q?<think>\n"


@dataclass
class ScriptedServer:
    """Continues `prompt + text` with the rest of `script` (the model's one output); records every request. Like
    vLLM, a matched stop string is left out of the text but counted among the generated tokens."""

    script: str
    context: int = 10_000
    requests: list[dict] = field(default_factory=list)

    def complete(self, prompts, *, max_tokens, seeds=None, extras=None, **kw):
        caps = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else max_tokens
        extras = extras or [None] * len(prompts)
        return [self.one(p, cap, (e or {}).get("stop") or []) for p, cap, e in zip(prompts, caps, extras)]

    def one(self, prompt: str, cap: int, stops: list[str]) -> Completion:
        assert prompt.startswith(PROMPT) and len(prompt) + cap <= self.context, (len(prompt), cap)
        self.requests.append({"prompt": prompt, "cap": cap, "stops": stops})
        rest = self.script[len(prompt) - len(PROMPT):]
        hits = [(rest.index(s), s) for s in stops if s in rest[:cap]]
        if hits:
            at, s = min(hits)
            text, finish, reason = rest[:at], "stop", s
        elif len(rest) <= cap:
            text, finish, reason = rest, "stop", None
        else:
            text, finish, reason = rest[:cap], "length", None
        body = {"choices": [{"text": text, "finish_reason": finish, "stop_reason": reason}]}
        return Completion(text, finish, len(prompt), len(text) + len(reason or ""), body)


def runner(script: str, **cfg) -> tuple[RemoteStepRunner, ScriptedServer]:
    server = ScriptedServer(script, context=cfg.pop("context", 10_000))
    model = RemoteModel("remote:stub#m", server, TESTBED, None, False, server.context)  # type: ignore[arg-type]
    r = RemoteStepRunner(model, SamplingConfig(), StepConfig(**{"max_answer_tokens": 64, **cfg}))
    r.prompt_tokens = []
    return r, server


def run_to_end(r: RemoteStepRunner, max_rounds: int = 50):
    (pop,) = r.start([PROMPT], [1])
    r.prompt_tokens = [len(PROMPT)]
    for _ in range(max_rounds):
        pop = r.extend(pop, [torch.Generator()])
        if all(p.done for p in pop):
            return pop[0]
    raise AssertionError("never finished")


def test_steps_end_at_the_delimiter_and_the_cut_answer_is_requested():
    r, server = runner("1+2=3\n3*2=6\n</think>\nThe answer is 6.")
    p = run_to_end(r)
    assert p.finish == "answer" and p.steps == ("1+2=3", "3*2=6", "</think>\nThe answer is 6.")
    assert len(server.requests) == 4  # three steps, then the answer cut at the delimiter after </think>
    result = r.result(p, wall_seconds=0.0)
    assert result.answer == "The answer is 6." and result.thinking == "1+2=3\n3*2=6"


def test_an_answer_that_ended_with_the_turn_is_not_continued():
    r, server = runner("1+2=3\n</think>The answer is 3.")
    p = run_to_end(r)
    assert p.finish == "answer" and len(server.requests) == 2
    assert r.result(p, wall_seconds=0.0).answer == "The answer is 3."


def test_the_end_of_the_turn_while_thinking_forces_the_close():
    r, server = runner("1+2=3")
    p = run_to_end(r)
    assert p.finish == "answer" and server.requests[-1]["prompt"].endswith(TESTBED.forcing)


def test_a_blank_step_is_asked_again_within_the_round():
    r, server = runner("1+2=3\n\n3*2=6\n</think>\nok")
    (pop,) = r.start([PROMPT], [1])
    r.prompt_tokens = [len(PROMPT)]
    pop = r.extend(pop, [torch.Generator()])
    pop = r.extend(pop, [torch.Generator()])
    assert pop[0].steps == ("1+2=3", "3*2=6")  # two rounds, two steps: scores stay aligned with steps


def test_no_request_asks_past_the_context_or_the_token_cap():
    long = "".join(f"{i}+1={i + 1}\n" for i in range(40)) + "</think>\nThe answer is 41."
    r, server = runner(long, context=len(PROMPT) + 60)
    p = run_to_end(r)
    assert p.finish == "length" and all(len(q["prompt"]) + q["cap"] <= server.context for q in server.requests)
    r, server = runner(long, max_tokens=50)
    p = run_to_end(r)
    assert p.finish == "length" and p.num_tokens <= 50


def test_particle_gibbs_cuts_a_reference_by_rounds_not_steps():
    """Issue: scores are per round, step ends per step. Here the second (last allowed) round writes two steps
    and the answer; a copy of the reference at round 2 must be the finished reference, not an unfinished particle
    holding the whole answer, and its copy at round 1 holds round 1 only."""
    from reasonbudget.methods.scaling.particle_filter import _reference_copy

    r, _ = runner("1+2=3\n3*2=6\n</think>\nThe answer is 6.", max_steps=2)
    ref = run_to_end(r)
    assert len(ref.steps) == 3 and len(ref.round_ends) == 2 and ref.done
    assert _reference_copy(r, ref, 2) == replace(ref, row=None)
    first = _reference_copy(r, ref, 1)
    assert not first.done and first.text == "1+2=3\n" and first.steps == ("1+2=3",)
