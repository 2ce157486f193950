"""What a batched *sampled* decode step spends outside the model, on a 150k vocabulary: the draw and the memory.

Two comparisons, each side by side in one run:

1. The draw (`engine.sampling.inverse_cdf`: float64 block sums, then one block in order) against the whole-row
   float64 cumulative sum it replaced, on the same [rows, vocab] probabilities and uniforms (the tokens must agree;
   best of `--reps`).
2. Sampled decoding of `--rows` rows x `--tokens` tokens on a model (default Qwen2.5-Coder-0.5B, bfloat16), each
   in a fresh process, with glibc's default allocator settings (`REASONBUDGET_RETAIN_MEMORY=0`: every freed block
   over 32 MB goes back to the kernel) and with freed memory retained (`engine.memory`), alternated `--reps`
   times: wall seconds, kernel (sys) seconds and page faults of the decode.

    python benchmarks/sampled_step.py [--model qwen2.5-coder-0.5b] [--rows 64] [--tokens 48] [--reps 2]
                                      [--threads 2] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")

DECODE = """
import json, resource, sys, time, torch
torch.set_num_threads({threads})
from reasonbudget.engine import Engine, SamplingConfig
from reasonbudget.engine.budget import BudgetConfig
from reasonbudget.engine.sampling import child_generators
from reasonbudget.models import load_model
engine = Engine(load_model({model!r}, dtype="auto"))
prompt = engine.prompt({question!r})
def run():
    gens = child_generators(torch.Generator().manual_seed(0), {rows})
    budgets = [BudgetConfig(max_thinking_tokens={tokens}, max_answer_tokens=1)] * {rows}
    return engine.generate([prompt] * {rows}, budgets, SamplingConfig(temperature=0.8), gens)
run()  # warm-up: the heap settles, kernels are chosen
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
out = run()
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall_s": wall, "sys_s": r1.ru_stime - r0.ru_stime, "user_s": r1.ru_utime - r0.ru_utime,
                  "page_faults": r1.ru_minflt - r0.ru_minflt,
                  "tokens": sum(o.usage.completion_tokens for o in out)}}))
"""


def draw_times(rows: int, vocab: int, reps: int, threads: int) -> dict:
    import torch

    from reasonbudget.engine.sampling import inverse_cdf

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(rows, vocab, generator=g) * 3 / 0.8).softmax(-1)
    u = torch.rand(rows, dtype=torch.float64, generator=g)

    def whole_row():
        cdf = probs.double().cumsum(-1)
        return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]

    def best(fn):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    same = bool(torch.equal(inverse_cdf(probs, u), whole_row()))
    old, new = best(whole_row), best(lambda: inverse_cdf(probs, u))
    return {"rows": rows, "vocab": vocab, "whole_row_ms": old * 1e3, "blocked_ms": new * 1e3, "speedup": old / new,
            "same_tokens": same}


def decode_runs(args) -> dict:
    script = DECODE.format(threads=args.threads, model=args.model, question=QUESTION, rows=args.rows,
                           tokens=args.tokens)
    runs: dict[str, list[dict]] = {"default": [], "retained": []}
    for _ in range(args.reps):
        for label, flag in (("default", "0"), ("retained", "1")):
            env = {**os.environ, "REASONBUDGET_RETAIN_MEMORY": flag}
            out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"the decode run failed ({label}):\n{out.stderr[-2000:]}")
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {label:9s} {runs[label][-1]}", file=sys.stderr)
    summary = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
    walls = [d["wall_s"] / r["wall_s"] for d, r in zip(runs["default"], runs["retained"])]
    return {"runs": runs, "median": summary, "speedup": statistics.median(walls),
            "speedup_range": [min(walls), max(walls)]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=48, help="sampled tokens per row")
    ap.add_argument("--vocab", type=int, default=151936, help="vocabulary of the draw comparison")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--out", help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    if min(args.rows, args.tokens, args.vocab, args.reps, args.threads) < 1:
        ap.error("--rows, --tokens, --vocab, --reps and --threads must be >= 1")
    from reasonbudget.models.registry import ModelNotFoundError, resolve

    try:
        resolve(args.model)
    except ModelNotFoundError as e:
        sys.exit(f"--model {args.model!r}: {e} (`make real-models` fetches the Qwen pair)")
    report = {"draw": draw_times(args.rows, args.vocab, max(args.reps, 5), args.threads), "decode": decode_runs(args),
              "settings": vars(args)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    d = report["draw"]
    print(f"draw, {d['rows']} rows x {d['vocab']} tokens: whole-row float64 cumsum {d['whole_row_ms']:.1f} ms, "
          f"blocked {d['blocked_ms']:.1f} ms ({d['speedup']:.1f}x; same tokens: {d['same_tokens']})")
    m = report["decode"]["median"]
    print(f"\nsampled decode, {args.model}, {args.rows} rows x {args.tokens} tokens, {args.threads} threads "
          f"(median of {args.reps}, each in a fresh process):")
    print(f"{'allocator':<22}{'wall s':>8}{'sys s':>8}{'user s':>8}{'page faults':>13}")
    for label, name in (("default", "glibc default"), ("retained", "freed memory retained")):
        r = m[label]
        print(f"{name:<22}{r['wall_s']:>8.2f}{r['sys_s']:>8.2f}{r['user_s']:>8.2f}{r['page_faults']:>13.0f}")
    lo, hi = report["decode"]["speedup_range"]
    print(f"speed-up {report['decode']['speedup']:.2f}x (pairs: {lo:.2f}-{hi:.2f}x)")


if __name__ == "__main__":
    main()
