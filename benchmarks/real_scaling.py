"""Search on a real model (GSM8K): greedy, majority vote, (weighted) best-of-N, beam search, DVTS and particle
filtering with one step scorer (`--prm`).

`--prm auto` (the default) is what users get: the model's trained PRM head when it has one (issue 21,
`reasonbudget train-prm`), else `prm=auto`'s fallback. `--prm judge` is the policy judging its own partial
solutions (the probability of "yes" to "Is every step of your solution so far correct?", read on the
particles' KV rows); `--prm logprob` its own confidence. Weighted best-of-N, best-of-N and majority vote
come from one run of N_max samples per problem, evaluated at each N on its first N samples (search-and-learn's
protocol, as in benchmarks/scaling.py); particle filtering runs at every N. Greedy plain CoT is the reference.
Everything runs through the evaluation harness (resumable sweep directories under --out).

    python benchmarks/real_scaling.py [--model qwen2.5-coder-0.5b] [--limit 50] [--ns 4,8] [--prm auto] [--json]
                                      [--search-ns 4,8] (beam search and DVTS; beam width 4)
                                      [--particle-ns 4,8] (default --ns; '' skips particle filtering)
                                      [--particle-variant ess_threshold=0.5 ...] (particle filtering's settings)
                                      [--text-judge-problems K] [--judge-model qwen2.5-coder-1.5b]
                                      [--judge-model-problems K] [--judge-model-ns 8]

--judge-model M adds a second judge, a different model M (prm=judge-text,judge_model=M: a bigger model
judging the policy's particles): weighted best-of-N on the same samples, and particle filtering at
--judge-model-ns on the first --judge-model-problems problems. When those are fewer than --limit, every row
is also reported over just those problems (`rows_first_k`), so that the comparison is like for like.

--particle-variant OPTS (repeatable) adds particle filtering with those settings (e.g. `ess_threshold=0.5`:
resample only when the effective sample size falls below half the particles, `tau=2`, `resampler=systematic`)
at the --particle-ns values (--ns when those are ''), as its own rows ("particle-filter (OPTS)"), paired against
the default particle filter, weighted best-of-N and greedy.

--json prints {"rows": [{"method", "prm", "n", "accuracy", "ci_low", "ci_high", "mean_generated_tokens",
"mean_prm_calls", "mean_prm_tokens", "mean_wall_seconds"}...], "paired": [{"a", "b", "diff", "diff_ci_low",
"diff_ci_high", "p", ...}...]}: weighted best-of-N against majority vote at each N (the same samples); particle
filtering, beam search and DVTS against weighted best-of-N, greedy and particle filtering at the same N, and DVTS
against beam search (problem-level bootstrap and sign-flip test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from scaling import accuracy_lines, outcome, paired, rows_of, subsample, voted_outcome  # benchmarks/ is on sys.path when run as a script

TEMPERATURE = 0.8
BEAM_WIDTH = 4


def sweep(args, methods, budgets, out: Path, temperature: float, limit: int | None = None) -> list[dict]:
    from reasonbudget.eval import SweepConfig, run_sweep
    from reasonbudget.eval.records import ResultsFile

    cfg = SweepConfig(task="gsm8k", methods=tuple(methods), budgets=tuple(budgets), seeds=(0,),
                      limit=limit or args.limit, model=args.model, temperature=temperature, top_p=1.0, dtype=args.dtype,
                      batch_size=args.batch_size)
    run_sweep(cfg, out, progress=not args.json)
    return list(ResultsFile(out / "results.jsonl").load().values())


def measure(args) -> dict:
    import torch

    from reasonbudget.tasks import get_task

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = Path(args.out)
    steps = f"max_tokens={args.max_tokens}"
    PRM, scorer = f"prm={args.prm}", args.prm  # noqa: N806
    cells: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in sweep(args, ["plain"], [], out / "greedy", 0.0):
        cells[("greedy", "-", 1)].append(outcome(r))
    big = max(args.ns)
    sub = "" if args.prm == "judge" else f"-{args.prm.replace('/', '_')}"  # the judge keeps its old run folders
    sampled = sweep(args, [f"weighted-best-of-n:{PRM},{steps}"], [big], out / f"sampled{sub}", TEMPERATURE)
    judges, extra = {scorer: judge_quality(sampled)}, {}
    if args.text_judge_problems:  # the re-prefilling judge on the same samples (per-problem generators)
        k = args.text_judge_problems
        text = sweep(args, [f"weighted-best-of-n:prm=judge-text,{steps}"], [big], out / "sampled-judge-text",
                     TEMPERATURE, limit=k)
        same = {r["problem_id"]: r for r in sampled}
        judges[f"judge, first {k}"] = judge_quality([same[r["problem_id"]] for r in text])
        judges[f"judge-text, first {k}"] = judge_quality(text) | {"same_samples": same_samples(text, same)}
    add_scaled(cells, sampled, scorer, args.ns)
    _log(args, f"sampled done ({time.time() - t0:.0f}s)")
    if args.particle_ns:
        add_particles(cells, sweep(args, [f"particle-filter:{PRM},{steps}"], list(args.particle_ns),
                                   out / f"particle-filter{sub}", TEMPERATURE), scorer)
        _log(args, f"particle filtering done ({time.time() - t0:.0f}s)")
    variant_ns = list(args.particle_ns or args.ns)
    for opts in args.particle_variant:
        folder = out / f"particle-filter{sub}-{opts.replace('=', '').replace(',', '-')}"
        add_particles(cells, sweep(args, [f"particle-filter:{PRM},{steps},{opts}"], variant_ns,
                                   folder, TEMPERATURE), scorer, method=variant_label(opts))
        _log(args, f"particle filtering ({opts}) done ({time.time() - t0:.0f}s)")
    if args.search_ns:
        for r in sweep(args, [f"{m}:{PRM},{steps}" for m in ("beam-search", "dvts")], list(args.search_ns),
                       out / f"tree{sub}", TEMPERATURE):
            if r["budget"] >= BEAM_WIDTH:  # beam search and DVTS start at N = beam width
                cells[(r["method"].split(":")[0], scorer, r["budget"])].append(outcome(r))
        _log(args, f"beam search and DVTS done ({time.time() - t0:.0f}s)")
    if args.judge_model:  # a second judge model on the same samples, and particle filtering with it
        prm, tag = f"prm=judge-text,judge_model={args.judge_model}", f"judge:{args.judge_model}"
        other = sweep(args, [f"weighted-best-of-n:{prm},{steps}"], [big], out / f"sampled-{args.judge_model}",
                      TEMPERATURE)
        same = {r["problem_id"]: r for r in sampled}
        judges[tag] = judge_quality(other) | {"same_samples": same_samples(other, same)}
        add_scaled(cells, other, tag, args.ns, voting=False)
        _log(args, f"{tag}: sampled done ({time.time() - t0:.0f}s)")
        k = args.judge_model_problems or args.limit
        add_particles(cells, sweep(args, [f"particle-filter:{prm},{steps}"], list(args.judge_model_ns),
                                   out / f"particle-filter-{args.judge_model}", TEMPERATURE, limit=k), tag)
        if k < args.limit:
            first = {p.id for p in get_task("gsm8k").problems(k)}
            report_k = {key: [c for c in cs if c["problem_id"] in first] for key, cs in cells.items()}
            extra["rows_first_k"] = {"problems": k, "rows": rows_of(report_k)}
    filters = ["particle-filter"] + [variant_label(opts) for opts in args.particle_variant]
    pairs = paired_tests(cells, scorer, filters, args.ns + args.search_ns)
    return {"rows": rows_of(cells), "paired": pairs, **extra, "judges": judges, "seconds": round(time.time() - t0, 1),
            "settings": {"model": args.model, "dtype": args.dtype, "task": "gsm8k", "limit": args.limit,
                         "ns": list(args.ns), "particle_ns": list(args.particle_ns),
                         "search_ns": list(args.search_ns), "prm": PRM,
                         "particle_variants": list(args.particle_variant),
                         "judge_model": args.judge_model,
                         "judge_model_problems": args.judge_model_problems, "judge_model_ns": list(args.judge_model_ns),
                         "temperature": TEMPERATURE, "max_tokens": args.max_tokens, "threads": args.threads}}


def paired_tests(cells, scorer: str, filters: list[str], ns) -> list[dict]:
    """Per-problem paired tests at each N: weighted best-of-N against majority vote (the same samples); each
    particle filter, beam search and DVTS against weighted best-of-N, greedy and the default particle filter;
    DVTS against beam search. Only pairs whose both cells ran."""
    def at(method: str, n: int) -> tuple:
        return ("greedy", "-", 1) if method == "greedy" else (method, "-" if method == "majority-vote" else scorer, n)

    against = {**{f: ["weighted-best-of-n", "greedy", "particle-filter"] for f in filters},
               "beam-search": ["weighted-best-of-n", "greedy", "particle-filter"],
               "dvts": ["weighted-best-of-n", "greedy", "particle-filter", "beam-search"],
               "weighted-best-of-n": ["majority-vote"]}
    pairs = []
    for n in dict.fromkeys(sorted(ns)):
        for a_method in ("weighted-best-of-n", *filters, "beam-search", "dvts"):
            for b_method in against[a_method]:
                a, b = at(a_method, n), at(b_method, n)
                if a != b and a in cells and b in cells:
                    pairs.append(paired(cells, a, b))
    return pairs


def same_samples(records: list[dict], reference: dict[str, dict]) -> bool:
    """Whether each record drew the same answers as the reference record of its problem (per-problem seeds)."""
    return all(r["trace"]["answers"] == reference[r["problem_id"]]["trace"]["answers"] for r in records)


def add_scaled(cells, records: list[dict], prm: str, ns, voting: bool = True) -> None:
    """Best-of-n, weighted best-of-n (and majority vote, which needs no judge) on each record's first n samples."""
    for r in records:
        for n in ns:
            for method, c in subsample(r, n, task="gsm8k").items():
                if method != "majority-vote":
                    cells[(method, prm, n)].append(c)
                elif voting:
                    cells[(method, "-", n)].append(c)


