"""Step-level drafting measured against itself (issue 22): draft-only, target-only, RSD, Arbitrage (router) and
Arbitrage (oracle), thresholds swept, on the testbed pair and on the Qwen pair.

Every run goes through the evaluation harness (resumable sweep folders under --out), greedy as the reference
scripts run. Per (pair, method, threshold): accuracy with its problem-level 95% interval, the step acceptance
rate (draft steps kept / draft steps written), latency per problem (wall seconds: batch 1 on the Qwen pair, as
the paper measures; on the testbed the batch's wall time per problem), FLOPs per problem (2 x parameters x
tokens read, summed over draft, target and the PRM or router) and target calls (escalations).

The Qwen pair's step-level runs are walked per problem as one tree of shared prefixes (every threshold of
RSD, Arbitrage and the oracle at once: `steps/draft_target_tree.py`; the same tokens and counts as the runs alone,
tested), each run charged the wall time of the batch-1 calls it makes; `--qwen-runs` runs them one by one
through the harness instead (34 batch-1 runs of every problem: days on a CPU).

Matched accuracy: for every Arbitrage point on its cost/accuracy frontier, the cheapest RSD point at least as
accurate; speedup = RSD cost / Arbitrage cost (cost: latency on the Qwen pair, FLOPs on the testbed, where the
tiny models' wall time is mostly Python).

    python benchmarks/arbitrage.py [--quick] [--json] [--pairs testbed,qwen] [--thresholds 11]
                                   [--per-difficulty 50] [--qwen-limit 100] [--qwen-draft-quant int4]
                                   [--router DIR] [--out runs/arbitrage] [--plot-dir DIR] [--into FILE]

--json prints {"rows": [{"pair", "method", "threshold", "accuracy", "acceptance", "latency_s", "flops",
"target_calls", ...}...], "matched": [{"pair", "accuracy", "rsd_latency_s", "arbitrage_latency_s", "speedup",
...}...], "paired": [{"pair", "arbitrage_threshold", "rsd_threshold", "arbitrage_acceptance",
"rsd_acceptance", "diff", "diff_ci_low", "diff_ci_high", "p", "verdict"}...], "ceiling": [{"pair", "cost",
"rsd_max", "arbitrage_min", "ceiling", ...}...]} (paired: each Arbitrage threshold against RSD at the nearest
acceptance, per-problem differences on the same problems; ceiling: the largest matched-accuracy speedup the
measured costs allow, the costliest point of RSD's frontier over Arbitrage's cheapest). Plots
(--plot-dir, default OUT; one file per pair, arbitrage-PAIR.png): accuracy vs acceptance, accuracy vs latency (and
vs FLOPs). --into FILE merges the pairs measured into a report kept elsewhere (docs/arbitrage.json holds both
pairs, measured in separate runs); --load FILE prints one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

PAIRS = {
    "testbed": {"draft": "testbed-draft", "target": "testbed-target", "dtype": "float32", "draft_quant": "none",
                "tasks": [f"testbed:d={d}" + (f",seed={s}" if s else "") for d in (6, 7, 8) for s in (0, 1, 2)]},
    "qwen": {"draft": "qwen2.5-coder-0.5b", "target": "qwen2.5-coder-1.5b", "dtype": "auto", "draft_quant": "int4",
             "tasks": ["gsm8k"]},
}
"""dtype auto: bfloat16 where its matmuls are native (GPU, AVX-512), else float32; resolved before a sweep starts,
so that its identity names the dtype it ran in. draft_quant: the Qwen draft runs with int4 weights (the engine's
quantized linears, `--qwen-draft-quant`), as the paper's quantized drafts do: at batch 1 here the 0.5B in int4 writes
about 2.7x faster than in bf16 (`docs/decode_speed.json`), a step-cost ratio to the bf16 1.5B of about 0.14 instead
of 0.38, near the paper's 1B/8B pair. The target stays bf16: the PRM reads its states, as it was trained to."""
METHODS = ("rsd", "arbitrage", "arbitrage-oracle")


def thresholds(k: int) -> list[float]:
    return [round(i / (k - 1), 3) for i in range(k)] if k > 1 else [0.5]


