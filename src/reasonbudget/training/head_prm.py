"""Training of a head PRM (`rewards.head_prm`) on rollout step labels (`training.step_labels`): features from one
forward of the frozen base model per solution, binary cross-entropy on the soft labels (the share of rollouts
that reached the gold answer), Platt calibration on out-of-fold scores (or early stopping and calibration on
held-out problems), and the metrics the issue asks for (step AUROC, final-step AUROC, pair accuracy, calibration
error)."""

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
from torch import Tensor, nn

from reasonbudget.eval.report import auroc
from reasonbudget.rewards.head_prm import HEAD_FILE, HeadSpec, StepHeadMLP, base_shape, probe_layer, step_features
from reasonbudget.training.batching import bce_epoch
from reasonbudget.training.step_labels import LabelledProblem, LabelledSolution

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class HeadTrainConfig:
    hidden: int = 128
    layers: tuple[int, ...] = ()
    """Base-model layers read (HF numbering, num_layers = the final normed state); () = three quarters up
    (`rewards.head_prm.probe_layer`) for a head over frozen states, a middle one and the last for a tuned head."""
    logprobs: bool = False
    """Also the base model's log-probabilities of each step (lowest, mean, running lowest). Off: in 5-fold
    cross-validation on 68 GSM8K problems (Qwen2.5-Coder-0.5B) they did not help (step AUROC 0.717 with, 0.712
    without), and a head over hidden states alone can score the policy's KV rows for one token per step."""
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    folds: int = 5
    """> 1 (a head over frozen states): the head trains on every labelled problem for `epochs`, and `folds` more
    heads, each trained the same way without one fold of the problems, give every step an out-of-fold score for
    the calibration and the held-out report, which so read every problem, not a fifth of them. On the GSM8K test
    labels (204 train problems, 1.5B layer 21, 3 seeds each, paired bootstrap over the 64 test problems) it is
    level with early stopping: step AUROC +0.018 [-0.010, +0.050], final-answer AUROC -0.020 [-0.054, +0.012];
    early stopping by held-out BCE picked epochs 1-14 of 60 while the ranking kept improving.
    1: that older recipe (`val_fraction`), which the tuned head always uses (its epochs cost minutes)."""
    val_fraction: float = 0.2
    """Problems held out for early stopping, calibration and the report (`folds` = 1, or a tuned head)."""
    seed: int = 0
    tuned_layers: int = 0
    """> 0: also train LoRA adapters on this many top blocks of the base (`training.tuned_prm`)."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 2e-4
    solutions_per_batch: int = 8
    """Solutions per optimizer step when the adapters train (each is a forward of the adapted blocks)."""

    def __post_init__(self) -> None:
        if self.tuned_layers < 0 or self.lora_rank < 1 or self.solutions_per_batch < 1 or self.folds < 1:
            raise ValueError("tuned_layers must be >= 0, lora_rank, solutions_per_batch and folds >= 1")
        if self.tuned_layers and self.logprobs:
            raise ValueError("a tuned head reads hidden states only: drop --logprobs or --tune-layers")


@dataclass
class StepData:
    """Steps of many solutions: features, soft labels (NaN: unlabelled), and where each solution sits."""

    x: Tensor
    y: Tensor
    solution: Tensor
    """Per step: index of its solution."""
    last: Tensor
    """Per step: is it its solution's last step."""
    problem: list[str]
    """Per solution: problem id."""
    correct: list[bool]
    """Per solution: its final answer is right."""


def solutions_of(labelled: Sequence[LabelledProblem]) -> list[tuple[LabelledProblem, LabelledSolution]]:
    return [(lp, s) for lp in labelled for s in lp.solutions if s.steps]


