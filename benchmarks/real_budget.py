"""Budget control on a real model: Qwen2.5-Coder-0.5B-Instruct on the first GSM8K test problems, greedy.

Methods: plain CoT; TALE-EP in the reference's prompt layout (the default); and at two absolute thinking budgets
(by default 75 and 150 tokens, 25% and 50% of plain CoT's natural length on this model, as in the earlier
table): budget forcing and budget guidance with the hard cap. `--extra` adds TALE in our earlier prompt layout,
budget forcing in the Budget Guidance paper's style and soft budget guidance.
Guidance uses the model's companion length predictor (`reasonbudget train-predictor --model
qwen2.5-coder-0.5b`, which now trains on the model's own sampled traces). Everything runs through the eval
harness (resumable sweep directory); this script adds the table, paired per-problem comparisons of guidance
against forcing, a JSON document, and the previous table (off-policy predictor, our TALE prompts, float32)
beside the new one.

    python benchmarks/real_budget.py [--quick] [--json] [--out DIR] [--limit N] [--budgets 75,150]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

MODEL = "qwen2.5-coder-0.5b"
UNBUDGETED = ("plain", "tale")
BUDGETED = ("budget-forcing", "budget-guidance:hard_cap=true")
EXTRA = ("tale:prompts=ours", "budget-forcing:style=final-answer", "budget-guidance")
"""With --extra: TALE in our earlier layout, the Budget Guidance paper's forcing baseline and soft guidance
(each costs about as much as plain CoT or more on this model)."""
PAIRS = (("budget-guidance:hard_cap=true", "budget-forcing"),
         ("budget-guidance:hard_cap=true", "budget-forcing:style=final-answer"),
         ("budget-guidance", "budget-forcing"))
PREVIOUS = {
    "source": "README before issue 17 (predictor trained on 400 GSM8K reference solutions, off-policy; TALE in "
              "our prompt layout; float32; 100 problems)",
    "rows": [
        {"method": "plain", "budget": None, "accuracy": 0.25, "mean_thinking_tokens": 297.7, "mean_output_tokens": 313.1},
        {"method": "tale:prompts=ours", "budget": None, "accuracy": 0.26, "mean_thinking_tokens": 281.2,
         "mean_output_tokens": 299.2},
        {"method": "budget-forcing", "budget": 75, "accuracy": 0.02, "mean_thinking_tokens": 75.0, "mean_output_tokens": 90.0},
        {"method": "budget-guidance:hard_cap=true", "budget": 75, "accuracy": 0.03, "mean_thinking_tokens": 74.0,
         "mean_output_tokens": 88.5},
        {"method": "budget-forcing", "budget": 150, "accuracy": 0.07, "mean_thinking_tokens": 150.0,
         "mean_output_tokens": 167.6},
        {"method": "budget-guidance:hard_cap=true", "budget": 150, "accuracy": 0.08, "mean_thinking_tokens": 148.3,
         "mean_output_tokens": 165.8},
        {"method": "budget-guidance", "budget": 75, "accuracy": 0.0, "mean_thinking_tokens": 398.9,
         "mean_output_tokens": 411.2, "note": "16 problems; 15 over budget"},
    ],
}


def run(args) -> dict:
    from reasonbudget.eval import SweepConfig, run_sweep
    from reasonbudget.eval.records import ResultsFile
    from reasonbudget.tasks import get_task

    t0 = time.time()
    out = Path(args.out)
    methods = UNBUDGETED + BUDGETED + (EXTRA if args.extra else ())
    if args.only:
        methods = tuple(m for m in methods if m in args.only)
    cfg = SweepConfig(task="gsm8k", methods=methods, budgets=tuple(args.budgets), limit=args.limit,
                      model=MODEL, temperature=0.0, dtype=args.dtype, batch_size=args.batch_size)
    run_sweep(cfg, out, progress=not args.quiet)
    ids = {p.id for p in get_task("gsm8k").problems(args.limit)}
    records = [r for r in ResultsFile(out / "results.jsonl").load().values() if r["method"] in methods
               and (r["budget"] is None or r["budget"] in args.budgets) and r["problem_id"] in ids]
    report = summarize(records, args)
    report["settings"]["methods"] = list(methods)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def summarize(records: list[dict], args) -> dict:
    from reasonbudget.eval.stats import bootstrap_interval, paired_difference, verdict

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["budget"])].append(r)
    rows = []
    for (method, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        outcomes = {r["problem_id"]: [bool(r["correct"])] for r in rs}
        lo, hi = bootstrap_interval(outcomes)
        think = [r["usage"]["thinking_tokens"] for r in rs]
        rows.append({"method": method, "budget": budget, "n": len(rs),
                     "accuracy": sum(bool(r["correct"]) for r in rs) / len(rs), "ci_low": lo, "ci_high": hi,
                     "mean_thinking_tokens": statistics.mean(think),
                     "mean_output_tokens": statistics.mean(r["usage"]["thinking_tokens"] + r["usage"]["forced_tokens"]
                                                           + r["usage"]["answer_tokens"] for r in rs),
                     "overshoot_rate": (sum(t > budget for t in think) / len(think)) if budget else None,
                     "finished_by_length": sum(r["finish_reason"] == "length" for r in rs) / len(rs),
                     "estimate_parsed": (sum(r["trace"].get("estimate") is not None for r in rs) / len(rs)
                                         if method.startswith("tale") else None)})
    paired = []
    for a, b in PAIRS:
        for budget in args.budgets:
            ra, rb = groups.get((a, budget), []), groups.get((b, budget), [])
            if ra and rb:
                p = paired_difference({r["problem_id"]: [bool(r["correct"])] for r in ra},
                                      {r["problem_id"]: [bool(r["correct"])] for r in rb})
                paired.append({"a": a, "b": b, "budget": budget, **p, "verdict": verdict(p, (a, b))})
    return {"rows": rows, "paired": paired, "previous": PREVIOUS,
            "settings": {"model": MODEL, "task": "gsm8k (test)", "limit": args.limit, "budgets": list(args.budgets),
                         "temperature": 0.0, "dtype": args.dtype}}


def print_table(report: dict) -> None:
    print(f"{'method':36s} {'budget':>6s} {'acc':>6s} {'95% CI':>15s} {'think':>7s} {'output':>7s} {'over':>5s}")
    for r in report["rows"]:
        over = f"{r['overshoot_rate']:.2f}" if r["overshoot_rate"] is not None else "-"
        print(f"{r['method']:36s} {r['budget'] or '-':>6} {r['accuracy']:6.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['mean_thinking_tokens']:7.1f} {r['mean_output_tokens']:7.1f} "
              f"{over:>5s}")
    print("\npaired per problem (A - B, bootstrap 95% interval over problems):")
    for p in report["paired"]:
        print(f"  {p['a']} - {p['b']} @ {p['budget']}: {p['diff']:+.3f} [{p['diff_ci_low']:+.3f}, "
              f"{p['diff_ci_high']:+.3f}], p={p['p']:.3f}: {p['verdict']}")
    print(f"\nprevious ({report['previous']['source']}):")
    for r in report["previous"]["rows"]:
        print(f"  {r['method']:36s} {r['budget'] or '-':>6} {r['accuracy']:6.3f} {r['mean_thinking_tokens']:7.1f}"
              f" {r['mean_output_tokens']:7.1f} {r.get('note', '')}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 problems (intervals too wide to separate most rows)")
    ap.add_argument("--json", action="store_true", help="Print the JSON document instead of the table.")
    ap.add_argument("--out", default="runs/real-budget/sweep")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--budgets", default="75,150")
    ap.add_argument("--dtype", default="auto", help="float32 | bfloat16 | auto (bfloat16 where its matmuls are native (GPU, AVX-512), else float32; resolved before the run, so that a sweep's identity names the dtype it ran in)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--extra", action="store_true", help="Also " + ", ".join(EXTRA) + ".")
    ap.add_argument("--only", default="", help="Comma-separated subset of the methods (e.g. to run the ones that "
                                              "need no length predictor while it trains).")
    ap.add_argument("--save", default="docs/real_budget.json", help="Where the JSON document is written.")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from reasonbudget.models.registry import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    args.only = tuple(m for m in args.only.split(",") if m)
    if args.quick:
        args.limit = min(args.limit, 20)
    try:
        args.budgets = sorted({int(b) for b in args.budgets.split(",")})
    except ValueError:
        sys.exit(f"--budgets {args.budgets!r}: comma-separated positive integers")
    if args.limit < 1 or any(b < 1 for b in args.budgets):
        sys.exit("--limit and every budget must be >= 1")
    from reasonbudget.models import ModelNotFoundError

    try:
        report = run(args)
    except (ModelNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if not args.quick and args.save:  # (settings.methods says which methods a partial run holds)
        Path(args.save).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else "", end="")
    if not args.json:
        print_table(report)


if __name__ == "__main__":
    main()