def plain_spec(args) -> str:
    """Draft-only and target-only decoding under the step-level runs' token cap (`max_tokens`): uncapped, a run
    that never reaches an answer goes on to plain's 2048-token safety cap and its minutes land in the baseline's
    latency (one 1.5B answer here: 1898 tokens, 286 s). At the cap plain forces the answer line where a step-level
    run stops without one, the one way the two still differ."""
    return f"plain:max_thinking_tokens={args.max_tokens}"


def method_specs(pair: dict, args, with_router: bool) -> dict[tuple[str, float | None], str]:
    """(method, threshold) -> method spec."""
    quant = f",draft_quant={pair['draft_quant']}" if pair["draft_quant"] != "none" else ""
    base = f"draft={pair['draft']}{quant},max_tokens={args.max_tokens}"
    specs: dict[tuple[str, float | None], str] = {("target-only", None): plain_spec(args)}
    router = f",router={args.router}" if args.router else ""
    for t in thresholds(args.thresholds):
        specs[("rsd", t)] = f"rsd:{base},threshold={t}"
        if with_router:
            specs[("arbitrage", t)] = f"arbitrage:{base},threshold={t}{router}"
        specs[("arbitrage-oracle", t)] = f"arbitrage:{base},threshold={t},oracle=true"
    return specs


def sweep(pair_name: str, pair: dict, task: str, methods: list[str], args, *, model: str, limit: int,
          batch_size: int, quant: str = "none") -> list[dict]:
    from reasonbudget.eval import SweepConfig, run_sweep
    from reasonbudget.eval.records import ResultsFile
    from reasonbudget.models.registry import resolve_dtype

    folder = model + (f"-{quant}" if quant != "none" else "")
    out = Path(args.out) / pair_name / task.replace(":", "_").replace(",", "_").replace("=", "") / folder
    dtype = pair["dtype"] if quant == "none" else resolve_dtype("auto", "cpu", quant)  # as `Engine.draft_engine`
    cfg = SweepConfig(task=task, methods=tuple(methods), seeds=(0,), limit=limit, model=model, temperature=0.0,
                      dtype=dtype, batch_size=batch_size, quant=quant)
    run_sweep(cfg, out, progress=not args.json)
    keep = set(methods)
    return [r for r in ResultsFile(out / "results.jsonl").load().values() if r["method"] in keep]


_TARGETS: dict[tuple[str, str], object] = {}


def target_model(pair: dict):
    """The pair's target, loaded once, so that its PRM is built once too (PRMs are kept on their policy object;
    the four loads this replaced held 20 GB while they lived)."""
    from reasonbudget.models import load_model

    key = (pair["target"], pair["dtype"])
    if key not in _TARGETS:
        _TARGETS[key] = load_model(pair["target"], dtype=pair["dtype"])
    return _TARGETS[key]


def scorer_params(pair: dict, method: str, args) -> int:
    """Parameters of what scores steps for `method`: the PRM (RSD, oracle) or the router."""
    from reasonbudget.rewards.factory import load_prm

    target = target_model(pair)
    if method == "arbitrage":
        from reasonbudget.methods.drafting.arbitrage import load_router

        return load_router(args.router or "auto", pair["draft"], target).num_params
    prm = load_prm("auto", target)
    for attr in ("lm", "base"):
        m = getattr(prm, attr, None)
        if m is not None:
            n = m.num_params if hasattr(m, "num_params") else sum(p.numel() for p in m.parameters())
            return n + sum(p.numel() for p in getattr(prm, "head").parameters())
    return 0


def cell(record: dict, scorer: int) -> dict:
    u, t = record["usage"], record.get("trace") or {}
    return {"problem_id": f"{record['task']}/{record['problem_id']}", "correct": bool(record["correct"]),
            "acceptance": t.get("step_acceptance"), "target_calls": t.get("target_calls", 0),
            "latency_s": u["wall_seconds"], "flops": u["energy_flops"] + 2.0 * scorer * u["prm_tokens"],
            "scorer_flops": 2.0 * scorer * u["prm_tokens"], "flips": t.get("decision_flips", 0)}