def step_table(labelled: Sequence[LabelledProblem], per_solution: Sequence[Tensor]) -> StepData:
    """`StepData` of per-step rows (features, or one column of a scorer's scores) of `solutions_of(labelled)`;
    a solution's rows may stop early (steps past the context)."""
    sols = solutions_of(labelled)
    if not sols:
        raise ValueError("no labelled solution has steps: nothing to train or score")
    xs, ys, owner, last = [], [], [], []
    for k, ((_, s), f) in enumerate(zip(sols, per_solution)):
        n = f.shape[0] if f.numel() else 0
        if not n:
            continue
        xs.append(f if f.dim() == 2 else f[:, None])
        ys.append(torch.tensor([math.nan if v is None else v for v in s.values[:n]], dtype=torch.float32))
        owner += [k] * n
        last += [i == len(s.steps) - 1 for i in range(n)]
    if not xs:
        raise ValueError("no step of the labelled solutions fits the base model's context: nothing to score")
    return StepData(torch.cat(xs), torch.cat(ys), torch.tensor(owner), torch.tensor(last),
                    [lp.problem_id for lp, _ in sols], [s.correct for _, s in sols])


def build_data(model, labelled: Sequence[LabelledProblem], layers: Sequence[int], *, separator: str,
               logprobs: bool) -> StepData:
    sols = solutions_of(labelled)
    return step_table(labelled, step_features(model, [(lp.question, s.steps) for lp, s in sols], layers,
                                              separator=separator, logprobs=logprobs))


def _solution_key(question: str, steps: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha1(json.dumps([question, list(steps)]).encode()).hexdigest()


def cached_data(model, labelled: Sequence[LabelledProblem], layers: Sequence[int], *, separator: str,
                logprobs: bool, path: Path) -> StepData:
    """`build_data`, with each solution's features kept in `path` (feature extraction is one forward of the base
    model per solution: minutes). A label file that grew, or a retrained head, computes only the solutions not
    yet there; a cache made for more layers serves a subset of them (and is rewritten with just those when it
    grows); one made with another base model, dtype or separator is rebuilt, not reused."""
    meta = {"base": model.name, "shape": list(base_shape(model)), "dtype": str(model.backend.dtype),
            "layers": list(layers), "logprobs": logprobs, "separator": separator}
    sols = solutions_of(labelled)
    keys = [_solution_key(lp.question, s.steps) for lp, s in sols]
    saved = torch.load(path, weights_only=False) if path.exists() else {}
    have: dict[str, Tensor] = saved.get("features", {}) if saved.get("meta") == meta else _layer_subset(saved, meta)
    todo = [k for k in dict.fromkeys(keys) if k not in have]
    if todo:
        wanted = set(todo)
        items = {k: (lp.question, s.steps) for k, (lp, s) in zip(keys, sols) if k in wanted}
        from tqdm import tqdm

        with tqdm(total=len(todo), unit="solution", desc=f"features ({model.name})", dynamic_ncols=True) as bar:
            feats = step_features(model, [items[k] for k in todo], layers, separator=separator, logprobs=logprobs,
                                  progress=bar.update)
        have.update(zip(todo, feats))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"meta": meta, "features": have}, tmp)
        tmp.replace(path)  # a killed run leaves the old cache whole
    return step_table(labelled, [have[k] for k in keys])


def _layer_subset(saved: dict, meta: dict) -> dict[str, Tensor]:
    """The features of a cache made for more layers (all else equal, no log-probabilities), cut to `meta`'s
    layers; {} when it cannot serve them."""
    old = saved.get("meta") or {}
    if (not old or old["logprobs"] or meta["logprobs"] or {**old, "layers": meta["layers"]} != meta
            or not set(meta["layers"]) <= set(old["layers"])):
        return {}
    cols = layer_columns(old["layers"], meta["layers"], meta["shape"][0])
    return {k: f[:, cols] if f.numel() else f for k, f in saved["features"].items()}


def layer_columns(read: Sequence[int], wanted: Sequence[int], width: int) -> Tensor:
    """Indices of the feature columns of the layers `wanted` in features of the layers `read` (`width` columns
    each, in that order); pure."""
    return torch.cat([torch.arange(width) + list(read).index(layer) * width for layer in wanted])


def split_problems(ids: Sequence[str], val_fraction: float, rng: random.Random) -> set[str]:
    """Problem ids held out (whole problems, so no solution of a held-out problem is trained on); pure."""
    unique = sorted(set(ids))
    rng.shuffle(unique)
    return set(unique[: max(1, round(len(unique) * val_fraction))]) if val_fraction > 0 else set()


