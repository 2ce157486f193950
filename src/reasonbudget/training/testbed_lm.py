"""Training the testbed's thinking models on CPU: a weak draft and a stronger target (HF LlamaForCausalLM).

Teacher forcing on reference traces of fresh random problems (difficulty 1..8 uniform, training seeds kept
apart from the test-set seeds), loss on the completion only, AdamW with warm-up and cosine decay, bfloat16
autocast (AMX/AVX-512 make it several times faster than float32 on CPU). Checkpoints are safetensors with
the tokenizer and a `reasonbudget_profile` entry, so they load through the ordinary registry path.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from reasonbudget.methods.budget.tale_text import LAYOUTS, budget_prompt, estimate_prompt
from reasonbudget.models.profiles import TESTBED
from reasonbudget.testbed.problems import MAX_DIFFICULTY, ArithProblem, generate
from reasonbudget.testbed.tokenizer import build_tokenizer
from reasonbudget.testbed.traces import budgeted_completion, concise_length, reference_completion

NOTHINKING = TESTBED.nothinking

logger = logging.getLogger(__name__)
TRAIN_SEED_OFFSET = 1_000_000  # training problems never use the seeds of the fixed or fresh test sets


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    shape: ModelShape
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    max_seconds: float | None = None
    """Stop early (cosine schedule still completes its shape) when this wall-time is spent."""
    budget_mix: float = 0.0
    """Share of batches that teach TALE's prompts (see `budget_example`); 0 leaves the data stream as it was."""
    length_buckets: int = 1
    """Draw this many batches' examples at once, sort them by length and cut them into batches (in shuffled
    order), so that a batch pads to its own longest example rather than to the longest of a random draw:
    measured on the 1..49 world, 65% of a random batch's positions were padding and a step took 1.55x as
    long. 1 keeps the unbucketed stream (the one the committed checkpoints were trained on). Not used by the
    recipes: the v2 draft recipe trained with 8 buckets reached greedy 0.69 at d=1 and 0.19 at d=8 against 0.83
    and 0.49 unbucketed (same run, default sets): a batch of one length is a batch of one difficulty, and the
    optimiser sees them in runs."""


# Testbed v2 (add/sub operands 1..49). Calibrated on fresh problems (60 per difficulty, greedy, d = 1..8):
# the target (1.79M parameters) at 2500 steps 0.95/0.90/0.88/0.83/0.77/0.77/0.77/0.73, sampled at T=0.8 0.71 / 0.61
# at d=7 / 8 with pass@16 0.95 / 0.97; at 3500 steps it was too strong for search to have headroom (d=8 > 0.85).
# The draft is limited by its training length more than by its size: 96 wide, 2 layers (at most 1/8 of the
# target's parameters) at 3000 steps 0.85/0.83/0.53/0.60/0.57/0.42/0.48/0.43, its greedy next token equal to the
# target's on 98% of the target's greedy thinking tokens. No length buckets: they cut a step's time by a third,
# but the same draft recipe trained with 8 buckets reached only 0.69/0.48/0.43/0.39/0.37/0.23/0.19/0.19 on the
# default sets (unbucketed, same run: 0.83/0.73/0.75/0.66/0.73/0.52/0.59/0.49): batches of one length are batches
# of one difficulty, and the optimiser then sees them in runs.
TARGET = TrainConfig(shape=ModelShape(hidden_size=192, num_layers=4, num_heads=6, intermediate_size=512), steps=1700)
DRAFT = TrainConfig(shape=ModelShape(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=224), steps=3000)
# Then the target learns TALE's prompts, as an instruction-tuning stage on top of it. Mixing them into its first
# training instead (a fifth of 900 steps, first world) wrecked its arithmetic (greedy 0.58 at d=1, 0.02 at d=8):
# the question no longer sits right before the thinking, and the tiny model had not yet learnt to find its
# operands anyway. 200 tuning steps were too few (estimates unparseable, budgets ignored); 400 teach the format.
PROMPT_TUNING = replace(TARGET, steps=400, lr=3e-4, warmup_steps=20, budget_mix=0.8)
# The PRM's verifier LM starts from the (tuned) target and trains on more fresh problems, so that it ends stronger
# than the policies it judges (as real PRMs start from stronger models) at a fraction of a from-scratch run.
VERIFIER = replace(TARGET, steps=800, lr=5e-4, warmup_steps=20)


def hf_config(shape: ModelShape, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                       num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                       num_key_value_heads=shape.num_heads, max_position_embeddings=1024, rope_theta=10000.0,
                       tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)


BATCH_KINDS = {"vanilla": 0.25, "budget": 0.55, "estimate": 0.2}
"""Kinds of prompt-following batches (one kind per batch, so that the long estimation prompt pads few batches)."""


def budget_example(problem: ArithProblem, rng: random.Random, kind: str) -> tuple[str, str]:
    """(user message, completion) teaching TALE's prompts: the vanilla trigger (a natural trace), a budget
    prompt (a trace that fits when one can, `budgeted_completion`), or the estimation prompt, answered without
    thinking with the concise trace's length. Real instruction-tuned models bring these skills; ours learn them,
    in both prompt layouts (the reference's and ours), as an instruction-tuned model would follow either."""
    layout = rng.choice(LAYOUTS)
    if kind == "vanilla":
        return budget_prompt(problem.question, None, layout), reference_completion(problem, rng)
    if kind == "budget":
        budget = max(4, round(concise_length(problem) * rng.uniform(0.8, 3.0)))
        return budget_prompt(problem.question, budget, layout), budgeted_completion(problem, rng, budget)
    if kind == "estimate":
        return estimate_prompt(problem.question, layout), f"{NOTHINKING}Budget: [[{concise_length(problem)}]]"
    raise ValueError(f"unknown example kind {kind!r}")


