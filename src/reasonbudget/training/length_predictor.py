"""One recipe to train a model's length predictor, shared by `reasonbudget train-predictor` and the testbed's
retraining pipeline: traces (the model's own sampled traces by default, or GSM8K train solutions), a predictor
sized for the model (small encoder, low-rank heads for large vocabularies; or the paper's BERT-base size),
training, files with their statistics."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from reasonbudget.predictors.length import LengthPredictorConfig, hidden_layer_ids, lm_dims
from reasonbudget.predictors.train_length import PredictorTrainConfig, train_length_predictor
from reasonbudget.training.length_traces import sampled_traces, solution_traces, testbed_traces

DATA_KINDS = ("auto", "testbed", "sampled", "gsm8k")
"""auto: testbed for testbed models, else sampled (the model's own GSM8K-train traces); gsm8k: reference
solutions teacher-forced as thinking (off-policy, the previous default for real models)."""
SIZES = ("small", "paper")
"""small: a 2-layer encoder (128 wide for tiny vocabularies, else 256 with rank-128 heads); paper: the
reference's BERT-base encoder (768 wide, 12 layers, 12 heads, FFN 3072, dropout 0.1) with full-rank heads."""


def predictor_config(lm, size: str = "small", **overrides: Any) -> LengthPredictorConfig:
    if size not in SIZES:
        raise ValueError(f"predictor size {size!r}: accepted are {', '.join(SIZES)}")
    dims = lm_dims(lm)
    base = dict(lm_hidden_size=dims.hidden_size, num_states=len(hidden_layer_ids(lm)), vocab_size=dims.vocab_size)
    if size == "paper":
        cfg = LengthPredictorConfig(**base)  # the dataclass defaults are the reference's
    else:
        small = dims.vocab_size < 4096
        cfg = LengthPredictorConfig(**base, width=128 if small else 256, layers=2, heads=4,
                                    ffn=256 if small else 512, dropout=0.0, head_rank=None if small else 128)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "head_rank" in overrides and overrides["head_rank"] == 0:
        given["head_rank"] = None  # 0 on the command line: full-rank heads
    cfg = LengthPredictorConfig(**{**asdict(cfg), **given})
    if cfg.width % cfg.heads:
        raise ValueError(f"predictor width {cfg.width} must be a multiple of its heads ({cfg.heads})")
    return cfg


def train_predictor_for(lm, out: Path, *, data: str = "auto", traces: int = 2000, epochs: int = 8,
                        lr: float = 1e-3, size: str = "small", temperature: float = 0.7, samples: int = 2,
                        max_thinking_tokens: int = 1024, **overrides: Any) -> dict:
    """`traces`: training problems (about; sampled data keeps only traces that end their thinking)."""
    if data not in DATA_KINDS:
        raise ValueError(f"data {data!r}: accepted are {', '.join(DATA_KINDS)}")
    if traces < 1 or epochs < 1 or lr <= 0:
        raise ValueError("traces and epochs must be >= 1 and lr > 0")
    cfg = predictor_config(lm, size, **overrides)
    kind = data if data != "auto" else ("testbed" if lm.profile.name == "testbed" else "sampled")
    if kind == "testbed":
        if lm.profile.name != "testbed":
            raise ValueError(f"testbed traces need a testbed model; {lm.name} is not one (use sampled)")
        examples = testbed_traces(lm, per_difficulty=max(1, traces // 16), samples=2)
    else:
        from reasonbudget.tasks import get_task

        problems = get_task("gsm8k:split=train").problems(limit=traces)
        if kind == "sampled":
            store = out / f"traces-t{temperature}-s{samples}-m{max_thinking_tokens}.jsonl"
            examples = sampled_traces(lm, problems, samples=samples, temperature=temperature,
                                      max_thinking_tokens=max_thinking_tokens, store=store)
        else:
            examples = solution_traces(lm, problems)
    if not examples:
        raise ValueError(f"no training traces: none of {lm.name}'s samples ended its thinking within "
                         f"{max_thinking_tokens} tokens")
    predictor, stats = train_length_predictor(lm, examples, cfg, PredictorTrainConfig(epochs=epochs, lr=lr))
    predictor.save(out)
    lengths = sorted(e.thinking_len for e in examples)
    stats.update(data=kind, config=asdict(predictor.cfg), size=size,
                 thinking_tokens={"mean": round(sum(lengths) / len(lengths), 1), "median": lengths[len(lengths) // 2],
                                  "max": lengths[-1]})
    if kind == "sampled":
        stats.update(temperature=temperature, samples=samples, max_thinking_tokens=max_thinking_tokens)
    (out / "training.json").write_text(json.dumps(stats, indent=2))
    return stats
