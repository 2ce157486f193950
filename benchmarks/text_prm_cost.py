"""What a text-scoring PRM head costs over a search's rounds, with and without keeping its KV rows.

A search asks its PRM, every round, for the steps of every open particle: round k scores each text with its first
k steps. A head over frozen states keeps its base model's KV rows of the texts it read (`rewards.step_states`), so
round k feeds only step k; re-reading feeds the whole prefix again. Both runs here score the same labelled
solutions in the same rounds, side by side in one process; the scores must agree (they are the same states).

    python benchmarks/text_prm_cost.py [--labels data/step-labels/qwen2.5-coder-0.5b-gsm8k-test.jsonl]
                                       [--solutions 4] [--head DIR] [--threads 2] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def rounds_cost(prm, texts) -> tuple[int, float, list]:
    """(tokens the base read, seconds, the last round's scores of every text) over the search-like rounds."""
    from reasonbudget.types import StepSequence

    t0, before = time.perf_counter(), prm.tokens_read
    final: dict[int, torch.Tensor] = {}
    for k in range(1, max(len(st) for _, st in texts) + 1):
        open_ = [i for i, (_, st) in enumerate(texts) if len(st) >= k]
        for i, s in zip(open_, prm.score_steps([StepSequence(texts[i][0], texts[i][1][:k]) for i in open_])):
            final[i] = s
    return prm.tokens_read - before, time.perf_counter() - t0, [final[i] for i in range(len(texts))]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", default="data/step-labels/qwen2.5-coder-0.5b-gsm8k-test.jsonl")
    ap.add_argument("--solutions", type=int, default=4, help="the first N labelled solutions")
    ap.add_argument("--head", help="PRM head directory (default: Qwen2.5-Coder-0.5B's companion)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from reasonbudget.models.registry import registered_companion
    from reasonbudget.rewards.head_prm import HeadPRM
    from reasonbudget.training.step_labels import load_labels

    if not Path(args.labels).exists():
        raise SystemExit(f"--labels {args.labels}: no such file (`reasonbudget train-prm --label-only` makes one)")
    texts = [(lp.question, s.steps) for lp in load_labels(Path(args.labels)) for s in lp.solutions if s.steps]
    texts = texts[: args.solutions]
    head = Path(args.head) if args.head else registered_companion("qwen2.5-coder-0.5b", "prm")
    kept = HeadPRM(head)
    again = HeadPRM(head, base=kept.base, reuse_prefixes=False)  # the same weights, loaded once
    rows = []
    for name, prm in (("kept rows", kept), ("re-read", again)):
        tokens, seconds, scores = rounds_cost(prm, texts)
        rows.append({"mode": name, "tokens_read": tokens, "seconds": round(seconds, 2), "scores": scores})
    agree = max(float((a - b).abs().max()) for a, b in zip(rows[0].pop("scores"), rows[1].pop("scores")))
    report = {"head": str(head), "solutions": len(texts), "steps": sum(len(st) for _, st in texts),
              "threads": args.threads, "rows": rows, "max_score_difference": agree,
              "token_ratio": round(rows[1]["tokens_read"] / rows[0]["tokens_read"], 2),
              "speedup": round(rows[1]["seconds"] / rows[0]["seconds"], 2)}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['solutions']} solutions, {report['steps']} steps, scored round by round ({args.threads} threads)")
    print(f"{'mode':10s} {'tokens read':>11s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['mode']:10s} {r['tokens_read']:11d} {r['seconds']:8.1f}")
    print(f"re-reading reads {report['token_ratio']}x the tokens and takes {report['speedup']}x the time; "
          f"scores agree within {agree:.1e}")


if __name__ == "__main__":
    main()