def variant_label(opts: str) -> str:
    return f"particle-filter ({opts})"


def add_particles(cells, records: list[dict], prm: str, method: str = "particle-filter") -> None:
    voted = method.replace("particle-filter", "particle-filter-vote", 1)
    for r in records:
        cells[(method, prm, r["budget"])].append(outcome(r))
        if "picks" in r["trace"]:  # the same run, weighted-vote selection
            cells[(voted, prm, r["budget"])].append(voted_outcome(r, task="gsm8k"))


def judge_quality(records: list[dict]) -> dict:
    """How well the judge tells right samples from wrong ones (AUROC over every sample of every problem), and
    what a perfect verifier could reach (pass@N: some sample is right)."""
    from reasonbudget.tasks import grade_many
    from reasonbudget.eval.report import auroc

    answers = [(a, r["gold"], "gsm8k") for r in records for a in r["trace"]["answers"]]
    scores = [float("nan") if s is None else s for r in records for s in r["trace"]["scores"]]
    right = grade_many(answers)
    per_problem, k = [], 0
    for r in records:
        n = len(r["trace"]["answers"])
        per_problem.append(any(right[k : k + n]))
        k += n
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"samples": len(right), "sample_accuracy": mean(right), "judge_auroc": auroc(scores, right),
            "mean_score_right": mean([s for s, y in zip(scores, right) if y] or [float("nan")]),
            "mean_score_wrong": mean([s for s, y in zip(scores, right) if not y] or [float("nan")]),
            "pass_at_n": mean(per_problem)}


