"""The retraining pipeline end to end at smoke scale, and the pure AUROC."""

import pytest

from reasonbudget.testbed.prm import TestbedPRM as PRM
from reasonbudget.testbed.prm import auroc


def test_auroc_pure():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.3, 0.7, 0.4, 0.6], [False, True, True, False]) == pytest.approx(0.75)


def test_smoke_retrain_writes_loadable_checkpoints(tmp_path):
    from reasonbudget.models import load_model
    from reasonbudget.rewards import StepSequence
    from reasonbudget.testbed.pipeline import retrain_all

    report = retrain_all(tmp_path, smoke=True)
    assert report["target"]["steps_done"] == 3 and report["draft"]["steps_done"] == 3
    for name in ("target", "draft"):
        model = load_model(str(tmp_path / name))
        assert model.profile.name == "testbed" and model.kind == "runtime"
    scores = PRM(tmp_path / "prm").score_steps([StepSequence("1 + 2 mod 100", ("1 + 2 = 3",))])
    assert scores[0].shape == (1,) and 0.0 <= float(scores[0][0]) <= 1.0
