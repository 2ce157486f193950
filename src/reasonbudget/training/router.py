"""Training Arbitrage's router (`../shared/specs/speculative.md` 3.2): oracle labels from the draft/target loop,
then a 2-class classifier initialised from the PRM's LM.

Labels: on training problems the draft and the target each write the next step from the same prefix, the PRM
scores both, and the better one continues (the draft on ties: the tau = 0 oracle). Each round is one example:
(problem, annotated history, draft step) with the advantage Delta = s_target - s_draft and y = 1[Delta > 0].
Training: the majority class is downsampled to 1:1 (the paper's default), cross-entropy, AdamW with warm-up
and linear decay. The report gives the held-out (not downsampled) Spearman rho(y_hat, Delta), Acc0 (correct
accepts among y = 0) and Acc1 (correct escalations among y = 1), the paper's selection metrics.
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

from reasonbudget.eval.report import auroc, spearman
from reasonbudget.rewards.router import CONFIG_FILE, RouterItem, encode_batch, escalate_logits, router_text
from reasonbudget.steps.draft_target import Decision, Proposal
from reasonbudget.training.batching import bce_epoch, bucketed_batches, warmup_linear
from reasonbudget.types import StepSequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterExample:
    item: RouterItem
    target: tuple[str, ...]
    draft_score: float
    target_score: float

    @property
    def advantage(self) -> float:
        return self.target_score - self.draft_score

    @property
    def label(self) -> int:
        return int(self.advantage > 0)


class LabelArbiter:
    """Both models write every step; the PRM scores both; the target's step continues only if it scores
    higher (the tau = 0 oracle: its escalations are exactly the y = 1 rounds)."""

    needs_target = True

    def __init__(self, prm) -> None:
        self.prm = prm

    def decide(self, questions: Sequence[str], proposals: Sequence[Proposal]) -> list[Decision]:
        items = []
        for p in proposals:
            steps = tuple(s for s, _ in p.history)
            items += [StepSequence(questions[p.prompt], steps + p.draft), StepSequence(questions[p.prompt], steps + p.target)]
        scores = [float(s[-1]) if s.numel() else 0.0 for s in self.prm.score_steps(items)]
        return [Decision(t > d, {"draft_score": d, "target_score": t}) for d, t in zip(scores[::2], scores[1::2])]


def generate_labels(draft, target, prm, questions: Sequence[str], *, batch_size: int = 64, max_steps: int = 24,
                    max_tokens: int = 512, progress: Callable[[int, int], None] | None = None,
                    journal: Path | None = None, identity: dict | None = None) -> list[RouterExample]:
    """Greedy oracle rollouts of (draft, target) LoadedModels on `questions`; one example per round. With a
    `journal` (JSON lines, one finished problem each), problems already there under the same settings (the step
    caps and `identity`, e.g. the pair and the PRM) are read back, not rolled out again: labelling a real pair
    takes hours, and a killed run keeps every batch it finished."""
    from reasonbudget.engine import Engine, SamplingConfig
    from reasonbudget.models.registry import build_prompt
    from reasonbudget.steps import StepConfig, StepRunner
    from reasonbudget.steps.draft_target import draft_target_loop

    greedy, cfg = SamplingConfig(temperature=0.0), StepConfig(max_steps=max_steps, max_tokens=max_tokens)
    settings = {"max_steps": max_steps, "max_tokens": max_tokens, **(identity or {})}
    done = _read_journal(journal, settings)
    todo = [q for q in dict.fromkeys(questions) if q not in done]
    if todo:
        d_engine, t_engine, arbiter = Engine(draft), Engine(target), LabelArbiter(prm)
    if progress is not None and len(todo) < len(set(questions)):
        progress(len(set(questions)) - len(todo), len(set(questions)))
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        prompts = [build_prompt(target, q) for q in chunk]
        runners = StepRunner(d_engine, greedy, cfg), StepRunner(t_engine, greedy, cfg)
        try:
            outcomes = draft_target_loop(*runners, prompts, chunk, arbiter, [torch.Generator()] * len(chunk))
        finally:
            for r in runners:
                r.close()
        for q, o in zip(chunk, outcomes):
            done[q] = [RouterExample(RouterItem(q, prop.history, prop.draft), prop.target,
                                     dec.measured["draft_score"], dec.measured["target_score"])
                       for prop, dec in o.rounds]
        _append_journal(journal, settings, {q: done[q] for q in chunk})
        if progress is not None:
            progress(len(set(questions)) - len(todo) + i + len(chunk), len(set(questions)))
    return [e for q in questions for e in done[q]]


def _read_journal(path: Path | None, settings: dict) -> dict[str, list[RouterExample]]:
    """Problems a journal holds for these settings (a line torn by a kill, or other settings, are not reused)."""
    from reasonbudget.eval.records import JsonLines

    if path is None:
        return {}
    return {r["problem"]: [_example_of(e) for e in r["rounds"]]
            for r in JsonLines(path).read() if r.get("settings") == settings}


def _append_journal(path: Path | None, settings: dict, finished: dict[str, list[RouterExample]]) -> None:
    from reasonbudget.eval.records import JsonLines

    if path is not None:
        JsonLines(path).append([{"problem": q, "settings": settings, "rounds": [_record_of(e) for e in examples]}
                                for q, examples in finished.items()])


@dataclass(frozen=True, kw_only=True)
class RouterTrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    balance: str = "downsample"
    """downsample (the majority class to 1:1, the paper's default) | none"""
    val_fraction: float = 0.15
    """Problems held out (all their rounds) for the report."""
    annotate: bool = True
    seed: int = 0


def balanced(examples: Sequence[RouterExample], rng: random.Random) -> list[RouterExample]:
    """The minority class and as many majority-class examples, drawn without replacement; pure given rng."""
    pos = [e for e in examples if e.label]
    neg = [e for e in examples if not e.label]
    small, big = sorted((pos, neg), key=len)
    return list(small) + rng.sample(big, len(small))


def router_metrics(y_hat: Sequence[float], examples: Sequence[RouterExample]) -> dict:
    """The paper's selection metrics: Spearman rho(y_hat, Delta), Acc0, Acc1 (at y_hat > 0.5), plus AUROC."""
    labels = [e.label for e in examples]
    pred = [p > 0.5 for p in y_hat]
    n1 = sum(labels)
    n0 = len(labels) - n1
    return {"examples": len(labels), "positive_share": n1 / max(1, len(labels)),
            "spearman_rho": spearman(list(y_hat), [e.advantage for e in examples]),
            "acc0": sum(not p for p, y in zip(pred, labels) if not y) / n0 if n0 else float("nan"),
            "acc1": sum(p for p, y in zip(pred, labels) if y) / n1 if n1 else float("nan"),
            "auroc": auroc(list(y_hat), [bool(y) for y in labels])}


def split_by_problem(examples: Sequence[RouterExample], val_fraction: float,
                     rng: random.Random) -> tuple[list[RouterExample], list[RouterExample]]:
    problems = sorted({e.item.problem for e in examples})
    rng.shuffle(problems)
    held = set(problems[: round(len(problems) * val_fraction)])
    return [e for e in examples if e.item.problem not in held], [e for e in examples if e.item.problem in held]


def train_router(examples: Sequence[RouterExample], init: Path, out: Path, cfg: RouterTrainConfig, *,
                 separator: str, pair: dict | None = None) -> dict:
    """Fine-tune a 2-class classifier from the LM in `init` (a PRM's LM) on `examples`; saved to `out`."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    torch.manual_seed(cfg.seed)  # entry point of a training run: the new head's weights
    rng = random.Random(cfg.seed)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(init))
    model = LlamaForSequenceClassification.from_pretrained(str(init), num_labels=2, dtype=torch.float32,
                                                           pad_token_id=tok.pad_token_id)
    train_set, val_set = split_by_problem(examples, cfg.val_fraction, rng)
    if cfg.balance not in ("downsample", "none"):
        raise ValueError(f"balance={cfg.balance!r}: accepted are downsample, none")
    one_class = len({e.label for e in train_set}) < 2
    used = balanced(train_set, rng) if cfg.balance == "downsample" and not one_class else list(train_set)
    if not used:
        raise ValueError("router training got no labelled rounds")
    single_class = len({e.label for e in used}) < 2
    if single_class:  # e.g. a pair that never disagrees: the router can only learn a constant
        logger.warning("router labels have one class only (%d rounds, %d with the target ahead): the router will "
                       "predict a constant", len(train_set), sum(e.label for e in train_set))
    texts = {id(e): router_text(e.item, separator, annotate=cfg.annotate) for e in (*used, *val_set)}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(used) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, round(total * cfg.warmup_fraction))
    history, step = [], 0

    def predict(batch: Sequence[RouterExample]) -> list[float]:
        model.eval()
        ys = []
        with torch.inference_mode():
            for i in range(0, len(batch), 128):
                x, last = encode_batch(tok, [texts[id(e)] for e in batch[i : i + 128]], tok.pad_token_id)
                ys += torch.softmax(escalate_logits(model, x, last).float(), -1)[:, 1].tolist()
        model.train()
        return ys

    model.train()
    for epoch in range(cfg.epochs):
        for batch in bucketed_batches(used, lambda e: len(texts[id(e)]), cfg.batch_size, rng, bucket=64):
            for g in opt.param_groups:
                g["lr"] = warmup_linear(step, total, warmup, cfg.lr)
            x, last = encode_batch(tok, [texts[id(e)] for e in batch], tok.pad_token_id)
            y = torch.tensor([e.label for e in batch])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(escalate_logits(model, x, last).float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        metrics = router_metrics(predict(val_set), val_set) if val_set else {}
        history.append({"epoch": epoch, "loss": round(loss.item(), 4),
                        **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}})
        logger.info("router epoch %d loss %.4f held-out rho %.3f acc0 %.3f acc1 %.3f", epoch, loss.item(),
                    metrics.get("spearman_rho", float("nan")), metrics.get("acc0", float("nan")),
                    metrics.get("acc1", float("nan")))
    from reasonbudget.training.testbed_lm import save_rounded

    save_rounded(model, tok, out, profile="router")  # the held-out report below reads the rounded weights
    (out / CONFIG_FILE).write_text(json.dumps({"separator": separator, "annotate": cfg.annotate,
                                               "init": init.name, **({"pair": pair} if pair else {})}, indent=2))
    report = {"config": asdict(cfg), "examples": len(examples), "train_examples": len(used),
              "single_class": single_class,
              "train_positive_share_before_balancing": sum(e.label for e in train_set) / max(1, len(train_set)),
              "held_out": router_metrics(predict(val_set), val_set) if val_set else None,
              "history": history, "train_seconds": round(time.time() - t0, 1)}
    (out / "router_training.json").write_text(json.dumps(report, indent=2))
    return report


def _record_of(e: RouterExample) -> dict:
    return {"problem": e.item.problem, "prev_responses": [list(h) for h in e.item.history],
            "draft_response": list(e.item.draft), "target_response": list(e.target),
            "draft_score": e.draft_score, "target_score": e.target_score}


def _example_of(r: dict) -> RouterExample:
    return RouterExample(RouterItem(r["problem"], tuple((s, int(w)) for s, w in r["prev_responses"]),
                                    tuple(r["draft_response"])), tuple(r["target_response"]),
                         r["draft_score"], r["target_score"])


def save_examples(examples: Sequence[RouterExample], path: Path) -> None:
    """The label dump (one JSON object per round), as the reference's `generate` run writes it."""
    with path.open("w") as f:
        for e in examples:
            f.write(json.dumps(_record_of(e)) + "\n")


def load_examples(path: Path) -> list[RouterExample]:
    return [_example_of(json.loads(line)) for line in path.read_text().splitlines()]


@dataclass(frozen=True, kw_only=True)
class HeadRouterConfig:
    """A router head over a frozen base model (`rewards.head_router`): what the fine-tuned router's recipe becomes
    when the LM is too large to fine-tune here."""

    hidden: int = 128
    layers: tuple[int, ...] = ()
    """Base-model layers read; () = a middle one and the last."""
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    balance: str = "downsample"
    val_fraction: float = 0.15
    annotate: bool = True
    seed: int = 0
    folds: int = 5
    """> 1: also a cross-fitted report (`cross_fitted`); the saved head is the one trained without the held-out
    share."""


def train_head_router(examples: Sequence[RouterExample], base, out: Path, cfg: HeadRouterConfig, *, separator: str,
                      pair: dict | None = None) -> dict:
    """Train a router head over the frozen `base` (a LoadedModel) on `examples`; saved to `out`. With
    `cfg.folds` > 1 the report also holds `cross_fitted`: the metrics of every round scored by a head that did not
    train on its problem (a held-out fifth of a few hundred problems leaves rho's interval wider than the effect)."""
    from safetensors.torch import save_file

    from reasonbudget.rewards.head_prm import base_shape, default_layers
    from reasonbudget.rewards.head_router import HEAD_FILE, text_features

    torch.manual_seed(cfg.seed)  # entry point of a training run: the head's initial weights
    rng = random.Random(cfg.seed)
    t0 = time.time()
    if cfg.balance not in ("downsample", "none"):
        raise ValueError(f"balance={cfg.balance!r}: accepted are downsample, none")
    layers = cfg.layers or default_layers(base_shape(base)[1])
    train_set, val_set = split_by_problem(examples, cfg.val_fraction, rng)
    used = _balance(train_set, cfg, rng)
    if not used:
        raise ValueError("router training got no labelled rounds")
    index = {id(e): i for i, e in enumerate(examples)}
    feats = text_features(base, [router_text(e.item, separator, annotate=cfg.annotate) for e in examples], layers)

    def rows(subset: Sequence[RouterExample]) -> torch.Tensor:
        return feats[[index[id(e)] for e in subset]]

    xv = rows(val_set)
    history: list[dict] = []

    def validate(epoch: int, loss: float, head) -> None:
        if epoch % 10 == 9 or epoch == cfg.epochs - 1:
            with torch.no_grad():
                m = router_metrics(torch.sigmoid(head(xv)).tolist(), val_set) if val_set else {}
            history.append({"epoch": epoch, "loss": round(loss, 4),
                            **{k: round(v, 4) for k, v in m.items() if isinstance(v, float)}})

    head = _fit_head(rows(used), torch.tensor([float(e.label) for e in used]), cfg, validate)
    out.mkdir(parents=True, exist_ok=True)
    save_file(head.state_dict(), str(out / HEAD_FILE))
    (out / CONFIG_FILE).write_text(json.dumps({"kind": "head", "base": base.name, "base_shape": list(base_shape(base)),
                                               "layers": list(layers), "hidden": cfg.hidden, "separator": separator,
                                               "annotate": cfg.annotate, **({"pair": pair} if pair else {})}, indent=2))
    with torch.no_grad():
        held = router_metrics(torch.sigmoid(head(xv)).tolist(), val_set) if val_set else None
    report = {"config": asdict(cfg), "examples": len(examples), "train_examples": len(used),
              "single_class": len({e.label for e in used}) < 2,
              "train_positive_share_before_balancing": sum(e.label for e in train_set) / max(1, len(train_set)),
              "held_out": held, "history": history}
    if cfg.folds > 1:
        report["cross_fitted"] = _cross_fitted(examples, rows, cfg, rng)
    report["train_seconds"] = round(time.time() - t0, 1)
    (out / "router_training.json").write_text(json.dumps(report, indent=2))
    return report


def _balance(examples: Sequence[RouterExample], cfg: HeadRouterConfig, rng: random.Random) -> list[RouterExample]:
    one_class = len({e.label for e in examples}) < 2
    return balanced(examples, rng) if cfg.balance == "downsample" and not one_class else list(examples)


def _fit_head(x: torch.Tensor, y: torch.Tensor, cfg: HeadRouterConfig, after_epoch=None):
    """A StepHeadMLP trained with BCE on (x, y); `after_epoch(epoch, loss, head)` sees it in eval mode."""
    from reasonbudget.rewards.head_prm import StepHeadMLP

    head = StepHeadMLP(x.shape[1], cfg.hidden)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp(min=1e-4) if len(x) > 1 else torch.ones(x.shape[1]))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    for epoch in range(cfg.epochs):
        head.train()
        loss, step = bce_epoch(head, opt, x, y, cfg.batch_size, step)
        head.eval()
        if after_epoch is not None:
            after_epoch(epoch, loss, head)
    return head