def training_example(tok, rng: random.Random, index: int, kind: str = "plain") -> tuple[list[int], int]:
    """Token ids of prompt + completion + end, and where the completion starts."""
    d = rng.randint(1, MAX_DIFFICULTY)
    (problem,) = generate(1, difficulty=d, seed=TRAIN_SEED_OFFSET + index)
    if kind == "plain":
        message, completion = problem.question, reference_completion(problem, rng)
    else:
        message, completion = budget_example(problem, rng, kind)
    prompt = tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                     add_generation_prompt=True)
    p_ids = tok.encode(prompt, add_special_tokens=False)
    c_ids = tok.encode(completion, add_special_tokens=False) + [tok.eos_token_id]
    return p_ids + c_ids, len(p_ids)


def make_batch(tok, rng: random.Random, start: int, n: int, budget_mix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    kind = "plain"
    if budget_mix > 0 and rng.random() < budget_mix:  # no draw at all without the mix: old data streams unchanged
        kind = rng.choices(list(BATCH_KINDS), weights=list(BATCH_KINDS.values()))[0]
    return batch_tensors(tok, [training_example(tok, rng, start + i, kind) for i in range(n)])


def batch_tensors(tok, examples: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(examples)
    width = -(-max(len(ids) for ids, _ in examples) // 32) * 32  # few distinct shapes: oneDNN caches per shape
    x = torch.full((n, width), tok.eos_token_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for i, (ids, c0) in enumerate(examples):
        x[i, : len(ids)] = torch.tensor(ids)
        labels[i, c0 : len(ids)] = torch.tensor(ids[c0:])  # loss on the completion only
    return x, labels


def bucketed_batches(tok, rng: random.Random, start: int, n: int, count: int,
                     budget_mix: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of n examples (training problems start..start + n * count - 1) grouped by length."""
    examples = []
    for b in range(count):
        kind = "plain"
        if budget_mix > 0 and rng.random() < budget_mix:
            kind = rng.choices(list(BATCH_KINDS), weights=list(BATCH_KINDS.values()))[0]
        examples += [training_example(tok, rng, start + b * n + i, kind) for i in range(n)]
    examples.sort(key=lambda e: len(e[0]))
    batches = [batch_tensors(tok, examples[i : i + n]) for i in range(0, len(examples), n)]
    rng.shuffle(batches)
    return batches


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def save_rounded(model, tok, out: Path, *, profile: str = "testbed") -> None:
    """Save in bfloat16: half the bytes of float32, so that the committed checkpoints stay within their size
    budget. The model in memory is rounded the same way first, so what is measured after saving is what loads."""
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.config.reasonbudget_profile = profile
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tok.save_pretrained(out)


def train(cfg: TrainConfig, out: Path, *, name: str, data_stream: str | None = None, log_every: int = 50,
          init: Path | None = None, device: str = "cpu") -> dict:
    """Train one LM (from `init`'s weights when given, which may be `out`); `data_stream` (default `name`)
    seeds the order of training problems and traces. The committed checkpoints are trained on CPU; another
    `device` trains the same recipe (the same data stream), with other kernels' rounding."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)  # entry point of a training run: initial weights
    tok = build_tokenizer()
    if init is not None:
        model = LlamaForCausalLM.from_pretrained(str(init), dtype=torch.float32)
        before = json.loads((init / "training.json").read_text()) if (init / "training.json").exists() else None
    else:
        model, before = LlamaForCausalLM(hf_config(cfg.shape, len(tok), tok.eos_token_id)), None
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(f"train:{data_stream or name}:{cfg.seed}")
    t0, tokens, history = time.time(), 0, []
    step, queue = 0, []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        if cfg.length_buckets > 1:
            if not queue:
                queue = bucketed_batches(tok, rng, step * cfg.batch_size, cfg.batch_size, cfg.length_buckets,
                                         cfg.budget_mix)
            x, labels = queue.pop()
        else:
            x, labels = make_batch(tok, rng, step * cfg.batch_size, cfg.batch_size, cfg.budget_mix)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = model(x.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int((labels != -100).sum())
        if step % log_every == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
            logger.info("%s step %d loss %.4f (%.0fs)", name, step, loss.item(), time.time() - t0)
        if cfg.max_seconds is not None and time.time() - t0 > cfg.max_seconds:
            logger.warning("%s: stopping at step %d, time budget spent", name, step)
            break
    model.to("cpu")
    save_rounded(model, tok, out)  # bfloat16 on disk: the committed checkpoints' size budget
    stats = {"name": name, "config": asdict(cfg), "steps_done": step + 1, "train_seconds": round(time.time() - t0, 1),
             "completion_tokens": tokens, "params": sum(p.numel() for p in model.parameters()), "history": history,
             **({"initial_training": before} if before else {})}
    (out / "training.json").write_text(json.dumps(stats, indent=2))
    return stats
