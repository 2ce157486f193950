"""Inference-time scaling on the testbed: accuracy against the number of samples / particles N.

The testbed target at T=0.8 on the two hardest difficulty levels (d=7, 8), N = 1, 2, 4, ..., 64, several
seeds, with three PRMs: the trained testbed PRM; the exact checker with each step label flipped with
probability 0.2 (a noisy oracle, to test how each method copes with verifier errors), which is certain (0 or
1) and wrong one time in five; and the same flips scored as the calibrated probability 0.8 / 0.2 that the
step is correct (what a verifier of that accuracy reports if it is calibrated). Methods:
best-of-N, weighted best-of-N and majority vote (search-and-learn's protocol: one run of 64 samples per
problem and seed, evaluated at n = 1, 2, 4, ... on its first n samples), beam search and DVTS (from N = 4,
beam width 4), and particle filtering, each run at every N (`particle-filter` selects the highest final
weight, the paper's rule; `particle-filter-vote` is the same runs read with the weighted vote over the
final particles' answers). Greedy decoding gives the N = 1 reference; it is deterministic, so it runs once per
problem (seed 0) and counts once.
Statistics are over problems: a problem's seeds share the problem, so accuracy intervals are a bootstrap that
resamples problems with all their runs, and every comparison (particle filtering at N against weighted
best-of-N at 4N, against DVTS at N, against greedy) is the mean per-problem accuracy difference with its
bootstrap interval and a sign-flip permutation p-value; "no difference detected" where the interval holds 0.
Everything runs through the evaluation harness (one resumable sweep directory per PRM and difficulty).

    python benchmarks/scaling.py [--quick] [--json] [--out DIR] [--plot PNG] [--prms trained,...]

--json prints {"rows": [{"method", "prm", "n", "accuracy", "ci_low", "ci_high", "count", "problems",
"mean_generated_tokens", "mean_prm_calls", "mean_prm_tokens", "mean_wall_seconds"}...],
"paired": [{"a", "b", "diff", "diff_ci_low", "diff_ci_high", "p", "problems", ...}...]} (a and b are
[method, prm, N]; ci_low/ci_high are the problem-level bootstrap's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

MODEL = "testbed-target"
DIFFICULTIES = (7, 8)
PRMS = {"trained": "prm=testbed", "noisy-oracle": "prm=oracle,prm_noise=0.2",
        "calibrated-noisy-oracle": "prm=oracle,prm_noise=0.2,prm_calibrated=true"}
STEPS = "max_tokens=320"  # testbed traces stay under ~250 tokens; this bounds the KV cache rows
SUBSAMPLED = ("best-of-n", "weighted-best-of-n", "majority-vote")
NO_PRM = ("majority-vote", "pass@n")  # read from the same samples without the PRM: one row, whatever the PRM
TEMPERATURE = 0.8
BEAM_WIDTH = 4  # beam search and DVTS start at N = beam width


def sweep(task: str, methods, budgets, args, out: Path, temperature: float = TEMPERATURE,
          seeds: int | None = None) -> list[dict]:
    from reasonbudget.eval import SweepConfig, run_sweep
    from reasonbudget.eval.records import ResultsFile

    seeds = args.seeds if seeds is None else seeds
    cfg = SweepConfig(task=task, methods=tuple(methods), budgets=tuple(budgets), seeds=tuple(range(seeds)),
                      limit=args.per_difficulty, model=MODEL, temperature=temperature, top_p=1.0,
                      batch_size=args.batch_size)
    run_sweep(cfg, out, progress=not args.json)
    keep, ids = set(cfg.methods), _ids(task, args.per_difficulty)
    return [r for r in ResultsFile(out / "results.jsonl").load().values()
            if r["method"] in keep and (r["budget"] in budgets or r["budget"] is None) and r["seed"] < seeds
            and r["problem_id"] in ids]


def _ids(task: str, limit: int) -> set[str]:
    from reasonbudget.tasks import get_task

    return {p.id for p in get_task(task).problems(limit)}


def outcome(record: dict, **over) -> dict:
    """One problem-run as a cell: correct, and its cost."""
    u = record["usage"]
    return {"problem_id": record["problem_id"], "seed": record["seed"], "correct": record["correct"],
            "generated_tokens": u["completion_tokens"], "prm_calls": u["prm_calls"], "prm_tokens": u["prm_tokens"],
            "wall_seconds": u["wall_seconds"]} | over


def subsample(record: dict, n: int, task: str = "testbed") -> dict[str, dict]:
    """best-of-n, weighted-best-of-n and majority-vote on the first n samples of a many-sample record, and
    pass@n (one of them is right: what a perfect selector would get); the cost is the share of the record's
    that n samples take."""
    from reasonbudget.methods.scaling.common import finite
    from reasonbudget.search.voting import answer_groups, vote
    from reasonbudget.tasks import grade

    answers, scores = record["trace"]["answers"][:n], record["trace"]["scores"][:n]
    scores = [float("nan") if s is None else s for s in scores]
    groups = answer_groups(answers)
    answered = [i for i, a in enumerate(answers) if a.strip()] or list(range(n))
    picks = {"best-of-n": max(answered, key=lambda i: finite(scores[i])),
             "weighted-best-of-n": vote(groups, scores), "majority-vote": vote(groups)}
    u = record["usage"]
    share = n / len(record["trace"]["answers"])
    out = {}
    for method, pick in picks.items():
        scored = method != "majority-vote"
        out[method] = outcome(record, correct=pick is not None and grade(answers[pick], record["gold"], task=task),
                              generated_tokens=share * u["completion_tokens"], prm_calls=n if scored else 0,
                              prm_tokens=share * u["prm_tokens"] if scored else 0,
                              wall_seconds=share * u["wall_seconds"])
    out["pass@n"] = outcome(record, correct=any(grade(a, record["gold"], task=task) for a in answers),
                            generated_tokens=share * u["completion_tokens"], prm_calls=0, prm_tokens=0,
                            wall_seconds=share * u["wall_seconds"])
    return out


def voted_outcome(record: dict, task: str = "testbed") -> dict:
    """A particle-filter record read with weighted-vote selection (its trace holds both rules' picks)."""
    from reasonbudget.tasks import grade

    voted = record["trace"]["answers"][record["trace"]["picks"]["vote"]]
    return outcome(record, correct=grade(voted, record["gold"], task=task))


def measure(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    cells: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for d in DIFFICULTIES:
        task = f"testbed:d={d}"
        for r in sweep(task, ["plain"], [], args, out / f"greedy-d{d}", temperature=0.0, seeds=1):
            cells[("greedy", "-", 1)].append(outcome(r))  # deterministic: one run per problem, counted once
        for prm, setting in args.prms.items():
            big = max(args.ns)
            where = out / f"{prm}-d{d}"
            records = sweep(task, [f"best-of-n:{setting},{STEPS}"], [big], args, where, args.temperature)
            searched = [n for n in args.ns if n <= args.search_max]
            records += sweep(task, [f"particle-filter:{setting},{STEPS}"], searched, args, where, args.temperature)
            records += sweep(task, [f"{m}:{setting},{STEPS}" for m in ("beam-search", "dvts")],
                             [n for n in searched if n >= BEAM_WIDTH], args, where, args.temperature)
            for r in records:
                name = r["method"].split(":")[0]
                if name == "best-of-n":
                    if r["budget"] != big:
                        continue
                    for n in args.ns:
                        for method, cell in subsample(r, n).items():
                            if method in NO_PRM and prm != next(iter(args.prms)):
                                continue  # no PRM: one row is enough
                            cells[(method, "-" if method in NO_PRM else prm, n)].append(cell)
                    continue
                cells[(name, prm, r["budget"])].append(outcome(r))
                if name == "particle-filter" and "picks" in r["trace"]:  # the same run, weighted-vote selection
                    cells[("particle-filter-vote", prm, r["budget"])].append(voted_outcome(r))
            _log(args, f"d={d} prm={prm} done ({time.time() - t0:.0f}s)")
    pairs = [paired(cells, (pf, prm, n), other) for prm in args.prms
             for pf in ("particle-filter", "particle-filter-vote") for n in args.ns if (pf, prm, n) in cells
             for other in (("weighted-best-of-n", prm, 4 * n), ("dvts", prm, n), ("greedy", "-", 1))
             if other in cells]
    return {"rows": rows_of(cells), "paired": pairs, "seconds": round(time.time() - t0, 1),
            "settings": {"model": MODEL, "difficulties": DIFFICULTIES, "per_difficulty": args.per_difficulty,
                         "seeds": args.seeds, "temperature": args.temperature, "ns": list(args.ns), "prms": args.prms}}


def by_problem(cells_of: list[dict]) -> dict[str, list[bool]]:
    """problem id -> the correctness of each of its runs."""
    out: dict[str, list[bool]] = defaultdict(list)
    for c in cells_of:
        out[c["problem_id"]].append(bool(c["correct"]))
    return dict(out)


def paired(cells, a: tuple, b: tuple) -> dict:
    """A against B over the problems both ran (`eval.stats.paired_difference`: per-problem accuracy difference,
    bootstrap interval over problems, sign-flip p). Also the counts on the problem-runs both have (a run-level
    McNemar p, kept for comparison with earlier reports; it treats seeds as independent)."""
    from reasonbudget.eval.report import mcnemar
    from reasonbudget.eval.stats import paired_difference

    right_a = {(c["problem_id"], c["seed"]): bool(c["correct"]) for c in cells[a]}
    right_b = {(c["problem_id"], c["seed"]): bool(c["correct"]) for c in cells[b]}
    common = right_a.keys() & right_b.keys()
    only_a = sum(right_a[k] and not right_b[k] for k in common)
    only_b = sum(right_b[k] and not right_a[k] for k in common)
    return {"a": list(a), "b": list(b), **paired_difference(by_problem(cells[a]), by_problem(cells[b])),
            "runs": len(common), "both": sum(right_a[k] and right_b[k] for k in common),
            "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar(only_a, only_b)}


COST_FIELDS = ("generated_tokens", "prm_calls", "prm_tokens", "wall_seconds")


def rows_of(cells) -> list[dict]:
    """{(method, prm, n): [cells]} -> table rows: accuracy with its 95% interval from the bootstrap over problems
    (a problem's seeds resampled together), mean costs per problem-run (PRM calls and tokens included)."""
    from reasonbudget.eval.stats import bootstrap_interval

    rows = []
    for (method, prm, n), cs in sorted(cells.items()):
        k, total = sum(bool(c["correct"]) for c in cs), len(cs)
        problems = by_problem(cs)
        lo, hi = bootstrap_interval(problems)
        rows.append({"method": method, "prm": prm, "n": n, "accuracy": k / total, "ci_low": lo, "ci_high": hi,
                     "count": total, "problems": len(problems)}
                    | {f"mean_{f}": statistics.mean(c[f] for c in cs) for f in COST_FIELDS})
    return rows


def _log(args, msg: str) -> None:
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"inference-time scaling on {s['model']}, d={','.join(map(str, s['difficulties']))} "
          f"({s['per_difficulty']} problems each) x {s['seeds']} seeds, T={s['temperature']}")
    ns = s["ns"]
    for prm in ["-"] + list(s["prms"]):
        rows = [r for r in report["rows"] if r["prm"] == prm or (prm == "-" and r["prm"] == "-")]
        if not rows:
            continue
        print(f"\nPRM: {prm if prm != '-' else 'none'}")
        print(f"{'method':20} " + " ".join(f"{'N=' + str(n):>7}" for n in ns)
              + "   gen tok@max  PRM calls@max  PRM tok@max")
        for method in dict.fromkeys(r["method"] for r in rows):
            by_n = {r["n"]: r for r in rows if r["method"] == method}
            top = by_n[max(by_n)]
            print(f"{method:20} " + " ".join(f"{by_n[n]['accuracy']:7.3f}" if n in by_n else f"{'-':>7}" for n in ns)
                  + f"   {top['mean_generated_tokens']:11.0f}  {top['mean_prm_calls']:13.0f}"
                  f"  {top['mean_prm_tokens']:11.0f}")
    if report.get("paired"):
        print("\npaired over problems (A - B: mean per-problem accuracy difference, 95% bootstrap interval over "
              "problems, sign-flip p):")
    for p in report.get("paired", []):
        if "diff" not in p:  # a report written before problem-level statistics
            continue
        from reasonbudget.eval.stats import verdict

        a, b = f"{p['a'][0]}@{p['a'][2]}", f"{p['b'][0]}@{p['b'][2]}"
        print(f"  {a} vs {b} ({p['a'][1]}): {p['diff']:+.3f} [{p['diff_ci_low']:+.3f}, {p['diff_ci_high']:+.3f}], "
              f"p={p['p']:.3f}, {p['problems']} problems: {verdict(p, (a, b))}")
    print(f"\ntotal {report.get('seconds', 0)} s")


def accuracy_lines(ax, rows: list[dict], x=lambda r: r["n"]) -> None:
    """One accuracy line (95% CI bars) per method through its N values, plotted against `x(row)`; particle
    filtering bold, greedy (if among the rows) a dotted level."""
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "greedy"):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n"])
        acc = [r["accuracy"] for r in rs]
        err = [[a - r["ci_low"] for a, r in zip(acc, rs)], [r["ci_high"] - a for a, r in zip(acc, rs)]]
        ax.errorbar([x(r) for r in rs], acc, yerr=err, marker="o", capsize=2, label=method,
                    linewidth=2.2 if method.startswith("particle-filter") else 1.2)
    greedy = next((r for r in rows if r["method"] == "greedy"), None)
    if greedy:
        ax.axhline(greedy["accuracy"], color="k", linestyle=":", label="greedy")
    ax.grid(alpha=0.3)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prms = list(report["settings"]["prms"])
    fig, axes = plt.subplots(1, len(prms), figsize=(6 * len(prms), 4.4), squeeze=False, sharey=True)
    for ax, prm in zip(axes[0], prms):
        accuracy_lines(ax, [r for r in report["rows"] if r["prm"] in (prm, "-")])
        ax.set_xscale("log", base=2)
        ax.set(xlabel="N (samples / particles)", ylabel="accuracy (95% CI)", title=f"PRM: {prm}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="10 problems per difficulty, 1 seed, N up to 16")
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--out", default=None, help="sweep directories (default runs/scaling[-quick])")
    ap.add_argument("--plot", help="accuracy-vs-N plot (default: DIR/scaling.png)")
    ap.add_argument("--load", help="print/plot a saved report.json, measure nothing")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--per-difficulty", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=TEMPERATURE,
                    help=f"sampling temperature of every search method (default {TEMPERATURE})")
    ap.add_argument("--batch-size", type=int, default=None, help="problems per engine batch")
    ap.add_argument("--ns", default=None, help="comma-separated N values (default 1,2,4,...,64)")
    ap.add_argument("--prms", default=",".join(PRMS), help=f"comma-separated, of {', '.join(PRMS)} (default all)")
    ap.add_argument("--search-max", type=int, default=None,
                    help="largest N for particle filtering, beam search and DVTS (default 32; 16 with --quick)")
    args = ap.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.per_difficulty = args.per_difficulty or (10 if args.quick else 20)
    args.ns = tuple(int(x) for x in args.ns.split(",")) if args.ns else ((1, 2, 4, 8, 16) if args.quick
                                                                        else (1, 2, 4, 8, 16, 32, 64))
    args.batch_size = args.batch_size or args.per_difficulty
    unknown = set(args.prms.split(",")) - set(PRMS)
    if unknown:
        ap.error(f"--prms: unknown {', '.join(sorted(unknown))}; accepted are {', '.join(PRMS)}")
    args.prms = {p: PRMS[p] for p in args.prms.split(",")}
    args.search_max = args.search_max or max(args.ns if args.quick else (n for n in args.ns if n <= 32))
    out = Path(args.out or ("runs/scaling-quick" if args.quick else "runs/scaling"))
    args.out = str(out)
    if args.load and not Path(args.load).is_file():
        ap.error(f"--load {args.load}: no such report file (write one with --out DIR, then load DIR/report.json)")
    if args.load:
        report = json.loads(Path(args.load).read_text())
    else:
        report = measure(args)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        plot(report, args.plot or str(out / "scaling.png"))
    if args.json:
        print(json.dumps({"rows": report["rows"], "paired": report.get("paired", [])}, indent=2))
    else:
        print_table(report)
        if args.plot and args.load:
            plot(report, args.plot)


if __name__ == "__main__":
    main()
