"""`model_usage`, the one place a model's Usage is built: a draft's counts stay apart from its target's."""

from types import SimpleNamespace

from reasonbudget.engine.generation import model_usage
from reasonbudget.engine.speculation import RowSpeculation


def _usage(draft_name: str):
    target = SimpleNamespace(name="m", num_params=100)
    draft = SimpleNamespace(name=draft_name, num_params=10)
    spec = RowSpeculation(drafted=8, accepted=6, draft_passes=8, draft_fed=2)
    return model_usage(target, prompt_tokens=5, processed=12, forward_passes=3, wall_seconds=1.0,
                       draft=(draft, spec))


def test_a_draft_named_like_its_target_is_counted_apart():
    own = _usage("m")  # a quantized copy of the target drafting for it: same name
    assert own.forward_passes_by_model == {"m": 3, "m (draft)": 9}
    assert own.tokens_by_model == {"m": 12 + 2, "m (draft)": 5 + 8 + 2}
    other = _usage("small")
    assert other.forward_passes_by_model == {"m": 3, "small": 9}
    assert own.energy_flops == other.energy_flops == 2 * 100 * 14 + 2 * 10 * 15
