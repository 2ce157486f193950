"""Thinking-budget requests to the server with speculation (`serve --draft-model`), against the same requests
without it, on one server in one run.

Each GSM8K test question is sent twice, back to back (which goes first alternates): once as a plain budgeted request (the server's draft
speculates for it) and once turning it off (`method_config: {"draft": "none"}`, target-only). Checks that every
request keeps its thinking budget and gets an answer; reports completion tokens/s of both and their ratio, with
a 95% interval that resamples the questions (pairs kept), and each side's accuracy.

    python benchmarks/serve_speculation.py [--quick] [--json] [--problems 10] [--budget 192]
        [--target qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b] [--draft-quant int4] [--out FILE]

The default pair needs `make real-models`; `--target testbed-target --draft testbed-draft --draft-quant none`
runs the testbed pair on its own task (testbed d=6; a step there is mostly per-call overhead: speculation does
not pay on it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx

ANSWER_ROOM = 48


def ask(url: str, model: str, question: str, budget: int, speculate: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "thinking_token_budget": budget, "max_tokens": budget + ANSWER_ROOM}
    if not speculate:
        body["method_config"] = {"draft": "none"}  # the request turns the server's draft off: target-only
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=3600)
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"the server answered {r.status_code}: {r.text[:300]}")
    data = r.json()
    usage = data["reasonbudget"]["usage"]
    return {"seconds": seconds, "method": data["reasonbudget"]["method"],
            "tokens": usage["thinking_tokens"] + usage["answer_tokens"], "thinking_tokens": usage["thinking_tokens"],
            "answer": data["choices"][0]["message"]["content"] or "",
            "drafted": usage.get("drafted_tokens", 0), "accepted": usage.get("accepted_tokens", 0)}


def summarize(results: list[dict], golds: list[str], grader: str, budget: int) -> dict:
    from reasonbudget.eval.stats import bootstrap_interval
    from reasonbudget.tasks import grade_many

    right = grade_many([(r["answer"], g, grader) for r, g in zip(results, golds)])
    lo, hi = bootstrap_interval({str(i): [bool(v)] for i, v in enumerate(right)})
    drafted = sum(r["drafted"] for r in results)
    tokens, seconds = sum(r["tokens"] for r in results), sum(r["seconds"] for r in results)
    return {"tok_s": round(tokens / seconds, 2), "tokens": tokens, "seconds": round(seconds, 2),
            "over_budget": sum(r["thinking_tokens"] > budget for r in results),
            "no_answer": sum(not r["answer"].strip() for r in results),
            "max_thinking_tokens": max(r["thinking_tokens"] for r in results),
            "acceptance": round(sum(r["accepted"] for r in results) / drafted, 4) if drafted else None,
            "accuracy": round(sum(right) / len(right), 4), "accuracy_ci": [round(lo, 4), round(hi, 4)],
            "method": results[0]["method"]}


def measure(args) -> dict:
    import torch

    from reasonbudget.eval.stats import rate_ratio_interval
    from reasonbudget.models import load_model
    from reasonbudget.models.registry import resolve_dtype
    from reasonbudget.serve.app import create_app
    from reasonbudget.serve.background import serving
    from reasonbudget.serve.requests import ServeConfig
    from reasonbudget.tasks import get_task

    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype) if args.target != "testbed-target" else "float32"
    target = load_model(args.target, dtype=dtype)
    cfg = ServeConfig(default_max_tokens=args.budget + ANSWER_ROOM, default_draft=args.draft,
                      default_draft_quant=args.draft_quant)
    task = get_task("testbed:d=6" if args.target.startswith("testbed") else "gsm8k")
    problems = task.problems(args.problems)
    with serving(create_app(target, cfg)) as url:
        for speculate in (True, False):  # loads the draft (once per process) and warms both paths up
            ask(url, args.target, problems[0].question, 8, speculate)
        runs = {"speculative": [], "target-only": []}
        for i, p in enumerate(problems):
            for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):  # alternate which goes first
                runs[name].append(ask(url, args.target, p.question, args.budget, name == "speculative"))
            if not args.json:
                print(f"  {i + 1}/{len(problems)}: target-only {runs['target-only'][-1]['seconds']:.1f} s, "
                      f"speculative {runs['speculative'][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    golds = [p.gold for p in problems]
    rows = {name: summarize(rs, golds, task.grader, args.budget) for name, rs in runs.items()}
    spec, base = runs["speculative"], runs["target-only"]
    ratio, lo, hi = rate_ratio_interval([r["tokens"] for r in spec], [r["seconds"] for r in spec],
                                        [r["tokens"] for r in base], [r["seconds"] for r in base])
    return {"rows": rows, "speedup": round(ratio, 3), "speedup_ci": [round(lo, 3), round(hi, 3)],
            "settings": {"task": task.spec, "target": args.target, "draft": args.draft, "draft_quant": args.draft_quant,
                         "dtype": dtype, "problems": len(problems), "budget": args.budget,
                         "threads": args.threads}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 problems")
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--budget", type=int, default=192, help="thinking tokens per request")
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--draft-quant", default="int4")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.problems = 3
    if args.problems < 1 or args.budget < 1:
        ap.error("--problems and --budget must be >= 1")
    report = measure(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if args.json:
        print(json.dumps(report))
        return
    s = report["settings"]
    print(f"{s['target']} served, draft {s['draft']} ({s['draft_quant']}), {s['problems']} {s['task']} questions, "
          f"thinking budget {s['budget']}, greedy")
    print(f"{'request':12s} {'tok/s':>7s} {'over budget':>11s} {'no answer':>9s} {'max thinking':>12s} "
          f"{'acceptance':>10s} {'accuracy':>8s} {'95% CI':>14s}")
    for name, r in report["rows"].items():
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        print(f"{name:12s} {r['tok_s']:7.1f} {r['over_budget']:11d} {r['no_answer']:9d} "
              f"{r['max_thinking_tokens']:12d} {acc:>10s} {r['accuracy']:8.2f} "
              f"[{r['accuracy_ci'][0]:.2f}, {r['accuracy_ci'][1]:.2f}]")
    lo, hi = report["speedup_ci"]
    print(f"speed-up with speculation: {report['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]"
          + (" (cannot tell apart from 1.0x at this size)" if lo <= 1.0 <= hi else ""))


if __name__ == "__main__":
    sys.exit(main())
