"""Budget control on the testbed: does a method keep thinking within a budget and keep its accuracy?

Methods: plain CoT (unbounded), NoThinking, TALE-EP (its own estimate), and at budgets of 25/50/75/100% of
the natural thinking length: budget forcing in both styles (`sentence`: the profile's forcing string, s1's;
`final-answer`: the Budget Guidance paper's baseline, the one its "+26 points" claim is measured against),
budget guidance (soft) and budget guidance with a hard cap; TALE-PT (plain CoT on `testbed-target-tale-pt`).
The report's `paired` rows compare the headline cells per problem (guidance vs forcing at 50%, guidance vs plain
at 75%, TALE-EP / TALE-PT vs plain).
Mixed difficulties (the default test sets of d = 1..8), several seeds, sampled decoding. Everything runs
through the evaluation harness: one sweep directory per difficulty (results.jsonl, summary.md, plots),
resumable; this script pools them into one table, a JSON document and a plot.

The natural length is plain CoT's mean thinking tokens, measured in the same run. Two budget scopes (both by
default): `difficulty` sets each problem's budget from the natural length of its difficulty level, so "50%"
means half of what the model thinks on that kind of problem; `global` gives every problem one budget from the
pooled mean, as the paper's absolute budgets do (a 1-step problem then gets more than it needs, and an 8-step
one cannot be finished at 75% even in its shortest form).

    python benchmarks/budget_control.py [--quick] [--json] [--out DIR] [--plot PNG] [--scope difficulty|global|both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SCOPES = ("difficulty", "global")
TALE_LAYOUT = "reference"
"""The v2 testbed target learned TALE's prompts in both layouts (the reference's and ours); the reference
layout, TALE's default, is the one to report."""
UNBUDGETED = ("plain", "nothinking", f"tale:prompts={TALE_LAYOUT}")
# Guidance as the reference runs it (strength 1, soft), and with strength 2 (chosen on a dev set, fresh problems
# of seed 11: same accuracy, overshoot 41% -> 8% at half the natural length), soft and with the hard cap.
BUDGETED = ("budget-forcing", "budget-forcing:style=final-answer", "budget-guidance", "budget-guidance:strength=2",
            "budget-guidance:strength=2,hard_cap=true")
MODEL = "testbed-target"
TALE_PT_MODEL = "testbed-target-tale-pt"
"""TALE-PT: the target fine-tuned on the budget-optimal answers that TALE's budget search found; it runs plain
(no budget in the prompt), so its row is `plain` on this model, reported as `tale-pt`."""
ESTIMATOR_SEED = 4_000_000  # training problems for the learned estimator: disjoint from test and dev sets


def sweep(task: str, methods, budgets, args, out: Path, model: str = MODEL) -> list[dict]:
    from reasonbudget.eval import SweepConfig, run_sweep
    from reasonbudget.eval.records import ResultsFile

    cfg = SweepConfig(task=task, methods=tuple(methods), budgets=tuple(budgets), seeds=tuple(range(args.seeds)),
                      limit=args.per_difficulty, model=model, temperature=args.temperature, top_p=args.top_p,
                      batch_size=args.per_difficulty)
    run_sweep(cfg, out, progress=False)
    keep = set(cfg.methods)
    return [r for r in ResultsFile(out / "results.jsonl").load().values()
            if r["method"] in keep and (r["budget"] in budgets or r["budget"] is None)
            and r["problem_id"] in _ids(task, args.per_difficulty) and r["seed"] < args.seeds]


def _ids(task: str, limit: int) -> set[str]:
    from reasonbudget.tasks import get_task

    return {p.id for p in get_task(task).problems(limit)}


def task_of(d: int, task_seed: int | None) -> str:
    return f"testbed:d={d}" + (f",seed={task_seed}" if task_seed is not None else "")


def weights_fingerprint() -> str:
    import hashlib

    from reasonbudget.training.testbed import CHECKPOINTS

    return hashlib.sha256((CHECKPOINTS / "target" / "model.safetensors").read_bytes()).hexdigest()[:16]


def check_weights(out: Path) -> None:
    """Resumed sweeps must come from the same checkpoint: the harness keys results by model name only."""
    out.mkdir(parents=True, exist_ok=True)
    stamp, now = out / "weights.txt", weights_fingerprint()
    if stamp.exists() and stamp.read_text().strip() != now:
        sys.exit(f"{out} holds results of other {MODEL} weights; choose another --out or delete it")
    stamp.write_text(now)


