"""A learned token-budget estimator for TALE (beyond the paper, which asks the model zero-shot).

Training data are TALE's budget searches (`tale_text.BudgetSearch`), run for many problems in lockstep, one
engine batch per round: the smallest budget under which the model's greedy answer stays correct. The
estimator is ridge regression from features of the prompt (the final hidden state at the last prompt
position of two layers, their mean over the prompt, and log prompt length) to log budget. It is tiny, fits in
a second, costs one prefill per question at inference (none of TALE-EP's estimate decoding), and is saved
with the fingerprint of the model it was fitted for. Fitting lives in `reasonbudget.training.budget_estimator`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from reasonbudget.predictors.length import PredictorError, hidden_layer_ids, lm_fingerprint, lm_fingerprints
from reasonbudget.predictors.train_length import lm_states

ESTIMATOR_FILE = "budget_estimator.json"


@torch.inference_mode()
def prompt_features(model, prompts: Sequence[Sequence[int]], batch_size: int = 32) -> Tensor:
    """[n, 4d + 1]: last-position and mean hidden states of the middle and final layers, log prompt length."""
    layers = hidden_layer_ids(model)
    picks = (len(layers) // 2, len(layers) - 1)
    rows = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        states = lm_states(model, chunk)  # [n, T, layers, d]
        for k, p in enumerate(chunk):
            s = states[k, : len(p)][:, picks]  # [T, 2, d]
            rows.append(torch.cat([s[-1].flatten(), s.mean(0).flatten(), torch.tensor([math.log(len(p))])]))
    return torch.stack(rows)


@dataclass(frozen=True)
class BudgetEstimator:
    weights: Tensor
    bias: float
    mean: Tensor
    std: Tensor
    fingerprint: str
    minimum: int = 1

    def estimate(self, model, prompts: Sequence[Sequence[int]]) -> list[int]:
        z = (prompt_features(model, prompts) - self.mean) / self.std
        log_budget = z @ self.weights + self.bias
        return [max(self.minimum, round(math.exp(v))) for v in log_budget.tolist()]

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / ESTIMATOR_FILE).write_text(json.dumps({
            "weights": self.weights.tolist(), "bias": self.bias, "mean": self.mean.tolist(), "std": self.std.tolist(),
            "fingerprint": self.fingerprint, "minimum": self.minimum}))


def load_estimator(path: str | Path, model) -> BudgetEstimator:
    f = Path(path) / ESTIMATOR_FILE
    if not f.is_file():
        raise PredictorError(f"budget estimator at {path}: missing {ESTIMATOR_FILE} "
                             f"(fit one with `reasonbudget fit-budget-estimator --model NAME --out {path}`)")
    d = json.loads(f.read_text())
    have = lm_fingerprint(model)
    if d["fingerprint"] not in lm_fingerprints(model):
        raise PredictorError(f"budget estimator at {path} was fitted for another model "
                             f"(fingerprint {d['fingerprint']}, {model.name} is {have})")
    return BudgetEstimator(torch.tensor(d["weights"]), d["bias"], torch.tensor(d["mean"]), torch.tensor(d["std"]),
                           d["fingerprint"], d.get("minimum", 1))
