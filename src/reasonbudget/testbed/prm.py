"""The testbed's trained process reward model.

A small Llama encoder with a one-logit token-classification head (HF `LlamaForTokenClassification`). It
reads "<|user|>question\\n<|assistant|><think>\\n" followed by the steps, one per line, and at the newline
that ends each step predicts P(trace still correct after this step). Training data: traces sampled at
temperature 1 from the draft and the target on training problems, labelled by the step checker; loss is
binary cross-entropy at step ends only.
"""

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
from torch import Tensor

from reasonbudget.rewards.base import StepSequence
from reasonbudget.testbed.tokenizer import build_tokenizer
from reasonbudget.testbed.train import ModelShape

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledTrace:
    question: str
    steps: tuple[str, ...]
    labels: tuple[bool, ...]


@dataclass(frozen=True, kw_only=True)
class PRMTrainConfig:
    shape: ModelShape = ModelShape(hidden_size=128, num_layers=3, num_heads=4, intermediate_size=384)
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0


def encode_item(tok, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids and, per step, the index of the newline token that ends it."""
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False)
    ends = []
    for step in steps:
        ids += tok.encode(step + "\n", add_special_tokens=False)
        ends.append(len(ids) - 1)
    return ids, ends


def _batch(tok, items: Sequence[tuple[str, Sequence[str]]]) -> tuple[Tensor, Tensor, list[list[int]]]:
    encoded = [encode_item(tok, q, s) for q, s in items]
    width = -(-max(len(ids) for ids, _ in encoded) // 32) * 32  # few distinct shapes: oneDNN caches per shape
    x = torch.full((len(items), width), tok.eos_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, (ids, _) in enumerate(encoded):
        x[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return x, mask, [ends for _, ends in encoded]


class TestbedPRM:
    """`ProcessRewardModel` over a trained checkpoint directory."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer, LlamaForTokenClassification

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = LlamaForTokenClassification.from_pretrained(str(path)).eval()

    @torch.inference_mode()
    def score_steps(self, items: Sequence[StepSequence], batch_size: int = 64) -> list[Tensor]:
        out: list[Tensor] = []
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            x, mask, ends = _batch(self.tok, [(it.problem, it.steps) for it in chunk])
            logits = self.model(input_ids=x, attention_mask=mask).logits[..., 0]  # [B, T]
            out += [torch.sigmoid(logits[b, e]) if e else torch.zeros(0) for b, e in enumerate(ends)]
        return out


def train_prm(data: Sequence[LabelledTrace], cfg: PRMTrainConfig, out: Path, *,
              init_from: Path | None = None) -> dict:
    """Train on labelled traces. `init_from`: a testbed LM checkpoint whose body starts the PRM (the usual
    recipe: a PRM begins as the policy model, which already reads the arithmetic), with a fresh score head."""
    from transformers import LlamaConfig, LlamaForTokenClassification

    torch.manual_seed(cfg.seed)  # entry point of a training run
    tok = build_tokenizer()
    if init_from is not None:
        model = LlamaForTokenClassification.from_pretrained(str(init_from), num_labels=1)
    else:
        s = cfg.shape
        config = LlamaConfig(vocab_size=len(tok), hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                             num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                             num_key_value_heads=s.num_heads, max_position_embeddings=1024, num_labels=1,
                             pad_token_id=tok.eos_token_id)
        model = LlamaForTokenClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    rng = random.Random(cfg.seed)
    order = list(range(len(data)))
    total_steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    t0, step, history = time.time(), 0, []
    for epoch in range(cfg.epochs):
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            batch = [data[j] for j in order[i : i + cfg.batch_size]]
            x, mask, ends = _batch(tok, [(d.question, d.steps) for d in batch])
            target = torch.full(x.shape, -1.0)
            for b, (d, e) in enumerate(zip(batch, ends)):
                target[b, e] = torch.tensor([float(v) for v in d.labels])
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=x, attention_mask=mask).logits[..., 0].float()
            sel = target >= 0
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[sel], target[sel])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % 50 == 0:
                history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
                logger.info("prm epoch %d step %d loss %.4f", epoch, step, loss.item())
            step += 1
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    stats = {"config": asdict(cfg), "init_from": str(init_from) if init_from else None, "examples": len(data), "steps": step, "train_seconds": round(time.time() - t0, 1),
             "params": sum(p.numel() for p in model.parameters()), "history": history}
    (out / "training.json").write_text(json.dumps(stats, indent=2))
    return stats


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Probability that a random positive outscores a random negative (ties count half); pure."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2
        rank_sum += avg * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def sample_labelled_traces(model, problems, *, samples: int, temperature: float, seed: int) -> list[LabelledTrace]:
    """`samples` traces per problem from `model` (a LoadedModel) at `temperature`, labelled by the checker."""
    from reasonbudget.testbed.rollouts import rollouts
    from reasonbudget.testbed.traces import label_steps

    results = rollouts(model, problems, samples=samples, temperature=temperature, seed=seed)
    out: list[LabelledTrace] = []
    for i, r in enumerate(results):
        p = problems[i // samples]
        labels = label_steps(p, r.thinking)
        if labels:
            out.append(LabelledTrace(p.question, tuple(lab.line for lab in labels), tuple(lab.correct for lab in labels)))
    return out