def fit_estimator(where: Path) -> Path:
    """TALE's learned estimator for the target, fitted on budget searches of fresh training problems (never the
    test sets); kept in the output directory, so a resumed run reuses it."""
    from reasonbudget.methods.budget.budget_estimator import ESTIMATOR_FILE
    from reasonbudget.training.budget_estimator import fit_on_task

    if not (where / ESTIMATOR_FILE).exists():
        stats = fit_on_task(MODEL, f"testbed:seed={ESTIMATOR_SEED},n=40", 320, where, layout=TALE_LAYOUT)
        print(f"learned budget estimator: {json.dumps(stats)}", file=sys.stderr, flush=True)
    return where


def measure(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    check_weights(out)
    records: list[dict] = []
    natural: dict[int, float] = {}
    unbudgeted = UNBUDGETED + ((f"tale:estimator={fit_estimator(out / 'estimator')},prompts={TALE_LAYOUT}",) if args.learned_estimator else ())
    for d in range(1, 9):
        base = sweep(task_of(d, args.task_seed), unbudgeted, (), args, out / f"d{d}")
        natural[d] = statistics.mean(r["usage"]["thinking_tokens"] for r in base if r["method"] == "plain")
        records += [dict(r, difficulty=d, fraction=None, scope=None) for r in base]
        if args.tale_pt:
            records += [dict(r, method="tale-pt", difficulty=d, fraction=None, scope=None)
                        for r in sweep(task_of(d, args.task_seed), ("plain",), (), args, out / f"d{d}-tale-pt",
                                       model=TALE_PT_MODEL)]
        _log(args, f"d={d}: natural thinking {natural[d]:.1f} tokens ({time.time() - t0:.0f}s)")
    pooled = statistics.mean(natural.values())
    for scope in SCOPES if args.scope == "both" else (args.scope,):
        for d in range(1, 9):
            reference = natural[d] if scope == "difficulty" else pooled
            budgets = {f: max(1, round(f * reference)) for f in FRACTIONS}
            rs = sweep(task_of(d, args.task_seed), args.methods, sorted(set(budgets.values())), args, out / f"d{d}")
            for r in rs:
                for f, b in budgets.items():
                    if r["budget"] == b:
                        records.append(dict(r, difficulty=d, fraction=f, scope=scope))
            _log(args, f"{scope} scope, d={d}: budgets {sorted(set(budgets.values()))} done ({time.time() - t0:.0f}s)")
    report = summarize(records, natural, args)
    report["paired"] = paired_rows(records)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def summarize(records: list[dict], natural: dict[int, float], args) -> dict:
    from reasonbudget.eval.stats import bootstrap_interval

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["scope"], r["method"], r["fraction"])].append(r)
    rows = []
    for (scope, method, fraction), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][2] or 0,
                                                                                kv[0][1])):
        k, n = sum(bool(r["correct"]) for r in rs), len(rs)
        lo, hi = bootstrap_interval(by_problem(rs))  # problems resampled with all their seeds
        limit = [r["budget"] if r["budget"] is not None else r["trace"].get("estimate") for r in rs]
        over = [r["usage"]["thinking_tokens"] > b for r, b in zip(rs, limit) if b is not None]
        rows.append({"method": display_name(method), "budget_fraction": fraction, "scope": scope,
                     "budget": statistics.mean(r["budget"] for r in rs) if fraction is not None else None,
                     "accuracy": k / n, "ci_low": lo, "ci_high": hi, "n": n,
                     "mean_thinking_tokens": statistics.mean(r["usage"]["thinking_tokens"] for r in rs),
                     "mean_output_tokens": statistics.mean(r["usage"]["thinking_tokens"] + r["usage"]["forced_tokens"]
                                                           + r["usage"]["answer_tokens"] for r in rs),
                     "overshoot_rate": sum(over) / len(over) if over else None,
                     "by_difficulty": {d: statistics.mean(bool(r["correct"]) for r in rs if r["difficulty"] == d)
                                       for d in range(1, 9) if any(r["difficulty"] == d for r in rs)}})
    return {"rows": rows, "predictor_overhead": overhead(records), "natural_thinking_tokens": natural,
            "settings": {"scope": args.scope, "seeds": args.seeds, "per_difficulty": args.per_difficulty,
                         "temperature": args.temperature, "top_p": args.top_p, "task_seed": args.task_seed,
                         "model": MODEL, "tale_prompts": TALE_LAYOUT}}


def by_problem(rs: list[dict]) -> dict[str, list[bool]]:
    out: dict[str, list[bool]] = defaultdict(list)
    for r in rs:
        out[f"d{r['difficulty']}/{r['problem_id']}"].append(bool(r["correct"]))
    return out