def problem_folds(ids: Sequence[str], folds: int, rng: random.Random) -> dict[str, int]:
    """Each problem id's fold (0..folds-1, sizes within one of each other; whole problems); pure."""
    unique = sorted(set(ids))
    rng.shuffle(unique)
    return {p: k % folds for k, p in enumerate(unique)}


def fit_platt(z: Tensor, y: Tensor, iters: int = 200) -> tuple[float, float]:
    """(a, b) minimising BCE(sigmoid(a z + b), y) on held-out logits z and soft labels y, with a > 0: a
    calibration must not reverse the head's ranking (a few held-out problems could ask for that)."""
    log_a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_a, b], lr=0.5, max_iter=iters)

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(log_a.exp() * z + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_a.detach().exp()), float(b.detach())


def expected_calibration_error(p: Sequence[float], y: Sequence[float], bins: int = 10) -> float:
    """Mean |mean label - mean prediction| over equal-width probability bins, weighted by bin size; pure."""
    total, err = len(p), 0.0
    for k in range(bins):
        idx = [i for i, v in enumerate(p) if k / bins <= v < (k + 1) / bins or (k == bins - 1 and v == 1.0)]
        if idx:
            err += len(idx) / total * abs(sum(y[i] for i in idx) / len(idx) - sum(p[i] for i in idx) / len(idx))
    return err


def prm_metrics(scores: Tensor, data: StepData, steps: Tensor) -> dict:
    """Metrics over the steps selected by the boolean mask `steps` (one score per step of `data`):
    - step_auroc: intermediate labelled steps, positive when any rollout reached the answer (Math-Shepherd's
      hard label), and final steps by their answer;
    - final_auroc: last steps against the solution's correctness (the PRM as an outcome verifier);
    - pair_accuracy: problems with a right and a wrong solution, the right one's last step scoring higher
      (ties count half); ece: calibration against the soft labels;
    - within_problem_auroc: step_auroc's steps ranked within each problem (the mean over problems that have both
      kinds). Search only ever compares steps of one problem. The pooled step AUROC also rewards knowing which
      problems the policy solves: on the testbed's rollout labels a scorer that knows only that (from one other
      sample of the problem) reaches 0.74, near the testbed PRM's 0.77, while ranking nothing within a problem."""
    lab = steps & ~torch.isnan(data.y)
    s, y = scores[lab].tolist(), data.y[lab].tolist()
    within, n_within = within_problem_auroc(s, [v > 0 for v in y], [data.problem[int(k)] for k in data.solution[lab]])
    fin = steps & data.last
    fs = scores[fin].tolist()
    fc = [data.correct[int(k)] for k in data.solution[fin]]
    by_problem: dict[str, list[tuple[float, bool]]] = {}
    for sc, k in zip(fs, data.solution[fin].tolist()):
        by_problem.setdefault(data.problem[k], []).append((sc, data.correct[k]))
    pairs = [(r, w) for v in by_problem.values() for r, ok in v if ok for w, bad in v if not bad]
    return {"steps": len(s), "step_auroc": round(auroc(s, [v > 0 for v in y]), 4),
            "final_auroc": round(auroc(fs, fc), 4), "solutions": len(fs),
            "pairs": len(pairs), "pair_accuracy": round(sum(1.0 if r > w else 0.5 if r == w else 0.0
                                                          for r, w in pairs) / len(pairs), 4) if pairs else None,
            "ece": round(expected_calibration_error(s, y), 4) if s else None,
            "positive_share": round(sum(v > 0 for v in y) / len(y), 4) if y else None,
            "within_problem_auroc": round(within, 4) if n_within else None, "within_problems": n_within}


def within_problem_auroc(scores: Sequence[float], labels: Sequence[bool], groups: Sequence[str]) -> tuple[float, int]:
    """(mean AUROC within each group that has both labels, how many such groups); (nan, 0) when none; pure."""
    by: dict[str, tuple[list[float], list[bool]]] = {}
    for sc, lab, g in zip(scores, labels, groups, strict=True):
        by.setdefault(g, ([], []))[0].append(sc)
        by[g][1].append(lab)
    aucs = [auroc(sc, lab) for sc, lab in by.values() if 0 < sum(lab) < len(lab)]
    return (sum(aucs) / len(aucs), len(aucs)) if aucs else (math.nan, 0)


