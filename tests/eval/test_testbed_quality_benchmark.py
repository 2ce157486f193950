"""The testbed quality benchmark's PRM figures: pooled and per model (the issue's goal holds per model)."""

from reasonbudget.models import load_model
from reasonbudget.rewards.testbed_prm import TestbedPRM as PRM
from reasonbudget.training.testbed import CHECKPOINTS
from tests.helpers import load_benchmark


def test_prm_quality_reports_each_models_auroc_over_its_own_steps():
    bench = load_benchmark("testbed_quality")
    models = [load_model("testbed-target"), load_model("testbed-draft")]
    res = bench.prm_quality(PRM(CHECKPOINTS / "prm"), models, per_difficulty=1, samples=2)
    assert list(res["by_model"]) == ["testbed-target", "testbed-draft"]
    assert sum(m["steps"] for m in res["by_model"].values()) == res["steps"] > 0
    for m in res["by_model"].values():
        assert 0.0 <= m["auroc"] <= 1.0
    # the draft's traces scored alone give its share of the pooled run (up to bf16 rounding, which batch
    # composition can move)
    alone = bench.prm_quality(PRM(CHECKPOINTS / "prm"), models[1:], per_difficulty=1, samples=2)
    assert alone["steps"] == res["by_model"]["testbed-draft"]["steps"]
    assert abs(alone["auroc"] - res["by_model"]["testbed-draft"]["auroc"]) < 0.01
