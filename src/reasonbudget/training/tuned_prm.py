"""Training of a PRM head together with LoRA adapters on the base model's top blocks (`rewards.lora_top`), on the
same rollout step labels as a frozen-feature head (`training.head_prm`).

The base model runs once per solution; the states entering the first adapted block are kept (for the whole
solution, [T, d]), as are the frozen features of any other layer the head reads. Each training step runs the
adapted blocks over a few solutions with autograd, reads the adapted final state at every step's end, and takes
binary cross-entropy on the soft labels. Model selection (epoch), calibration and the report are the frozen
head's: held-out problems, Platt scaling, `prm_metrics`."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from reasonbudget.rewards.head_prm import LORA_PREFIX, HeadSpec, base_shape, default_layers, encode_steps, padded_batches
from reasonbudget.rewards.lora_top import LoraTop
from reasonbudget.training.head_prm import (HeadTrainConfig, fresh_head, held_out_split, prm_metrics, save_calibrated,
                                            solutions_of, step_table)
from reasonbudget.training.step_labels import LabelledProblem


@dataclass
class TopInputs:
    """Per solution: the states entering the first adapted block ([T, d], T up to its last step's end) and the
    frozen features at its step ends (the head's other layers; [n, *])."""

    states: list[Tensor]
    ends: list[list[int]]
    frozen: list[Tensor]


@torch.inference_mode()
def top_inputs(model, labelled: Sequence[LabelledProblem], layers: Sequence[int], start: int, *, separator: str,
               max_batch_tokens: int = 4096) -> TopInputs:
    backend, final = model.backend, model.backend.cfg.num_layers
    frozen_layers = [la for la in layers if la != final]
    encoded = [encode_steps(model, lp.question, s.steps, separator) for lp, s in solutions_of(labelled)]
    limit = model.context_length
    n = len(encoded)
    states, ends, frozen = [torch.zeros(0)] * n, [[] for _ in range(n)], [torch.zeros(0)] * n
    for chunk, x in padded_batches([e[0][:limit] for e in encoded], max_batch_tokens):
        forward_out = backend(x, backend.new_cache(len(chunk), x.shape[1]), torch.arange(len(chunk)),
                     hidden_layers=(start, *frozen_layers), hidden_only=True)
        for b, k in enumerate(chunk):
            e = [i for i in encoded[k][1] if i < x.shape[1]]  # steps past the context are not scored
            ends[k] = e
            if e:
                states[k] = forward_out.hidden[start][b, : e[-1] + 1].clone()
                frozen[k] = torch.cat([forward_out.hidden[la][b, e].float() for la in frozen_layers]
                                      or [torch.zeros(len(e), 0)], dim=-1).clone()
    return TopInputs(states, ends, frozen)


def adapted_features(top: LoraTop, inputs: TopInputs, solutions: Sequence[int], layers: Sequence[int],
                     final: int) -> Tensor:
    """Feature rows of `solutions` (in order, their steps in order) as the head reads them: each layer's frozen
    features, the final layer's from the adapted blocks. Differentiable in the adapters."""
    todo = [k for k in solutions if inputs.ends[k]]
    if not todo:
        return torch.zeros(0)
    width = max(inputs.states[k].shape[0] for k in todo)
    x = torch.zeros(len(todo), width, inputs.states[todo[0]].shape[1], dtype=inputs.states[todo[0]].dtype)
    for b, k in enumerate(todo):
        x[b, : inputs.states[k].shape[0]] = inputs.states[k]
    adapted = top(x)
    rows = []
    for b, k in enumerate(todo):
        cols, f = [], 0
        for la in layers:
            if la == final:
                cols.append(adapted[b, inputs.ends[k]].float())
            else:
                d = inputs.states[k].shape[1]
                cols.append(inputs.frozen[k][:, f : f + d])
                f += d
        rows.append(torch.cat(cols, dim=-1))
    return torch.cat(rows)


def train_tuned_head(model, labelled: Sequence[LabelledProblem], out: Path, cfg: HeadTrainConfig, *,
                     base: str | None = None) -> dict:
    """Train and save a head plus LoRA adapters on the top `cfg.tuned_layers` blocks of `model` into `out`."""
    torch.manual_seed(cfg.seed)  # entry point of a training run: the head's initial weights and the batch order
    t0 = time.time()
    final = base_shape(model)[1]
    layers = tuple(cfg.layers or default_layers(final))
    if final not in layers:
        raise ValueError(f"a tuned head reads the adapted final layer ({final}); layers {layers} leave it out")
    separator = model.profile.step_delimiter
    top = LoraTop(model.backend, cfg.tuned_layers, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
    inputs = top_inputs(model, labelled, layers, top.start, separator=separator)
    n = len(inputs.states)
    with torch.no_grad():  # B = 0: the untrained adapters give the frozen model's features
        initial = [adapted_features(top, inputs, [k], layers, final) for k in range(n)]
    data = step_table(labelled, initial)
    features_seconds = round(time.time() - t0, 1)
    held, in_val, tr, va = held_out_split(data, cfg)
    labelled_step = ~torch.isnan(data.y)
    head, opt, lr_at = fresh_head(data.x[tr], cfg)
    lora_opt = torch.optim.AdamW(top.parameters(), lr=cfg.lora_lr, weight_decay=0.0)
    scored = [k for k in range(n) if inputs.ends[k]]  # solutions with a step inside the context, in data's order
    rows_of = {k: (data.solution == k).nonzero().flatten() for k in scored}
    train_sols = [k for k in scored if data.problem[k] not in held and bool(labelled_step[rows_of[k]].any())]
    batches = math.ceil(len(train_sols) / cfg.solutions_per_batch)
    total, step, history = cfg.epochs * batches, 0, []
    best, best_state = math.inf, None
    rng = random.Random(cfg.seed)

    def all_logits() -> Tensor:
        head.eval()
        top.eval()
        with torch.no_grad():
            z = torch.cat([head(adapted_features(top, inputs, scored[i : i + cfg.solutions_per_batch], layers,
                                                 final)) for i in range(0, len(scored), cfg.solutions_per_batch)])
        return z

    for epoch in range(cfg.epochs):
        head.train()
        top.train()
        order = rng.sample(train_sols, len(train_sols))
        loss = math.nan
        for i in range(0, len(order), cfg.solutions_per_batch):
            sols = order[i : i + cfg.solutions_per_batch]
            y = torch.cat([data.y[rows_of[k]] for k in sols])
            keep = ~torch.isnan(y)
            z = head(adapted_features(top, inputs, sols, layers, final))
            batch_loss = nn.functional.binary_cross_entropy_with_logits(z[keep], y[keep])
            batch_loss.backward()
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            for o, lr in ((opt, cfg.lr), (lora_opt, cfg.lora_lr)):
                for g in o.param_groups:
                    g["lr"] = lr * scale
                o.step()
                o.zero_grad(set_to_none=True)
            step, loss = step + 1, batch_loss.item()
        z = all_logits()
        val_loss = (nn.functional.binary_cross_entropy_with_logits(z[va], data.y[va]).item() if bool(va.any())
                    else loss)
        m = prm_metrics(z, data, in_val) if held else {}
        history.append({"epoch": epoch, "loss": round(loss, 4), "val_loss": round(val_loss, 4),
                        "val_step_auroc": m.get("step_auroc"), "val_final_auroc": m.get("final_auroc"),
                        "seconds": round(time.time() - t0, 1)})
        if val_loss < best:
            best = val_loss
            best_state = ({k: v.clone() for k, v in head.state_dict().items()},
                          {k: v.clone() for k, v in top.state_dict().items()})
    head.load_state_dict(best_state[0])
    top.load_state_dict(best_state[1])
    z = all_logits()
    spec = HeadSpec(base=base or model.name, base_shape=base_shape(model), layers=layers, hidden=cfg.hidden,
                    separator=separator, logprobs=False, tuned_layers=cfg.tuned_layers, lora_rank=cfg.lora_rank,
                    lora_alpha=cfg.lora_alpha)
    state = {**head.state_dict(), **{LORA_PREFIX + k: v for k, v in top.state_dict().items()}}
    report = save_calibrated(out, spec, state, z, data, in_val, cfg, history,
                             adapter_parameters=sum(t.numel() for t in top.parameters()))
    return {**report, "features_seconds": features_seconds, "train_seconds": round(time.time() - t0, 1)}