def held_out_split(data: StepData, cfg: HeadTrainConfig) -> tuple[set[str], Tensor, Tensor, Tensor]:
    """The held-out problems and, per step of `data`: held out?, a labelled training step?, a labelled held-out
    step? Refuses data with no labelled training step."""
    held = split_problems(data.problem, cfg.val_fraction, random.Random(cfg.seed))
    in_val = torch.tensor([data.problem[int(k)] in held for k in data.solution])
    labelled_step = ~torch.isnan(data.y)
    tr, va = labelled_step & ~in_val, labelled_step & in_val
    if not bool(tr.any()):
        raise ValueError(f"no labelled steps left to train on ({len(set(data.problem))} problem(s), "
                         f"val_fraction={cfg.val_fraction} holds out {len(held)}): label more problems")
    return held, in_val, tr, va


def fresh_head(x: Tensor, cfg: HeadTrainConfig):
    """A head whose inputs are normalised by the training features `x`, its optimizer, and the learning rate at
    each optimizer step (cosine over cfg.epochs passes over x)."""
    head = StepHeadMLP(x.shape[1], cfg.hidden)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp(min=1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * max(1, math.ceil(len(x) / cfg.batch_size))
    return head, opt, lambda k: cfg.lr * 0.5 * (1 + math.cos(math.pi * k / total))


def train_head(model, labelled: Sequence[LabelledProblem], out: Path, cfg: HeadTrainConfig, *,
               base: str | None = None, features_cache: Path | None = None) -> dict:
    """Train and save a head over `model` (a LoadedModel) into `out`; returns the training report."""
    torch.manual_seed(cfg.seed)  # entry point of a training run: the head's initial weights
    t0 = time.time()
    num_layers = base_shape(model)[1]
    layers = cfg.layers or probe_layer(num_layers)
    separator = model.profile.step_delimiter
    if features_cache is not None:
        data = cached_data(model, labelled, layers, separator=separator, logprobs=cfg.logprobs, path=features_cache)
    else:
        data = build_data(model, labelled, layers, separator=separator, logprobs=cfg.logprobs)
    features_seconds = round(time.time() - t0, 1)
    if cfg.folds > 1:
        head, history = fit_fixed(data.x, data.y, cfg)
        z_held = out_of_fold_logits(data, cfg)
        in_val = torch.full((len(data.y),), z_held is not None)
    else:
        head, history, in_val = early_stopped(data, cfg)
        z_held = None
    with torch.no_grad():
        z = head(data.x)
    spec = HeadSpec(base=base or model.name, base_shape=base_shape(model), layers=tuple(layers), hidden=cfg.hidden,
                    separator=separator, logprobs=cfg.logprobs)
    report = save_calibrated(out, spec, head.state_dict(), z, data, in_val, cfg, history, z_held=z_held)
    return {**report, "features_seconds": features_seconds, "train_seconds": round(time.time() - t0, 1)}


def fit_fixed(x: Tensor, y: Tensor, cfg: HeadTrainConfig) -> tuple[StepHeadMLP, list[dict]]:
    """A head trained on the labelled rows of (x, y) for cfg.epochs, no selection; and its loss per epoch."""
    keep = ~torch.isnan(y)
    if not bool(keep.any()):
        raise ValueError("no labelled steps to train on: label more problems")
    head, opt, lr_at = fresh_head(x[keep], cfg)
    history, step = [], 0
    for epoch in range(cfg.epochs):
        head.train()
        loss, step = bce_epoch(head, opt, x[keep], y[keep], cfg.batch_size, step, lr_at)
        history.append({"epoch": epoch, "loss": round(loss, 4)})
    return head.eval(), history


def out_of_fold_logits(data: StepData, cfg: HeadTrainConfig) -> Tensor | None:
    """Every step's logit from a head trained (`fit_fixed`) without its problem's fold; None with one problem."""
    fold_of = problem_folds(data.problem, cfg.folds, random.Random(cfg.seed))
    folds = len(set(fold_of.values()))
    if folds < 2:
        return None
    fold = torch.tensor([fold_of[data.problem[int(k)]] for k in data.solution])
    z = torch.empty(len(data.y))
    for k in range(folds):
        out = fold == k
        head, _ = fit_fixed(data.x[~out], data.y[~out], cfg)
        with torch.no_grad():
            z[out] = head(data.x[out])
    return z


def early_stopped(data: StepData, cfg: HeadTrainConfig) -> tuple[StepHeadMLP, list[dict], Tensor]:
    """A head trained on the problems outside `val_fraction`, at the epoch of lowest held-out BCE; its history
    and the held-out mask."""
    held, in_val, tr, va = held_out_split(data, cfg)
    xt, yt = data.x[tr], data.y[tr]
    head, opt, lr_at = fresh_head(xt, cfg)
    best, best_state, history = math.inf, None, []
    step = 0
    for epoch in range(cfg.epochs):
        head.train()
        loss, step = bce_epoch(head, opt, xt, yt, cfg.batch_size, step, lr_at)
        head.eval()
        with torch.no_grad():
            z = head(data.x)
        # model selection by held-out BCE on the soft labels: smoother than AUROC on a few held-out problems
        val_loss = (nn.functional.binary_cross_entropy_with_logits(z[va], data.y[va]).item() if bool(va.any())
                    else loss)
        m = prm_metrics(z, data, in_val) if held else {}
        history.append({"epoch": epoch, "loss": round(loss, 4), "val_loss": round(val_loss, 4),
                        "val_step_auroc": m.get("step_auroc"), "val_final_auroc": m.get("final_auroc")})
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval(), history, in_val


def save_calibrated(out: Path, spec: HeadSpec, state: dict[str, Tensor], z: Tensor, data: StepData, in_val: Tensor,
                    cfg: HeadTrainConfig, history: list[dict], *, z_held: Tensor | None = None, **extra) -> dict:
    """Platt-calibrate the chosen head's logits `z` (one per step of `data`) on the held-out steps, save the head
    (`state`: its tensors, adapters included) and its spec into `out`, and return the training report. With
    `z_held` (out-of-fold logits, `in_val` marking the steps that have one) the calibration and the held-out
    report read those, and the train report is the head's own on every step."""
    from dataclasses import replace

    from safetensors.torch import save_file

    labelled_step = ~torch.isnan(data.y)
    va = labelled_step & in_val
    held_logits = z if z_held is None else z_held
    calibration = fit_platt(held_logits[va], data.y[va]) if bool(va.any()) else (1.0, 0.0)
    spec = replace(spec, calibration=calibration)
    p = torch.sigmoid(calibration[0] * z + calibration[1])
    p_held = torch.sigmoid(calibration[0] * held_logits + calibration[1])
    trained_on = ~in_val if z_held is None else torch.ones(len(data.y), dtype=torch.bool)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / HEAD_FILE))
    spec.save(out)
    held = bool(in_val.any())
    report = {"config": asdict(cfg), "base": spec.base, "layers": list(spec.layers),
              "problems": len(set(data.problem)), "held_out_problems": len({data.problem[int(k)]
                                                                           for k in data.solution[in_val]}),
              "solutions": len(data.problem), "steps": int(len(data.y)), "labelled_steps": int(labelled_step.sum()),
              "head_parameters": sum(t.numel() for k, t in state.items() if k not in ("mean", "std")),
              "train": prm_metrics(p, data, trained_on), "held_out": prm_metrics(p_held, data, in_val) if held else None,
              "calibration": list(calibration),
              "held_out_note": ("the epoch and the Platt calibration were chosen on the held-out problems: their "
                                "AUROC and pair accuracy are unaffected (the calibration is monotone), their ECE is "
                                "optimistic; a separate label file (GSM8K test) gives the honest figures"
                                if z_held is None else
                                f"every problem scored by a head trained without its fold ({cfg.folds} folds); the "
                                "Platt calibration was fitted on those scores, so their ECE is optimistic; a "
                                "separate label file (GSM8K test) gives the honest figures"),
              "history": history, **extra}
    logger.info("PRM head: held-out %s", report["held_out"])
    return report
