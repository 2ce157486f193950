"""One recipe to train a model's length predictor, shared by `reasonbudget train-predictor` and the testbed's
retraining pipeline: traces (the testbed model's own, or GSM8K train solutions), a predictor sized for the
model (small encoder; low-rank heads for large vocabularies), training, files with their statistics."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from reasonbudget.predictors.length import LengthPredictorConfig, hidden_layer_ids, lm_dims
from reasonbudget.predictors.train_length import PredictorTrainConfig, train_length_predictor
from reasonbudget.training.length_traces import solution_traces, testbed_traces

DATA_KINDS = ("auto", "testbed", "gsm8k")


def train_predictor_for(lm, out: Path, *, data: str = "auto", traces: int = 2000, epochs: int = 8,
                        lr: float = 1e-3) -> dict:
    if data not in DATA_KINDS:
        raise ValueError(f"data {data!r}: accepted are {', '.join(DATA_KINDS)}")
    if traces < 1 or epochs < 1 or lr <= 0:
        raise ValueError("traces and epochs must be >= 1 and lr > 0")
    kind = data if data != "auto" else ("testbed" if lm.profile.name == "testbed" else "gsm8k")
    if kind == "testbed":
        if lm.profile.name != "testbed":
            raise ValueError(f"testbed traces need a testbed model; {lm.name} is not one (use gsm8k)")
        examples = testbed_traces(lm, per_difficulty=max(1, traces // 16), samples=2)
    else:
        from reasonbudget.tasks import get_task

        examples = solution_traces(lm, get_task("gsm8k:split=train").problems(limit=traces))
    dims = lm_dims(lm)
    small = dims.vocab_size < 4096
    cfg = LengthPredictorConfig(lm_hidden_size=dims.hidden_size, num_states=len(hidden_layer_ids(lm)),
                                vocab_size=dims.vocab_size, width=128 if small else 256, layers=2, heads=4,
                                ffn=256 if small else 512, dropout=0.0, head_rank=None if small else 128)
    predictor, stats = train_length_predictor(lm, examples, cfg, PredictorTrainConfig(epochs=epochs, lr=lr))
    predictor.save(out)
    stats.update(data=kind, config=asdict(predictor.cfg))
    (out / "training.json").write_text(json.dumps(stats, indent=2))
    return stats