def _cross_fitted(examples: Sequence[RouterExample], rows, cfg: HeadRouterConfig, rng: random.Random) -> dict:
    """Metrics of out-of-fold scores: problems dealt into cfg.folds folds, each scored by a head trained (balanced
    as the router is) on the others; every round counts, none downsampled."""
    problems = sorted({e.item.problem for e in examples})
    rng.shuffle(problems)
    fold_of = {q: i % cfg.folds for i, q in enumerate(problems)}
    scored: list[tuple[float, RouterExample]] = []
    for k in range(cfg.folds):
        held = [e for e in examples if fold_of[e.item.problem] == k]
        used = _balance([e for e in examples if fold_of[e.item.problem] != k], cfg, rng)
        if not held or len({e.label for e in used}) < 2:
            continue
        head = _fit_head(rows(used), torch.tensor([float(e.label) for e in used]), cfg)
        with torch.no_grad():
            scored += zip(torch.sigmoid(head(rows(held))).tolist(), held)
    if not scored:
        return {"folds": cfg.folds, "examples": 0}
    m = router_metrics([p for p, _ in scored], [e for _, e in scored])
    return {"folds": cfg.folds, **m, "spearman_rho_ci": spearman_interval(m["spearman_rho"], len(scored))}


def spearman_interval(rho: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """An approximate 95% interval of a Spearman correlation from n pairs (Fisher's z with the Bonett-Wright
    variance (1 + rho^2 / 2) / (n - 3)); pure. NaN bounds for n <= 3 or a NaN rho."""
    if n <= 3 or rho != rho:
        return (float("nan"), float("nan"))
    r = max(-0.999999, min(0.999999, rho))
    half = z * math.sqrt((1 + r * r / 2) / (n - 3))
    return (round(math.tanh(math.atanh(r) - half), 4), round(math.tanh(math.atanh(r) + half), 4))
