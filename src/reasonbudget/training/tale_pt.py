"""TALE-PT (`../shared/specs/tale.md` 5): post-train a model to answer concisely with no budget in the prompt.

Data: for each training question, TALE's budget search (halving from the vanilla length while the answer stays
correct and gets shorter) finds the budget-optimal answer; questions whose vanilla answer is wrong are dropped.
SFT: the plain question (chat-templated, no budget, as the model is asked at inference) followed by that answer.
Deviations from the reference, on purpose: the loss covers the answer only (the reference's labels include the
prompt and the padding: spec pitfall 7), and the testbed's tiny model is fine-tuned in full rather than
through a LoRA adapter (r = 8 on q/v projections of a 192-wide model would leave it almost nothing to move).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConciseExample:
    question: str
    completion: tuple[int, ...]
    """The budget-optimal answer's token ids (thinking, its close, the answer, the end token)."""
    budget: int
    vanilla_tokens: int
    tokens: int


def budget_optimal_examples(model, questions: Sequence[str], is_correct: Callable[[int, str], bool], *,
                            layout: str = "reference", chunk: int = 128, max_thinking_tokens: int = 1024,
                            max_answer_tokens: int = 64, progress: Callable[[int, int], None] | None = None) -> list[ConciseExample]:
    """TALE's budget search per question (greedy, batched `chunk` questions at a time) and the answer written
    under the budget it found (the vanilla answer when no smaller budget kept it correct)."""
    from reasonbudget.engine import Engine
    from reasonbudget.training.budget_estimator import search_budgets

    engine, out = Engine(model), []
    eos = min(model.eos_ids) if model.eos_ids else None
    for start in range(0, len(questions), chunk):
        part = questions[start : start + chunk]
        outputs: dict = {}
        results = search_budgets(engine, part, lambda i, a: is_correct(start + i, a), layout=layout,
                                 max_thinking_tokens=max_thinking_tokens, max_answer_tokens=max_answer_tokens,
                                 outputs=outputs)
        for i, r in enumerate(results):
            if r is None:
                continue
            best = outputs.get((i, r.budget)) or outputs[(i, None)]
            ids = tuple(best.tokens)
            if eos is not None and (not ids or ids[-1] not in model.eos_ids):
                ids += (eos,)
            out.append(ConciseExample(part[i], ids, r.budget, r.vanilla_tokens, r.tokens))
        if progress is not None:
            progress(start + len(part), len(questions))
    return out


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    """The reference's SFT learning rate (Mar-2025 code)."""
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0


def sft(init: Path, examples: Sequence[ConciseExample], out: Path, cfg: SFTConfig) -> dict:
    """Fine-tune the LM in `init` on (plain question -> concise completion); loss on the completion only."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from reasonbudget.training.batching import bucketed_batches, warmup_linear
    from reasonbudget.training.testbed_lm import batch_tensors, save_rounded

    if not examples:
        raise ValueError("TALE-PT found no question whose vanilla answer was correct: nothing to train on")
    torch.manual_seed(cfg.seed)  # entry point of a training run
    rng, t0 = random.Random(cfg.seed), time.time()
    tok = AutoTokenizer.from_pretrained(str(init))
    model = LlamaForCausalLM.from_pretrained(str(init), dtype=torch.float32)
    seqs = []
    for e in examples:
        prompt = tok.apply_chat_template([{"role": "user", "content": e.question}], tokenize=False,
                                         add_generation_prompt=True)
        p_ids = tok.encode(prompt, add_special_tokens=False)
        seqs.append((p_ids + list(e.completion), len(p_ids)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * math.ceil(len(seqs) / cfg.batch_size)
    warmup, step, history = max(1, round(total * cfg.warmup_fraction)), 0, []
    model.train()
    for epoch in range(cfg.epochs):
        for batch in bucketed_batches(seqs, lambda s: len(s[0]), cfg.batch_size, rng):
            for g in opt.param_groups:
                g["lr"] = warmup_linear(step, total, warmup, cfg.lr)
            x, labels = batch_tensors(tok, batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        history.append({"epoch": epoch, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
        logger.info("TALE-PT epoch %d loss %.4f", epoch, loss.item())
    save_rounded(model, tok, out)
    return {"config": asdict(cfg), "examples": len(seqs), "history": history, "train_seconds": round(time.time() - t0, 1)}


def train_tale_pt(model, init: Path, questions: Sequence[str], is_correct: Callable[[int, str], bool], out: Path, *,
                  layout: str = "reference", cfg: SFTConfig = SFTConfig(), **search) -> dict:
    """Budget-optimal answers of `model` (loaded from `init`) on `questions`, then SFT into `out`."""
    t0 = time.time()
    examples = budget_optimal_examples(model, questions, is_correct, layout=layout, **search)
    searching = round(time.time() - t0, 1)
    stats = sft(init, examples, out, cfg)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    report = {"questions": len(questions), "searched": len(examples), "layout": layout, "search_seconds": searching,
              "mean_vanilla_tokens": mean([e.vanilla_tokens for e in examples]),
              "mean_optimal_tokens": mean([e.tokens for e in examples]),
              "mean_budget": mean([e.budget for e in examples]), "sft": stats}
    (out / "tale_pt_training.json").write_text(json.dumps(report, indent=2))
    return report