def paired_rows(records: list[dict]) -> list[dict]:
    """The headline comparisons, each over the problems both sides ran (per-problem accuracy difference over the
    seeds, bootstrap interval over problems, sign-flip p): every guidance variant against budget forcing at 50%
    and against plain CoT at 75% (difficulty scope), and TALE-EP / TALE-PT against plain CoT."""
    from reasonbudget.eval.stats import paired_difference, verdict

    def pick(method: str, fraction: float | None, scope: str | None) -> list[dict]:
        return [r for r in records if display_name(r["method"]) == method and r["fraction"] == fraction
                and r["scope"] == scope]

    guided = sorted({display_name(r["method"]) for r in records if r["method"].startswith("budget-guidance")})
    cases = [((g, 0.5, "difficulty"), ("budget-forcing", 0.5, "difficulty")) for g in guided]
    cases += [((g, 0.75, "difficulty"), ("plain", None, None)) for g in guided]
    cases += [((m, None, None), ("plain", None, None)) for m in ("tale", "tale-pt")]
    cases.append((("tale-pt", None, None), ("tale", None, None)))
    rows = []
    for a, b in cases:
        ra, rb = pick(*a), pick(*b)
        if ra and rb:
            d = paired_difference(by_problem(ra), by_problem(rb))
            rows.append({"a": list(a), "b": list(b), **d, "verdict": verdict(d, (a[0], b[0]))})
    return rows


def display_name(method: str) -> str:
    """Row names stay what earlier JSON files call them; the TALE layout is in `settings.tale_prompts`."""
    if method.startswith("tale:estimator="):
        return "tale:learned-estimator"
    return "tale" if method == f"tale:prompts={TALE_LAYOUT}" else method


def overhead(records: list[dict]) -> dict:
    """Predictor time (timed inside guidance: the predictor forward and the CDF products) over the rest of the
    wall time of the guided runs; and, side by side, wall seconds per generated token of guided runs vs plain."""
    guided = [r for r in records if r["method"].startswith("budget-guidance")]
    plain = [r for r in records if r["method"] == "plain"]
    if not guided:
        return {}
    pred = sum(r["trace"].get("predictor_seconds", 0.0) for r in guided)
    wall = sum(r["usage"]["wall_seconds"] for r in guided)

    def per_token(rs):
        return sum(r["usage"]["wall_seconds"] for r in rs) / max(1, sum(_generated(r) for r in rs))

    return {"fraction": pred / max(wall - pred, 1e-9), "predictor_seconds": pred, "guided_wall_seconds": wall,
            "per_token_vs_plain": per_token(guided) / per_token(plain) if plain else None,
            "fallback_share": sum(r["trace"].get("fallback_steps", 0) for r in guided)
            / max(1, sum(r["trace"].get("guided_steps", 0) for r in guided))}


def _generated(r: dict) -> int:
    u = r["usage"]
    return u["thinking_tokens"] + u["forced_tokens"] + u["answer_tokens"]