def _log(args, msg: str) -> None:
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"{s['model']} ({s['dtype']}) on {s['task']}, first {s['limit']} problems, {s['prm']}, T={s['temperature']}")
    print_rows(report["rows"])
    for p in report.get("paired", []):
        print(f"{'/'.join(map(str, p['a']))} - {'/'.join(map(str, p['b']))}: {p['diff']:+.3f} "
              f"[{p['diff_ci_low']:+.3f}, {p['diff_ci_high']:+.3f}] p={p['p']:.3f} over {p['problems']} problems")
    if "rows_first_k" in report:
        print(f"\nthe same, on the first {report['rows_first_k']['problems']} problems only:")
        print_rows(report["rows_first_k"]["rows"])
    for name, j in report.get("judges", {}).items():
        print(f"\n{name}: {j['samples']} samples, AUROC {j['judge_auroc']:.3f} (mean score {j['mean_score_right']:.3f} "
              f"right vs {j['mean_score_wrong']:.3f} wrong); sample accuracy {j['sample_accuracy']:.3f}; "
              f"pass@{max(s['ns'])} {j['pass_at_n']:.3f} (a perfect verifier's ceiling)"
              + (f"; same samples as judge: {j['same_samples']}" if "same_samples" in j else ""), end="")
    print()
    print(f"\ntotal {report.get('seconds', 0)} s")


