"""Step-level search over a remote server vs in-process, on the testbed target: particle filtering and weighted
best-of-N with the trained testbed PRM, the same problems, N and seeds, through the same eval harness.

The remote side is this project's server on loopback (`remote:URL#testbed-target`): every step is a completion
request that stops at the step delimiter, the PRM runs on the client. Sampled draws differ between the two
backends (server-side seeds vs engine row generators), so the comparison is of accuracies (Wilson 95% CIs, and
the paired difference over the same problems) and of what the remote backend sends per problem.

    python benchmarks/remote_search.py [--quick] [--json] [--per-difficulty 30] [--n 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TASKS = ("testbed:d=7", "testbed:d=8")
METHODS = ("particle-filter:prm=testbed", "weighted-best-of-n:prm=testbed")


def sweep(model: str, method: str, n: int, limit: int, out: Path) -> list[dict]:
    from reasonbudget.eval import SweepConfig, run_sweep

    records = []
    for task in TASKS:
        cfg = SweepConfig(task=task, methods=(method,), budgets=(n,), limit=limit, model=model, temperature=0.8,
                          batch_size=limit)
        where = out / f"{task.replace(':', '-').replace('=', '')}-{method.split(':')[0]}-{'remote' if 'remote:' in model else 'local'}"
        t0 = time.perf_counter()
        run_sweep(cfg, where, progress=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (where / "results.jsonl").read_text().splitlines()]
        records += [dict(r, sweep_seconds=wall) for r in rows]
    return records


def summarize(records: list[dict], method: str, backend: str) -> dict:
    from reasonbudget.eval.report import wilson

    k, n = sum(r["correct"] for r in records), len(records)
    lo, hi = wilson(k, n)
    per = lambda f: round(sum(f(r) for r in records) / n, 1)  # noqa: E731
    return {"method": method.split(":")[0], "backend": backend, "problems": n, "accuracy": round(k / n, 3),
            "ci_low": round(lo, 3), "ci_high": round(hi, 3),
            "requests_per_problem": per(lambda r: r["trace"].get("requests", 0)),
            "sent_tokens_per_problem": per(lambda r: r["trace"].get("sent_tokens", 0)),
            "generated_tokens_per_problem": per(lambda r: r["usage"]["completion_tokens"]),
            "prm_calls_per_problem": per(lambda r: r["usage"]["prm_calls"]),
            "wall_seconds_per_problem": round(sum({r["task"]: r["sweep_seconds"] for r in records}.values()) / n, 2)}


def paired_difference(a: list[dict], b: list[dict]) -> dict:
    """Remote minus local accuracy over the same problems, with a bootstrap 95% interval over problems."""
    import random

    right = {(r["task"], r["problem_id"]): r["correct"] for r in a}
    pairs = [(right[(r["task"], r["problem_id"])], r["correct"]) for r in b if (r["task"], r["problem_id"]) in right]
    rng = random.Random(0)
    diffs = sorted(sum(y - x for x, y in (rng.choice(pairs) for _ in pairs)) / len(pairs) for _ in range(2000))
    return {"diff": round(sum(y - x for x, y in pairs) / len(pairs), 3), "diff_ci_low": round(diffs[50], 3),
            "diff_ci_high": round(diffs[1949], 3), "problems": len(pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 problems per difficulty, N=4")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--per-difficulty", type=int, default=30)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", default="runs/remote_search")
    args = ap.parse_args()
    limit, n = (5, 4) if args.quick else (args.per_difficulty, args.n)
    out = Path(args.out) / f"n{n}-l{limit}"

    from reasonbudget.models import load_model
    from reasonbudget.serve.app import create_app
    from reasonbudget.serve.background import serving
    from reasonbudget.serve.requests import ServeConfig

    rows, paired = [], []
    with serving(create_app(load_model("testbed-target"), ServeConfig(default_max_tokens=64))) as url:
        for method in METHODS:
            local = sweep("testbed-target", method, n, limit, out)
            remote = sweep(f"remote:{url}#testbed-target", method, n, limit, out)
            rows += [summarize(local, method, "in-process"), summarize(remote, method, "remote")]
            paired.append({"method": method.split(":")[0], **paired_difference(local, remote)})
    report = {"tasks": list(TASKS), "n": n, "temperature": 0.8, "rows": rows, "paired": paired}
    print(f"{'method':20s} {'backend':11s} {'acc':>6s} {'95% CI':>14s} {'req/prob':>9s} {'sent tok':>9s} "
          f"{'gen tok':>8s} {'PRM calls':>9s} {'wall s':>7s}")
    for r in rows:
        print(f"{r['method']:20s} {r['backend']:11s} {r['accuracy']:6.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"{r['requests_per_problem']:9.1f} {r['sent_tokens_per_problem']:9.1f} "
              f"{r['generated_tokens_per_problem']:8.1f} {r['prm_calls_per_problem']:9.1f} "
              f"{r['wall_seconds_per_problem']:7.2f}")
    for p in paired:
        verdict = ("no difference detected" if p["diff_ci_low"] <= 0 <= p["diff_ci_high"]
                   else "the backends differ")
        print(f"{p['method']}: remote - in-process = {p['diff']:+.3f} [{p['diff_ci_low']:+.3f}, "
              f"{p['diff_ci_high']:+.3f}] over {p['problems']} problems: {verdict}")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if args.json:
        json.dump(report, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