def tree_records(pair_name: str, pair: dict, task_spec: str, limit: int, specs: dict,
                 args) -> list[tuple[tuple[str, float], dict]]:
    """Every (method, threshold) run of the step-level methods on each problem, walked as one tree of shared
    prefixes per problem (`methods.drafting.steps.sweep_step_drafting`: equal to the runs alone, each charged the
    batch-1 calls it makes), greedy. Kept per problem in OUT/PAIR/TASK/tree.jsonl (tree-int4.jsonl for an int4
    draft), so a stopped sweep continues.
    -> ((method, threshold), record) with the harness records' usage, trace and correct."""
    from dataclasses import asdict

    from reasonbudget.engine import Engine, SamplingConfig
    from reasonbudget.eval.records import JsonLines
    from reasonbudget.methods.drafting.arbitrage import load_router
    from reasonbudget.methods.drafting.steps import PRMArbiter, RouterArbiter, StepDraftConfig, sweep_step_drafting
    from reasonbudget.models.registry import fingerprint, model_fingerprints
    from reasonbudget.rewards.factory import load_prm
    from reasonbudget.tasks import get_task, grade_many

    target = target_model(pair)
    kinds = {"rsd": PRMArbiter(load_prm("auto", target), 0.5),
             "arbitrage-oracle": PRMArbiter(load_prm("auto", target), 0.5, oracle=True)}
    if any(method == "arbitrage" for method, _ in specs):
        kinds["arbitrage"] = RouterArbiter(load_router(args.router or "auto", pair["draft"], target), 0.5)
    names = list(kinds)
    keys = [k for k in specs if k[0] in kinds]
    runs = [(names.index(m), t) for m, t in keys]
    quant = pair["draft_quant"]
    settings = {"draft": pair["draft"], "target": pair["target"], "dtype": pair["dtype"], "runs": keys,
                **({"draft_quant": quant} if quant != "none" else {}),  # bf16 drafts: the records from before
                "max_tokens": args.max_tokens, "router": args.router or "auto",
                "fingerprints": model_fingerprints(pair["target"]), "draft_weights": model_fingerprints(pair["draft"]),
                "router_files": fingerprint(Path(args.router)) if args.router else None}
    settings = json.loads(json.dumps(settings))  # as read back (tuples become lists)
    journal = JsonLines(Path(args.out) / pair_name / task_spec.replace(":", "_").replace(",", "_").replace("=", "")
                        / ("tree.jsonl" if quant == "none" else f"tree-{quant}.jsonl"))  # a torn line: runs again
    done = {r["problem_id"]: r["runs"] for r in journal.read() if r["settings"] == settings}
    task = get_task(task_spec)
    problems = task.problems(limit)
    cfg = StepDraftConfig(draft=pair["draft"], draft_quant=quant, sampling=SamplingConfig(temperature=0.0),
                          max_tokens=args.max_tokens)
    engine = Engine(target)
    todo = [p for p in problems if p.id not in done]
    for i, p in enumerate(todo):
        t0 = time.time()
        results = sweep_step_drafting(cfg, engine, task.prompt(target, p), p.question, list(kinds.values()), runs)
        right = grade_many([(r.answer, p.gold, task.grader) for r in results])
        done[p.id] = [{"method": m, "threshold": t, "usage": asdict(r.usage), "trace": r.trace, "answer": r.answer,
                       "correct": bool(ok)} for (m, t), r, ok in zip(keys, results, right)]
        journal.append([{"problem_id": p.id, "settings": settings, "runs": done[p.id]}])
        _log(args, f"{pair_name} tree: problem {len(problems) - len(todo) + i + 1}/{len(problems)} "
                   f"({time.time() - t0:.0f}s)")
    return [((r["method"], r["threshold"]), {**r, "task": task_spec, "problem_id": p.id})
            for p in problems for r in done[p.id]]