def print_rows(rows: list[dict]) -> None:
    width = max([20] + [len(r["method"]) for r in rows])
    print(f"{'method':{width}} {'judge':>24} {'N':>3} {'problems':>8} {'accuracy':>9} {'95% CI':>15} {'gen tokens':>11} "
          f"{'PRM calls':>10} {'PRM tokens':>11} {'wall s':>8}")
    for r in rows:
        print(f"{r['method']:{width}} {r['prm']:>24} {r['n']:3d} {r['count']:8d} {r['accuracy']:9.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['mean_generated_tokens']:11.0f} {r['mean_prm_calls']:10.1f} "
              f"{r['mean_prm_tokens']:11.0f} {r['mean_wall_seconds']:8.1f}")


def plot(report: dict, path: str) -> None:
    """Accuracy against generated tokens per problem, one line per method through its N values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    s0 = report["settings"]
    rows = [r | {"method": f"{r['method']} [{r['prm']}]"} if r["prm"] not in (s0["prm"].split("=", 1)[-1], "-") else r
            for r in report["rows"]]
    accuracy_lines(ax, rows, x=lambda r: r["mean_generated_tokens"])
    for r in rows:
        if r["method"] != "greedy":
            ax.annotate(f"N={r['n']}", (r["mean_generated_tokens"], r["accuracy"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    s = report["settings"]
    ax.set(xlabel="generated tokens per problem", ylabel="accuracy (95% CI)",
           title=f"{s['model']} on GSM8K ({s['limit']} problems), {s['prm']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="auto", help="float32 | bfloat16 | auto (bfloat16 where its matmuls are native (GPU, AVX-512), else float32; resolved before the run, so that a sweep's identity names the dtype it ran in)")
    ap.add_argument("--limit", type=int, default=50, help="first N GSM8K test problems")
    ap.add_argument("--ns", default="4,8", help="comma-separated N values")
    ap.add_argument("--prm", default="auto", help="step scorer: auto (the model's trained PRM head, else the "
                                                  "fallback), judge, logprob, judge-text or a PRM head directory")
    ap.add_argument("--particle-ns", default=None,
                    help="N values for particle filtering (default --ns; '' for none: a sweep run in stages)")
    ap.add_argument("--particle-variant", action="append", default=[], metavar="OPTS",
                    help="particle filtering with these settings as well, e.g. ess_threshold=0.5 (repeatable)")
    ap.add_argument("--search-ns", default="", help="N values for beam search and DVTS (beam width 4), e.g. 4,8")
    ap.add_argument("--max-tokens", type=int, default=640, help="per sample or particle")
    ap.add_argument("--batch-size", type=int, default=10, help="problems per engine batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-judge-problems", type=int, default=0,
                    help="also score the samples of the first K problems with prm=judge-text, to compare the judges")
    ap.add_argument("--judge-model", default="",
                    help="a second judge: this model judges the policy's samples and particles (prm=judge-text)")
    ap.add_argument("--judge-model-problems", type=int, default=0,
                    help="particle filtering with --judge-model on the first K problems only (default all)")
    ap.add_argument("--judge-model-ns", default=None, help="N values for that particle filter (default --ns)")
    ap.add_argument("--out", default="runs/real_scaling")
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--load", help="print a saved report.json, measure nothing")
    ap.add_argument("--plot", help="accuracy-vs-tokens plot (default: OUT/real_scaling.png)")
    args = ap.parse_args()
    from reasonbudget.models.registry import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    args.ns = tuple(int(x) for x in args.ns.split(","))
    args.search_ns = tuple(int(x) for x in args.search_ns.split(",")) if args.search_ns else ()
    args.particle_ns = args.ns if args.particle_ns is None else tuple(int(x) for x in args.particle_ns.split(",") if x)
    args.judge_model_ns = tuple(int(x) for x in args.judge_model_ns.split(",")) if args.judge_model_ns else args.ns
    from reasonbudget.methods.spec import parse_method_spec

    for opts in args.particle_variant:
        try:
            parse_method_spec(f"particle-filter:{opts}")
        except ValueError as e:
            ap.error(f"--particle-variant {opts}: {e}")
    if args.load and not Path(args.load).is_file():
        ap.error(f"--load {args.load}: no such report file (write one with --out DIR, then load DIR/report.json)")
    if args.load:
        report = json.loads(Path(args.load).read_text())
    else:
        report = measure(args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
    if args.plot or not args.load:
        plot(report, args.plot or str(Path(args.out) / "real_scaling.png"))
    if args.json:
        print(json.dumps({"rows": report["rows"]}, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
