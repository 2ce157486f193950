"""Learning curve of a trained PRM head, and the step AUROC its labels allow.

Trains the committed head's recipe (`HeadTrainConfig`: 128 hidden units, 60 epochs; no early stopping, as AUROC
needs no calibration) on the first n labelled problems of a train label file, for several seeds, and scores
the held-out labels of another file (step AUROC, final-answer AUROC, right-vs-wrong pair accuracy). Features
come from, and extend, the per-solution caches beside the label files (`training.head_prm.cached_data`).

The ceiling: intermediate steps are labelled by k rollouts, so even a scorer that knew each step's true value
would not rank them perfectly. Fit v ~ Beta(a, b) to the test steps' rollout counts (beta-binomial maximum
likelihood), then simulate steps with those values and fresh any-of-k labels, scored by their values; final
steps keep their labels and are scored by their correctness (their true value).

    python benchmarks/prm_curve.py --train runs/prm/labels-0.5b-train.jsonl --test runs/prm/labels-0.5b-test64.jsonl \
        --bases qwen2.5-coder-0.5b,qwen2.5-coder-1.5b --sizes 68,136,204 [--tune-layers 4] [--layer-sets '12,24;18']

With `--tune-layers K` each point trains the tuned recipe instead (`train-prm --tune-layers K`: LoRA adapters on
the base's top K blocks with the head, early stopping on a fifth of the train problems) and scores the test
labels through the saved head, as `prm=DIR` would.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch.distributions import Beta

from reasonbudget.training.head_prm import HeadTrainConfig, layer_columns, prm_metrics

METRICS = ("step_auroc", "final_auroc", "pair_accuracy", "within_problem_auroc")


def fit_beta_binomial(counts: torch.Tensor, k: int, iters: int = 2000) -> tuple[float, float]:
    """(a, b) maximising the beta-binomial likelihood of `counts` successes out of k each; pure."""
    c = counts.float()
    log_a, log_b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([log_a, log_b], lr=0.05)
    for _ in range(iters):
        a, b = log_a.exp(), log_b.exp()
        ll = (torch.lgamma(a + c) + torch.lgamma(b + k - c) - torch.lgamma(a + b + k)
              - torch.lgamma(a) - torch.lgamma(b) + torch.lgamma(a + b)).sum()
        opt.zero_grad()
        (-ll).backward()
        opt.step()
    return float(log_a.detach().exp()), float(log_b.detach().exp())


def label_noise_ceiling(data, k: int, draws: int = 200, seed: int = 0) -> dict:
    """Step AUROC of a scorer that knows each step's true value, against any-of-k rollout labels (see above)."""
    labelled = ~torch.isnan(data.y)
    inter, final = labelled & ~data.last, labelled & data.last
    a, b = fit_beta_binomial(torch.round(data.y[inter] * k), k)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Beta.sample draws from the global generator
    y0, aucs = data.y, []
    sim = replace(data, y=data.y.clone())  # the caller's labels stay as they are
    n = int(inter.sum())
    for _ in range(draws):
        v = Beta(torch.full((n,), a), torch.full((n,), b)).sample() if n else torch.zeros(0)
        s = torch.zeros(len(y0))
        s[inter] = v
        s[final] = y0[final] + 1e-6 * torch.rand(int(final.sum()), generator=g)  # ties broken at random
        sim.y[inter] = (torch.rand(n, k, generator=g) < v[:, None]).float().mean(1)
        aucs.append(prm_metrics(s, sim, torch.ones(len(s), dtype=torch.bool))["step_auroc"])
    t = torch.tensor(aucs)
    return {"beta": [round(a, 3), round(b, 3)], "mean_value": round(a / (a + b), 3),
            "intermediate_steps": n, "final_steps": int(final.sum()),
            "step_auroc": round(float(t.mean()), 4), "range": [round(float(t.min()), 4), round(float(t.max()), 4)]}