def measure(args) -> dict:
    import torch

    from reasonbudget.eval.stats import bootstrap_interval
    from reasonbudget.models.registry import resolve_dtype

    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows, notes = [], []
    per_cell: dict[tuple, dict[str, list[bool]]] = {}  # (pair, method, threshold) -> problem -> correct
    per_cost: dict[tuple, dict[str, float]] = {}  # (pair, method, threshold) -> problem -> the pair's cost
    for pair_name in args.pairs:
        pair = dict(PAIRS[pair_name], dtype=resolve_dtype(PAIRS[pair_name]["dtype"]))
        if pair_name == "qwen":
            pair["draft_quant"] = args.qwen_draft_quant
        tasks = pair["tasks"] if pair_name == "testbed" else ["gsm8k"]
        limit = args.per_difficulty if pair_name == "testbed" else args.qwen_limit
        batch = args.batch_size if pair_name == "testbed" else 1  # the Qwen pair: batch-1 latency
        target_params = target_model(pair).num_params
        params = {"rsd": scorer_params(pair, "rsd", args)}
        params["arbitrage-oracle"] = params["rsd"]
        with_router = args.with_router
        if with_router:
            try:
                params["arbitrage"] = scorer_params(pair, "arbitrage", args)
            except ValueError as e:  # no router for this pair: the other rows still run
                notes.append(f"{pair_name}: no Arbitrage (router) rows: {e}")
                with_router = False
        specs = method_specs(pair, args, with_router)
        cells: dict[tuple[str, float | None], list[dict]] = defaultdict(list)
        by_spec = {v: k for k, v in specs.items()}
        for task in tasks:
            if pair_name == "qwen" and args.qwen_tree:
                for key, r in tree_records(pair_name, pair, task, limit, specs, args):
                    cells[key].append(cell(r, params.get(key[0], 0)))
                run_alone = [specs[("target-only", None)]]  # plain decoding through the harness
            else:
                run_alone = list(specs.values())
            for r in sweep(pair_name, pair, task, run_alone, args, model=pair["target"], limit=limit, batch_size=batch):
                key = by_spec[r["method"]]
                cells[key].append(cell(r, params.get(key[0], 0)))
            for r in sweep(pair_name, pair, task, [plain_spec(args)], args, model=pair["draft"], limit=limit,
                           batch_size=batch, quant=pair["draft_quant"]):
                cells[("draft-only", None)].append(cell(r, 0) | {"acceptance": 1.0})
            _log(args, f"{pair_name} {task} done ({time.time() - t0:.0f}s)")
        for (method, thr), cs in cells.items():
            per_cell[(pair_name, method, thr)] = {c["problem_id"]: [c["correct"]] for c in cs}
            per_cost[(pair_name, method, thr)] = {c["problem_id"]: c[cost_key(pair_name)] for c in cs}
            if method == "target-only":
                for c in cs:
                    c["acceptance"] = 0.0
            per_problem = {c["problem_id"]: [c["correct"]] for c in cs}
            lo, hi = bootstrap_interval(per_problem)
            flops = statistics.mean(c["flops"] for c in cs)
            rows.append({"pair": pair_name, "method": method, "threshold": thr,
                         "accuracy": sum(c["correct"] for c in cs) / len(cs), "ci_low": lo, "ci_high": hi,
                         "acceptance": statistics.mean(c["acceptance"] for c in cs if c["acceptance"] is not None),
                         "latency_s": statistics.mean(c["latency_s"] for c in cs), "flops": flops,
                         "target_equivalent_tokens": flops / (2.0 * target_params),
                         "target_calls": statistics.mean(c["target_calls"] for c in cs), "problems": len(cs),
                         "decision_flips": sum(c["flips"] for c in cs),
                         "scorer_share": statistics.mean(c["scorer_flops"] for c in cs) / flops if flops else 0.0})
    return {"rows": rows, "matched": matched(rows, per_cost), "ceiling": speedup_ceiling(rows),
            "paired": paired_at_acceptance(rows, per_cell),
            "notes": notes, "seconds": round(time.time() - t0, 1),
            "settings": {"pairs": args.pairs, "thresholds": thresholds(args.thresholds),
                         "per_difficulty": args.per_difficulty, "qwen_limit": args.qwen_limit,
                         "max_tokens": args.max_tokens, "threads": args.threads, "quick": args.quick,
                         "qwen_tree": args.qwen_tree, "qwen_draft_quant": args.qwen_draft_quant}}


def cost_key(pair: str) -> str:
    """What a pair's speed-ups compare: latency on the Qwen pair (batch 1, as the paper), FLOPs on the testbed,
    where the tiny models' wall time is mostly Python."""
    return "latency_s" if pair == "qwen" else "flops"


