"""The testbed world without models: problems, traces, the step checker, tokenizer, task specs, oracle PRM."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonbudget.rewards import StepSequence, aggregate
from reasonbudget.rewards.oracle import OraclePRM
from reasonbudget.tasks import get_task
from reasonbudget.testbed.problems import MOD, generate, parse_question
from reasonbudget.testbed.tokenizer import build_tokenizer
from reasonbudget.testbed.traces import (final_answer, label_steps, label_trace, reference_completion,
                                         reference_lines)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10**6))
def test_generation_is_seeded_and_questions_parse_back(d, seed):
    a, b = generate(5, difficulty=d, seed=seed), generate(5, difficulty=d, seed=seed)
    assert a == b
    for p in a:
        assert p.difficulty == d and all(0 <= v < MOD for v in p.values)
        q = parse_question(p.question, p.id)
        assert (q.start, q.steps) == (p.start, p.steps)


def test_difficulty_is_validated():
    with pytest.raises(ValueError, match="1..8"):
        generate(1, difficulty=9, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10**6))
def test_reference_traces_are_all_correct(d, seed):
    rng = random.Random(seed)
    for p in generate(3, difficulty=d, seed=seed):
        text = reference_completion(p, rng)
        thinking, answer = text.split("</think>")
        assert all(label.correct for label in label_steps(p, thinking))
        assert final_answer(answer) == p.answer


def test_a_wrong_step_derails_everything_after_it():
    p = generate(1, difficulty=6, seed=3)[0]
    lines = reference_lines(p, random.Random(1))
    i = next(j for j, line in enumerate(lines) if not line.startswith("check"))
    lhs, rhs = lines[i].rsplit(" = ", 1)
    lines[i] = f"{lhs} = {(int(rhs) + 1) % MOD}"
    labels = label_steps(p, "\n".join(lines))
    assert [lab.correct for lab in labels] == [True] * i + [False] * (len(lines) - i)
    assert not any(lab.correct for lab in label_steps(p, "banana\n12 + 3 = 15"))


def test_closing_step_catches_a_trace_that_stops_early():
    p = generate(1, difficulty=4, seed=8)[0]
    lines = [x for x in reference_lines(p, random.Random(2)) if not x.startswith("check")]
    full = label_trace(p, "\n".join(lines), f"The answer is {p.answer}.")
    assert [lab.correct for lab in full] == [True] * (len(lines) + 1)
    assert full[-1].line == f"</think>\nThe answer is {p.answer}."
    early = label_trace(p, "\n".join(lines[:-1]), f"The answer is {p.values[-2]}.")
    assert [lab.correct for lab in early] == [True] * (len(lines) - 1) + [False]  # every written line is right
    wrong_answer = label_trace(p, "\n".join(lines), f"The answer is {(p.answer + 1) % MOD}.")
    assert not wrong_answer[-1].correct


def test_traces_vary_in_length_a_third_is_self_checks_and_concise_traces_are_short():
    from reasonbudget.testbed.traces import concise_length

    rng = random.Random(0)
    total = checks = terse = lines_seen = concise = 0
    for d in range(1, 9):
        for p in generate(150, difficulty=d, seed=11):
            lines = reference_lines(p, rng)
            total += sum(len(x) + 1 for x in lines)
            checks += sum(len(x) + 1 for x in lines if x.startswith("check"))
            terse += sum(x[:1] in "+-*" for x in lines)
            lines_seen += sum(not x.startswith("check") for x in lines)
            concise += concise_length(p)
    assert 0.25 < checks / total < 0.38
    assert 0.2 < terse / lines_seen < 0.4  # terse rate ~ U(0, 0.6) per trace
    assert 0.3 < concise / total < 0.45  # room to cut: the all-terse trace without checks


def test_tokenizer_round_trip_and_chat_template():
    tok = build_tokenizer()
    text = "<|user|>(3 + 4) * 2 mod 100\n<|assistant|><think>\n3 + 4 = 7\n</think>\nThe answer is 14.<|end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and len(ids) == len(tok.encode(text, add_special_tokens=False))
    assert tok.convert_tokens_to_ids("</think>") == 2 and tok.eos_token_id == 0
    prompt = tok.apply_chat_template([{"role": "user", "content": "1 + 1 mod 100"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<|user|>1 + 1 mod 100\n<|assistant|><think>\n"


def test_task_specs():
    assert len(get_task("testbed").problems()) == 800
    d3 = get_task("testbed:d=3").problems()
    assert len(d3) == 100 and all(p.meta["difficulty"] == 3 for p in d3)
    fresh = get_task("testbed:d=3,seed=7").problems()
    assert {p.id for p in fresh}.isdisjoint({p.id for p in d3})
    assert get_task("testbed:seed=1,n=5").spec == "testbed:seed=1,n=5"
    for bad in ("testbed:d=0", "testbed:d=x", "testbed:n=5", "testbed:k=1"):
        with pytest.raises(ValueError):
            get_task(bad)


def test_committed_default_sets_match_the_generator():
    from reasonbudget.tasks.testbed import DEFAULT_PER_DIFFICULTY, DEFAULT_SEED

    committed = get_task("testbed:d=5").problems()
    fresh = get_task(f"testbed:d=5,seed={DEFAULT_SEED},n={DEFAULT_PER_DIFFICULTY}").problems()
    assert [(p.question, p.gold) for p in committed] == [(p.question, p.gold) for p in fresh]


def test_oracle_prm_scores_are_the_checker_labels_and_noise_flips_them():
    p = generate(1, difficulty=4, seed=2)[0]
    lines = tuple(reference_lines(p, random.Random(0)))
    bad = lines[:1] + ("1 + 1 = 3",) + lines[1:]
    clean = OraclePRM().score_steps([StepSequence(p.question, lines), StepSequence(p.question, bad)])
    assert clean[0].tolist() == [1.0] * len(lines)
    assert clean[1].tolist() == [1.0] + [0.0] * len(lines)
    many = [StepSequence(q.question, tuple(reference_lines(q, random.Random(0))))
            for q in generate(500, difficulty=4, seed=3)]
    noisy = OraclePRM(noise=0.2, seed=1).score_steps(many)
    flipped = sum(int((s == 0).sum()) for s in noisy) / sum(s.numel() for s in noisy)
    assert 0.17 < flipped < 0.23  # binomial sd ~0.008 at these counts: a >3.5 sd band
    again = OraclePRM(noise=0.2, seed=1).score_steps(many[::-1])[::-1]  # a fixed function: order-free
    assert all(torch.equal(a, b) for a, b in zip(noisy, again))
    soft = OraclePRM(noise=0.2, seed=1, calibrated=True).score_steps(many)  # same flips, posterior scores
    assert all(torch.equal(s, torch.where(n > 0.5, 0.8, 0.2)) for s, n in zip(soft, noisy))
    closing = StepSequence(p.question, lines + (f"</think>\nThe answer is {p.answer}.",))
    wrong = StepSequence(p.question, lines + (f"</think>\nThe answer is {(p.answer + 1) % MOD}.",))
    assert [s[-1].item() for s in OraclePRM().score_steps([closing, wrong])] == [1.0, 0.0]


def test_aggregate():
    s = torch.tensor([0.9, 0.5, 0.8])
    assert aggregate(s, "last") == pytest.approx(0.8) and aggregate(s, "min") == pytest.approx(0.5)
    assert aggregate(s, "prod") == pytest.approx(0.36) and aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert aggregate(torch.tensor([]), "min") == 0.0
    with pytest.raises(ValueError):
        aggregate(s, "max")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10**6), st.integers(4, 200))
def test_budgeted_traces_fit_when_they_can_and_stay_correct(d, seed, budget):
    from reasonbudget.testbed.traces import budgeted_lines, concise_lines, thinking_text

    (p,) = generate(1, difficulty=d, seed=seed)
    rng = random.Random(seed)
    lines = budgeted_lines(p, rng, budget)
    shortest = concise_lines(p)
    assert all(lab.correct for lab in label_steps(p, thinking_text(lines)))
    if len(thinking_text(shortest)) < budget:
        assert len(thinking_text(lines)) < budget
    else:  # cannot be met: the shortest trace, over budget (the model overshoots what it cannot do)
        assert lines == shortest


def test_concise_length_is_the_all_terse_trace_without_checks():
    from reasonbudget.testbed.traces import concise_length

    (p,) = generate(1, difficulty=3, seed=4)
    lines = [f"{op}{k}={b}" for (op, k), b in zip(p.steps, p.values)]
    assert concise_length(p) == sum(len(x) + 1 for x in lines)
    assert all(lab.correct for lab in label_steps(p, "\n".join(lines)))


def test_terse_lines_are_checked_against_the_chain():
    (p,) = generate(1, difficulty=2, seed=4)
    (op1, k1), (op2, k2) = p.steps
    v1, v2 = p.values
    good = f"{op1}{k1}={v1}\ncheck: {op1}{k1}={v1}\n{v1} {op2} {k2} = {v2}"
    assert [lab.correct for lab in label_steps(p, good)] == [True, True, True]
    wrong_op = "+" if op1 != "+" else "-"
    for bad in (f"{op1}{k1}={(v1 + 1) % 100}", f"{wrong_op}{k1}={v1}", f"{op2}{k2}={v2}", f"{op1}{k1}+1={v1}"):
        assert not label_steps(p, bad)[0].correct


def test_prompt_following_examples_use_tales_prompts():
    from reasonbudget.methods.budget.tale_text import COT_TRIGGER, ESTIMATE_INSTRUCTIONS, parse_estimate
    from reasonbudget.training.testbed_lm import budget_example
    from reasonbudget.testbed.traces import concise_length

    (p,) = generate(1, difficulty=5, seed=9)
    rng = random.Random(0)
    layouts = set()
    for _ in range(12):  # both layouts are taught: the reference's and ours
        message, completion = budget_example(p, rng, "budget")
        ours = message.startswith(p.question + "\n" + COT_TRIGGER + " and use less than ")
        assert ours or message.startswith(f"Q: {p.question}\n") and f"{COT_TRIGGER} and use less than " in message
        layouts.add(ours)
        assert final_answer(completion) == p.answer
        message, completion = budget_example(p, rng, "estimate")
        assert message.startswith(tuple(ESTIMATE_INSTRUCTIONS.values())) and completion.startswith("</think>\n")
        assert parse_estimate(completion) == concise_length(p)
    assert layouts == {True, False}
    with pytest.raises(ValueError, match="unknown example kind"):
        budget_example(p, rng, "other")


def test_without_the_mix_the_training_stream_is_unchanged():
    """The committed verifier LM and target were trained on this stream: it must not change silently, or the
    checkpoints stop being what `reasonbudget testbed train` makes (digest of the committed version's stream)."""
    import hashlib

    from reasonbudget.training.testbed_lm import make_batch

    tok, rng, h = build_tokenizer(), random.Random("train:target:0"), hashlib.sha256()
    for step in range(3):
        x, labels = make_batch(tok, rng, step * 32, 32, budget_mix=0.0)
        h.update(x.numpy().tobytes())
        h.update(labels.numpy().tobytes())
    assert h.hexdigest()[:16] == "ce3d60d9f8cd56be"  # testbed v2 (operands 1..49)