def train_and_score(train, test, keep: torch.Tensor, cfg: HeadTrainConfig, seed: int) -> dict:
    from reasonbudget.training.batching import bce_epoch
    from reasonbudget.training.head_prm import fresh_head

    x, y = train.x[keep], train.y[keep]
    torch.manual_seed(seed)
    head, opt, lr_at = fresh_head(x, cfg)
    step = 0
    for _ in range(cfg.epochs):
        head.train()
        _, step = bce_epoch(head, opt, x, y, cfg.batch_size, step, lr_at)
    head.eval()
    with torch.no_grad():
        m = prm_metrics(head(test.x), test, torch.ones(len(test.y), dtype=torch.bool))
    return {k: m[k] for k in (*METRICS, "pairs")}


def tuned_and_score(model, train_labels, test_labels, cfg: HeadTrainConfig, seed: int) -> dict:
    """The tuned recipe (`train-prm --tune-layers`: adapters and head, early stopping on held-out train
    problems) on `train_labels`, scored on `test_labels`."""
    import tempfile

    from reasonbudget.rewards.head_prm import HeadPRM
    from reasonbudget.training.head_prm import solutions_of, step_table
    from reasonbudget.training.tuned_prm import train_tuned_head
    from reasonbudget.types import StepSequence

    with tempfile.TemporaryDirectory() as out:
        train_tuned_head(model, train_labels, Path(out), replace(cfg, seed=seed))
        prm = HeadPRM(out, base=model)
        z = prm.logits([StepSequence(lp.question, s.steps) for lp, s in solutions_of(test_labels)])
    test = step_table(test_labels, z)
    m = prm_metrics(test.x[:, 0], test, torch.ones(len(test.y), dtype=torch.bool))
    return {k: m[k] for k in (*METRICS, "pairs")}


def _mean(values) -> float | None:
    """The mean of the values that exist (a metric is None where a test set has nothing to measure); pure."""
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def layer_subset(data, read: Sequence[int], wanted: Sequence[int], width: int):
    """`data` (features of the layers `read`, `width` columns each) with only the columns of the layers `wanted`."""
    return replace(data, x=data.x[:, layer_columns(read, wanted, width)])


def curve(base: str, train_file: Path, test_file: Path, sizes: list[int], seeds: int, dtype: str,
          tune_layers: int = 0, layer_sets: Sequence[Sequence[int]] = ()) -> tuple[list[dict], object]:
    """(the curves of one base, one per layer set (default: the head's default layers), the test steps' table)."""
    from reasonbudget.models import load_model
    from reasonbudget.rewards.head_prm import base_shape, default_layers, probe_layer
    from reasonbudget.training.head_prm import cached_data
    from reasonbudget.training.step_labels import load_labels

    model = load_model(base, dtype=dtype)
    cfg = HeadTrainConfig(tuned_layers=tune_layers, epochs=8) if tune_layers else HeadTrainConfig()
    if tune_layers and layer_sets:
        raise SystemExit("--layer-sets is for the frozen head; the tuned recipe reads its default layers")
    num_layers = base_shape(model)[1]
    sets = [tuple(ls) for ls in layer_sets] or [default_layers(num_layers) if tune_layers else probe_layer(num_layers)]
    read = sorted({layer for ls in sets for layer in ls})  # one feature pass for every set
    train_labels, test_labels = load_labels(train_file), load_labels(test_file)
    t0 = time.time()
    suffix = "" if read == list(sets[0]) else "-layers" + "-".join(map(str, read))
    train_all, test_all = [cached_data(model, labels, read, separator=model.profile.step_delimiter,
                                       logprobs=cfg.logprobs, path=f.with_suffix(f".features-{base}{suffix}.pt"))
                           for labels, f in ((train_labels, train_file), (test_labels, test_file))]
    features_seconds = round(time.time() - t0, 1)
    width = base_shape(model)[0]
    curves = []
    for layers in sets:
        train, test = (layer_subset(d, read, layers, width) for d in (train_all, test_all))
        rows = size_rows(base, layers, model, train, test, train_labels, test_labels, sizes, seeds, cfg, tune_layers)
        curves.append({"base": base, "layers": list(layers), "tuned_layers": tune_layers,
                       "features_seconds": features_seconds, "seconds": round(time.time() - t0, 1),
                       "test_problems": len(test_labels), "test_steps": len(test.y), "rows": rows})
    return curves, test_all


