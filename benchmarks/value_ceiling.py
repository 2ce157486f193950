"""What a scorer of step prefixes can reach on rollout labels, and how much of it is knowing the problem.

Labels steps as `reasonbudget train-prm --label-only` does (the same seeds: the first `--rollouts` outcomes of a
step are its label's), but rolls out `--extra` more completions per step. Those estimate each step's value V,
the chance that the policy reaches the answer from there. Against the any-of-`--rollouts` labels of the
intermediate steps it reports the AUROC of:
    V                 the best any scorer of the prefix can do
    problem mean V    a score that knows the problem and nothing of the step (its difficulty for the policy)
    a PRM (--prm)     optional, e.g. the testbed's
each pooled over all steps and within problems (the mean over problems with both labels: what search compares).

    python benchmarks/value_ceiling.py [--model testbed-target] [--task testbed:d=7,seed=102,n=60] [--limit 60]
                                       [--extra 30] [--prm testbed] [--threads 1] [--json] [--out FILE]

It costs (1 + extra / (rollouts - 1)) times a labelling run: 40 min for the default at one thread on a 2-core
AVX2 CPU beside other work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def value_rows(outcomes: dict, rollouts: int) -> list[dict]:
    """Per rolled-out step ((problem, solution, step) -> outcomes, own first): its any-of-`rollouts` label and V,
    the share of the outcomes after those; steps without extra outcomes are skipped; pure."""
    return [{"problem": p, "solution": s, "step": k, "label": any(v[:rollouts]),
             "value": sum(v[rollouts:]) / len(v[rollouts:])}
            for (p, s, k), v in outcomes.items() if len(v) > rollouts]


def ceiling_metrics(rows: list[dict], scores: dict[str, list[float]]) -> dict:
    """Pooled and within-problem AUROC of V, of the problem's mean V, and of each named score list (one score
    per row); pure."""
    from reasonbudget.eval.report import auroc
    from reasonbudget.training.head_prm import within_problem_auroc

    y = [r["label"] for r in rows]
    groups = [r["problem"] for r in rows]
    by_problem: dict[str, list[float]] = {}
    for r in rows:
        by_problem.setdefault(r["problem"], []).append(r["value"])
    named = {"value": [r["value"] for r in rows],
             "problem mean value": [statistics.mean(by_problem[r["problem"]]) for r in rows], **scores}
    out = {"steps": len(rows), "positive_share": sum(y) / len(y) if y else None, "scorers": {}}
    for name, s in named.items():
        within, n = within_problem_auroc(s, y, groups)
        out["scorers"][name] = {"pooled_auroc": auroc(s, y), "within_problem_auroc": within if n else None,
                                "problems_with_both": n}
    return out


def measure(args) -> dict:
    import torch

    from reasonbudget.models import load_model
    from reasonbudget.tasks import get_task
    from reasonbudget.training.step_labels import LabelConfig, StepLabeller

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = load_model(args.model, dtype=args.dtype)
    task = get_task(args.task)
    problems = task.problems()[: args.limit]
    cfg = LabelConfig(samples=args.samples, rollouts=args.rollouts + args.extra, temperature=args.temperature,
                      max_tokens=args.max_tokens)
    labeller = StepLabeller(model, cfg, task=task.name, batch_rows=256)
    labelled = []
    for i in range(0, len(problems), 10):
        labelled += labeller.label(problems[i : i + 10])
        if not args.json:
            print(f"{min(i + 10, len(problems))}/{len(problems)} problems ({time.time() - t0:.0f}s)", file=sys.stderr,
                  flush=True)
    rows = value_rows(labeller.outcomes, args.rollouts)
    scores = {}
    if args.prm:
        from reasonbudget.rewards.factory import load_prm
        from reasonbudget.types import StepSequence

        prm = load_prm(args.prm, model)
        keys = [(lp.problem_id, s) for lp in labelled for s in range(len(lp.solutions))]
        per_solution = dict(zip(keys, prm.score_steps([StepSequence(lp.question, sol.steps) for lp in labelled
                                                       for sol in lp.solutions])))  # one batched call
        scores[f"PRM ({args.prm})"] = [float(per_solution[(r["problem"], r["solution"])][r["step"]]) for r in rows]
    report = ceiling_metrics(rows, scores)
    report["settings"] = {k: getattr(args, k) for k in ("model", "task", "limit", "samples", "rollouts", "extra",
                                                         "temperature", "max_tokens", "dtype", "prm")}
    report["seconds"] = round(time.time() - t0, 1)
    return report


def print_table(report: dict) -> None:
    print(f"{report['steps']} intermediate steps, {report['positive_share']:.3f} positive (any of "
          f"{report['settings']['rollouts']}); V from {report['settings']['extra']} more rollouts each")
    print(f"{'scorer':24} {'pooled AUROC':>12} {'within problems':>15} {'problems':>9}")
    for name, m in report["scorers"].items():
        within = "-" if m["within_problem_auroc"] is None else f"{m['within_problem_auroc']:.3f}"
        print(f"{name:24} {m['pooled_auroc']:12.3f} {within:>15} {m['problems_with_both']:9d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="testbed-target")
    ap.add_argument("--task", default="testbed:d=7,seed=102,n=60")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=3, help="outcomes in a label (the solution's own included)")
    ap.add_argument("--extra", type=int, default=30, help="further rollouts per step, for V")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--prm", default="", help="also score the steps with this PRM (e.g. testbed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default="runs/value_ceiling.json")
    args = ap.parse_args()
    if args.rollouts < 1 or args.extra < 1 or args.limit < 1:
        raise SystemExit("--rollouts, --extra and --limit must be >= 1")
    from reasonbudget.models.registry import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    report = measure(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1)) if args.json else print_table(report)


if __name__ == "__main__":
    main()