def frontier(points: list[dict], cost: str) -> list[dict]:
    """The points no other point beats on both accuracy (higher) and cost (lower), by rising cost; pure."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p[cost], -p["accuracy"])):
        if p["accuracy"] > best:
            out.append(p)
            best = p["accuracy"]
    return out


def matched(rows: list[dict], per_cost: dict | None = None) -> list[dict]:
    """Per pair, every Arbitrage frontier point against the cheapest RSD point at least as accurate. With
    `per_cost` ((pair, method, threshold) -> problem -> cost), each speedup gets a 95% interval that resamples
    the problems both points ran (the two thresholds held fixed: the choice of the pair is not resampled)."""
    from reasonbudget.eval.stats import rate_ratio_interval

    out = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        cost = cost_key(pair)
        rsd = [r for r in rows if r["pair"] == pair and r["method"] == "rsd"]
        for a in frontier([r for r in rows if r["pair"] == pair and r["method"] == "arbitrage"], cost):
            cands = [r for r in rsd if r["accuracy"] >= a["accuracy"]]
            if not cands:
                continue
            b = min(cands, key=lambda r: r[cost])
            out.append({"pair": pair, "accuracy": a["accuracy"], "rsd_accuracy": b["accuracy"],
                        "rsd_threshold": b["threshold"], "arbitrage_threshold": a["threshold"],
                        "rsd_latency_s": b["latency_s"], "arbitrage_latency_s": a["latency_s"],
                        "rsd_flops": b["flops"], "arbitrage_flops": a["flops"], "cost": cost,
                        "speedup": b[cost] / a[cost] if a[cost] > 0 else float("nan")})
            if per_cost is not None:
                mine, theirs = per_cost[(pair, "arbitrage", a["threshold"])], per_cost[(pair, "rsd", b["threshold"])]
                common = sorted(mine.keys() & theirs.keys())
                ones = [1.0] * len(common)  # (1 / sum arbitrage) / (1 / sum rsd): RSD's cost over Arbitrage's
                _, lo, hi = rate_ratio_interval(ones, [mine[p] for p in common], ones, [theirs[p] for p in common])
                out[-1] |= {"speedup_ci_low": lo, "speedup_ci_high": hi}
    return out


def speedup_ceiling(rows: list[dict]) -> list[dict]:
    """Per pair, the largest matched-accuracy speedup the measured costs allow whatever accuracy Arbitrage
    reaches: the costliest point of RSD's cost/accuracy frontier (the most accurate RSD point; a dominated
    point is never the cheapest match) over Arbitrage's cheapest point. When the scorer (router or PRM) makes
    most of both methods' cost, this is where a goal such as 1.6x stops being reachable; pure."""
    out = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        cost = cost_key(pair)
        rsd = frontier([r for r in rows if r["pair"] == pair and r["method"] == "rsd"], cost)
        arb = [r for r in rows if r["pair"] == pair and r["method"] == "arbitrage"]
        if not rsd or not arb:
            continue
        top, low = rsd[-1], min(arb, key=lambda r: r[cost])
        out.append({"pair": pair, "cost": cost, "rsd_max": top[cost], "rsd_max_threshold": top["threshold"],
                    "arbitrage_min": low[cost], "arbitrage_min_threshold": low["threshold"],
                    "arbitrage_min_scorer_share": low.get("scorer_share"),
                    "ceiling": top[cost] / low[cost] if low[cost] > 0 else float("nan")})
    return out


