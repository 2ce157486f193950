"""Is the testbed a world where our methods' effects are real? Measures, in one run:

1. greedy accuracy of the target and the draft per difficulty, on the fixed default test sets and on fresh
   seeds; mean thinking tokens per difficulty; the share of thinking tokens spent on self-check lines;
2. the PRM on held-out steps (traces sampled at T=1 from both models on unseen problems): AUROC, and the
   accuracy of picking the correct one of two traces (one right, one wrong final answer) by min-aggregated score;
3. best-of-N with the PRM against greedy on the hardest levels, with the sampled traces' pass@N;
4. the draft as a draft: on the target's greedy traces, how often its greedy next token equals the target's
   (thinking tokens), and how often the step it writes from the target's (correct) prefix is correct;
5. the router's held-out report (from its training), when the checkpoints have one.

    python benchmarks/testbed_quality.py [--fresh-seeds 7,8] [--bon 16] [--bon-problems 100] [--json] [--out FILE]
                                         [--plot PNG] [--load FILE (print/plot a saved report, measure nothing)]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from reasonbudget.eval.report import auroc
from reasonbudget.models import load_model
from reasonbudget.rewards import StepSequence, aggregate
from reasonbudget.tasks import get_task
from reasonbudget.tasks.testbed import problem_from_meta
from reasonbudget.training.testbed import CHECKPOINTS
from reasonbudget.rewards.testbed_prm import TestbedPRM
from reasonbudget.training.testbed_prm import sample_labelled_traces
from reasonbudget.training.rollouts import rollouts
from reasonbudget.testbed.problems import generate
from reasonbudget.testbed.traces import final_answer, label_steps, label_trace

HELD_OUT_SEED = 3_000_000


def greedy_table(model, spec_fmt: str):
    rows = {}
    for d in range(1, 9):
        problems = [problem_from_meta(p) for p in get_task(spec_fmt.format(d=d)).problems()]
        results = rollouts(model, problems)
        correct = [final_answer(r.answer) == p.answer for p, r in zip(problems, results)]
        lines = [line for r in results for line in r.thinking.split("\n") if line.strip()]
        check_chars = sum(len(x) + 1 for x in lines if x.startswith("check"))
        rows[d] = {"accuracy": sum(correct) / len(correct),
                   "mean_thinking_tokens": statistics.mean(r.usage.thinking_tokens for r in results),
                   "check_share": check_chars / max(1, sum(len(x) + 1 for x in lines))}
    return rows


def prm_quality(prm, models, per_difficulty=25, samples=4):
    problems = [p for d in range(1, 9) for p in generate(per_difficulty, difficulty=d, seed=HELD_OUT_SEED + d)]
    traced = [(m.name, t) for m in models
              for t in sample_labelled_traces(m, problems, samples=samples, temperature=1.0, seed=5)]
    data = [t for _, t in traced]
    scores = prm.score_steps([StepSequence(t.question, t.steps) for t in data])
    step_scores = [float(s) for sc in scores for s in sc]
    step_labels = [lab for t in data for lab in t.labels]
    by_model = {}  # the goal holds per model: AUROC over each model's own traces
    for name in dict.fromkeys(n for n, _ in traced):
        mine = [(float(s), lab) for (n, t), sc in zip(traced, scores) if n == name for s, lab in zip(sc, t.labels)]
        by_model[name] = {"auroc": auroc([s for s, _ in mine], [lab for _, lab in mine]), "steps": len(mine)}
    by_q: dict[str, list[tuple[float, bool]]] = {}
    for t, sc in zip(data, scores):
        by_q.setdefault(t.question, []).append((aggregate(sc, "min"), all(t.labels)))
    wins = pairs = 0
    for items in by_q.values():
        good, bad = [s for s, ok in items if ok], [s for s, ok in items if not ok]
        for g in good:
            for b in bad:
                pairs += 1
                wins += (g > b) + 0.5 * (g == b)
    return {"auroc": auroc(step_scores, step_labels), "steps": len(step_labels),
            "positive_share": sum(step_labels) / len(step_labels), "pair_accuracy": wins / max(1, pairs),
            "pairs": pairs, "by_model": by_model}


def best_of_n(model, prm, d: int, n: int, num_problems: int):
    problems = [problem_from_meta(p) for p in get_task(f"testbed:d={d}").problems()][:num_problems]
    greedy = rollouts(model, problems)
    sampled = rollouts(model, problems, temperature=1.0, samples=n, seed=11)
    g_acc = statistics.mean(final_answer(r.answer) == p.answer for p, r in zip(problems, greedy))
    lines = [x for r in sampled for x in r.thinking.split("\n") if x.strip()]
    check_share = sum(len(x) + 1 for x in lines if x.startswith("check")) / max(1, sum(len(x) + 1 for x in lines))
    hits = 0
    for i, p in enumerate(problems):
        cands = sampled[i * n : (i + 1) * n]
        steps = [tuple(lab.line for lab in label_trace(p, r.thinking, r.answer)) for r in cands]
        scores = prm.score_steps([StepSequence(p.question, s) for s in steps])
        best = max(range(n), key=lambda j: aggregate(scores[j], "min"))
        hits += final_answer(cands[best].answer) == p.answer
    passed = sum(any(final_answer(r.answer) == p.answer for r in sampled[i * n : (i + 1) * n])
                 for i, p in enumerate(problems))
    return {"greedy": g_acc, f"best_of_{n}": hits / len(problems), f"pass@{n}": passed / len(problems),
            "problems": len(problems),
            "sampled_mean_thinking_tokens": statistics.mean(r.usage.thinking_tokens for r in sampled),
            "sampled_check_share": round(check_share, 3),
            "sampled_accuracy": statistics.mean(final_answer(r.answer) == p.answer
                                                for i, p in enumerate(problems) for r in sampled[i * n:(i + 1) * n])}


class _TargetWrites:
    """Arbiter of the draft/target loop that always continues with the target's step but has both write:
    the draft's proposals are then its steps from the target's own prefixes."""

    needs_target = True

    def decide(self, questions, proposals):
        from reasonbudget.steps.draft_target import Decision

        return [Decision(True) for _ in proposals]


def draft_as_draft(draft, target, per_difficulty: int = 25) -> dict:
    """Token agreement (teacher-forced on the target's greedy thinking) and step accuracy (the draft's next
    step from the target's prefix, where that prefix is correct), per difficulty, on held-out problems."""
    from reasonbudget.engine import Engine, SamplingConfig
    from reasonbudget.eval.agreement import greedy_agreement
    from reasonbudget.models.registry import build_prompt
    from reasonbudget.steps import StepConfig, StepRunner
    from reasonbudget.steps.draft_target import draft_target_loop

    out: dict = {}
    greedy, cfg = SamplingConfig(temperature=0.0), StepConfig(max_steps=30, max_tokens=600)
    hits_all = total_all = 0
    for d in range(1, 9):
        problems = generate(per_difficulty, difficulty=d, seed=HELD_OUT_SEED + 100 + d)
        prompts = [build_prompt(target, p.question) for p in problems]
        results = rollouts(target, problems)
        hits, total = greedy_agreement(draft, prompts, [r.tokens[: r.usage.thinking_tokens] for r in results])
        hits_all, total_all = hits_all + hits, total_all + total
        runners = StepRunner(Engine(draft), greedy, cfg), StepRunner(Engine(target), greedy, cfg)
        outcomes = draft_target_loop(*runners, prompts, [p.question for p in problems], _TargetWrites(),
                                     [torch.Generator()] * len(problems))
        right = steps = 0
        for p, o in zip(problems, outcomes):
            for prop, _ in o.rounds:
                history = [s for s, _ in prop.history]
                if not all(lab.correct for lab in label_steps(p, "\n".join(history))):
                    continue  # the target's prefix already went wrong: no right next step to compare with
                lines = [s for s in prop.draft if not s.startswith("</think>")]
                closing = [s for s in prop.draft if s.startswith("</think>")]
                labels = (label_trace(p, "\n".join(history + lines), closing[0][len("</think>"):]) if closing
                          else label_steps(p, "\n".join(history + lines)))
                steps += 1
                right += all(lab.correct for lab in labels)
        out[d] = {"token_agreement": hits / max(1, total), "step_accuracy": right / max(1, steps), "steps": steps}
    out["token_agreement"] = hits_all / max(1, total_all)
    return out


def greedy_tables(report: dict) -> list[tuple[str, dict]]:
    """(label, {model: {d: row}}) for the default sets and each fresh seed (older reports: one fresh seed)."""
    fresh = report["fresh"]
    seeds = [("fresh", fresh)] if "target" in fresh else [(f"seed {k}", v) for k, v in fresh.items()]
    return [("default", report["default"]), *seeds]


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ds = list(range(1, 9))
    for name, color in (("target", "tab:blue"), ("draft", "tab:orange")):
        for (split, table), style in zip(greedy_tables(report), ("-o", "--x", ":+", "-.v")):
            acc = [table[name][str(d)]["accuracy"] for d in ds]
            ax1.plot(ds, acc, style, color=color, label=f"{name}, {split}")
        bon = report["best_of_n"][name]
        hard = sorted(bon, key=int)
        key = next(k for k in bon[hard[0]] if k.startswith("best_of_"))
        ax1.plot([int(d) for d in hard], [bon[d][key] for d in hard], "s", color=color, markersize=9,
                 markerfacecolor="none", label=f"{name}, {key.replace('_', '-')} with the PRM")
    ax1.set(xlabel="difficulty (steps)", ylabel="accuracy", title="greedy accuracy and best-of-N", ylim=(-0.02, 1.02))
    ax1.legend(fontsize=7)
    tok = [report["default"]["target"][str(d)]["mean_thinking_tokens"] for d in ds]
    ax2.bar(ds, tok, color="tab:blue")
    ax2.set(xlabel="difficulty (steps)", ylabel="mean thinking tokens (target, greedy)", title="thinking length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--fresh-seeds", default="7,8", help="Unseen test seeds (comma-separated).")
    ap.add_argument("--bon", type=int, default=16)
    ap.add_argument("--bon-problems", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--plot")
    ap.add_argument("--load")
    args = ap.parse_args()
    if args.load and not Path(args.load).is_file():
        ap.error(f"--load {args.load}: no such report file (save one with --json > FILE)")
    if args.load:
        with open(args.load) as f:
            report = json.load(f)
    else:
        report = measure(args)
    report = json.loads(json.dumps(report))  # one key type (str) whether measured or loaded
    if args.plot:
        plot(report, args.plot)
    if args.json:
        print(json.dumps(report))
        return
    print_report(report, args.bon)


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    target, draft = load_model("testbed-target"), load_model("testbed-draft")
    prm = TestbedPRM(CHECKPOINTS / "prm")
    seeds = [int(s) for s in args.fresh_seeds.split(",") if s.strip()]
    report = {
        "default": {name: greedy_table(m, "testbed:d={d}") for name, m in (("target", target), ("draft", draft))},
        "fresh": {seed: {name: greedy_table(m, f"testbed:d={{d}},seed={seed}")
                         for name, m in (("target", target), ("draft", draft))} for seed in seeds},
        "prm": prm_quality(prm, [target, draft]),
        "best_of_n": {name: {d: best_of_n(m, prm, d, args.bon, args.bon_problems) for d in (6, 7, 8)}
                      for name, m in (("target", target), ("draft", draft))},
        "draft_as_draft": draft_as_draft(draft, target),
    }
    router = CHECKPOINTS / "router" / "router_training.json"
    if router.is_file():
        report["router"] = json.loads(router.read_text())["held_out"]
    report["seconds"] = round(time.time() - t0, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_report(report: dict, bon: int) -> None:
    for split, table in greedy_tables(report):
        print(f"greedy accuracy, {split} test sets (100 problems per difficulty)")
        print("d   target  draft   target thinking tok  target check share")
        for d in range(1, 9):
            t, r = table["target"][str(d)], table["draft"][str(d)]
            print(f"{d}   {t['accuracy']:.2f}    {r['accuracy']:.2f}    {t['mean_thinking_tokens']:8.1f}"
                  f"             {t['check_share']:.2f}")
        for name in ("target", "draft"):
            print(f"{name} overall: {statistics.mean(v['accuracy'] for v in table[name].values()):.3f}")
    print("PRM on held-out steps:", json.dumps(report["prm"]))
    for name, by_d in report["best_of_n"].items():
        print(f"best-of-{bon} with the PRM (min aggregation) vs greedy, {name}:")
        for d, v in by_d.items():
            print(f"  d={d}: {json.dumps(v)}")
    if "draft_as_draft" in report:
        dd = report["draft_as_draft"]
        print(f"the draft as a draft: greedy token agreement {dd['token_agreement']:.3f} on the target's greedy thinking")
        print("d   token agreement  step accuracy (from the target's correct prefixes)")
        for d in range(1, 9):
            r = dd[str(d)]
            print(f"{d}   {r['token_agreement']:.3f}            {r['step_accuracy']:.3f} ({r['steps']} steps)")
    if "router" in report:
        print("router, held out:", json.dumps(report["router"]))
    print(f"total {report['seconds']} s")


if __name__ == "__main__":
    main()
