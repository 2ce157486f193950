"""Calibrating a testbed world: train a candidate target and draft under given operand ranges and training
lengths, then measure what the testbed issue asks of a world (greedy accuracy by difficulty for both models,
sampled accuracy / majority / pass@N of the target at the hardest difficulties, and how often the draft's greedy
next token equals the target's on the target's greedy thinking).

Candidates are trained with the committed recipe (`training.testbed_lm`), on any device; evaluation uses fresh
problems of the candidate world (seed 777), so worlds with other operand ranges compare like for like.

    python benchmarks/testbed_calibration.py [--add 1,9] [--mul 2,3] [--target-steps 1000] [--draft-steps 1200]
        [--draft-shape 64,2,4,192] [--device cpu|cuda] [--problems 60] [--samples 16] [--json] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

EVAL_SEED = 777


def parse_pair(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        sys.exit(f"--{what} {text!r}: two integers, e.g. 1,9")
    if not 1 <= lo <= hi:
        sys.exit(f"--{what} {text!r}: need 1 <= low <= high")
    return lo, hi


def train_candidates(args, out: Path) -> dict:
    from reasonbudget.training.testbed_lm import DRAFT, TARGET, ModelShape, train

    h, n_layers, heads, ffn = (int(x) for x in args.draft_shape.split(","))
    draft = replace(DRAFT, steps=args.draft_steps,
                    shape=ModelShape(hidden_size=h, num_layers=n_layers, num_heads=heads, intermediate_size=ffn))
    return {"target": train(replace(TARGET, steps=args.target_steps), out / "target", name="target",
                            device=args.device, log_every=500),
            "draft": train(draft, out / "draft", name="draft", device=args.device, log_every=500)}


def measure(args, out: Path) -> dict:
    import torch

    from reasonbudget.models import load_model
    from reasonbudget.models.registry import build_prompt
    from reasonbudget.testbed.problems import generate
    from reasonbudget.testbed.traces import final_answer
    from reasonbudget.training.rollouts import rollouts

    def fresh(d):
        return generate(args.problems, difficulty=d, seed=EVAL_SEED)

    models = {k: load_model(str(out / k), device=args.device) for k in ("target", "draft")}
    report: dict = {"greedy": {}, "sampled": {}}
    greedy_traces = []
    for name, model in models.items():
        report["greedy"][name] = {}
        for d in range(1, 9):
            ps = fresh(d)
            rs = rollouts(model, ps, batch_size=128)
            report["greedy"][name][d] = sum(final_answer(r.answer) == p.answer for r, p in zip(rs, ps)) / len(ps)
            if name == "target":
                greedy_traces += [(p, r) for p, r in zip(ps, rs)][: max(1, args.problems // 2)]
    n = args.samples
    for d in (7, 8):
        ps = fresh(d)
        rs = rollouts(models["target"], ps, samples=n, temperature=args.temperature, seed=3, batch_size=256)
        ok = [[final_answer(rs[i * n + k].answer) == p.answer for k in range(n)] for i, p in enumerate(ps)]
        vote = [Counter(final_answer(rs[i * n + k].answer) for k in range(n)).most_common(1)[0][0] == p.answer
                for i, p in enumerate(ps)]
        report["sampled"][d] = {"accuracy": sum(map(sum, ok)) / (n * len(ps)), f"pass@{n}": sum(map(any, ok)) / len(ps),
                                f"majority@{n}": sum(vote) / len(ps)}
    hit = total = 0
    draft = models["draft"]
    with torch.inference_mode():
        for p, r in greedy_traces:
            prompt, toks, k = list(build_prompt(draft, p.question)), list(r.tokens), r.usage.thinking_tokens
            ids = torch.tensor([prompt + toks])
            logits = draft.backend(ids.to(args.device), draft.backend.new_cache(1, ids.shape[1]), torch.tensor([0])).logits
            pred = logits[0].argmax(-1).cpu()  # position j predicts token j + 1
            hit += int((pred[len(prompt) - 1 : len(prompt) - 1 + k] == torch.tensor(toks[:k])).sum())
            total += k
    report["draft_token_agreement"] = hit / max(total, 1)
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--add", default="1,9", help="Range of k in + k and - k.")
    ap.add_argument("--mul", default="2,3", help="Range of k in * k.")
    ap.add_argument("--target-steps", type=int, default=1000)
    ap.add_argument("--draft-steps", type=int, default=1200)
    ap.add_argument("--draft-shape", default="64,2,4,192", help="hidden,layers,heads,ffn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--problems", type=int, default=60, help="Fresh problems per difficulty.")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--out", default="runs/testbed-calibration")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import reasonbudget.testbed.problems as world

    world.ADD_OPERANDS, world.MUL_OPERANDS = parse_pair(args.add, "add"), parse_pair(args.mul, "mul")
    out = Path(args.out)
    t0 = time.time()
    trained = train_candidates(args, out)
    report = {"world": {"add": world.ADD_OPERANDS, "mul": world.MUL_OPERANDS},
              "params": {k: v["params"] for k, v in trained.items()},
              "train_seconds": {k: v["train_seconds"] for k, v in trained.items()},
              "steps": {"target": args.target_steps, "draft": args.draft_steps}, "device": args.device,
              **measure(args, out)}
    report["seconds"] = round(time.time() - t0, 1)
    (out / "calibration.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"world add {world.ADD_OPERANDS} mul {world.MUL_OPERANDS}; params {report['params']}")
    print("greedy   " + " ".join(f"d={d}" .rjust(6) for d in range(1, 9)))
    for name, acc in report["greedy"].items():
        print(f"{name:8s} " + " ".join(f"{acc[d]:6.2f}" for d in range(1, 9)))
    for d, s in report["sampled"].items():
        print(f"target T={args.temperature} d={d}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
    print(f"draft greedy token agreement on target greedy thinking: {report['draft_token_agreement']:.3f}")


if __name__ == "__main__":
    main()
