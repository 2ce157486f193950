"""How well step scorers tell good steps from bad ones on labelled real-model solutions (issue 21).

Reads a step-label file (`reasonbudget train-prm --label-only`, GSM8K test problems for held-out numbers) and
scores every solution's steps with each scorer:
    head      the trained PRM head (`--head DIR`, default: the model's companion, as prm=auto finds it)
    logprob   the policy's own confidence, exp(mean token log-probability so far) (prm=logprob)
    logprob-min  the same by the lowest token log-probability so far (prm=logprob-min)
    judge     the policy as an LLM judge of the whole solution, final steps only (prm=judge-text; it re-reads
              the prefix for every step, so only `--judge-solutions` solutions are judged)
    difficulty  a reference, not a scorer one could deploy: every step of a solution scored by the share of
              positive labels among the steps of the problem's other solutions (how often the policy gets
              this problem right). It knows the problem, nothing about the step.
Metrics (training.head_prm.prm_metrics): step AUROC (intermediate steps by whether any rollout reached the
answer, final steps by the answer), the same within each problem (what search compares), final-step AUROC
against correctness, pair accuracy (right vs wrong solution of one problem), calibration error against the
soft labels.

    python benchmarks/real_prm.py --labels FILE [--model qwen2.5-coder-0.5b] [--head DIR] [--judge-solutions 60]
                                  [--json] [--out runs/real_prm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def measure(args) -> dict:
    import torch

    from reasonbudget.models import load_model
    from reasonbudget.rewards.factory import head_prm_dir
    from reasonbudget.rewards.head_prm import HeadPRM, step_features
    from reasonbudget.rewards.judge import LLMJudge
    from reasonbudget.rewards.logprob import prefix_confidence, prefix_min_confidence
    from reasonbudget.training.head_prm import prm_metrics, solutions_of, step_table
    from reasonbudget.training.step_labels import load_labels
    from reasonbudget.types import StepSequence

    torch.set_num_threads(args.threads)
    labelled = load_labels(Path(args.labels))[: args.limit or None]
    if not labelled:
        raise SystemExit(f"--labels {args.labels}: no labelled problems in that file")
    policy = load_model(args.model, dtype=args.dtype)
    items = [StepSequence(lp.question, s.steps) for lp, s in solutions_of(labelled)]
    report: dict = {"scorers": {}}
    head = None if args.head == "none" else Path(args.head) if args.head else head_prm_dir(policy)

    def measure_scores(name: str, scores, seconds: float) -> None:
        data = step_table(labelled, scores)
        report["scorers"][name] = prm_metrics(data.x[:, 0], data, torch.ones(len(data.y), dtype=torch.bool)) | {
            "seconds": round(seconds, 1)}

    if head is not None:
        t0 = time.time()
        same = json.loads((head / "prm_head.json").read_text())["base"] == policy.name
        measure_scores("head", HeadPRM(head, base=policy if same else None).score_steps(items), time.time() - t0)
    # both confidence readings from one forward of the policy per solution
    t0 = time.time()
    feats = step_features(policy, [(it.problem, it.steps) for it in items], (), separator=policy.profile.step_delimiter,
                          logprobs=True)
    seconds = (time.time() - t0) / 2
    lengths = [[len(policy.encode(s + policy.profile.step_delimiter)) for s in it.steps[: f.shape[0]]]
               for it, f in zip(items, feats)]
    measure_scores("logprob", [prefix_confidence(f, n) if f.numel() else f for f, n in zip(feats, lengths)], seconds)
    measure_scores("logprob-min", [prefix_min_confidence(f) if f.numel() else f for f in feats], seconds)
    measure_scores("difficulty (reference)", difficulty_scores(labelled), 0.0)
    # within a problem it only tells the left-out solutions apart, inversely (each reads the others' labels)
    report["scorers"]["difficulty (reference)"]["within_problem_auroc"] = None
    if args.judge_solutions:  # final steps only: one judge call per solution
        t0 = time.time()
        k = min(args.judge_solutions, len(items))
        judged = LLMJudge(policy).score_steps(items[:k])
        per_solution = [torch.full((len(it.steps),), float("nan")) for it in items[:k]]
        for ps, j in zip(per_solution, judged):
            ps[-1] = j[0]
        data = step_table(labelled, per_solution + [torch.zeros(0)] * (len(items) - k))  # the first k solutions
        fin = data.last & ~torch.isnan(data.x[:, 0])
        m = prm_metrics(torch.nan_to_num(data.x[:, 0]), data, fin)
        report["scorers"]["judge (final steps)"] = {k2: m[k2] for k2 in ("solutions", "final_auroc", "pairs",
                                                                          "pair_accuracy")} | {
            "seconds": round(time.time() - t0, 1)}
    sols = solutions_of(labelled)
    report["data"] = {"labels": str(args.labels), "problems": len(labelled), "solutions": len(sols),
                      "solution_accuracy": round(sum(s.correct for _, s in sols) / len(sols), 4),
                      "model": args.model, "head": str(head) if head else None}
    return report


def difficulty_scores(labelled) -> list:
    """Per solution (in `solutions_of` order), every step scored by the share of positive labels (any rollout
    right; the last step: the answer) among the steps of the problem's other solutions; 0.5 without any; pure."""
    import torch

    from reasonbudget.training.head_prm import solutions_of

    def positives(sol) -> list[bool]:  # the last step's value is its answer's correctness
        return [v > 0 for v in sol.values if v is not None]

    out = []
    for lp, sol in solutions_of(labelled):
        others = [y for o in lp.solutions if o is not sol for y in positives(o)]
        out.append(torch.full((len(sol.steps),), sum(others) / len(others) if others else 0.5))
    return out


def print_table(report: dict) -> None:
    d = report["data"]
    print(f"{d['model']}: {d['problems']} problems, {d['solutions']} solutions (accuracy {d['solution_accuracy']:.3f}),"
          f" labels {d['labels']}")
    print(f"{'scorer':22} {'steps':>6} {'step AUROC':>10} {'within problems':>15} {'final AUROC':>11} {'pairs':>6} "
          f"{'pair acc':>8} {'ECE':>6} {'seconds':>8}")
    fmt = lambda v, w, p=3: f"{v:{w}.{p}f}" if isinstance(v, float) else f"{'-' if v is None else v:>{w}}"  # noqa: E731
    for name, m in report["scorers"].items():
        print(f"{name:22} {fmt(m.get('steps'), 6)} {fmt(m.get('step_auroc'), 10)} "
              f"{fmt(m.get('within_problem_auroc'), 15)} {fmt(m.get('final_auroc'), 11)} "
              f"{fmt(m.get('pairs'), 6)} {fmt(m.get('pair_accuracy'), 8)} {fmt(m.get('ece'), 6)} "
              f"{fmt(m.get('seconds'), 8, 1)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", required=True)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="auto", help="float32 | bfloat16 | auto (bfloat16 where its matmuls are native (GPU, AVX-512), else float32; resolved before the run, so that a sweep's identity names the dtype it ran in)")
    ap.add_argument("--limit", type=int, default=0, help="the first K labelled problems only (0: all)")
    ap.add_argument("--head", help="PRM head directory (default: the model's companion; none: no head)")
    ap.add_argument("--judge-solutions", type=int, default=0, help="also judge the first K solutions (final steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/real_prm")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from reasonbudget.models.registry import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    if not Path(args.labels).is_file():
        ap.error(f"--labels {args.labels}: no such file (make one with reasonbudget train-prm --label-only)")
    report = measure(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else "", end="")
    if not args.json:
        print_table(report)


if __name__ == "__main__":
    main()