def paired_at_acceptance(rows: list[dict], per_cell: dict) -> list[dict]:
    """Per pair, every Arbitrage threshold against the RSD threshold whose step acceptance is nearest: the
    per-problem accuracy difference over the same problems (bootstrap interval, sign-flip p), so that "the
    router's curve lies above RSD's" is a test and not a reading of two curves."""
    from reasonbudget.eval.stats import paired_difference, verdict

    out = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        rsd = [r for r in rows if r["pair"] == pair and r["method"] == "rsd"]
        for a in (r for r in rows if r["pair"] == pair and r["method"] == "arbitrage"):
            if not rsd:
                break
            b = min(rsd, key=lambda r: (abs(r["acceptance"] - a["acceptance"]), r["threshold"]))
            d = paired_difference(per_cell[(pair, "arbitrage", a["threshold"])],
                                  per_cell[(pair, "rsd", b["threshold"])])
            out.append({"pair": pair, "arbitrage_threshold": a["threshold"], "rsd_threshold": b["threshold"],
                        "arbitrage_acceptance": a["acceptance"], "rsd_acceptance": b["acceptance"], **d,
                        "verdict": verdict(d, ("Arbitrage", "RSD"))})
    return out


def merge_reports(old: dict, new: dict) -> dict:
    """`new` laid over `old` pair by pair: the pairs `new` measured replace theirs in `old`, the others stay (the
    testbed and the Qwen pair are measured in different runs, hours apart, into one report); pure."""
    pairs = set(new["settings"]["pairs"])

    def keep(entries: list) -> list:
        return [e for e in entries if e["pair"] not in pairs]

    out = {k: keep(old.get(k, [])) + new[k] for k in ("rows", "matched", "ceiling", "paired")}
    before = old.get("settings_by_pair") or {p: old["settings"] | {"seconds": old["seconds"]}
                                             for p in old["settings"]["pairs"]}  # a report of one run
    by_pair = {p: s for p, s in before.items() if p not in pairs}
    by_pair |= {p: new["settings"] | {"seconds": new["seconds"]} for p in pairs}
    notes = [n for n in old.get("notes", []) if n.split(":")[0] not in pairs] + new.get("notes", [])
    return {**out, "notes": notes, "seconds": round(sum(s["seconds"] for s in by_pair.values()), 1),
            "settings": {**new["settings"], "pairs": sorted(by_pair)}, "settings_by_pair": by_pair}


def _log(args, msg: str) -> None:
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    print(f"{'pair':8} {'method':17} {'thr':>5} {'acc':>6} {'95% CI':>15} {'accept':>7} {'latency s':>10} "
          f"{'target-eq tok':>13} {'target calls':>12}")
    for r in report["rows"]:
        thr = "-" if r["threshold"] is None else f"{r['threshold']:.1f}"
        print(f"{r['pair']:8} {r['method']:17} {thr:>5} {r['accuracy']:6.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"{r['acceptance']:7.3f} {r['latency_s']:10.3f} {r['target_equivalent_tokens']:13.1f} "
              f"{r['target_calls']:12.2f}")
    if report["matched"]:
        print("\nmatched accuracy (Arbitrage frontier vs the cheapest RSD point at least as accurate; 95% interval "
              "over problems, the two thresholds held fixed):")
        for m in report["matched"]:
            ci = (f" [{m['speedup_ci_low']:.2f}, {m['speedup_ci_high']:.2f}]" if "speedup_ci_low" in m
                  else "")  # reports saved before the interval was added
            print(f"{m['pair']:8} acc {m['accuracy']:.3f} (RSD {m['rsd_accuracy']:.3f}): cost {m['cost']} "
                  f"speedup {m['speedup']:.2f}x{ci}  (tau {m['arbitrage_threshold']}, delta {m['rsd_threshold']})")
    else:
        print("\nno matched-accuracy comparison: no RSD point reaches an Arbitrage point's accuracy, or no router rows")
    for c in report.get("ceiling") or speedup_ceiling(report["rows"]):  # reports saved before it was added
        share = c.get("arbitrage_min_scorer_share")
        print(f"{c['pair']:8} no matching can beat {c['ceiling']:.2f}x here: RSD's most accurate point (delta "
              f"{c['rsd_max_threshold']}) over Arbitrage's cheapest (tau {c['arbitrage_min_threshold']}"
              + (f", {share:.0%} of it the router's" if share is not None else "") + ")")
    if report.get("paired"):
        print("\nat matched acceptance (Arbitrage - RSD at the nearest acceptance, same problems; 95% bootstrap "
              "interval over problems, sign-flip p):")
        for p in report["paired"]:
            print(f"{p['pair']:8} tau {p['arbitrage_threshold']:.1f} ({p['arbitrage_acceptance']:.3f}) vs delta "
                  f"{p['rsd_threshold']:.1f} ({p['rsd_acceptance']:.3f}): {p['diff']:+.3f} "
                  f"[{p['diff_ci_low']:+.3f}, {p['diff_ci_high']:+.3f}] p={p['p']:.2f}  {p['verdict']}")
    for n in report.get("notes", []):
        print("note:", n)
    print(f"\ntotal {report['seconds']} s")


