"""Particle filtering vs weighted best-of-N on a real model with the LLM-as-judge scorer (GSM8K).

The policy judges its own partial solutions (prm=judge: the probability of "yes" to "Is every step of your
solution so far correct?", read on the particles' KV rows). Weighted best-of-N, best-of-N and majority vote
come from one run of N_max samples per problem, evaluated at each N on its first N samples (search-and-learn's
protocol, as in benchmarks/scaling.py); particle filtering runs at every N. Greedy plain CoT is the reference.
Everything runs through the evaluation harness (resumable sweep directories under --out).

    python benchmarks/real_scaling.py [--model qwen2.5-coder-0.5b] [--limit 50] [--ns 4,8] [--json]

--json prints {"rows": [{"method", "n", "accuracy", "ci_low", "ci_high", "mean_generated_tokens",
"mean_prm_calls", "mean_prm_tokens", "mean_wall_seconds"}...]}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

PRM = "prm=judge"
TEMPERATURE = 0.8


def sweep(args, methods, budgets, out: Path, temperature: float) -> list[dict]:
    from reasonbudget.eval import SweepConfig, run_sweep
    from reasonbudget.eval.records import ResultsFile

    cfg = SweepConfig(task="gsm8k", methods=tuple(methods), budgets=tuple(budgets), seeds=(0,), limit=args.limit,
                      model=args.model, temperature=temperature, top_p=1.0, dtype=args.dtype,
                      batch_size=args.batch_size)
    run_sweep(cfg, out, progress=not args.json)
    return list(ResultsFile(out / "results.jsonl").load().values())


def cell(r: dict, **over) -> dict:
    u = r["usage"]
    c = {"correct": r["correct"], "generated": u["completion_tokens"], "prm_calls": u["prm_calls"],
         "prm_tokens": u["prm_tokens"], "wall": u["wall_seconds"]}
    return c | over


def sampled_cells(r: dict, n: int) -> dict[str, dict]:
    """best-of-n, weighted-best-of-n and majority vote on the first n samples of a weighted-best-of-n record;
    cost is the share of the record's cost that n samples take."""
    from reasonbudget.methods.scaling.common import finite
    from reasonbudget.search.voting import answer_groups, vote
    from reasonbudget.tasks import grade

    answers, scores = r["trace"]["answers"][:n], r["trace"]["scores"][:n]
    scores = [float("nan") if s is None else s for s in scores]
    groups = answer_groups(answers)
    answered = [i for i, a in enumerate(answers) if a.strip()] or list(range(n))
    picks = {"best-of-n": max(answered, key=lambda i: finite(scores[i])),
             "weighted-best-of-n": vote(groups, scores), "majority-vote": vote(groups)}
    share = n / len(r["trace"]["answers"])
    u = r["usage"]
    out = {}
    for method, pick in picks.items():
        ok = pick is not None and grade(answers[pick], r["gold"], task="gsm8k")
        judged = method != "majority-vote"
        out[method] = cell(r, correct=ok, generated=share * u["completion_tokens"],
                           prm_calls=n if judged else 0, prm_tokens=share * u["prm_tokens"] if judged else 0,
                           wall=share * u["wall_seconds"])
    return out


def measure(args) -> dict:
    import torch

    from reasonbudget.tasks import grade

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    steps = f"max_tokens={args.max_tokens}"
    cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in sweep(args, ["plain"], [], out / "greedy", 0.0):
        cells[("greedy", 1)].append(cell(r))
    big = max(args.ns)
    for r in sweep(args, [f"weighted-best-of-n:{PRM},{steps}"], [big], out / "sampled", TEMPERATURE):
        for n in args.ns:
            for method, c in sampled_cells(r, n).items():
                cells[(method, n)].append(c)
    _log(args, f"sampled done ({time.time() - t0:.0f}s)")
    for r in sweep(args, [f"particle-filter:{PRM},{steps}"], list(args.ns), out / "particle-filter", TEMPERATURE):
        cells[("particle-filter", r["budget"])].append(cell(r))
        if "picks" in r["trace"]:  # the same run, weighted-vote selection
            voted = r["trace"]["answers"][r["trace"]["picks"]["vote"]]
            cells[("particle-filter-vote", r["budget"])].append(cell(r, correct=grade(voted, r["gold"], task="gsm8k")))
    return {"rows": rows_of(cells), "seconds": round(time.time() - t0, 1),
            "settings": {"model": args.model, "dtype": args.dtype, "task": "gsm8k", "limit": args.limit,
                         "ns": list(args.ns), "prm": PRM, "temperature": TEMPERATURE,
                         "max_tokens": args.max_tokens, "threads": args.threads}}


def rows_of(cells) -> list[dict]:
    from reasonbudget.eval.report import wilson

    rows = []
    for (method, n), cs in sorted(cells.items()):
        k, total = sum(bool(c["correct"]) for c in cs), len(cs)
        lo, hi = wilson(k, total)
        rows.append({"method": method, "n": n, "accuracy": k / total, "ci_low": lo, "ci_high": hi, "count": total,
                     "mean_generated_tokens": statistics.mean(c["generated"] for c in cs),
                     "mean_prm_calls": statistics.mean(c["prm_calls"] for c in cs),
                     "mean_prm_tokens": statistics.mean(c["prm_tokens"] for c in cs),
                     "mean_wall_seconds": statistics.mean(c["wall"] for c in cs)})
    return rows


def _log(args, msg: str) -> None:
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"{s['model']} ({s['dtype']}) on {s['task']}, first {s['limit']} problems, {s['prm']}, T={s['temperature']}")
    print(f"{'method':20} {'N':>3} {'accuracy':>9} {'95% CI':>15} {'gen tokens':>11} {'PRM calls':>10} "
          f"{'PRM tokens':>11} {'wall s':>8}")
    for r in report["rows"]:
        print(f"{r['method']:20} {r['n']:3d} {r['accuracy']:9.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"{r['mean_generated_tokens']:11.0f} {r['mean_prm_calls']:10.1f} {r['mean_prm_tokens']:11.0f} "
              f"{r['mean_wall_seconds']:8.1f}")
    print(f"\ntotal {report.get('seconds', 0)} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 decodes ~3x faster than float32 on AMX CPUs")
    ap.add_argument("--limit", type=int, default=50, help="first N GSM8K test problems")
    ap.add_argument("--ns", default="4,8", help="comma-separated N values")
    ap.add_argument("--max-tokens", type=int, default=640, help="per sample or particle")
    ap.add_argument("--batch-size", type=int, default=10, help="problems per engine batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/real_scaling")
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--load", help="print a saved report.json, measure nothing")
    args = ap.parse_args()
    args.ns = tuple(int(x) for x in args.ns.split(","))
    if args.load:
        report = json.loads(Path(args.load).read_text())
    else:
        report = measure(args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps({"rows": report["rows"]}, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