def size_rows(base, layers, model, train, test, train_labels, test_labels, sizes, seeds, cfg, tune_layers) -> list:
    """One row per number of train problems: the mean test metrics over `seeds` heads."""
    order = list(dict.fromkeys(lp.problem_id for lp in train_labels))
    step_problem = [train.problem[int(s)] for s in train.solution]
    labelled = ~torch.isnan(train.y)
    rows = []
    for n in sizes:
        first = set(order[:n])
        keep = labelled & torch.tensor([p in first for p in step_problem])
        if tune_layers:
            subset = [lp for lp in train_labels if lp.problem_id in first]
            runs = [tuned_and_score(model, subset, test_labels, cfg, seed) for seed in range(seeds)]
        else:
            runs = [train_and_score(train, test, keep, cfg, seed) for seed in range(seeds)]
        rows.append({"problems": min(n, len(order)), "steps": int(keep.sum()), "seeds": runs,
                     **{k: _mean(r[k] for r in runs) for k in METRICS}})
        print(f"{base:22s} {','.join(map(str, layers)):>9s} {rows[-1]['problems']:5d} {rows[-1]['steps']:6d}  "
              + "  ".join("  -  " if rows[-1][k] is None else f"{rows[-1][k]:.3f}" for k in METRICS), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True, help="train label file (training.step_labels)")
    ap.add_argument("--test", required=True, help="held-out label file")
    ap.add_argument("--bases", default="qwen2.5-coder-0.5b", help="comma-separated base models of the head")
    ap.add_argument("--sizes", default="68,136,204", help="numbers of train problems, comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=3, help="rollouts per step of the test labels (the ceiling)")
    ap.add_argument("--dtype", default="auto", help="float32 | bfloat16 | auto (bf16 where native)")
    ap.add_argument("--tune-layers", type=int, default=0,
                    help="> 0: the tuned recipe (LoRA adapters on this many top blocks, 8 epochs, early stopping)")
    ap.add_argument("--layer-sets", default="",
                    help="layers the frozen head reads, sets separated by ';' (e.g. '12,24;18;18,24'; HF numbering, "
                         "num_layers = the final normed state): one curve per set, from one feature pass; "
                         "default: the head's default (three quarters up: `rewards.head_prm.probe_layer`)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/prm_curve.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for f in (args.train, args.test):
        if not Path(f).exists():
            raise SystemExit(f"no label file at {f}: make one with `reasonbudget train-prm` (it labels first)")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes {args.sizes!r}: give numbers of problems, comma-separated (e.g. 68,136,204)")
    try:
        layer_sets = [[int(v) for v in ls.split(",")] for ls in args.layer_sets.split(";") if ls.strip()]
    except ValueError:
        raise SystemExit(f"--layer-sets {args.layer_sets!r}: give layer numbers, comma-separated, sets separated "
                         "by ';' (e.g. '12,24;18')")
    print(f"{'base':22s} {'layers':>9s} {'probs':>5s} {'steps':>6s}  step_auroc  final_auroc  pair_acc  within_problem")
    report: dict = {"train": args.train, "test": args.test, "curves": []}
    test = None
    for base in args.bases.split(","):
        try:
            result, test = curve(base, Path(args.train), Path(args.test), sizes, args.seeds, args.dtype,
                                 args.tune_layers, layer_sets)
        except ValueError as e:  # a layer the base model does not have
            raise SystemExit(f"{base}: {e}")
        report["curves"] += result
    report["ceiling"] = label_noise_ceiling(test, args.rollouts)
    print(f"a scorer knowing each step's true value: step AUROC {report['ceiling']['step_auroc']:.3f} "
          f"({report['ceiling']['range'][0]:.3f}-{report['ceiling']['range'][1]:.3f} over 200 draws of labels)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
