"""The committed testbed checkpoints load through the registry like any model and speak the trace format.
(Their quality is measured by benchmarks/testbed_quality.py, not here.)"""

import torch

from reasonbudget.engine import Engine
from reasonbudget.methods.base import make_method
from reasonbudget.engine.sampling import SamplingConfig
from reasonbudget.models import build_prompt, load_model
from reasonbudget.rewards import StepSequence
from reasonbudget.training.testbed import CHECKPOINTS
from reasonbudget.rewards.testbed_prm import TestbedPRM as PRM
from reasonbudget.testbed.problems import generate
from reasonbudget.testbed.traces import final_answer, label_steps


def test_registry_models_write_parseable_traces():
    problems = generate(4, difficulty=2, seed=99)
    for name in ("testbed-target", "testbed-draft"):
        model = load_model(name)
        assert model.profile.name == "testbed" and model.num_params < 3_000_000
        method = make_method("plain", SamplingConfig(), max_thinking_tokens=200, max_answer_tokens=32)
        results = method.run(Engine(model), [build_prompt(model, p.question) for p in problems], budget=None,
                             generator=torch.Generator().manual_seed(0))
        for p, r in zip(problems, results):
            assert len(label_steps(p, r.thinking)) >= 1
            assert final_answer(r.answer) is not None


def test_trained_prm_scores_steps():
    p = generate(1, difficulty=3, seed=5)[0]
    good = StepSequence(p.question, (f"{p.start} {p.steps[0][0]} {p.steps[0][1]} = {p.values[0]}",))
    scores = PRM(CHECKPOINTS / "prm").score_steps([good, StepSequence(p.question, ())])
    assert scores[0].shape == (1,) and 0 <= float(scores[0][0]) <= 1 and scores[1].numel() == 0


def test_trained_prm_flags_a_wrong_step_and_a_premature_end():
    p = generate(1, difficulty=3, seed=21)[0]
    lines, v = [], p.start
    for (op, k), value in zip(p.steps, p.values):
        lines.append(f"{v} {op} {k} = {value}")
        v = value
    wrong = lines[:1] + [lines[1].rsplit(" = ", 1)[0] + f" = {(p.values[1] + 7) % 100}"]
    prm = PRM(CHECKPOINTS / "prm")
    good, bad, early = prm.score_steps([
        StepSequence(p.question, (*lines, f"</think>\nThe answer is {p.answer}.")),
        StepSequence(p.question, tuple(wrong)),
        StepSequence(p.question, (*lines[:2], f"</think>\nThe answer is {p.values[1]}.")),
    ])
    assert float(good.min()) > 0.5
    assert float(bad[1]) < 0.5 < float(bad[0])
    assert float(early[-1]) < 0.5 < float(early[:2].min())


def test_checkpoints_stay_small():
    total = sum(f.stat().st_size for f in CHECKPOINTS.rglob("*") if f.is_file())
    assert total < 25 * 2**20