def _log(args, msg: str) -> None:
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"budget control on {s['model']}, mixed d=1..8 ({s['per_difficulty']} problems each) x {s['seeds']} seeds, "
          f"T={s['temperature']} top-p={s['top_p']}, budget scope: {s['scope']}")
    print("natural thinking tokens by difficulty: "
          + " ".join(f"{d}:{v:.0f}" for d, v in report["natural_thinking_tokens"].items()))
    print(f"{'scope':10} {'method':30} {'frac':>5} {'budget':>7} {'acc':>6} {'95% CI':>14} {'think':>7} "
          f"{'output':>7} {'overshoot':>9}")
    for r in report["rows"]:
        frac = f"{r['budget_fraction']:.2f}" if r["budget_fraction"] is not None else "-"
        budget = f"{r['budget']:.1f}" if r["budget"] is not None else "-"
        over = f"{r['overshoot_rate']:.3f}" if r["overshoot_rate"] is not None else "-"
        print(f"{r['scope'] or '-':10} {r['method']:30} {frac:>5} {budget:>7} {r['accuracy']:6.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
              f" {r['mean_thinking_tokens']:7.1f} {r['mean_output_tokens']:7.1f} {over:>9}")
    if report.get("paired"):
        print("\npaired over problems (A - B, per-problem accuracy over the seeds; 95% bootstrap interval; sign-flip p):")
        for p in report["paired"]:
            a, b = (f"{x[0]}" + (f" @{x[1]:.0%}" if x[1] is not None else "") for x in (p["a"], p["b"]))
            print(f"  {a:38} - {b:24} {p['diff']:+.3f} [{p['diff_ci_low']:+.3f}, {p['diff_ci_high']:+.3f}] "
                  f"p={p['p']:.3f} ({p['problems']} problems): {p['verdict']}")
    o = report["predictor_overhead"]
    if o:
        print(f"predictor overhead: {o['fraction']:.3f} of the guided runs' other wall time "
              f"({o['predictor_seconds']:.1f}s of {o['guided_wall_seconds']:.1f}s); wall per generated token "
              f"vs plain CoT x{o['per_token_vs_plain']:.2f}; fallback at {o['fallback_share']:.3f} of guided steps")
    print(f"total {report.get('seconds', 0)} s")


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    scopes = [sc for sc in SCOPES if any(r["scope"] == sc for r in rows)]
    fig, axes = plt.subplots(1, len(scopes) + 1, figsize=(5.2 * (len(scopes) + 1), 4.2), squeeze=False)
    unbounded = [r for r in rows if r["budget_fraction"] is None]
    colors = {}
    for ax, scope in zip(axes[0], scopes):
        for method in dict.fromkeys(r["method"] for r in rows if r["scope"] == scope):
            rs = sorted((r for r in rows if r["scope"] == scope and r["method"] == method),
                        key=lambda r: r["budget_fraction"])
            acc = [r["accuracy"] for r in rs]
            err = [[a - r["ci_low"] for a, r in zip(acc, rs)], [r["ci_high"] - a for a, r in zip(acc, rs)]]
            line = ax.errorbar([r["budget_fraction"] for r in rs], acc, yerr=err, marker="o", capsize=3, label=method,
                               color=colors.get(method))
            colors[method] = line[0].get_color()
            axes[0][-1].plot([r["mean_thinking_tokens"] for r in rs], acc, marker="o" if scope == "difficulty" else "x",
                             linestyle="-" if scope == "difficulty" else "--", color=colors[method],
                             label=f"{method} ({scope})")
        for r, style in zip(unbounded, ("--", ":", "-.", (0, (1, 4)))):
            ax.axhline(r["accuracy"], color="k", linestyle=style, label=f"{r['method']} (unbounded)")
        ax.set(xlabel=f"budget / natural thinking length ({scope} scope)", ylabel="accuracy (95% CI)",
               ylim=(-0.02, 1.02), title=f"budgets per {'difficulty level' if scope == 'difficulty' else 'whole set'}")
    for r, marker in zip(unbounded, "s^Dv"):
        axes[0][-1].plot([r["mean_thinking_tokens"]], [r["accuracy"]], "k" + marker, label=r["method"])
    axes[0][-1].set(xlabel="mean thinking tokens", ylabel="accuracy", ylim=(-0.02, 1.02), title="accuracy vs thinking")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="25 problems per difficulty (else 50)")
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--out", default=None, help="sweep directories (default runs/budget_control[-quick])")
    ap.add_argument("--plot", help="write the accuracy plot here (default: DIR/budget_control.png)")
    ap.add_argument("--load", help="print/plot a saved report.json, measure nothing")
    ap.add_argument("--scope", choices=SCOPES + ("both",), default="both")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-difficulty", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=1.0, help="1.0: the policy the predictor was trained on")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--task-seed", type=int, default=None, help="fresh problem sets from this seed (tuning)")
    ap.add_argument("--methods", default=",".join(BUDGETED), help="budgeted methods (method specs)")
    ap.add_argument("--no-learned-estimator", dest="learned_estimator", action="store_false",
                    help="skip TALE with the learned budget estimator")
    ap.add_argument("--no-tale-pt", dest="tale_pt", action="store_false",
                    help=f"skip TALE-PT (plain CoT on {TALE_PT_MODEL})")
    args = ap.parse_args()
    if args.load and not Path(args.load).is_file():
        ap.error(f"--load {args.load}: no such report file (write one with --out DIR, then load DIR/report.json)")
    if args.load:
        report = json.loads(Path(args.load).read_text())
    else:
        from reasonbudget.methods.spec import split_method_list

        args.methods = split_method_list(args.methods)
        args.per_difficulty = args.per_difficulty or (25 if args.quick else 50)
        args.out = args.out or ("runs/budget_control-quick" if args.quick else "runs/budget_control")
        report = json.loads(json.dumps(measure(args)))
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
    if args.plot or not args.load:
        plot(report, args.plot or str(Path(args.out) / "budget_control.png"))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
