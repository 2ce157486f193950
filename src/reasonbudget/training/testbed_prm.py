"""Training of the testbed PRM's step head (see `reasonbudget.rewards.testbed_prm` for the model): traces
sampled from the testbed draft and target at temperature 1, labelled by the step checker, and binary
cross-entropy over the frozen verifier LM's step features."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reasonbudget.eval.report import auroc
from reasonbudget.training.batching import bce_epoch
from reasonbudget.rewards.testbed_prm import HEAD_CONFIG, HEAD_FILE, SCALAR_FEATURES, StepHead, step_features

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledTrace:
    question: str
    steps: tuple[str, ...]
    labels: tuple[bool, ...]


@dataclass(frozen=True, kw_only=True)
class PRMTrainConfig:
    hidden: int = 64
    epochs: int = 40
    batch_size: int = 512
    lr: float = 3e-3
    val_fraction: float = 0.05
    """Traces held out of training to report step AUROC during training."""
    seed: int = 0


def train_prm(data: Sequence[LabelledTrace], cfg: PRMTrainConfig, lm_dir: Path) -> dict:
    """Train the step head over the frozen verifier LM in `lm_dir`; the head is saved next to the LM."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(cfg.seed)  # entry point of a training run
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(lm_dir))
    lm = LlamaForCausalLM.from_pretrained(str(lm_dir)).eval()
    rng = random.Random(cfg.seed)
    order = list(range(len(data)))
    rng.shuffle(order)
    n_val = int(len(order) * cfg.val_fraction)
    feats = step_features(lm, tok, [(d.question, d.steps) for d in data])
    labels = [torch.tensor([float(v) for v in d.labels]) for d in data]

    def gather(idx):
        if not idx:
            return torch.zeros(0, SCALAR_FEATURES + lm.config.hidden_size), torch.zeros(0)
        return torch.cat([feats[j] for j in idx]), torch.cat([labels[j] for j in idx])

    (xv, yv), (xt, yt) = gather(order[:n_val]), gather(order[n_val:])
    head = StepHead(lm.config.hidden_size, cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(yt) / cfg.batch_size)
    total, step, history = cfg.epochs * steps_per_epoch, 0, []
    for epoch in range(cfg.epochs):
        loss, step = bce_epoch(head, opt, xt, yt, cfg.batch_size, step,
                               lambda k: cfg.lr * 0.5 * (1 + math.cos(math.pi * k / total)))
        if epoch % 10 == 9 or epoch == cfg.epochs - 1:
            with torch.no_grad():
                val = auroc(head(xv).tolist(), yv.bool().tolist()) if n_val else float("nan")
            history.append({"epoch": epoch, "loss": round(loss, 4), "val_auroc": round(val, 4)})
            logger.info("prm head epoch %d loss %.4f held-out step AUROC %.4f", epoch, loss, val)
    save_file(head.state_dict(), str(lm_dir / HEAD_FILE))
    (lm_dir / HEAD_CONFIG).write_text(json.dumps({"d_model": lm.config.hidden_size, "hidden": cfg.hidden}))
    stats = {"config": asdict(cfg), "examples": len(data), "steps": len(yt) + len(yv),
             "positive_step_share": round(float(torch.cat(labels).mean()), 4), "history": history,
             "train_seconds": round(time.time() - t0, 1)}
    (lm_dir / "step_head_training.json").write_text(json.dumps(stats, indent=2))
    return stats


def sample_labelled_traces(model, problems, *, samples: int, temperature: float, seed: int) -> list[LabelledTrace]:
    """`samples` traces per problem from `model` (a LoadedModel) at `temperature`, labelled by the checker."""
    from reasonbudget.training.rollouts import rollouts
    from reasonbudget.testbed.traces import label_trace

    results = rollouts(model, problems, samples=samples, temperature=temperature, seed=seed)
    out: list[LabelledTrace] = []
    for i, r in enumerate(results):
        p = problems[i // samples]
        labels = label_trace(p, r.thinking, r.answer)
        if labels:
            out.append(LabelledTrace(p.question, tuple(lab.line for lab in labels), tuple(lab.correct for lab in labels)))
    return out