def plot(report: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for pair in dict.fromkeys(r["pair"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["pair"] == pair]
        xs = [("acceptance", "step acceptance rate"), ("latency_s", "latency per problem (s)"),
              ("target_equivalent_tokens", "target-equivalent tokens (FLOPs / 2N_target)")]
        fig, axes = plt.subplots(1, len(xs), figsize=(5.0 * len(xs), 4.0))
        for ax, (key, label) in zip(axes, xs):
            for method in METHODS:
                pts = sorted((r[key], r["accuracy"]) for r in rows if r["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=method)
            for method, style in (("draft-only", ":"), ("target-only", "--")):
                for r in rows:
                    if r["method"] == method:
                        ax.axhline(r["accuracy"], ls=style, color="gray", lw=1)
                        ax.annotate(method, (ax.get_xlim()[0], r["accuracy"]), fontsize=7)
            ax.set(xlabel=label, ylabel="accuracy")
            ax.legend(fontsize=7)
        fig.suptitle(f"step-level drafting, {pair} pair")
        fig.tight_layout()
        fig.savefig(out_dir / f"arbitrage-{pair}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="testbed only, 10 problems per set, 6 thresholds")
    ap.add_argument("--pairs", default="testbed,qwen")
    ap.add_argument("--thresholds", type=int, default=11, help="thresholds per method, evenly over [0, 1]")
    ap.add_argument("--per-difficulty", type=int, default=50, help="testbed problems per (difficulty, problem seed)")
    ap.add_argument("--qwen-limit", type=int, default=100, help="first N GSM8K test problems (Qwen pair)")
    ap.add_argument("--qwen-draft-quant", default="int4", choices=("none", "int8", "int4"),
                    help="the Qwen draft's weights (none: bf16, as its target)")
    ap.add_argument("--max-tokens", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=16, help="testbed problems per engine batch")
    ap.add_argument("--router", default="", help="router directory (default: the target's companion)")
    ap.add_argument("--no-router", dest="with_router", action="store_false", help="skip the router rows")
    ap.add_argument("--qwen-runs", dest="qwen_tree", action="store_false",
                    help="the Qwen pair's step-level runs one by one through the harness (default: every threshold "
                         "of a problem walked as one tree of shared prefixes, each run charged its own batch-1 "
                         "calls; the same results, a fraction of the time)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/arbitrage")
    ap.add_argument("--plot-dir", help="where the plots go (default: --out)")
    ap.add_argument("--into", help="also merge this run's pairs into this report file (e.g. docs/arbitrage.json), "
                                   "keeping the pairs it does not measure")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--load", help="print a saved report.json, measure nothing")
    args = ap.parse_args()
    args.pairs = [p for p in args.pairs.split(",") if p]
    if unknown := [p for p in args.pairs if p not in PAIRS]:
        ap.error(f"--pairs {','.join(unknown)}: accepted are {', '.join(PAIRS)}")
    if args.thresholds < 1 or args.per_difficulty < 1 or args.qwen_limit < 1:
        ap.error("--thresholds, --per-difficulty and --qwen-limit must be >= 1")
    if args.quick:
        args.pairs, args.per_difficulty, args.thresholds = ["testbed"], 10, 6
    if args.load:
        report = json.loads(Path(args.load).read_text())
    else:
        report = measure(args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
        if args.into:
            into = Path(args.into)
            if into.exists():
                report = merge_reports(json.loads(into.read_text()), report)
            into.write_text(json.dumps(report, indent=2))
        plot_dir = Path(args.plot_dir or args.out)
        plot_dir.mkdir(parents=True, exist_ok=True)
        plot(report, plot_dir)
    if args.json:
        print(json.dumps({k: report.get(k, []) for k in ("rows", "matched", "paired", "ceiling")}, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
