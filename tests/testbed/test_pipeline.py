"""The retraining pipeline end to end at smoke scale, and the pure AUROC."""

import pytest
import torch

from reasonbudget.eval.report import auroc
from reasonbudget.rewards.testbed_prm import TestbedPRM as PRM
from reasonbudget.rewards.testbed_prm import LOGPROB_FLOOR, features_from_logprobs


def test_auroc_pure():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.3, 0.7, 0.4, 0.6], [False, True, True, False]) == pytest.approx(0.75)


def test_step_features_pure():
    # tokens 0..2 are the prompt; step one is tokens 3,4 + newline 5; step two is token 6 + newline 7
    lp = torch.tensor([0.0, -9.0, -9.0, -1.0, -3.0, -50.0, -40.0, -0.5])
    f = features_from_logprobs(lp, ends=[5, 7], first=3) * -LOGPROB_FLOOR
    assert f.flatten().tolist() == pytest.approx([-3.0, -2.0, -3.0, -20.0, -20.0, -20.0])  # newlines out, floor clamps


def test_smoke_retrain_writes_loadable_checkpoints(tmp_path):
    from reasonbudget.models import load_model
    from reasonbudget.rewards import StepSequence
    from reasonbudget.training.testbed import retrain_all

    from reasonbudget.training.testbed import STAGES

    report = retrain_all(tmp_path, smoke=True, jobs=2)  # stages side by side in worker processes
    spans = report["stage_spans"]
    assert set(spans) == set(STAGES)
    for name, (needs, _) in STAGES.items():  # no stage started before what it reads was written
        assert all(spans[need][1] <= spans[name][0] for need in needs), (name, spans)
    assert spans["draft"][0] < spans["target"][1]  # the draft trained while the target did
    assert report["target"]["steps_done"] == 3 and report["draft"]["steps_done"] == 3
    tuned = report["target_prompt_tuning"]  # the prompt-tuning stage starts from the trained target
    assert tuned["steps_done"] == 3 and tuned["initial_training"]["name"] == "target"
    for name in ("target", "draft"):
        model = load_model(str(tmp_path / name))
        assert model.profile.name == "testbed" and model.kind == "runtime"
    from reasonbudget.training.testbed import PREDICTOR_DIR

    assert (tmp_path / PREDICTOR_DIR / "length_predictor.safetensors").is_file()
    scores = PRM(tmp_path / "prm").score_steps([StepSequence("1 + 2 mod 100", ("1 + 2 = 3",))])
    assert scores[0].shape == (1,) and 0.0 <= float(scores[0][0]) <= 1.0
    from reasonbudget.rewards.router import RouterItem, load_router_dir

    assert report["router"]["examples"] >= 8  # one problem per difficulty, at least one round each
    (y,) = load_router_dir(tmp_path / "router").predict([RouterItem("1 + 2 mod 100", (), ("1 + 2 = 3",))])
    assert 0.0 <= y <= 1.0
